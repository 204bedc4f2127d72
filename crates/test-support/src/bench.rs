//! What the benchmarks' `main`s share. They are `harness = false`
//! programs, each measuring with its own clock; settings come from the
//! environment (`BENCH_RUNS=3 cargo bench ...`).

use std::future::Future;

/// A number from the environment variable `name`, else `default` (also
/// when it does not parse: a benchmark is run by hand and says what it
/// used).
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Runs `future` on a two-worker runtime: the benchmarks' processes share
/// a two-core machine, and the runtime should not ask for more.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_number_falls_back_when_unset_or_unparsable() {
        assert_eq!(env_number("TEST_SUPPORT_SURELY_UNSET_VARIABLE", 7), 7);
        assert_eq!(env_number("PATH", 9), 9);
    }
}
