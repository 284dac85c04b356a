//! Waiting for what only becomes true later, with a deadline instead of a
//! sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// Runs `check` until it returns `Ok`, at most until `deadline` has passed;
/// then fails the test with the last reason. For what only becomes true
/// later (management-API statistics lag a few seconds), never as a sleep.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(reason) if started.elapsed() >= deadline => {
                panic!("not true within {deadline:?}: {reason}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
