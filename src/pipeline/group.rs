//! Grouping: which recipients share one outgoing copy. Pure: `(&Policy, &Stores, headers,
//! recipients)` in, a [`Plan`] out, no cryptography and no I/O, so its rules are unit-tested.
//!
//! Recipients share a copy when they get the same treatment: the same signer (or none) and the
//! same encryption settings (or none). An encrypted copy for a recipient who is not in `To:` or
//! `Cc:` (a Bcc) is that recipient's alone, so their certificate never appears in the
//! RecipientInfos other recipients see. Recipients whose required protection is impossible are
//! held or failed here and never reach sealing.

use super::capabilities::{Choice, choose};
use super::decide::{Ask, Decision, Fate, decide};
use super::headers::{self, Headers};
use crate::policy::{Cipher, KeyTransport, Policy};
use crate::reply::Reply;
use crate::runtime::Stores;
use std::time::SystemTime;

/// What makes two recipients' copies identical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKey {
    /// Signer certificate fingerprint; `None` = not signed.
    pub signer: Option<String>,
    /// Encryption settings; `None` = not encrypted.
    pub encryption: Option<(Cipher, KeyTransport)>,
    /// An encrypted Bcc recipient: their copy is theirs alone.
    pub blind: Option<String>,
}

/// One outgoing copy's recipients, with their decisions (first = representative).
#[derive(Debug, Clone)]
pub struct Group {
    pub key: GroupKey,
    pub decisions: Vec<Decision>,
    /// How the copy is encrypted (from its recipients' announced capabilities, within the
    /// policy); `None` = not encrypted.
    pub choice: Option<Choice>,
}

impl Group {
    pub fn recipients(&self) -> Vec<String> {
        self.decisions.iter().map(|d| d.recipient.clone()).collect()
    }
}

/// The plan for one delivery attempt.
#[derive(Debug, Default)]
pub struct Plan {
    pub groups: Vec<Group>,
    /// Recipients that fail permanently now (a DSN follows).
    pub failed: Vec<(String, Reply)>,
    /// Recipients to hold, with the reason.
    pub held: Vec<(String, String)>,
    /// Recipients that wait for a certificate's first revocation answer, with the reason.
    pub deferred: Vec<(String, String)>,
}

/// The message facts grouping needs besides its header.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub sender: &'a str,
    /// Our own bounce (`MAIL FROM:<>` made by cachet): triggers are never honoured for it.
    pub is_bounce: bool,
    pub now: SystemTime,
}

/// Per-message triggers: honoured for every accepted message (only relay networks and
/// authenticated users can submit), never for our own bounces.
pub fn triggered(policy: &Policy, is_bounce: bool, h: &Headers) -> bool {
    !is_bounce
        && (h.encrypt_header
            || headers::has_tag(h.subject.as_deref(), policy.subject_tag.as_deref()))
}

/// The recipients of a message [`plan`] will look a certificate up for (every one whose
/// treatment may encrypt, per-message triggers included): what the scheduler prefetches from
/// the directories before it starts the sealing job.
pub fn lookups_needed(
    policy: &Policy,
    stores: &Stores,
    msg: Message<'_>,
    h: &Headers,
    recipients: &[String],
) -> Vec<String> {
    if stores.directory.is_empty() {
        return Vec::new();
    }
    let trig = triggered(policy, msg.is_bounce, h);
    recipients
        .iter()
        .filter(|r| trig || policy.treatment(msg.sender, r).1.encrypt != crate::policy::Mode::Never)
        .cloned()
        .collect()
}

/// Decide every recipient and group those that are sent.
pub fn plan(
    policy: &Policy,
    stores: &Stores,
    msg: Message<'_>,
    h: &Headers,
    recipients: &[String],
) -> Plan {
    let trig = triggered(policy, msg.is_bounce, h);
    let from = h.from.as_deref().unwrap_or("");
    let mut plan = Plan::default();
    for r in recipients {
        let d = decide(
            policy,
            stores,
            Ask {
                sender: msg.sender,
                from: Some(from),
                recipient: r,
                triggered: trig,
                during_smtp: false,
                now: msg.now,
            },
        );
        match &d.fate {
            Fate::Send => {}
            Fate::Hold(reason) => {
                plan.held.push((r.clone(), reason.clone()));
                continue;
            }
            Fate::Refuse(reply) | Fate::Bounce(reply) => {
                plan.failed.push((r.clone(), reply.clone()));
                continue;
            }
            Fate::Defer(reason) => {
                plan.deferred.push((r.clone(), reason.clone()));
                continue;
            }
        }
        let encryption = d
            .cert
            .as_ref()
            .map(|_| (d.treatment.encryption, d.treatment.key_transport));
        let blind = encryption.is_some() && !h.visible.contains(&r.to_ascii_lowercase());
        let key = GroupKey {
            signer: d.signer.as_ref().map(|s| s.fingerprint.clone()),
            encryption,
            blind: blind.then(|| r.clone()),
        };
        match plan.groups.iter_mut().find(|g| g.key == key) {
            Some(g) => g.decisions.push(d),
            None => plan.groups.push(Group {
                key,
                decisions: vec![d],
                choice: None,
            }),
        }
    }
    for g in &mut plan.groups {
        if let Some(fallback) = g.key.encryption {
            let certs: Vec<(&str, &crate::store::RecipientCert)> = g
                .decisions
                .iter()
                .filter_map(|d| d.cert.as_deref().map(|c| (d.recipient.as_str(), c)))
                .collect();
            g.choice = Some(choose(fallback, &policy.encryption_allowed, &certs));
        }
    }
    plan
}
