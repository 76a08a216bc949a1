//! The scheduler (Postfix's qmgr): decides what is delivered next. It owns an in-memory timetable
//! of queue IDs rebuilt from the spool at start ("recovery is scanning the directories"), takes
//! new IDs from sessions, picks up messages an operator released (a periodic scan of incoming/),
//! and runs up to `spool.workers` deliveries at once.
//!
//! One delivery attempt: take the message lock (an operator's `cachet queue` action waits for
//! it), load envelope + data, seal (policy + S/MIME, on the blocking pool), relay each copy,
//! record each recipient's outcome in the envelope, then remove the message, defer it with the
//! retry schedule, hold it, or bounce what failed (DSN).
//!
//! Inbound messages (`direction = inbound`, from the `[inbound]` listener) take the same path
//! with two differences: `pipeline::inbound::process` opens them instead of sealing, and the
//! copies go to `inbound.upstream` (the runtime's second relay). Retries, expiry and DSNs for
//! refusals by the internal server are the same; a hold or a late "reject" from the inbound
//! rules puts the message in hold/ (never a bounce for S/MIME reasons).
//!
//! When the envelope cannot be rewritten (disk full), the outcomes live on in memory
//! ([`Unsaved`]) and the next attempt starts from them, never from the stale file: recipients
//! already served are not served again. An ID is never scheduled while it is in flight, and the
//! periodic pickup of incoming/ leaves alone what the timetable already has from incoming/.
//!
//! A message that is damaged (envelope unparsable, data file missing or not what was committed)
//! goes to corrupt/ with one log line ([`Spool::quarantine`]). A file that cannot be opened or
//! read for any other reason (too many open files above all) is a temporary failure: the message
//! stays where it is and is tried again after the first retry interval, never forgotten.

use crate::dsn;
use crate::metrics::Metrics;
use crate::pipeline;
use crate::relay::{MailParams, Outcome};
use crate::reply::{self, Failure, Reply, Scope};
use crate::runtime::Runtime;
use crate::spool::{DataError, Direction, Envelope, Queue, RcptStatus, Spool, TryLock, now_secs};
use arc_swap::ArcSwap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};

/// Memory for messages being sealed and relayed, in MiB. A delivery holds its message several
/// times over (data, canonical, signed, base64, encrypted copies), so it reserves
/// `COPIES_HELD x size` of this budget: small messages run `spool.workers` at once, large ones
/// queue up instead of multiplying the process's memory.
const MEMORY_BUDGET_MIB: u32 = 160;
const COPIES_HELD: u64 = 6;

/// Budget units (MiB) a message of `size` bytes reserves; at least 1, at most the whole budget.
fn memory_units(size: u64) -> u32 {
    let mib = (size.saturating_mul(COPIES_HELD)).div_ceil(1 << 20);
    mib.clamp(1, MEMORY_BUDGET_MIB as u64) as u32
}

/// How often incoming/ is scanned for messages released or retried by the queue CLI.
const PICKUP_INTERVAL: Duration = Duration::from_secs(1);

/// When a message is locked by an operator action, try again this much later (the action is
/// a rename or two).
const LOCKED_RETRY_MS: u64 = 1000;

/// Delivery state that exists only in memory: envelopes whose rewrite failed (disk full, I/O
/// error), by queue ID. The file on disk is older than what happened; the next attempt merges
/// these outcomes into it. Kept until a rewrite succeeds or the message is gone. Lost on
/// restart: then recovery re-sends from the file (duplicates, never losses).
#[derive(Default)]
struct Unsaved(Mutex<HashMap<String, Envelope>>);

impl Unsaved {
    fn keep(&self, env: &Envelope) {
        self.0
            .lock()
            .expect("not poisoned")
            .insert(env.id.clone(), env.clone());
    }

    fn forget(&self, id: &str) {
        self.0.lock().expect("not poisoned").remove(id);
    }

    /// Applies what only memory knows to `env` as read from disk: recipients delivered or failed
    /// stay so (an operator's release or retry never undoes those), the last replies, the count
    /// of attempts.
    fn merge_into(&self, env: &mut Envelope) {
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

pub struct Scheduler {
    pub spool: Spool,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub metrics: Arc<Metrics>,
}

struct Due {
    at_ms: u64,
    id: String,
    queue: Queue,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Scheduler {
    /// Runs until `shutdown` flips, then waits for deliveries in flight (bounded by `drain`).
    pub async fn run(
        self,
        mut queued: mpsc::UnboundedReceiver<String>,
        mut shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) {
        let workers = self.runtime.load().config.spool.workers;
        let slots = Arc::new(Semaphore::new(workers));
        let memory = Arc::new(Semaphore::new(MEMORY_BUDGET_MIB as usize));
        let mut heap: BinaryHeap<Reverse<(u64, String, Queue)>> = BinaryHeap::new();
        // Latest due time (and the queue it is due from) per scheduled ID; heap entries that
        // disagree are stale and skipped.
        let mut scheduled: HashMap<String, (u64, Queue)> = HashMap::new();
        let unsaved = Arc::new(Unsaved::default());
        let mut in_flight: HashSet<String> = HashSet::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Option<Due>)>();

        match self.spool.scan(&[Queue::Incoming, Queue::Deferred]) {
            Ok(scanned) => {
                if !scanned.found.is_empty() {
                    tracing::info!(
                        messages = scanned.found.len(),
                        "recovered queued messages from the spool"
                    );
                }
                for (q, env) in scanned.found {
                    scheduled.insert(env.id.clone(), (env.next_attempt.saturating_mul(1000), q));
                    heap.push(Reverse((env.next_attempt.saturating_mul(1000), env.id, q)));
                }
                // Not readable just now: the attempt reads them again (and judges them).
                let later = now_ms() + self.runtime.load().config.spool.retry[0].as_millis() as u64;
                for (q, id) in scanned.unread {
                    scheduled.insert(id.clone(), (later, q));
                    heap.push(Reverse((later, id, q)));
                }
            }
            Err(e) => tracing::error!(error = %e, "spool scan failed"),
        }
        let mut last_pickup = Instant::now();
        loop {
            // Start everything that is due, as long as a worker slot is free.
            let now = now_ms();
            while let Some(Reverse((at, _, _))) = heap.peek() {
                if *at > now {
                    break;
                }
                let Reverse((at, id, queue)) = heap.pop().expect("peeked");
                if in_flight.contains(&id) || scheduled.get(&id).map(|s| s.0) != Some(at) {
                    continue; // stale entry: rescheduled meanwhile, or being delivered
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    heap.push(Reverse((at, id, queue)));
                    break;
                };
                scheduled.remove(&id);
                in_flight.insert(id.clone());
                let spool = self.spool.clone();
                let rt = self.runtime.load_full();
                let metrics = self.metrics.clone();
                let done = done_tx.clone();
                let memory = memory.clone();
                let unsaved = unsaved.clone();
                tokio::spawn(async move {
                    let next = attempt(&spool, &rt, &metrics, &memory, &unsaved, &id, queue).await;
                    drop(permit);
                    let _ = done.send((id, next));
                });
            }
            let wait = heap
                .peek()
                .map(|Reverse((at, _, _))| Duration::from_millis(at.saturating_sub(now)))
                .unwrap_or(PICKUP_INTERVAL)
                .min(PICKUP_INTERVAL);
            tokio::select! {
                Some(id) = queued.recv() => {
                    scheduled.insert(id.clone(), (0, Queue::Incoming));
                    heap.push(Reverse((0, id, Queue::Incoming)));
                }
                Some((id, next)) = done_rx.recv() => {
                    in_flight.remove(&id);
                    if let Some(d) = next {
                        scheduled.insert(d.id.clone(), (d.at_ms, d.queue));
                        heap.push(Reverse((d.at_ms, d.id, d.queue)));
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
            if last_pickup.elapsed() >= PICKUP_INTERVAL {
                last_pickup = Instant::now();
                // A directory listing can be large: never on the async threads.
                let spool = self.spool.clone();
                let listed = tokio::task::spawn_blocking(move || spool.ids(Queue::Incoming)).await;
                if let Ok(Ok(ids)) = listed {
                    // Released or retried by an operator (or injected by another process): new
                    // to the timetable, or known from another queue. What the timetable has from
                    // incoming/ keeps its time (a failed rewrite leaves an envelope there that
                    // must wait for its retry), and what is in flight is never scheduled twice.
                    for id in ids {
                        let known = matches!(scheduled.get(&id), Some((_, Queue::Incoming)));
                        if !in_flight.contains(&id) && !known {
                            scheduled.insert(id.clone(), (0, Queue::Incoming));
                            heap.push(Reverse((0, id, Queue::Incoming)));
                        }
                    }
                }
            }
        }
        // Let deliveries in flight finish so their envelopes are up to date (bounded).
        let _ = tokio::time::timeout(drain, slots.acquire_many(workers as u32)).await;
    }
}

/// Try message `id` in `queue` again after the first retry interval (a temporary local failure).
fn later(rt: &Runtime, id: &str, queue: Queue) -> Due {
    Due {
        at_ms: now_ms() + rt.config.spool.retry[0].as_millis() as u64,
        id: id.into(),
        queue,
    }
}

/// One delivery attempt of message `id` found in `queue`. Returns when to try again, if ever.
async fn attempt(
    spool: &Spool,
    rt: &Arc<Runtime>,
    metrics: &Metrics,
    memory: &Semaphore,
    unsaved: &Unsaved,
    id: &str,
    queue: Queue,
) -> Option<Due> {
    tracing::debug!(queue_id = id, "delivery attempt");
    // Held until the envelope's new state is written: `cachet queue` waits for it.
    let _lock = match spool.try_lock(id) {
        Ok(TryLock::Locked(lock)) => Some(lock),
        Ok(TryLock::Busy) => {
            tracing::debug!(
                queue_id = id,
                "locked by an operator action; trying again shortly"
            );
            return Some(Due {
                at_ms: now_ms() + LOCKED_RETRY_MS,
                id: id.into(),
                queue,
            });
        }
        // No data file: the envelope is gone too, or the load below sends it to corrupt/.
        Ok(TryLock::Gone) => None,
        Err(e) => {
            tracing::error!(queue_id = id, error = %e, "cannot lock the message; will retry");
            return Some(later(rt, id, queue));
        }
    };
    let mut env = match spool.load(queue, id) {
        Ok(Some(env)) => env,
        Ok(None) => {
            // Moved by an operator (hold/delete) or already done; another queue may have it.
            return match spool.find(id) {
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
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            spool.quarantine(queue, id, &format!("unreadable envelope: {e}"));
            return None;
        }
        Err(e) => {
            tracing::warn!(queue_id = id, error = %e, "cannot read the envelope now; will retry");
            return Some(later(rt, id, queue));
        }
    };
    unsaved.merge_into(&mut env);
    // Held until this attempt ends: bounds the memory of all deliveries together.
    let _memory = memory
        .acquire_many(memory_units(env.size))
        .await
        .expect("never closed");
    // Shared, not copied, between the sealing job and the DSN builder.
    let data = match spool.read_checked(&env).await {
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
    if env.direction == Direction::Inbound {
        let failures = deliver_inbound(rt, metrics, &mut env, &data, &pending).await;
        env.attempts = env.attempts.saturating_add(1);
        return reschedule(spool, rt, metrics, unsaved, env, queue, &data, failures).await;
    }
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
        pipeline::group::lookups_needed(policy, &rt.stores, msg, &h, &pending)
    };
    rt.stores.prefetch(&wanted, metrics).await;
    // Crypto is CPU work: run it on the blocking pool, never on the async threads.
    let job = {
        let (rt, env, data, pending) = (rt.clone(), env.clone(), data.clone(), pending.clone());
        tokio::task::spawn_blocking(move || {
            pipeline::seal(&rt.config.policy, &rt.stores, &env, &data[..], &h, &pending)
        })
    };
    let sealed = match job.await {
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
            return reschedule(spool, rt, metrics, unsaved, env, queue, &data, Vec::new()).await;
        }
    };
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
    for copy in &sealed.copies {
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
    env.attempts = env.attempts.saturating_add(1);
    reschedule(spool, rt, metrics, unsaved, env, queue, &data, failures).await
}

/// One attempt for an inbound message: `pipeline::inbound::process` (on the blocking pool)
/// instead of sealing, then each copy to the internal mail server (`inbound.upstream`).
/// Records each pending recipient's outcome in `env`; returns the permanent failures (a DSN
/// follows, as outbound: the internal server refused a recipient). Never a bounce for S/MIME
/// reasons: a message the inbound rules would refuse after it was accepted is held instead.
async fn deliver_inbound(
    rt: &Arc<Runtime>,
    metrics: &Metrics,
    env: &mut Envelope,
    data: &Arc<Vec<u8>>,
    pending: &[String],
) -> Vec<(String, Reply)> {
    let id = env.id.clone();
    let mut failures = Vec::new();
    let defer_all = |env: &mut Envelope, failure: &Failure| {
        for r in env
            .recipients
            .iter_mut()
            .filter(|r| r.status == RcptStatus::Pending)
        {
            r.record(failure);
        }
    };
    let (Some(_), Some(relay)) = (&rt.config.inbound, &rt.inbound_relay) else {
        // A reload removed [inbound] while inbound mail was queued: keep it until it is back.
        let failure = Failure::new(
            reply::SEALING_ABORTED,
            Scope::Message,
            "[inbound] is not configured: inbound mail waits in the queue",
        );
        tracing::warn!(queue_id = %id, failure = %failure, "deferred");
        defer_all(env, &failure);
        metrics.deferred(pending.len() as u64);
        return failures;
    };
    let job = {
        let (rt, sender, data, pending) = (
            rt.clone(),
            env.sender.clone(),
            data.clone(),
            pending.to_vec(),
        );
        let released = env.released;
        let id_for_job = id.clone();
        tokio::task::spawn_blocking(move || {
            let configured = rt.config.inbound.as_ref().expect("checked above");
            let relaxed;
            let inbound = if released {
                relaxed = pipeline::inbound::for_release(configured);
                &relaxed
            } else {
                configured
            };
            let now = std::time::SystemTime::now();
            let processed = pipeline::inbound::process(
                inbound,
                &rt.stores,
                &rt.config.server.hostname,
                &sender,
                &pending,
                &data[..],
                now,
            );
            // Learnt at delivery, once per message (not again when the session judged it
            // before 250): the next outbound message to the signer may be encrypted to it.
            if inbound.harvest {
                for (address, fingerprint, outcome) in
                    pipeline::inbound::learn(&rt.stores, &processed.signers, now)
                {
                    match outcome {
                        Ok(done) => {
                            tracing::info!(queue_id = %id_for_job, signer = %address, %fingerprint, outcome = ?done, "certificate harvested")
                        }
                        Err(e) => {
                            tracing::warn!(queue_id = %id_for_job, signer = %address, %fingerprint, error = %e, "certificate not harvested")
                        }
                    }
                }
            }
            processed
        })
    };
    let copies = match job.await.map(|p| p.verdict) {
        Ok(pipeline::inbound::Verdict::Deliver(copies)) => copies,
        // A key that cannot be reached now (a token gone): try again later.
        Ok(pipeline::inbound::Verdict::Reject(f)) if f.is_temporary() => {
            tracing::warn!(queue_id = %id, failure = %f, "inbound message deferred");
            defer_all(env, &f);
            metrics.deferred(pending.len() as u64);
            return failures;
        }
        Ok(verdict) => {
            let reason = match verdict {
                pipeline::inbound::Verdict::Hold(reason) => reason,
                pipeline::inbound::Verdict::Reject(f) => {
                    format!(
                        "refused by the inbound rules after it was accepted (held, never bounced): {f}"
                    )
                }
                pipeline::inbound::Verdict::Deliver(_) => unreachable!("matched above"),
            };
            tracing::warn!(queue_id = %id, reason = %reason, "inbound message held");
            for r in env
                .recipients
                .iter_mut()
                .filter(|r| r.status == RcptStatus::Pending)
            {
                r.status = RcptStatus::Held;
                r.reply = Some(reason.clone());
            }
            metrics.inbound_held();
            return failures;
        }
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "inbound processing failed");
            let failure = Failure::new(
                reply::SEALING_ABORTED,
                Scope::Message,
                format!("inbound processing job failed: {e}"),
            );
            defer_all(env, &failure);
            metrics.deferred(pending.len() as u64);
            return failures;
        }
    };
    for copy in &copies {
        // A decrypted entity may be 8-bit even when what arrived (base64 CMS) was not.
        let params = MailParams {
            smtputf8: env.smtputf8,
            body_8bit: env.body_8bit || copy.message.iter().any(|b| *b >= 0x80),
        };
        let started = Instant::now();
        let outcomes = relay
            .deliver(&id, &env.sender, &copy.recipients, &copy.message, params)
            .await;
        metrics.upstream_latency(started.elapsed());
        for (rcpt, outcome) in copy.recipients.iter().zip(outcomes) {
            let Some(r) = env.recipient_mut(rcpt) else {
                continue;
            };
            match outcome {
                Outcome::Delivered(reply) => {
                    tracing::info!(queue_id = %id, direction = "inbound", rcpt = %rcpt, reply = %reply, "relayed");
                    metrics.relayed(1);
                    metrics.inbound_relayed(1);
                    r.status = RcptStatus::Delivered;
                    r.reply = Some(reply.to_string());
                    r.reason = None;
                }
                Outcome::Failed(f) if f.is_temporary() => {
                    tracing::warn!(queue_id = %id, direction = "inbound", rcpt = %rcpt, failure = %f, "deferred");
                    metrics.deferred(1);
                    r.record(&f);
                }
                Outcome::Failed(f) => {
                    tracing::warn!(queue_id = %id, direction = "inbound", rcpt = %rcpt, failure = %f, "failed permanently");
                    r.status = RcptStatus::Failed;
                    r.record(&f);
                    failures.push((rcpt.clone(), f.reply));
                }
            }
        }
    }
    // A recipient no copy was for would wait for ever: say so, try again later.
    let forgotten = Failure::new(
        reply::SEALING_ABORTED,
        Scope::Recipient,
        "inbound processing returned no copy for this recipient",
    );
    for rcpt in pending {
        if !copies.iter().any(|c| c.recipients.contains(rcpt))
            && let Some(r) = env.recipient_mut(rcpt)
        {
            tracing::error!(queue_id = %id, rcpt = %rcpt, "inbound processing returned no copy for this recipient; deferred");
            r.record(&forgotten);
            metrics.deferred(1);
        }
    }
    failures
}

/// Writes the envelope's new state: done (removed), deferred, held or expired; sends DSNs.
/// A state that cannot be written is kept in `unsaved` for the next attempt.
#[allow(clippy::too_many_arguments)]
async fn reschedule(
    spool: &Spool,
    rt: &Runtime,
    metrics: &Metrics,
    unsaved: &Unsaved,
    mut env: Envelope,
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
        match spool.save(&mut env, Queue::Deferred, Some(queue)).await {
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
        match spool.save(&mut env, Queue::Hold, Some(queue)).await {
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
        match spool.remove(queue, &id).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_inbound_message_is_tagged_or_delivered_never_held_again() {
        let rt = crate::config::Config::parse(
            std::path::Path::new("/nonexistent/c.toml"),
            "[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"file://o\"\n\
             [inbound]\nrelay_networks = [\"10.0.0.5\"]\nupstream = \"file://i\"\n\
             decrypt = false\nverify = false\nharvest = false\non_undecryptable = \"hold\"\n\
             [[inbound.rule]]\nsenders = [\"*@a.test\"]\nrequire = \"signed\"\naction = \"reject\"\n\
             [[inbound.rule]]\nsenders = [\"*@b.test\"]\nrequire = \"encrypted\"\naction = \"hold\"\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let inbound = rt.inbound.unwrap();
        assert!(pipeline::inbound::may_reject(&inbound));
        let relaxed = pipeline::inbound::for_release(&inbound);
        assert_eq!(
            relaxed.on_undecryptable,
            crate::config::OnUndecryptable::Deliver
        );
        assert!(
            relaxed
                .rules
                .iter()
                .all(|r| r.action == crate::config::InboundAction::Tag)
        );
        assert_eq!(relaxed.rules[1].require, inbound.rules[1].require);
        assert!(!pipeline::inbound::may_reject(&relaxed));
    }

    #[test]
    fn memory_units_scale_with_size_within_the_budget() {
        assert_eq!(memory_units(0), 1);
        assert_eq!(memory_units(10 * 1024), 1);
        assert_eq!(memory_units(10 << 20), 60);
        assert_eq!(memory_units(1 << 30), MEMORY_BUDGET_MIB);
    }
}
