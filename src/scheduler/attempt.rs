//! One delivery attempt of one message: take the message lock (an operator's `cachet queue`
//! action waits for it), load the envelope and merge what only memory knows ([`Unsaved`]),
//! reserve memory, read the data, hand the pending recipients to the message's direction, then
//! let [`reschedule`] write the outcome.
//!
//! The outbound direction lives here: directory lookups on the async side, sealing (policy +
//! S/MIME; on the blocking pool unless the message is small and its keys are in this process),
//! each copy relayed to `[upstream]`, each recipient's outcome recorded in the envelope and the
//! audit trail. The inbound direction is `super::inbound`.
//!
//! A message that is damaged (queue file unparsable, its data cut short or not what was committed)
//! goes to corrupt/ with one log line (`Spool::quarantine`). A file that cannot be opened or
//! read for any other reason (too many open files above all) is a temporary failure: the message
//! stays where it is and is tried again after the first retry interval, never forgotten.

use super::inbound;
use super::reschedule::{Due, Unsaved, now_ms, reschedule};
use crate::metrics::Metrics;
use crate::pipeline;
use crate::relay::{MailParams, Outcome};
use crate::reply::{self, Failure, Reply, Scope};
use crate::runtime::Runtime;
use crate::spool::{
    DataError, Direction, Envelope, MessageLock, Queue, RcptStatus, Spool, TryLock,
};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Memory for messages being sealed and relayed, in MiB. A delivery holds its message several
/// times over (data, canonical, signed, base64, encrypted copies), so it reserves
/// `COPIES_HELD x size` of this budget: small messages run `spool.workers` at once, large ones
/// queue up instead of multiplying the process's memory.
pub(super) const MEMORY_BUDGET_MIB: u32 = 160;
const COPIES_HELD: u64 = 6;

/// The largest message sealed on the async thread that runs its attempt (keys in this process
/// only); larger ones are sealed on the blocking pool.
const SEAL_INLINE_MAX: u64 = 128 * 1024;

/// Budget units (MiB) a message of `size` bytes reserves; at least 1, at most the whole budget.
fn memory_units(size: u64) -> u32 {
    let mib = (size.saturating_mul(COPIES_HELD)).div_ceil(1 << 20);
    mib.clamp(1, MEMORY_BUDGET_MIB as u64) as u32
}

/// When a message is locked by an operator action, try again this much later (the action is
/// a rename or two).
const LOCKED_RETRY_MS: u64 = 1000;

/// Try message `id` in `queue` again after the first retry interval (a temporary local failure).
fn later(rt: &Runtime, id: &str, queue: Queue) -> Due {
    Due {
        at_ms: now_ms() + rt.config.spool.retry[0].as_millis() as u64,
        id: id.into(),
        queue,
    }
}

/// One delivery attempt of message `id` found in `queue`. Returns when to try again, if ever.
pub(super) async fn attempt(
    spool: &Spool,
    rt: &Arc<Runtime>,
    metrics: &Metrics,
    memory: &Semaphore,
    unsaved: &Unsaved,
    id: &str,
    queue: Queue,
) -> Option<Due> {
    tracing::debug!(queue_id = id, "delivery attempt");
    // Held until the envelope's new state is written: `cachet queue` waits for it. The envelope
    // and the data are read through the locked file (one open per attempt).
    let (lock, mut env) = match lock_and_load(spool, rt, unsaved, id, queue) {
        Ok(loaded) => loaded,
        Err(next) => return next,
    };
    // Held until this attempt ends: bounds the memory of all deliveries together.
    let _memory = memory
        .acquire_many(memory_units(env.size))
        .await
        .expect("never closed");
    // Shared, not copied, between the sealing job and the DSN builder.
    let data = match spool.read_checked(queue, &env, lock.as_ref()).await {
        Ok(d) => Arc::new(d),
        Err(DataError::Damaged(reason)) => {
            spool.quarantine(queue, id, &reason);
            unsaved.forget(id);
            return None;
        }
        Err(DataError::Io(e)) => {
            tracing::warn!(queue_id = id, error = %e, "cannot read the message data now; will retry");
            return Some(later(rt, id, queue));
        }
    };
    let pending: Vec<String> = env.pending().map(|r| r.address.clone()).collect();
    let failures = if env.direction == Direction::Inbound {
        inbound::deliver(rt, metrics, &mut env, &data, &pending).await
    } else {
        match outbound(rt, metrics, id, &mut env, &data, &pending).await {
            Some(failures) => failures,
            // The sealing job itself died: the pending recipients were deferred, and this
            // attempt does not count towards the retry timetable.
            None => {
                return reschedule(
                    spool,
                    rt,
                    metrics,
                    unsaved,
                    env,
                    lock,
                    queue,
                    &data,
                    Vec::new(),
                )
                .await;
            }
        }
    };
    env.attempts = env.attempts.saturating_add(1);
    reschedule(
        spool, rt, metrics, unsaved, env, lock, queue, &data, failures,
    )
    .await
}

/// Takes the message lock and loads the envelope with what only memory knows merged in.
/// `Err` carries the attempt's answer when there is nothing to deliver now: locked by an
/// operator (shortly), moved to another queue (its time there), gone or held (never),
/// damaged (quarantined), unreadable just now (after the first retry interval).
fn lock_and_load(
    spool: &Spool,
    rt: &Runtime,
    unsaved: &Unsaved,
    id: &str,
    queue: Queue,
) -> Result<(Option<MessageLock>, Envelope), Option<Due>> {
    let lock = match spool.try_lock(id) {
        Ok(TryLock::Locked(lock)) => Some(lock),
        Ok(TryLock::Busy) => {
            tracing::debug!(
                queue_id = id,
                "locked by an operator action; trying again shortly"
            );
            return Err(Some(Due {
                at_ms: now_ms() + LOCKED_RETRY_MS,
                id: id.into(),
                queue,
            }));
        }
        // No queue file in a live queue: the load below finds nothing (or another queue).
        Ok(TryLock::Gone) => None,
        Err(e) => {
            tracing::error!(queue_id = id, error = %e, "cannot lock the message; will retry");
            return Err(Some(later(rt, id, queue)));
        }
    };
    let mut env = match spool.load_held(queue, id, lock.as_ref()) {
        Ok(Some(env)) => env,
        Ok(None) => {
            // Moved by an operator (hold/delete) or already done; another queue may have it.
            return Err(match spool.find(id) {
                Ok(Some((q @ (Queue::Incoming | Queue::Deferred), env))) => Some(Due {
                    at_ms: env.next_attempt.saturating_mul(1000),
                    id: id.into(),
                    queue: q,
                }),
                Ok(None) => {
                    unsaved.forget(id);
                    None
                }
                Ok(Some(_)) => None, // held (or corrupt): not the scheduler's until released
                Err(e) => {
                    tracing::warn!(queue_id = id, error = %e, "cannot look for the message now; will retry");
                    Some(later(rt, id, queue))
                }
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            spool.quarantine(queue, id, &format!("unreadable envelope: {e}"));
            return Err(None);
        }
        Err(e) => {
            tracing::warn!(queue_id = id, error = %e, "cannot read the envelope now; will retry");
            return Err(Some(later(rt, id, queue)));
        }
    };
    unsaved.merge_into(&mut env);
    Ok((lock, env))
}

/// The outbound direction: directory lookups, sealing (inline or on the blocking pool), each
/// copy to `[upstream]`. Records each pending recipient's outcome in `env`; returns the
/// permanent failures (for the DSN), or `None` when sealing itself died (every pending
/// recipient deferred).
async fn outbound(
    rt: &Arc<Runtime>,
    metrics: &Metrics,
    id: &str,
    env: &mut Envelope,
    data: &Arc<Vec<u8>>,
    pending: &[String],
) -> Option<Vec<(String, Reply)>> {
    // Directory lookups are I/O: done here, on the async side and bounded by each directory's
    // timeout, so the sealing job only reads their cached answers.
    // The header, read once: for the directory lookups here and for sealing.
    let h = pipeline::headers::read(&data[..], rt.config.policy.encrypt_header.as_deref());
    let wanted = if rt.stores.directory.is_empty() {
        Vec::new()
    } else {
        let policy = &rt.config.policy;
        let msg = pipeline::group::Message {
            sender: &env.sender,
            is_bounce: env.is_bounce,
            now: std::time::SystemTime::now(),
        };
        pipeline::group::lookups_needed(policy, &rt.stores, msg, &h, pending)
    };
    rt.stores.prefetch(&wanted, metrics).await;
    // Crypto is CPU work. A small message signed with keys in this process is sealed right
    // here: a few hundred microseconds of this async thread cost less than the two thread
    // hand-offs of the blocking pool (docs/performance.md, "Sealing and removal where the
    // attempt runs"). A large message, or any signature a PKCS#11 token makes (a device's
    // latency), goes to the blocking pool, never holding an async thread.
    let on_token = rt.config.keys.as_ref().is_some_and(|k| k.pkcs11.is_some());
    // A panic in sealing defers the message either way (as the blocking pool's join error
    // did), never taking the attempt down with it.
    let job: Result<pipeline::Sealed, String> = if data.len() as u64 <= SEAL_INLINE_MAX && !on_token
    {
        let seal = || pipeline::seal(&rt.config.policy, &rt.stores, env, &data[..], &h, pending);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(seal)).map_err(|p| {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned());
            format!("panicked: {}", why.as_deref().unwrap_or("(no message)"))
        })
    } else {
        let (rt, env, data, pending) = (rt.clone(), env.clone(), data.clone(), pending.to_vec());
        tokio::task::spawn_blocking(move || {
            pipeline::seal(&rt.config.policy, &rt.stores, &env, &data[..], &h, &pending)
        })
        .await
        .map_err(|e| e.to_string())
    };
    let sealed = match job {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(queue_id = id, error = %e, "sealing failed");
            let failure = Failure::new(
                reply::SEALING_ABORTED,
                Scope::Message,
                format!("sealing job failed: {e}"),
            );
            for r in env
                .recipients
                .iter_mut()
                .filter(|r| r.status == RcptStatus::Pending)
            {
                r.record(&failure);
            }
            return None;
        }
    };
    let mut failures = record_unsent(metrics, id, env, &sealed);
    for copy in &sealed.copies {
        relay_copy(rt, metrics, id, env, &sealed, copy, &mut failures).await;
    }
    Some(failures)
}

/// The recipients sealing did not make a copy for: held (by policy), failed (a permanent
/// failure before relay: returned for the DSN) or deferred (a temporary one).
fn record_unsent(
    metrics: &Metrics,
    id: &str,
    env: &mut Envelope,
    sealed: &pipeline::Sealed,
) -> Vec<(String, Reply)> {
    let mut failures: Vec<(String, Reply)> = Vec::new();
    for (rcpt, reason) in &sealed.held {
        if let Some(r) = env.recipient_mut(rcpt) {
            r.status = RcptStatus::Held;
            r.reply = Some(reason.clone());
        }
        tracing::warn!(queue_id = id, rcpt = %rcpt, reason = %reason, "held");
    }
    for (rcpt, failure) in &sealed.failed {
        if let Some(r) = env.recipient_mut(rcpt) {
            r.status = RcptStatus::Failed;
            r.record(failure);
        }
        tracing::warn!(queue_id = id, rcpt = %rcpt, failure = %failure, "failed before relay");
        failures.push((rcpt.clone(), failure.reply.clone()));
    }
    for (rcpt, failure) in &sealed.deferred {
        if let Some(r) = env.recipient_mut(rcpt) {
            r.record(failure);
        }
        tracing::warn!(queue_id = id, rcpt = %rcpt, failure = %failure, "deferred before relay");
        metrics.deferred(1);
    }
    failures
}

/// One sealed copy to `[upstream]`: relayed, audited, counted, and each of its recipients'
/// outcomes recorded in `env` (permanent failures appended to `failures`).
async fn relay_copy(
    rt: &Runtime,
    metrics: &Metrics,
    id: &str,
    env: &mut Envelope,
    sealed: &pipeline::Sealed,
    copy: &pipeline::Copy,
    failures: &mut Vec<(String, Reply)>,
) {
    // A signed or encrypted copy is 7-bit (the entity was canonicalised, RFC 8551 §3.1.2):
    // asking for BODY=8BITMIME would only make an upstream without 8BITMIME refuse it.
    let sealed_copy = copy.signer.is_some() || copy.algorithm.is_some();
    let params = MailParams {
        smtputf8: env.smtputf8,
        body_8bit: env.body_8bit && !sealed_copy,
    };
    let started = Instant::now();
    let outcomes = rt
        .relay
        .deliver(id, &env.sender, &copy.recipients, &copy.message, params)
        .await;
    metrics.upstream_latency(started.elapsed());
    if let Some(audit) = &rt.audit {
        audit.record(&crate::audit::Record {
            time: crate::audit::now_rfc3339(),
            queue_id: id,
            message_id: sealed.message_id.as_deref(),
            sender: &env.sender,
            submitter: env.submitter.as_deref(),
            recipients: &copy.recipients,
            rule: copy.rule.as_deref(),
            policy_version: &rt.config.policy.version,
            signer: copy.signer.as_deref(),
            encrypted_to: &copy.encrypted_to,
            algorithm: copy.algorithm,
            replies: outcomes
                .iter()
                .map(|o| match o {
                    Outcome::Delivered(r) => r.to_string(),
                    Outcome::Failed(f) => f.reply.to_string(),
                })
                .collect(),
        });
    }
    if outcomes.iter().any(|o| matches!(o, Outcome::Delivered(_))) {
        if copy.signer.is_some() {
            metrics.signed();
        }
        if let Some(alg) = copy.algorithm {
            metrics.encrypted(alg);
        }
    }
    for (rcpt, outcome) in copy.recipients.iter().zip(outcomes) {
        let Some(r) = env.recipient_mut(rcpt) else {
            continue;
        };
        match outcome {
            Outcome::Delivered(reply) => {
                tracing::info!(queue_id = id, rcpt = %rcpt, rule = copy.rule.as_deref().unwrap_or("-"), signer = copy.signer.as_deref().unwrap_or("-"), encrypted = copy.algorithm.unwrap_or("no"), reply = %reply, "relayed");
                metrics.relayed(1);
                r.status = RcptStatus::Delivered;
                r.reply = Some(reply.to_string());
                r.reason = None;
            }
            Outcome::Failed(f) if f.is_temporary() => {
                tracing::warn!(queue_id = id, rcpt = %rcpt, failure = %f, "deferred");
                metrics.deferred(1);
                r.record(&f);
            }
            Outcome::Failed(f) => {
                tracing::warn!(queue_id = id, rcpt = %rcpt, failure = %f, "failed permanently");
                r.status = RcptStatus::Failed;
                r.record(&f);
                failures.push((rcpt.clone(), f.reply));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units_scale_with_size_within_the_budget() {
        assert_eq!(memory_units(0), 1);
        assert_eq!(memory_units(10 * 1024), 1);
        assert_eq!(memory_units(10 << 20), 60);
        assert_eq!(memory_units(1 << 30), MEMORY_BUDGET_MIB);
    }
}
