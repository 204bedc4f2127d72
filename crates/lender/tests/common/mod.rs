//! The pool builders, from `test-support`, under the names these tests use.

#![allow(unused_imports)]

pub use test_support::pool::*;
