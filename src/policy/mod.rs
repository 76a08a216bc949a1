//! Policy: what to do with each (sender, recipient) pair — sign, encrypt, with which algorithms,
//! and what to do when a `required` protection cannot be met.
//!
//! A pure function of the envelope and the loaded stores (STYLE habit 7): the session's RCPT check,
//! the pipeline and `cachet explain` all call [`Policy::treatment`] and [`crate::pipeline::group::plan`].
//! Rules come from `[policy]` (defaults) and `[[rule]]` (first match wins) in the config; they are
//! built and checked by `config::policy`, so this module imports nothing from `config`.

pub mod submitter;

use wildmatch::WildMatch;

/// How strongly a protection is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Never,
    /// Apply it when possible (a key or valid certificate exists).
    Opportunistic,
    /// Apply it or fail closed (see [`OnMissing`]).
    Required,
}

/// Content encryption algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Cipher {
    /// EnvelopedData, AES-256-CBC: read by every major client (default).
    #[serde(rename = "aes256-cbc")]
    Aes256Cbc,
    /// AuthEnvelopedData, AES-128-GCM (RFC 5083/5084).
    #[serde(rename = "aes128-gcm")]
    Aes128Gcm,
    /// AuthEnvelopedData, AES-256-GCM.
    #[serde(rename = "aes256-gcm")]
    Aes256Gcm,
}

/// RSA key transport for the content key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum KeyTransport {
    #[serde(rename = "rsa-pkcs1")]
    RsaPkcs1,
    #[serde(rename = "rsa-oaep")]
    RsaOaep,
}

/// What a `required` protection does when it cannot be met. Never: relay in plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    /// Refuse the recipient at RCPT time (550 5.7.1), so the sending MTA bounces it.
    Reject,
    /// Accept and keep the message in the hold queue until an operator releases it.
    Hold,
    /// Accept and send a DSN to the sender.
    Bounce,
}

/// Revocation checking of the certificates a treatment uses (docs/certificates.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Revocation {
    /// Not checked.
    Off,
    /// Unknown status (no CRL, responder down): the certificate is used, logged and counted.
    Soft,
    /// Unknown status counts as no certificate (`on_missing_key` applies); while a first
    /// answer is still being fetched the message waits in the queue (deferred).
    Hard,
}

/// Signature form (RFC 8551 §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureForm {
    /// multipart/signed (default): readable by clients without S/MIME.
    Detached,
    /// application/pkcs7-mime; smime-type=signed-data.
    Opaque,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Digest {
    Sha256,
    Sha512,
}

/// The resolved treatment of one (sender, recipient) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Treatment {
    pub sign: Mode,
    pub encrypt: Mode,
    pub encryption: Cipher,
    pub key_transport: KeyTransport,
    pub on_missing_key: OnMissing,
    pub revocation: Revocation,
}

/// Fields a rule may set; `None` falls back to `[policy]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    pub(crate) sign: Option<Mode>,
    pub(crate) encrypt: Option<Mode>,
    pub(crate) encryption: Option<Cipher>,
    pub(crate) key_transport: Option<KeyTransport>,
    pub(crate) on_missing_key: Option<OnMissing>,
    pub(crate) revocation: Option<Revocation>,
}

/// One `[[rule]]`, built and checked by `config::policy`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub(crate) from: Vec<(String, WildMatch)>,
    pub(crate) to: Vec<(String, WildMatch)>,
    pub(crate) set: Overrides,
}

impl Rule {
    fn matches(&self, sender: &str, recipient: &str) -> bool {
        let hit = |globs: &[(String, WildMatch)], addr: &str| {
            globs.is_empty() || globs.iter().any(|(_, g)| g.matches(addr))
        };
        hit(&self.from, sender) && hit(&self.to, recipient)
    }

    /// The cipher and key transport this rule sets, if any: signatures announce them
    /// (SMIMECapabilities, see `pipeline::seal`).
    pub fn algorithms(&self) -> (Option<Cipher>, Option<KeyTransport>) {
        (self.set.encryption, self.set.key_transport)
    }

    pub(crate) fn is_catch_all(&self) -> bool {
        let all =
            |globs: &[(String, WildMatch)]| globs.is_empty() || globs.iter().any(|(s, _)| s == "*");
        all(&self.from) && all(&self.to)
    }
}

/// The loaded policy. Immutable; a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Policy {
    pub defaults: Treatment,
    pub rules: Vec<Rule>,
    pub signature_form: SignatureForm,
    pub digest: Digest,
    /// RSA-PSS instead of PKCS#1 v1.5 for RSA signing keys.
    pub rsa_pss: bool,
    /// `encryption_allowed`: the ciphers a recipient's announced capabilities may select
    /// (`pipeline::capabilities`); the treatment's `encryption` is the choice when they do not.
    pub encryption_allowed: Vec<Cipher>,
    /// Also encrypt each copy to the sender's own certificate (RFC 8551 §3.3).
    pub encrypt_to_self: bool,
    /// Subject tag that raises encryption to required (stripped before relay), e.g. "[secure]".
    pub subject_tag: Option<String>,
    /// Header that raises encryption to required when "yes" (removed before relay).
    pub encrypt_header: Option<String>,
    /// Short hash identifying this policy in logs and the audit trail.
    pub version: String,
}

impl Policy {
    /// True when some rule (or the default) may require a signature: the session then checks
    /// the From: key at the end of DATA.
    pub fn any_sign_required(&self) -> bool {
        self.defaults.sign == Mode::Required
            || self
                .rules
                .iter()
                .any(|r| r.set.sign == Some(Mode::Required))
    }

    /// True when any treatment checks revocation: the refresher then fetches CRLs and OCSP.
    pub fn revocation_in_use(&self) -> bool {
        self.defaults.revocation != Revocation::Off
            || self
                .rules
                .iter()
                .any(|r| r.set.revocation.is_some_and(|m| m != Revocation::Off))
    }

    /// The treatment of one (envelope sender, recipient) pair and the name of the rule that set it.
    pub fn treatment(&self, sender: &str, recipient: &str) -> (Option<&str>, Treatment) {
        let sender = crate::store::normalize_address(sender);
        let recipient = crate::store::normalize_address(recipient);
        let Some(rule) = self.rules.iter().find(|r| r.matches(&sender, &recipient)) else {
            return (None, self.defaults);
        };
        let d = self.defaults;
        let s = &rule.set;
        (
            Some(&rule.name),
            Treatment {
                sign: s.sign.unwrap_or(d.sign),
                encrypt: s.encrypt.unwrap_or(d.encrypt),
                encryption: s.encryption.unwrap_or(d.encryption),
                key_transport: s.key_transport.unwrap_or(d.key_transport),
                on_missing_key: s.on_missing_key.unwrap_or(d.on_missing_key),
                revocation: s.revocation.unwrap_or(d.revocation),
            },
        )
    }
}
