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
//!   thin driver ([`server`]): one task owns the pool and the store and
//!   applies every input in turn, so no two requests race for an agent.
//!   State survives restarts in a [`store::Store`] (SQLite by default).
//! - **Lending on demand.** For registered Jenkins controllers
//!   ([`controllers`]) the lender reads the queue itself ([`jenkins`]) and
//!   keeps one auto-lease per waiting build; an auto-lease that reserves
//!   an agent first has its node made at the controller (the pool asks,
//!   a task does it), and the node goes when the lease ends. Only
//!   Jenkins' HTTP API is used: no plugin.
//! - **Restarts.** A restarted lender rebuilds the pool from the store;
//!   agents reconnect and say `hello` with their place. The agent's word
//!   wins about where it is, the lender's about leases; disagreements are
//!   logged.
//! - **Security.** Agents and API clients have separate bearer tokens,
//!   stored hashed ([`tokens`]); an agent token speaks only for its agent, a
//!   client sees and returns only its own leases; borrower secrets are
//!   never logged or returned. Plain HTTP only on loopback unless forced.
//!
//! # Layout
//!
//! - labels and label expressions: [`control::labels`], shared with the
//!   agent;
//! - [`controllers`]: registered Jenkins controllers (lending on demand);
//! - [`jenkins`]: a client of Jenkins' own HTTP API (queue, nodes,
//!   secrets) for lending on demand;
//! - [`pool`]: agents, leases, the queue and every decision about them;
//! - [`store`]: the storage interface, its SQLite and in-memory
//!   implementations;
//! - [`tokens`]: bearer tokens, their hashes;
//! - [`api`]: the HTTP API's JSON bodies (and the API's reference);
//! - [`server`]: `jnlp-lender serve`: HTTP API, agent links
//!   ([`control::link`]), the driver, metrics;
//! - [`client`]: an HTTP API client, for the command line;
//! - `main.rs`: the `jnlp-lender` command line.

pub mod api;
pub mod client;
pub mod controllers;
pub mod jenkins;
pub mod pool;
pub mod server;
pub mod store;
pub mod tokens;
