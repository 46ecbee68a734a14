//! Exponential backoff with jitter, shared by every retry loop (verto reconnects, the Matrix
//! sync loop, joins, sends, the login).
//!
//! The jitter spreads retries out so that clients which lost the same server at the same moment
//! do not all come back in step. It needs no cryptographic quality, so it is derived from the
//! standard library's randomly keyed hasher instead of pulling in a random number crate.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How far a wait may stray from its step, as a fraction of it.
const JITTER: f64 = 0.2;

/// Waits that double from `initial` up to `max`, each with ±20% jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `initial`. No wait is ever longer than `max`, so an operator's
    /// `reconnect_max_secs` stays a true upper bound despite the jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            step: initial.min(max),
        }
    }

    /// The wait before the next attempt. The step behind it then doubles, up to `max`.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self
            .step
            .mul_f64(1.0 + JITTER * unit_jitter())
            .min(self.max);
        self.step = self.step.saturating_mul(2).min(self.max);
        wait
    }

    /// Back to `initial`, after a success.
    pub fn reset(&mut self) {
        self.step = self.initial.min(self.max);
    }

    /// Makes the next wait about `step` (at most `max`), for when the cause of the failure,
    /// not the number of attempts, says how long to wait (a refused login: long; a one-off
    /// takeover of the session: short).
    pub fn set_next(&mut self, step: Duration) {
        self.step = step.min(self.max);
    }
}

/// A value in [-1, 1], different on every call.
fn unit_jitter() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    // The top 53 bits fill an f64 mantissa exactly.
    let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(wait: Duration, step: Duration, max: Duration) -> bool {
        wait >= step.mul_f64(1.0 - JITTER) && wait <= step.mul_f64(1.0 + JITTER).min(max)
    }

    #[test]
    fn doubles_within_jitter_up_to_the_cap() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(500), ms(5000));
        for step in [500, 1000, 2000, 4000, 5000, 5000, 5000] {
            let wait = b.next_wait();
            assert!(within(wait, ms(step), ms(5000)), "{wait:?} for step {step}");
        }
    }

    #[test]
    fn never_exceeds_max_and_resets() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(60));
        for _ in 0..50 {
            assert!(b.next_wait() <= s(60));
        }
        b.reset();
        assert!(within(b.next_wait(), s(1), s(60)));
        b.set_next(s(600));
        assert!(
            within(b.next_wait(), s(60), s(60)),
            "set_next is capped too"
        );
        b.set_next(Duration::from_millis(200));
        assert!(within(b.next_wait(), Duration::from_millis(200), s(60)));
    }

    #[test]
    fn jitter_varies_and_stays_in_range() {
        let values: Vec<f64> = (0..200).map(|_| unit_jitter()).collect();
        assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(values.iter().any(|v| *v < -0.5) && values.iter().any(|v| *v > 0.5));
    }
}
