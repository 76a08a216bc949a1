//! The inbound direction of an attempt (`direction = inbound`, mail from the `[inbound]`
//! listener): `pipeline::inbound::process` opens the message on the blocking pool instead of
//! sealing (with [`pipeline::inbound::for_release`] when an operator released it from hold),
//! verified signers are learnt (`pipeline::inbound::learn`, logged as `certificate harvested`),
//! and the copies go to `inbound.upstream` (the runtime's second relay).
//!
//! Retries, expiry and DSNs for refusals by the internal server are the outbound ones
//! (`super::reschedule`); a hold or a late "reject" from the inbound rules puts the message in
//! hold/: never a bounce for S/MIME reasons.

use crate::metrics::Metrics;
use crate::pipeline;
use crate::pipeline::inbound::{InboundCopy, Processed, Verdict};
use crate::relay::{MailParams, Outcome, Relay};
use crate::reply::{self, Failure, Reply, Scope};
use crate::runtime::Runtime;
use crate::spool::{Envelope, RcptStatus};
use std::sync::Arc;
use std::time::Instant;

/// One attempt for an inbound message: `pipeline::inbound::process` (on the blocking pool)
/// instead of sealing, then each copy to the internal mail server (`inbound.upstream`).
/// Records each pending recipient's outcome in `env`; returns the permanent failures (a DSN
/// follows, as outbound: the internal server refused a recipient). Never a bounce for S/MIME
/// reasons: a message the inbound rules would refuse after it was accepted is held instead.
pub(super) async fn deliver(
    rt: &Arc<Runtime>,
    metrics: &Metrics,
    env: &mut Envelope,
    data: &Arc<Vec<u8>>,
    pending: &[String],
) -> Vec<(String, Reply)> {
    let id = env.id.clone();
    let mut failures = Vec::new();
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
    let copies = match open(rt, env, data, pending).await.map(|p| p.verdict) {
        Ok(Verdict::Deliver(copies)) => copies,
        // A key that cannot be reached now (a token gone): try again later.
        Ok(Verdict::Reject(f)) if f.is_temporary() => {
            tracing::warn!(queue_id = %id, failure = %f, "inbound message deferred");
            defer_all(env, &f);
            metrics.deferred(pending.len() as u64);
            return failures;
        }
        Ok(verdict) => {
            let reason = match verdict {
                Verdict::Hold(reason) => reason,
                Verdict::Reject(f) => {
                    format!(
                        "refused by the inbound rules after it was accepted (held, never bounced): {f}"
                    )
                }
                Verdict::Deliver(_) => unreachable!("matched above"),
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
        relay_copy(relay, metrics, &id, env, copy, &mut failures).await;
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

/// Records `failure` for every pending recipient (they are tried again later).
fn defer_all(env: &mut Envelope, failure: &Failure) {
    for r in env
        .recipients
        .iter_mut()
        .filter(|r| r.status == RcptStatus::Pending)
    {
        r.record(failure);
    }
}

/// Opens the message on the blocking pool (CPU work) with the configured inbound settings, or
/// the released ones, and learns its verified signers there, once per message (not again when
/// the session judged it before 250): the next outbound message to a signer may be encrypted
/// to it.
async fn open(
    rt: &Arc<Runtime>,
    env: &Envelope,
    data: &Arc<Vec<u8>>,
    pending: &[String],
) -> Result<Processed, tokio::task::JoinError> {
    let (rt, sender, data, pending) = (
        rt.clone(),
        env.sender.clone(),
        data.clone(),
        pending.to_vec(),
    );
    let released = env.released;
    let id_for_job = env.id.clone();
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
    .await
}

/// One opened copy to the internal mail server, each of its recipients' outcomes recorded in
/// `env` (permanent failures appended to `failures`).
async fn relay_copy(
    relay: &Relay,
    metrics: &Metrics,
    id: &str,
    env: &mut Envelope,
    copy: &InboundCopy,
    failures: &mut Vec<(String, Reply)>,
) {
    // A decrypted entity may be 8-bit even when what arrived (base64 CMS) was not.
    let params = MailParams {
        smtputf8: env.smtputf8,
        body_8bit: env.body_8bit || copy.message.iter().any(|b| *b >= 0x80),
    };
    let started = Instant::now();
    let outcomes = relay
        .deliver(id, &env.sender, &copy.recipients, &copy.message, params)
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
