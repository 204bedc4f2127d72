#!/bin/sh
# Lender side: a build step that lends the agent it runs on to another
# controller. The agent leaves once it is idle, i.e. after this job ends, and
# comes home on `return`, when the lease ends, after 30 idle minutes there, or
# if the borrower goes away.
#
#   lend-this-agent.sh BORROWER_URL NODE_NAME SECRET_FILE [LEASE]
#
# NODE_NAME is the node on the borrowing controller; SECRET_FILE holds its
# secret (e.g. a Jenkins file credential), read by the agent itself.
#
# --wait makes this step fail visibly when the borrower cannot be reached, is
# not a Jenkins controller, or has no usable engine: the agent checks all
# that while it still runs this job. A wrong secret or node name can only be
# seen at the handshake, after this job ended: the agent then stays home and
# reports it (`jnlp-agent ctl events` shows `borrow_failed`).
set -eu
: "${JNLP_AGENT_CONTROL_SOCKET:?run this as a build step on a jnlp-agent}"
[ $# -ge 3 ] || { echo "usage: $0 BORROWER_URL NODE_NAME SECRET_FILE [LEASE]" >&2; exit 2; }
exec jnlp-agent ctl borrow --url "$1" --name "$2" --secret-file "$3" \
    --lease "${4:-2h}" --idle-return 30m --wait 5m
