//! The in-process lender and its fake agents, from `test-support` (shared
//! with the agent's tests and the benchmarks), under the names these tests
//! use.

#![allow(unused_imports)]

pub use test_support::lender::*;
pub use test_support::Scratch;
