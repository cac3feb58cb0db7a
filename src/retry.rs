//! Bounded retries with full-jitter exponential backoff, for the HTTP clients (the KMS
//! providers and the S3-compatible store).
//!
//! Only errors marked temporary ([`Retryable`]) are retried (throttling, 5xx, transport
//! failures); everything else surfaces at once. See "Exponential Backoff And Jitter" (AWS architecture
//! blog): `sleep = random(0, min(cap, base * 2^attempt))`.

use std::time::Duration;

use std::fmt::Display;

/// An error that knows whether sending the request again may succeed.
pub trait Retryable: Display {
    fn is_retryable(&self) -> bool;
}

/// How often and how long to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The full-jitter delay before retry number `attempt` (1 = the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
        let cap = exp.min(self.max_delay);
        let mut b = [0u8; 8];
        // A failed RNG only removes the jitter; the bound still holds.
        let r = if getrandom::getrandom(&mut b).is_ok() {
            u64::from_le_bytes(b)
        } else {
            u64::MAX
        };
        let nanos = cap.as_nanos() as u64;
        Duration::from_nanos(if nanos == 0 { 0 } else { r % (nanos + 1) })
    }

    /// Runs `call` until it succeeds, fails permanently, or attempts run out. `what` names the
    /// call in the log lines (e.g. `GenerateDataKey at https://kms...`).
    pub fn run<T, E: Retryable>(
        &self,
        what: &str,
        mut call: impl FnMut() -> Result<T, E>,
    ) -> Result<T, E> {
        let mut attempt = 1;
        loop {
            match call() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.max_attempts.max(1) => {
                    let wait = self.delay(attempt);
                    log::warn!(
                        "{what}: {e}; retry {attempt}/{} in {} ms",
                        self.max_attempts.max(1) - 1,
                        wait.as_millis()
                    );
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::{KmsError, KmsErrorKind};

    #[test]
    fn delay_is_bounded_by_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        };
        for attempt in 1..40 {
            assert!(p.delay(attempt) <= Duration::from_millis(50));
        }
    }

    #[test]
    fn retries_only_temporary_errors() {
        let p = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut n = 0;
        let r: Result<u32, _> = p.run("test", || {
            n += 1;
            if n < 3 {
                Err(KmsError::new(KmsErrorKind::Throttled, "slow down"))
            } else {
                Ok(n)
            }
        });
        assert_eq!(r.unwrap(), 3);

        let mut m = 0;
        let r: Result<u32, _> = p.run("test", || {
            m += 1;
            Err(KmsError::new(KmsErrorKind::NotFound, "no such key"))
        });
        assert_eq!(r.unwrap_err().kind, KmsErrorKind::NotFound);
        assert_eq!(m, 1);

        let mut k = 0;
        let r: Result<u32, _> = p.run("test", || {
            k += 1;
            Err(KmsError::new(KmsErrorKind::Unavailable, "503"))
        });
        assert!(r.is_err());
        assert_eq!(k, 4);
    }
}
