//! Pacing of device-to-host offloads by the scheduler's offload rate: a token
//! bucket in bytes. Blocks over budget are not stored now (`Deferred`); the engine
//! never sleeps in a store call.
//!
//! ```text
//!   tokens += elapsed * rate   (at most burst = max(rate * 250 ms, one block))
//!   a batch of n blocks takes min(n, tokens / block_bytes) blocks' worth
//! ```

use std::time::{Duration, Instant};

/// Burst window: how much unused budget a quiet period may bank.
const BURST: Duration = Duration::from_millis(250);

/// A byte budget refilled at a rate.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// An empty bucket that starts filling now.
    pub fn new(now: Instant) -> Self {
        Self { tokens: 0.0, last: now }
    }

    /// How many of `n` blocks of `block_bytes` may move at `rate` bytes/s
    /// (`None`: unlimited), taking their bytes from the budget.
    pub fn take(&mut self, now: Instant, rate: Option<u64>, n: usize, block_bytes: u64) -> usize {
        let Some(rate) = rate else {
            self.last = now;
            return n;
        };
        let burst = (rate as f64 * BURST.as_secs_f64()).max(block_bytes as f64);
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate as f64).min(burst);
        self.last = now;
        let k = ((self.tokens / block_bytes.max(1) as f64) as usize).min(n);
        self.tokens -= (k as u64 * block_bytes) as f64;
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_follows_the_rate_and_banks_at_most_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0);
        let ms = |x| t0 + Duration::from_millis(x);
        // Unlimited: everything passes.
        assert_eq!(b.take(t0, None, 1000, 1 << 20), 1000);
        // 100 MB/s, 1 MB blocks: after 50 ms, 5 blocks; nothing left right after.
        assert_eq!(b.take(ms(50), Some(100_000_000), 10, 1_000_000), 5);
        assert_eq!(b.take(ms(50), Some(100_000_000), 10, 1_000_000), 0);
        // A long quiet period banks only the burst: 250 ms = 25 blocks.
        assert_eq!(b.take(ms(10_050), Some(100_000_000), 100, 1_000_000), 25);
        // A rate below one block per burst still moves one block per refill.
        let mut slow = TokenBucket::new(t0);
        assert_eq!(slow.take(ms(1000), Some(1000), 3, 1_000_000), 0);
        assert_eq!(slow.take(ms(1_000_000), Some(1000), 3, 1_000_000), 1);
    }
}
