//! `jnlp-lender`: a pool of `jnlp-agent`s that borrowers lease by Jenkins
//! label expression.
//!
//! # Design
//!
//! - **Each agent enforces its own lease; the pool only decides.** The pool
//!   picks which agent goes to which borrower and tells the agent
//!   (`borrow`, `return`: the control socket's messages). The lease time
//!   and idle return travel with the `borrow`, and the agent goes home by
//!   itself when they run out, whether or not the lender is still there. The
//!   agent is the authority on where it is; the lender is the authority on
//!   leases; each report from an agent reconciles the two.
//! - **Two-phase reservation.** A matching agent that is connected, at
//!   home and idle is *reserved* (no other lease can have it) and sent
//!   `borrow`; the lease becomes *active* only once the agent reports itself
//!   online at the borrower. A failed borrow releases the agent and tries
//!   the next one.
//! - **Queue and reclaim.** A request no free agent satisfies waits, first
//!   come first served, until its deadline; an agent left idle at another
//!   borrower can be sent home for it.
//! - **No I/O in the decisions.** [`pool::Pool`] takes the time as an
//!   argument and returns what to do, so every rule is tested without
//!   sockets or clocks; the service around it (HTTP API, agent links) is a
//!   thin driver. State survives restarts in a [`store::Store`] (SQLite by
//!   default).
//!
//! # Layout
//!
//! - [`labels`]: Jenkins label expressions: parser, canonical printing,
//!   evaluation against an agent's labels;
//! - [`pool`]: agents, leases, the queue and every decision about them;
//! - [`store`]: the storage interface, its SQLite and in-memory
//!   implementations;
//! - `main.rs`: the `jnlp-lender` command line.
//!
//! Not in this build yet: the HTTP API, the agent link, tokens, metrics.

pub mod labels;
pub mod pool;
pub mod store;
