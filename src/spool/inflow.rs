//! Arrival pacing, as Postfix's `in_flow_delay`: when mail arrives faster than the scheduler
//! takes it up, a session waits a little before it accepts the next message, so the backlog in
//! incoming/ stays small instead of growing by thousands under a burst.
//!
//! Tokens: the scheduler adds one each time it starts on a message from incoming/ (up to
//! [`CREDIT`] waiting), and a session takes one before DATA's `354`. Without a token it waits
//! for one at most `spool.in_flow_delay` (default 1 s) and then goes on anyway: pacing, never
//! refusal, and a stalled scheduler costs each message at most that delay. DSNs the gateway
//! writes itself never wait.
//!
//! Why it matters beyond latency: a growing backlog means every new message needs a new queue
//! file (the emptied ones of delivered messages are all in use, see `Recycled`), and on ext4
//! each new inode costs a scan of the recently freed ones; the sessions also take CPU the
//! deliveries need (docs/performance.md, "Arrival pacing").

use std::time::Duration;
use tokio::sync::Semaphore;

/// Messages that may arrive ahead of the scheduler before sessions are paced: the backlog
/// allowed in incoming/ (as many as the spool keeps emptied files for reuse).
pub const CREDIT: usize = 64;

/// How an arrival went in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Within the credit.
    AtOnce,
    /// After waiting for the scheduler (less than the delay).
    Paced,
    /// The whole delay went by (or it is zero) without a token: in anyway.
    Unpaced,
}

#[derive(Debug)]
pub struct InFlow {
    tokens: Semaphore,
}

impl Default for InFlow {
    fn default() -> Self {
        InFlow {
            tokens: Semaphore::new(CREDIT),
        }
    }
}

impl InFlow {
    /// The scheduler started on a message from incoming/: one more may arrive.
    pub fn started(&self) {
        if self.tokens.available_permits() < CREDIT {
            self.tokens.add_permits(1);
        }
    }

    /// Before a session accepts a message: take a token, waiting at most `delay` for one.
    pub async fn admit(&self, delay: Duration) -> Admitted {
        if let Ok(p) = self.tokens.try_acquire() {
            p.forget();
            return Admitted::AtOnce;
        }
        if delay.is_zero() {
            return Admitted::Unpaced;
        }
        match tokio::time::timeout(delay, self.tokens.acquire()).await {
            Ok(Ok(p)) => {
                p.forget();
                Admitted::Paced
            }
            _ => Admitted::Unpaced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[tokio::test]
    async fn arrivals_past_the_credit_wait_for_the_scheduler_at_most_the_delay() {
        let f = Arc::new(InFlow::default());
        for _ in 0..CREDIT {
            assert_eq!(f.admit(Duration::from_secs(1)).await, Admitted::AtOnce);
        }
        // No credit left: the next arrival waits the whole delay, then goes in anyway.
        let t = Instant::now();
        assert_eq!(f.admit(Duration::from_secs(1)).await, Admitted::Unpaced);
        assert!(t.elapsed() >= Duration::from_secs(1));
        // A waiting arrival goes in as soon as the scheduler starts on a message, long before
        // its delay is over.
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.admit(Duration::from_secs(600)).await }
        });
        // One thread (tokio::test): yielding lets the waiter run until it waits.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        f.started();
        assert_eq!(waiter.await.unwrap(), Admitted::Paced);
        // The credit never grows past CREDIT, however long the scheduler runs alone.
        for _ in 0..3 * CREDIT {
            f.started();
        }
        assert_eq!(f.tokens.available_permits(), CREDIT);
        // Zero delay: never waits.
        let g = InFlow::default();
        for _ in 0..CREDIT {
            g.admit(Duration::ZERO).await;
        }
        assert_eq!(g.admit(Duration::ZERO).await, Admitted::Unpaced);
    }
}
