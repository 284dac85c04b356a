//! bcrypt for operator passwords, run at most one per core at a time.
//!
//! bcrypt is slow on purpose (about 0.1–0.3 s of one core). Without a limit a
//! burst of requests with wrong passwords fills every blocking thread with
//! bcrypt and takes all cores; with it, the excess waits its turn and the
//! rest of the gateway (publishing, consuming, API-key checks) keeps a core.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// Why a password could not be hashed or checked. Never says whether the password was right: that
/// is the `Ok` value.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The semaphore closed: the process is going down.
    #[error("cannot hash the password: the hashing pool is closed")]
    Closed(#[source] tokio::sync::AcquireError),
    /// The blocking task died (a panic in bcrypt).
    #[error("cannot hash the password: the hashing task failed")]
    Task(#[source] tokio::task::JoinError),
    /// bcrypt itself refused (a malformed stored hash, or a cost out of range).
    #[error("cannot hash the password")]
    Bcrypt(#[source] bcrypt::BcryptError),
}

/// One permit per core the process may use.
fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(max_concurrent()))
}

/// How many bcrypt runs may happen at once in this process.
pub fn max_concurrent() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The most bcrypt runs this process has had going at once: shown in
/// `/metrics`, so the limit can be seen to hold.
pub fn peak_concurrency() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Counts one bcrypt computation while it runs.
struct Running;

impl Running {
    fn start() -> Running {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        PEAK.fetch_max(now, Ordering::SeqCst);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether `secret` matches the bcrypt `hash`. A malformed hash never
/// matches.
pub async fn verify(secret: &SecretString, hash: &str) -> bool {
    let Ok(_permit) = permits().acquire().await else {
        return false;
    };
    let (secret, hash) = (secret.clone(), hash.to_owned());
    tokio::task::spawn_blocking(move || {
        let _running = Running::start();
        bcrypt::verify(secret.expose_secret(), &hash)
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or(false)
}

/// A new bcrypt hash of `secret`, at the library's default cost.
pub async fn hash(secret: &SecretString) -> Result<String, HashError> {
    let _permit = permits().acquire().await.map_err(HashError::Closed)?;
    let secret = secret.clone();
    tokio::task::spawn_blocking(move || {
        let _running = Running::start();
        bcrypt::hash(secret.expose_secret(), bcrypt::DEFAULT_COST)
    })
    .await
    .map_err(HashError::Task)?
    .map_err(HashError::Bcrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_own_secret_only() {
        let secret = SecretString::from("correct horse".to_owned());
        let hash = hash(&secret).await.expect("hashes");
        assert!(verify(&secret, &hash).await);
        assert!(!verify(&SecretString::from("wrong".to_owned()), &hash).await);
        assert!(!verify(&secret, "not a bcrypt hash").await);
    }
}
