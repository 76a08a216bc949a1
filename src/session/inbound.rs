//! The inbound listener's side of a session (issue 13, docs/inbound.md): mail the organisation's
//! internet-facing MTA hands in for local recipients.
//!
//! - At connect, a client outside `inbound.relay_networks` gets `554 5.7.1` instead of the
//!   banner and the connection closes (RFC 5321 §3.1); without `[inbound]` (removed by a reload
//!   while the listener stays bound) every client gets `421 4.3.2` and keeps its mail.
//! - No AUTH, no `[[submitter]]` identity rules: any envelope sender; a recipient outside
//!   `server.local_domains` gets `550 5.7.1` at RCPT (never a relay).
//! - Same limits (size, recipients, errors, idle) and the same durability: `250` only after the
//!   spool commit. The envelope says `direction = inbound`; the scheduler relays it to
//!   `inbound.upstream` through `pipeline::inbound::process`.
//! - When `pipeline::inbound::may_reject` is true for the config, the session runs `process`
//!   itself after the commit (holding the message lock, so the scheduler waits) and before
//!   answering: Reject removes the spooled message and answers the failure's reply (the sender's
//!   MTA tells its sender: no backscatter from us), Hold moves it to hold/ and answers `250`.
//!   Otherwise `250` at once and processing happens at delivery.

use super::*;
use crate::pipeline::inbound::{self as opening, Verdict};
use crate::spool::{Draft, Queue, RcptStatus};

/// What the session's judgement of a committed inbound message led to.
enum Judged {
    /// Left in incoming/ for the scheduler: `250`.
    Queued,
    /// Moved to hold/: `250`, nothing for the scheduler.
    Held,
    /// Removed from the spool: this reply instead of `250`.
    Refused(Reply),
}

impl Session {
    /// The reply that ends an inbound connection at once, if any (see the module header).
    pub(super) fn inbound_refusal(&self) -> Option<Reply> {
        if self.direction != Direction::Inbound {
            return None;
        }
        let Some(inbound) = &self.runtime.config.inbound else {
            tracing::warn!(client = %self.peer, "connection on the inbound listener, but [inbound] is no longer configured; answered 421");
            return Some(reply::INBOUND_UNAVAILABLE);
        };
        let ip = self.peer.ip().to_canonical();
        if inbound.relay_networks.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        tracing::warn!(client = %self.peer, "inbound connection refused: not in inbound.relay_networks");
        self.ctx.metrics.refused("inbound_client");
        Some(reply::INBOUND_CLIENT_REFUSED)
    }

    /// RCPT on the inbound listener: local recipients only, the same limits as outbound.
    pub(super) fn inbound_rcpt(&mut self, address: &str) -> Reply {
        if !self.runtime.config.submitters.is_local(address) {
            tracing::warn!(client = %self.peer, rcpt = address, "inbound recipient refused: not in server.local_domains");
            self.ctx.metrics.refused("inbound_not_local");
            return reply::INBOUND_NOT_LOCAL;
        }
        let max = self.runtime.config.server.max_recipients;
        let Some(tx) = &mut self.tx else {
            return reply::NEED_MAIL;
        };
        if tx
            .recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(address))
        {
            return reply::RECIPIENT_OK;
        }
        if tx.recipients.len() >= max {
            return reply::TOO_MANY_RECIPIENTS;
        }
        tx.recipients.push(address.to_string());
        reply::RECIPIENT_OK
    }

    /// End of DATA on the inbound listener: commit, and judge the message first when the config
    /// may reject (module header). Returns the reply to the final dot.
    pub(super) async fn inbound_commit(
        &mut self,
        draft: Draft,
        env: Envelope,
        tx: &Transaction,
        size: u64,
    ) -> Reply {
        let judge = self
            .runtime
            .config
            .inbound
            .as_ref()
            .is_some_and(opening::may_reject);
        let committed = if judge {
            draft
                .commit_locked(env)
                .await
                .map(|(e, lock)| (e.id.clone(), Some((e, lock))))
        } else {
            draft.commit(env).await.map(|id| (id, None))
        };
        let (id, locked) = match committed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "spool commit failed");
                return reply::spool_failure(&e);
            }
        };
        tracing::info!(queue_id = %id, direction = "inbound", sender = %tx.sender, recipients = tx.recipients.len(), size, client = %self.peer, tls = self.tls, "accepted");
        let judged = match locked {
            Some((env, lock)) => self.judge(env, lock).await,
            None => Judged::Queued,
        };
        match judged {
            Judged::Refused(r) => return r,
            Judged::Held => {}
            Judged::Queued => {
                let _ = self.ctx.queued.send(id.clone());
            }
        }
        self.ctx.metrics.accepted();
        self.ctx.metrics.inbound_accepted();
        reply::queued(&id)
    }

    /// Runs `process` on a message committed under `lock` (see the module header).
    async fn judge(&self, mut env: Envelope, lock: crate::spool::MessageLock) -> Judged {
        let id = env.id.clone();
        let data = match self
            .ctx
            .spool
            .read_checked(Queue::Incoming, &env, Some(&lock))
            .await
        {
            Ok(d) => d,
            Err(e) => {
                // Committed and durable: the scheduler reads (or quarantines) it in its turn.
                tracing::warn!(queue_id = %id, error = ?e, "cannot read the message just committed; it is judged at delivery");
                return Judged::Queued;
            }
        };
        let rt = self.runtime.clone();
        let (sender, recipients) = (
            env.sender.clone(),
            env.recipients
                .iter()
                .map(|r| r.address.clone())
                .collect::<Vec<_>>(),
        );
        let processed = tokio::task::spawn_blocking(move || {
            let inbound = rt.config.inbound.as_ref()?;
            Some(opening::process(
                inbound,
                &rt.stores,
                &rt.config.server.hostname,
                &sender,
                &recipients,
                &data,
                std::time::SystemTime::now(),
            ))
        })
        .await;
        let verdict = match processed {
            Ok(Some(p)) => p.verdict,
            Ok(None) => return Judged::Queued,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "inbound processing failed; the message is processed again at delivery");
                return Judged::Queued;
            }
        };
        match verdict {
            Verdict::Deliver(_) => {
                tracing::debug!(queue_id = %id, "inbound message judged before 250: deliver");
                Judged::Queued
            }
            Verdict::Reject(failure) => {
                tracing::info!(queue_id = %id, client = %self.peer, failure = %failure, "inbound message refused at end of DATA");
                self.ctx.metrics.refused("inbound_rejected");
                self.ctx.metrics.inbound_rejected();
                if let Err(e) = self.ctx.spool.remove(Queue::Incoming, &id).await {
                    // Left in incoming/: the scheduler gets Reject again and holds it (never
                    // delivered, never bounced).
                    tracing::error!(queue_id = %id, error = %e, "could not remove the refused message");
                }
                drop(lock);
                Judged::Refused(failure.reply)
            }
            Verdict::Hold(reason) => {
                tracing::warn!(queue_id = %id, reason = %reason, "inbound message held");
                for r in &mut env.recipients {
                    r.status = RcptStatus::Held;
                }
                env.hold_reason = Some(reason);
                self.ctx.metrics.held();
                self.ctx.metrics.inbound_held();
                if let Err(e) = self
                    .ctx
                    .spool
                    .save(&mut env, Queue::Hold, Queue::Incoming)
                    .await
                {
                    // Still in incoming/: the scheduler processes it and holds it then.
                    tracing::error!(queue_id = %id, error = %e, "could not move to hold; held at delivery instead");
                    return Judged::Queued;
                }
                drop(lock);
                Judged::Held
            }
        }
    }
}
