//! Helpers the workspace's tests and benchmarks share, so that no crate
//! keeps its own copy (a dev-dependency only, never published).
//!
//! # Layout
//!
//! - [`wait`]: polling a condition with a deadline instead of sleeping;
//! - [`scratch`]: fresh directories under the system temp dir, never in the
//!   checkout (which may be 0700 and owned by someone else);
//! - [`procfs`]: what `/proc` says of a process: memory, CPU, descendants;
//! - [`bench`]: what the benchmarks' `main`s share: settings from the
//!   environment, their runtime;
//! - [`lender`]: an in-process `jnlp-lender` on port 0 with a scratch
//!   database, tokens, HTTP calls and fake agents on the link;
//! - [`pool`]: builders for tests of the lender's pool and store.
//!
//! Helpers panic with a message naming what failed: they run in tests.

#![allow(clippy::unwrap_used)]

pub mod bench;
pub mod lender;
pub mod pool;
pub mod procfs;
pub mod scratch;
pub mod wait;

pub use crate::lender::create_token as lender_token;
pub use scratch::{temp_dir, Scratch};
pub use wait::{eventually, until_some};
