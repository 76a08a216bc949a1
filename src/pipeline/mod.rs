//! The seam between spool and relay: (envelope, message bytes, pending recipients) -> outgoing
//! copies, each for a group of recipients that get the same treatment, plus the recipients whose
//! required protection cannot be met (refused, held or bounced — never sent in plaintext).
//!
//! Called from the scheduler (off the async threads: crypto is CPU work), from the session at
//! RCPT time ([`rcpt_check`]) and by `cachet explain`: one code path for all three.

use crate::config::{Config, ConfigError};
use crate::policy::{Mode, OnMissing, Treatment};
use crate::reply::{self, Reply};
use crate::runtime::Runtime;
use crate::spool::Envelope;

pub mod headers;

/// Signing keys and recipient certificates, loaded at start and on reload; never read from disk
/// on the hot path.
#[derive(Default)]
pub struct Stores {}

impl Stores {
    pub fn load(_config: &Config) -> (Stores, Vec<ConfigError>) {
        (Stores::default(), Vec::new())
    }

    /// Whether a valid encryption certificate exists for `address`.
    pub fn can_encrypt_to(&self, _address: &str) -> bool {
        false
    }
}

/// One message to relay.
#[derive(Debug)]
pub struct Copy {
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
    /// The matching rule (audit log).
    pub rule: Option<String>,
    /// Signer certificate fingerprint, when signed.
    pub signer: Option<String>,
    /// Recipient certificate fingerprints, when encrypted.
    pub encrypted_to: Vec<String>,
    /// Content encryption algorithm name, when encrypted.
    pub algorithm: Option<&'static str>,
}

/// What to do with each pending recipient.
#[derive(Debug, Default)]
pub struct Sealed {
    pub copies: Vec<Copy>,
    /// The message's Message-ID (audit log).
    pub message_id: Option<String>,
    /// Recipients that fail permanently now (a DSN follows).
    pub failed: Vec<(String, Reply)>,
    /// Recipients to hold, with the reason.
    pub held: Vec<(String, String)>,
}

/// Why encryption is impossible for a recipient, in words the sender understands.
fn no_certificate(address: &str) -> String {
    format!("no valid S/MIME certificate for {address}")
}

/// RCPT-time check: a recipient whose rule says encrypt = required with on_missing_key = reject,
/// and who has no valid certificate, is refused now so the sending MTA bounces it itself.
pub fn rcpt_check(rt: &Runtime, sender: &str, recipient: &str) -> Option<Reply> {
    let (_, t) = rt.config.policy.treatment(sender, recipient);
    if t.encrypt == Mode::Required
        && t.on_missing_key == OnMissing::Reject
        && !rt.stores.can_encrypt_to(recipient)
    {
        return Some(reply::policy_refused(no_certificate(recipient)));
    }
    None
}

/// Builds the outgoing copies for `recipients` (the envelope's pending ones).
pub fn seal(rt: &Runtime, env: &Envelope, message: &[u8], recipients: &[String]) -> Sealed {
    let mut sealed = Sealed::default();
    let mut plain: Vec<String> = Vec::new();
    let mut rule_name = None;
    for r in recipients {
        let (rule, t): (Option<&str>, Treatment) = rt.config.policy.treatment(&env.sender, r);
        if t.encrypt == Mode::Required && !rt.stores.can_encrypt_to(r) {
            match t.on_missing_key {
                OnMissing::Hold => sealed.held.push((r.clone(), no_certificate(r))),
                // Reject was enforced at RCPT; if the certificate vanished since (reload), bounce.
                OnMissing::Reject | OnMissing::Bounce => sealed
                    .failed
                    .push((r.clone(), Reply::owned(550, "5.7.1", no_certificate(r)))),
            }
            continue;
        }
        rule_name = rule.map(str::to_string);
        plain.push(r.clone());
    }
    if !plain.is_empty() {
        sealed.copies.push(Copy {
            recipients: plain,
            message: message.to_vec(),
            rule: rule_name,
            signer: None,
            encrypted_to: Vec::new(),
            algorithm: None,
        });
    }
    sealed
}

/// Prometheus gauges for certificate expiry (one per signing key and recipient certificate).
pub fn expiry_gauges(_stores: &Stores) -> String {
    String::new()
}

/// Lines `cachet check` prints after "ok": what was loaded, and warnings (expiring certificates).
pub fn check_summary(rt: &Runtime) -> Vec<String> {
    vec![format!(
        "policy {} with {} rule(s); upstream {}",
        rt.config.policy.version,
        rt.config.policy.rules.len(),
        rt.config.upstream.url
    )]
}
