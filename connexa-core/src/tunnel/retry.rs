//! Retrying an operation whose result may deserve another try, with a
//! doubling pause: the tunnel's login and, above it, the prober's handshake
//! and login use it.

use std::time::Duration;

/// Runs `op` up to `attempts` times (at least once) while `again` says its
/// result deserves another try, pausing `backoff` before the second try and
/// twice as long before each further one. Shared by the light handshake, the
/// auth login and the tunnel (speed tests, services).
pub(crate) async fn retrying<T, F, Fut>(
    attempts: u32,
    backoff: Duration,
    mut op: F,
    again: impl Fn(&T) -> bool,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut pause = backoff;
    let mut result = op().await;
    for _ in 1..attempts.max(1) {
        if !again(&result) {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = pause.saturating_mul(2);
        result = op().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    async fn run(attempts: u32, fail_first: u32) -> (u32, u32) {
        let calls = Cell::new(0u32);
        let last = retrying(
            attempts,
            Duration::ZERO,
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { n }
            },
            |n: &u32| *n <= fail_first,
        )
        .await;
        (calls.get(), last)
    }

    #[tokio::test]
    async fn tries_again_only_while_asked_and_at_most_attempts_times() {
        // Succeeds at once: one call.
        assert_eq!(run(3, 0).await, (1, 1));
        // Two transient failures, then success on the third of three.
        assert_eq!(run(3, 2).await, (3, 3));
        // Always transient: stops after `attempts`, returning the last result.
        assert_eq!(run(3, 10).await, (3, 3));
        // Zero attempts still runs once.
        assert_eq!(run(0, 10).await, (1, 1));
    }

    #[tokio::test]
    async fn pauses_double() {
        let start = tokio::time::Instant::now();
        let calls = Cell::new(0u32);
        retrying(
            3,
            Duration::from_millis(20),
            || {
                calls.set(calls.get() + 1);
                async {}
            },
            |_: &()| true,
        )
        .await;
        // 20 ms, then 40 ms: at least 60 ms (a lower bound only).
        assert!(start.elapsed() >= Duration::from_millis(60));
        assert_eq!(calls.get(), 3);
    }
}
