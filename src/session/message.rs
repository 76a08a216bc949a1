//! DATA (RFC 5321 §4.1.1.4): the message streamed into a spool draft through the strict framer
//! ([`super::data`]), the end-of-DATA checks, the Received: header, and `250` only after the
//! durable commit.

use super::*;
use crate::spool::inflow::Admitted;

impl Session {
    /// DATA: 354, stream into a spool draft, commit, 250. Leftover pipelined bytes stay in `buf`.
    pub(super) async fn receive_data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut Vec<u8>,
    ) -> io::Result<Step> {
        let tx = self.tx.take().expect("DATA only with a transaction");
        // Deliveries behind: wait a little for them before taking more (spool::inflow).
        let delay = self.runtime.config.spool.in_flow_delay;
        match self.ctx.spool.in_flow().admit(delay).await {
            Admitted::AtOnce => {}
            Admitted::Paced => self.ctx.metrics.arrival_paced(false),
            Admitted::Unpaced => self.ctx.metrics.arrival_paced(true),
        }
        let mut draft = match self.ctx.spool.draft().await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e, "cannot create spool file");
                // Read nothing: the client must not send data after a non-354 reply.
                self.reply(reply::spool_failure(&e));
                return Ok(Step::Continue);
            }
        };
        self.reply(reply::START_DATA);
        self.send(stream).await?;
        self.out.clear();

        let max = self.runtime.config.server.max_message_size;
        let mut reader = DataReader::new();
        let mut body: Vec<u8> = Vec::with_capacity(DATA_FLUSH + READ_CHUNK);
        let mut too_big = false;
        // The first failed spool write (a full disk: 452, not 451): the rest of DATA is read and
        // dropped, and the reply says why.
        let mut write_error: Option<io::Error> = None;
        let mut total: u64 = 0;
        // The Received: field goes out with the first piece of the body: one write, not two.
        if let Some(d) = &draft {
            body.extend_from_slice(self.received_header(d.id.as_str(), &tx).as_bytes());
        }
        // The first bytes of the message, for the end-of-DATA checks on From: (who may send as
        // whom, and whether a required signature is possible).
        let mut head: Vec<u8> = Vec::new();
        loop {
            let before = body.len();
            let feed = reader.feed(buf, &mut body);
            let consumed = match feed {
                Feed::End { consumed } => consumed,
                _ => buf.len(),
            };
            total += (body.len() - before) as u64;
            if head.len() < HEAD_MAX {
                let take = (HEAD_MAX - head.len()).min(body.len() - before);
                head.extend_from_slice(&body[before..before + take]);
            }
            if total > max {
                too_big = true;
            }
            if too_big || write_error.is_some() {
                body.clear();
            } else if matches!(feed, Feed::End { .. }) {
                // The last bytes go with the commit: one trip to the blocking pool, not two.
                if let Some(d) = &mut draft {
                    d.write_last(std::mem::take(&mut body));
                }
            } else if body.len() >= DATA_FLUSH {
                if let Some(d) = &mut draft
                    && let Err(e) = d.write(&body).await
                {
                    tracing::error!(error = %e, "spool write failed");
                    write_error = Some(e);
                }
                body.clear();
            }
            match feed {
                Feed::BareNewline => {
                    tracing::warn!(client = %self.peer, "bare CR or LF in DATA; closing");
                    self.ctx.metrics.refused("bare_newline");
                    self.reply(reply::BARE_NEWLINE);
                    return Ok(Step::Close);
                }
                Feed::End { .. } => {
                    buf.drain(..consumed);
                    break;
                }
                Feed::More => {
                    buf.clear();
                    match read_more(stream, buf, self.runtime.config.server.idle_timeout).await? {
                        Some(0) => return Ok(Step::Close),
                        Some(_) => {}
                        None => {
                            self.reply(reply::IDLE_TIMEOUT);
                            return Ok(Step::Close);
                        }
                    }
                }
            }
        }
        if too_big {
            self.ctx.metrics.refused("size");
            self.reply(reply::MESSAGE_TOO_BIG);
            return Ok(Step::Continue);
        }
        let draft = draft.expect("created above");
        if let Some(e) = write_error {
            self.reply(reply::spool_failure(&e));
            return Ok(Step::Continue);
        }
        if let Some(refusal) = self.submitter_check(&tx, &head) {
            self.reply(refusal);
            return Ok(Step::Continue);
        }
        // The outbound signing policy says nothing about mail arriving for local recipients.
        if self.direction == Direction::Outbound
            && self.runtime.config.policy.any_sign_required()
            && let Some(refusal) = crate::pipeline::data_check(
                &self.runtime.config.policy,
                &self.runtime.stores,
                &tx.sender,
                &tx.recipients,
                &head,
            )
        {
            tracing::info!(client = %self.peer, sender = %tx.sender, reply = %refusal, "message refused by policy");
            self.ctx.metrics.refused("policy");
            self.reply(refusal);
            return Ok(Step::Continue);
        }
        let mut env = Envelope::new(
            tx.sender.clone(),
            tx.recipients.clone(),
            self.peer.ip().to_string(),
            self.helo.clone().unwrap_or_default(),
        );
        env.smtputf8 = tx.smtputf8;
        env.body_8bit = tx.body_8bit;
        env.direction = self.direction;
        if let Some(g) = &tx.grant {
            env.submitter = Some(g.name.clone());
            env.remove_headers = g.require_header.iter().map(|h| h.name.clone()).collect();
        }
        if self.direction == Direction::Inbound {
            let r = self.inbound_commit(draft, env, &tx, total).await;
            self.reply(r);
            return Ok(Step::Continue);
        }
        match draft.commit(env).await {
            Ok(id) => {
                tracing::info!(queue_id = %id, sender = %tx.sender, recipients = tx.recipients.len(), size = total, client = %self.peer, tls = self.tls, "accepted");
                self.ctx.metrics.accepted();
                let _ = self.ctx.queued.send(id.clone());
                self.reply(reply::queued(&id));
            }
            Err(e) => {
                tracing::error!(error = %e, "spool commit failed");
                self.reply(reply::spool_failure(&e));
            }
        }
        Ok(Step::Continue)
    }

    /// End of DATA: every `From:` address must be one this client may use, and a submitter
    /// that must prove its tenant carries the required header. Refused here, never signed.
    pub(super) fn submitter_check(&self, tx: &Transaction, head: &[u8]) -> Option<Reply> {
        let grant = tx.grant.as_ref()?;
        let authors = crate::pipeline::headers::authors(head);
        let subs = &self.runtime.config.submitters;
        if let Some(bad) = authors.iter().find(|a| !subs.allows(grant, a)) {
            tracing::warn!(client = %self.peer, submitter = %grant.name, sender = %tx.sender, from = %bad.escape_debug(), "From: address not allowed for this submitter");
            self.ctx.metrics.refused("from_not_allowed");
            return Some(reply::FROM_NOT_ALLOWED);
        }
        if let Some(req) = &grant.require_header
            && !crate::pipeline::headers::has_field(head, &req.name, &req.value)
        {
            tracing::warn!(client = %self.peer, submitter = %grant.name, header = %req.name, "required submitter header missing or wrong");
            self.ctx.metrics.refused("submitter_header");
            return Some(reply::SUBMITTER_HEADER_MISSING);
        }
        None
    }

    /// RFC 5321 §4.4 trace header. No DNS lookups: the client is named by HELO and IP.
    pub(super) fn received_header(&self, id: &str, tx: &Transaction) -> String {
        // RFC 3848 / RFC 6531 "with" keywords.
        let with = format!(
            "{}SMTP{}{}",
            if tx.smtputf8 { "UTF8" } else { "E" },
            if self.tls { "S" } else { "" },
            if self.authenticated.is_some() {
                "A"
            } else {
                ""
            }
        );
        let helo: String = self
            .helo
            .as_deref()
            .unwrap_or("unknown")
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        let for_clause = match tx.recipients.as_slice() {
            [one] => format!("\r\n\tfor <{one}>"),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ([{}])\r\n\tby {} (cachet) with {with} id {id}{for_clause};\r\n\t{}\r\n",
            self.peer.ip(),
            self.runtime.config.server.hostname,
            crate::date::rfc5322(std::time::SystemTime::now())
        )
    }
}
