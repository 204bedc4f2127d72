//! Polling with a deadline: a test waits for what it can observe, for as
//! long as a slow machine needs, and no longer than the condition takes.

use std::future::Future;
use std::time::{Duration, Instant};

/// Between two looks at a condition: short against any deadline, long
/// enough not to busy the cores the code under test needs.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` until it holds; panics naming `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not true within {timeout:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the async `check` until it gives a value and returns it; panics
/// naming `what` after `timeout`.
pub async fn until_some<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} ({timeout:?})"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn eventually_returns_once_the_condition_holds() {
        let calls = Cell::new(0);
        eventually("third call", Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            calls.get() == 3
        })
        .await;
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "never: not true within")]
    async fn eventually_panics_at_its_deadline() {
        eventually("never", Duration::from_millis(50), || false).await;
    }

    #[tokio::test]
    async fn until_some_gives_the_value() {
        let mut n = 0;
        let value = until_some("n reaches 2", Duration::from_secs(5), || {
            n += 1;
            let now = n;
            async move { (now == 2).then_some(now * 10) }
        })
        .await;
        assert_eq!(value, 20);
    }
}
