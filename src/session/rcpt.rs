//! RCPT TO (RFC 5321 §4.1.1.3): relay permission, recipient limits and the RCPT-time policy
//! check (a directory lookup when the rule requires encryption).

use super::*;

impl Session {
    pub(super) async fn rcpt(&mut self, address: &str) -> Reply {
        if let Some(r) = self.gate() {
            return r;
        }
        let cfg = &self.runtime.config.server;
        let Some(tx) = &self.tx else {
            return reply::NEED_MAIL;
        };
        if address.is_empty() || !address.contains('@') {
            return reply::BAD_ADDRESS;
        }
        if !address.is_ascii() && !tx.smtputf8 {
            return reply::SMTPUTF8_NEEDED;
        }
        if !plain_address(address) {
            tracing::warn!(client = %self.peer, rcpt = %address.escape_debug(), "recipient address refused: not a plain address");
            self.ctx.metrics.refused("address_form");
            return reply::ADDRESS_FORM;
        }
        if self.direction == Direction::Inbound {
            return self.inbound_rcpt(address);
        }
        // Never an open relay: only clients with a grant — relay networks, authenticated
        // users, [[submitter]] entries (RFC 5321 §3.6.2).
        if tx.grant.is_none() {
            tracing::warn!(client = %self.peer, rcpt = address, "relay denied");
            self.ctx.metrics.refused("relay_denied");
            return reply::RELAY_DENIED;
        }
        // The same recipient twice is delivered once (as Postfix does); still 250.
        if tx
            .recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(address))
        {
            return reply::RECIPIENT_OK;
        }
        if tx.recipients.len() >= cfg.max_recipients {
            return reply::TOO_MANY_RECIPIENTS;
        }
        // A recipient that must be encrypted: ask the directories now (bounded by their timeout,
        // answer cached), so a missing certificate is refused during SMTP.
        let (policy, stores) = (&self.runtime.config.policy, &self.runtime.stores);
        if crate::pipeline::rcpt_needs_lookup(policy, stores, &tx.sender, address) {
            let runtime = self.runtime.clone();
            runtime
                .stores
                .prefetch(&[address.to_string()], &self.ctx.metrics)
                .await;
        }
        let Some(tx) = &self.tx else {
            return reply::NEED_MAIL;
        };
        if let Some(refusal) = crate::pipeline::rcpt_check(
            &self.runtime.config.policy,
            &self.runtime.stores,
            &tx.sender,
            address,
        ) {
            tracing::info!(client = %self.peer, sender = %tx.sender, rcpt = address, reply = %refusal, "recipient refused by policy");
            self.ctx.metrics.refused("policy");
            return refusal;
        }
        if let Some(tx) = &mut self.tx {
            tx.recipients.push(address.to_string());
        }
        reply::RECIPIENT_OK
    }
}
