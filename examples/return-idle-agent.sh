#!/bin/sh
# Borrower side: a build step, scheduled on a borrowed agent (e.g. a
# periodic job pinned to its label), that sends the agent home. Home it goes
# once idle: as soon as this job has ended, unless another build started.
set -eu
: "${JNLP_AGENT_CONTROL_SOCKET:?run this as a build step on a jnlp-agent}"
if jnlp-agent ctl status --json | grep -q '"placement":"borrowed"'; then
    exec jnlp-agent ctl return
fi
echo "this agent is at home; nothing to return"
