//! The one policy decision for a (sender, From:, recipient) triple: the rule's treatment, raised
//! by per-message triggers, met (or not) by the loaded keys and certificates. A pure function of
//! `(&Policy, &Stores, Ask)`: the session's RCPT and end-of-DATA checks, sealing at delivery and
//! `cachet explain` all call it, and its tests need no disk and no socket.

use crate::policy::{Mode, OnMissing, Policy, Revocation, Treatment};
use crate::reply::{self, Reply};
use crate::runtime::Stores;
use crate::store::revocation::Status;
use crate::store::{RecipientCert, SigningIdentity};
use std::sync::Arc;
use std::time::SystemTime;

/// What happens to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Send,
    /// Refused at RCPT (only possible during SMTP; at delivery it becomes a bounce).
    Refuse(Reply),
    Hold(String),
    Bounce(Reply),
    /// Try again later (hard revocation checking while a certificate's first status answer is
    /// still being fetched). Only at delivery: during SMTP the recipient is accepted and waits
    /// in the queue.
    Defer(String),
}

/// The question: who sends to whom, and what is known so far.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Envelope sender (`MAIL FROM`).
    pub sender: &'a str,
    /// The single From: address; `None` at RCPT time (the header is not known yet): signing is
    /// then not decided.
    pub from: Option<&'a str>,
    pub recipient: &'a str,
    /// A per-message trigger (subject tag, header) raised encryption to required.
    pub triggered: bool,
    /// Asked during SMTP: `on_missing_key = "reject"` refuses now instead of bouncing later.
    pub during_smtp: bool,
    /// Validity of keys and certificates is judged at this instant.
    pub now: SystemTime,
}

impl<'a> Ask<'a> {
    /// The RCPT-time question: no From: yet, no trigger, during SMTP, now.
    pub fn at_rcpt(sender: &'a str, recipient: &'a str) -> Ask<'a> {
        Ask {
            sender,
            from: None,
            recipient,
            triggered: false,
            during_smtp: true,
            now: SystemTime::now(),
        }
    }
}

/// The policy decision for one recipient, with everything `explain` shows.
#[derive(Debug, Clone)]
pub struct Decision {
    pub recipient: String,
    pub rule: Option<String>,
    /// After per-message triggers (which only ever raise protection).
    pub treatment: Treatment,
    pub signer: Option<Arc<SigningIdentity>>,
    /// The certificate the copy is encrypted to; `None` = not encrypted.
    pub cert: Option<Arc<RecipientCert>>,
    /// Certificates for this recipient that were refused, with why.
    pub rejected_certs: Vec<(String, String)>,
    pub fate: Fate,
}

/// Why a required protection is impossible, in words the sender understands.
fn no_certificate(address: &str) -> String {
    format!("no valid S/MIME certificate for {address}")
}

fn no_signing_key(from: Option<&str>) -> String {
    format!(
        "no valid S/MIME signing key for {}",
        from.unwrap_or("the From: address")
    )
}

fn missing(on: OnMissing, reason: String, during_smtp: bool) -> Fate {
    match on {
        OnMissing::Reject if during_smtp => Fate::Refuse(reply::policy_refused(reason)),
        // Reject was enforced during SMTP; if the key or certificate vanished since (a reload), bounce.
        OnMissing::Reject | OnMissing::Bounce => Fate::Bounce(Reply::owned(550, "5.7.1", reason)),
        OnMissing::Hold => Fate::Hold(reason),
    }
}

/// The one decision for (envelope sender, From: address, recipient).
///
/// Only the organisation signs as the organisation: the key store holds keys for
/// `server.local_domains` only ([`Stores::load`] refuses others), so a From: outside them finds
/// no signer.
pub fn decide(policy: &Policy, stores: &Stores, ask: Ask<'_>) -> Decision {
    let (rule, mut t) = policy.treatment(ask.sender, ask.recipient);
    if ask.triggered {
        t.encrypt = t.encrypt.max(Mode::Required);
    }
    // Files, then the directories' cached answers (prefetched by the caller): never I/O here.
    let (lookup, cert_pending) = recipient_certificate(stores, &t, ask.recipient, ask.now);
    let (signer, signer_pending) = match ask.from {
        Some(f) => signing_identity(stores, &t, f, ask.now),
        None => (None, None),
    };
    // A certificate passed over only because its first revocation answer is still to come
    // (hard mode) makes the recipient wait at delivery; during SMTP it is accepted.
    let wait = |pending: Option<String>, otherwise: Fate| match pending {
        Some(_) if ask.during_smtp => Fate::Send,
        Some(reason) => Fate::Defer(reason),
        None => otherwise,
    };
    let no_cert = t.encrypt != Mode::Never && lookup.cert.is_none();
    let no_signer = ask.from.is_some() && t.sign != Mode::Never && signer.is_none();
    let fate = if t.encrypt == Mode::Required && lookup.cert.is_none() {
        let otherwise = missing(
            t.on_missing_key,
            no_certificate(ask.recipient),
            ask.during_smtp,
        );
        wait(cert_pending, otherwise)
    } else if ask.from.is_some() && t.sign == Mode::Required && signer.is_none() {
        let otherwise = missing(t.on_missing_key, no_signing_key(ask.from), ask.during_smtp);
        wait(signer_pending, otherwise)
    } else {
        // Opportunistic protection in hard mode: wait for the answer rather than send a copy
        // with less protection than the answer may allow.
        let pending = cert_pending
            .filter(|_| no_cert)
            .or(signer_pending.filter(|_| no_signer));
        wait(pending, Fate::Send)
    };
    Decision {
        recipient: ask.recipient.to_string(),
        rule: rule.map(str::to_string),
        treatment: t,
        signer: if t.sign == Mode::Never { None } else { signer },
        cert: if t.encrypt == Mode::Never {
            None
        } else {
            lookup.cert
        },
        rejected_certs: lookup.rejected,
        fate,
    }
}

/// The recipient's certificate (files, then directories), revocation checked per
/// `t.revocation`; the second value is set when a certificate was passed over only because its
/// first answer is still to come.
fn recipient_certificate(
    stores: &Stores,
    t: &Treatment,
    recipient: &str,
    now: SystemTime,
) -> (crate::store::CertLookup, Option<String>) {
    if t.encrypt == Mode::Never || t.revocation == Revocation::Off {
        return (stores.lookup(recipient, now), None);
    }
    let pending = std::cell::Cell::new(None::<String>);
    let lookup = stores.lookup_with(recipient, now, &|der, chain| {
        let status = stores.revocation.status(der, chain, &stores.trust, now);
        revocation_verdict(
            stores,
            t.revocation,
            &status,
            "recipient certificate",
            recipient,
        )
        .map_err(|(reason, p)| {
            if p {
                pending.set(Some(reason.clone()));
            }
            reason
        })
    });
    (lookup, pending.take())
}

/// The signing identity for `from`, unless its certificate is revoked (an alert) or, under
/// `hard`, of unknown status; the second value as in [`recipient_certificate`].
fn signing_identity(
    stores: &Stores,
    t: &Treatment,
    from: &str,
    now: SystemTime,
) -> (Option<Arc<SigningIdentity>>, Option<String>) {
    let Some(id) = stores.signer_at(from, now) else {
        return (None, None);
    };
    if t.sign == Mode::Never || t.revocation == Revocation::Off {
        return (Some(id), None);
    }
    let status = stores.signer_status(&id);
    if let Status::Revoked(source) = &status {
        // An alert: the organisation's own certificate must be replaced.
        tracing::error!(address = %id.email, fingerprint = %id.fingerprint, source = source.name(), "ALERT: our signing certificate is revoked; not signing with it");
    }
    match revocation_verdict(
        stores,
        t.revocation,
        &status,
        "signing certificate",
        &id.email,
    ) {
        Ok(()) => (Some(id), None),
        Err((reason, pending)) => (None, pending.then_some(reason)),
    }
}

/// What the revocation mode makes of a certificate's status: `Ok` = use it; `Err((reason,
/// pending))` = treat it as absent. Revoked is never used; unknown is used under `soft` (logged
/// and counted) and refused under `hard`. Every check is counted by result and source.
pub(super) fn revocation_verdict(
    stores: &Stores,
    mode: Revocation,
    status: &Status,
    what: &str,
    address: &str,
) -> Result<(), (String, bool)> {
    stores.revocation.count(status);
    match status {
        Status::Good(_) => Ok(()),
        Status::Revoked(source) => {
            tracing::warn!(
                address,
                source = source.name(),
                "{what} is revoked; not used"
            );
            Err((format!("revoked ({})", source.name()), false))
        }
        Status::Unknown { reason, pending } => {
            if mode == Revocation::Hard {
                tracing::warn!(address, pending, reason = %reason, "{what}: revocation status unknown; not used (revocation = hard)");
                Err((format!("revocation status unknown: {reason}"), *pending))
            } else {
                tracing::info!(address, pending, reason = %reason, "{what}: revocation status unknown; used (revocation = soft)");
                Ok(())
            }
        }
    }
}

/// RCPT-time check: a recipient whose rule says encrypt = required with on_missing_key = reject,
/// and who has no valid certificate, is refused now so the sending MTA bounces it itself.
pub fn rcpt_check(
    policy: &Policy,
    stores: &Stores,
    sender: &str,
    recipient: &str,
) -> Option<Reply> {
    match decide(policy, stores, Ask::at_rcpt(sender, recipient)).fate {
        Fate::Refuse(r) => Some(r),
        _ => None,
    }
}

/// Whether the RCPT-time check needs the directories' answer for `recipient`: its rule requires
/// encryption (only then can a missing certificate refuse it now). The session then awaits
/// [`Stores::prefetch`] before [`rcpt_check`]; everyone else is looked up before sealing.
pub fn rcpt_needs_lookup(policy: &Policy, stores: &Stores, sender: &str, recipient: &str) -> bool {
    !stores.directory.is_empty() && policy.treatment(sender, recipient).1.encrypt == Mode::Required
}

/// End-of-DATA check, once the From: header is known: a required signature that is impossible
/// with on_missing_key = reject refuses the message (`550 5.7.1`) before it is queued.
pub fn data_check(
    policy: &Policy,
    stores: &Stores,
    sender: &str,
    recipients: &[String],
    head: &[u8],
) -> Option<Reply> {
    let h = super::headers::read(head, policy.encrypt_header.as_deref());
    let from = h.from.as_deref().unwrap_or("");
    recipients.iter().find_map(|r| {
        let ask = Ask {
            from: Some(from),
            ..Ask::at_rcpt(sender, r)
        };
        match decide(policy, stores, ask).fate {
            Fate::Refuse(reply) => Some(reply),
            _ => None,
        }
    })
}
