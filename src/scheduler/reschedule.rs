//! After an attempt: the envelope's new state, written once. Expired recipients fail; what
//! failed permanently gets a DSN (`dsn::send`, back into the spool from `<>`); then the message
//! is deferred with the retry timetable (`spool.retry`, the last interval repeating), moved to
//! hold/ (a recipient held by policy or by the inbound rules), or removed (all done). The answer
//! is when to try again, if ever ([`Due`]), for the timetable.
//!
//! When the envelope cannot be rewritten (disk full), the outcomes live on in memory
//! ([`Unsaved`]) and the next attempt starts from them, never from the stale file: recipients
//! already served are not served again.

use crate::dsn;
use crate::metrics::Metrics;
use crate::reply::{self, Reply};
use crate::runtime::Runtime;
use crate::spool::{Envelope, MessageLock, Queue, RcptStatus, Spool, now_secs};
use std::collections::HashMap;
use std::sync::Mutex;

/// When to try a message again, and from which queue.
pub(super) struct Due {
    pub(super) at_ms: u64,
    pub(super) id: String,
    pub(super) queue: Queue,
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Delivery state that exists only in memory: envelopes whose rewrite failed (disk full, I/O
/// error), by queue ID. The file on disk is older than what happened; the next attempt merges
/// these outcomes into it. Kept until a rewrite succeeds or the message is gone. Lost on
/// restart: then recovery re-sends from the file (duplicates, never losses).
#[derive(Default)]
pub(super) struct Unsaved(Mutex<HashMap<String, Envelope>>);

impl Unsaved {
    pub(super) fn keep(&self, env: &Envelope) {
        self.0
            .lock()
            .expect("not poisoned")
            .insert(env.id.clone(), env.clone());
    }

    pub(super) fn forget(&self, id: &str) {
        self.0.lock().expect("not poisoned").remove(id);
    }

    /// Applies what only memory knows to `env` as read from disk: recipients delivered or failed
    /// stay so (an operator's release or retry never undoes those), the last replies, the count
    /// of attempts.
    pub(super) fn merge_into(&self, env: &mut Envelope) {
        let map = self.0.lock().expect("not poisoned");
        let Some(mem) = map.get(&env.id) else {
            return;
        };
        for m in &mem.recipients {
            let Some(r) = env.recipient_mut(&m.address) else {
                continue;
            };
            if matches!(m.status, RcptStatus::Delivered | RcptStatus::Failed) {
                r.status = m.status;
            }
            if m.reply.is_some() {
                r.reply = m.reply.clone();
                r.reason = m.reason.clone();
            }
        }
        env.attempts = env.attempts.max(mem.attempts);
    }
}

/// Writes the envelope's new state: done (removed), deferred, held or expired; sends DSNs.
/// A state that cannot be written is kept in `unsaved` for the next attempt. `held` is the
/// attempt's message lock (if it took one), released when this returns.
#[allow(clippy::too_many_arguments)]
pub(super) async fn reschedule(
    spool: &Spool,
    rt: &Runtime,
    metrics: &Metrics,
    unsaved: &Unsaved,
    mut env: Envelope,
    held: Option<MessageLock>,
    queue: Queue,
    data: &[u8],
    mut failures: Vec<(String, Reply)>,
) -> Option<Due> {
    let cfg = &rt.config.spool;
    let now = now_secs();
    let has_pending = env.pending().next().is_some();
    if has_pending && now.saturating_sub(env.received) >= cfg.max_age.as_secs() {
        for r in env
            .recipients
            .iter_mut()
            .filter(|r| r.status == RcptStatus::Pending)
        {
            let reply = reply::expired(cfg.max_age.as_secs(), r.reply.as_deref());
            tracing::warn!(queue_id = %env.id, rcpt = %r.address, reason = r.reason.as_deref().unwrap_or("-"), "expired");
            r.status = RcptStatus::Failed;
            r.reply = Some(reply.to_string());
            failures.push((r.address.clone(), reply));
        }
    }
    if !failures.is_empty() {
        metrics.bounced(failures.len() as u64);
        let list: Vec<dsn::Failure> = failures
            .iter()
            .map(|(r, reply)| dsn::Failure {
                recipient: r,
                reply,
            })
            .collect();
        dsn::send(spool, &rt.config.server.hostname, &env, data, &list).await;
    }
    let id = env.id.clone();
    if env.pending().next().is_some() {
        let step = (env.attempts.max(1) as usize - 1).min(cfg.retry.len() - 1);
        let delay = cfg.retry[step];
        env.next_attempt = now + delay.as_secs().max(1);
        match spool.save(&mut env, Queue::Deferred, queue).await {
            Ok(()) => {
                unsaved.forget(&id);
                Some(Due {
                    at_ms: env.next_attempt.saturating_mul(1000),
                    id: id.clone(),
                    queue: Queue::Deferred,
                })
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "could not update envelope; delivery state kept in memory; will retry");
                unsaved.keep(&env);
                // Still where it was: the next attempt starts from that file plus memory.
                Some(Due {
                    at_ms: now_ms() + delay.as_millis() as u64,
                    id: id.clone(),
                    queue,
                })
            }
        }
    } else if env.recipients.iter().any(|r| r.status == RcptStatus::Held) {
        env.hold_reason = env
            .recipients
            .iter()
            .find(|r| r.status == RcptStatus::Held)
            .and_then(|r| r.reply.clone());
        metrics.held();
        match spool.save(&mut env, Queue::Hold, queue).await {
            Ok(()) => unsaved.forget(&id),
            Err(e) => {
                // Left where it was: the next attempt holds it again, without re-sending.
                tracing::error!(queue_id = %id, error = %e, "could not move to hold; will retry");
                unsaved.keep(&env);
                let delay = cfg.retry[0];
                return Some(Due {
                    at_ms: now_ms() + delay.as_millis() as u64,
                    id,
                    queue,
                });
            }
        }
        None
    } else {
        let removed = match held {
            Some(held) => spool.remove_locked(queue, &id, env.size, held).await,
            None => spool.remove_sized(queue, &id, env.size).await,
        };
        match removed {
            Ok(()) => unsaved.forget(&id),
            Err(e) => {
                // If it is picked up again, memory knows every recipient is done.
                tracing::error!(queue_id = %id, error = %e, "could not remove delivered message");
                unsaved.keep(&env);
            }
        }
        tracing::info!(queue_id = %id, "done");
        None
    }
}
