//! The inbound step: one message the organisation receives -> what the internal mail server gets
//! (copies per recipient group), or hold, or a reply at the end of DATA. A pure function of
//! `(&InboundConfig, &Stores, hostname, envelope, bytes, now)`: the inbound listener and the
//! scheduler call it (docs/inbound.md); certificate harvesting takes [`Processed::signers`].
//!
//! In order (RFC references next to the code below):
//! 1. **Claims removed.** Every `Authentication-Results` field claiming our authserv-id (the
//!    hostname; RFC 8601 §5) and every header field cachet itself writes ([`OWN_FIELDS`]) is
//!    removed from what arrived, whatever `verify` and `decrypt` say: nobody outside speaks
//!    for cachet.
//! 2. **Opened per key set.** Recipients are grouped by the organisation keys that are theirs
//!    (the identities of `[keys]` whose certificate names the recipient); the message is opened
//!    (`smime::open`) once per group with only that group's keys, so a recipient never receives
//!    what was decrypted with someone else's key. A message without encryption is opened once.
//! 3. **One copy per distinct result.** Each copy is the decryption (outer header fields kept,
//!    the inner entity's Content-* fields replace the outer ones, RFC 8551 §3.1) or the message
//!    exactly as it arrived; never a half (`smime::open` guarantees it). Header fields added on
//!    top: [`DECRYPTED_FIELD`] per removed encryption layer, [`UNDECRYPTABLE_FIELD`] when an
//!    encryption layer could not be opened for these recipients, `Authentication-Results` (when
//!    `verify`), [`RULE_FIELD`] (rule action `tag`); Subject tags (`subject_tags`, rule tags).
//!    Identical copies are merged.
//! 4. **Verdict.** A rule with `hold`/`reject` whose requirement is not met, or an undecryptable
//!    copy under `on_undecryptable = hold | reject`, decides for the whole message (an SMTP
//!    transaction has one end-of-DATA reply; reject wins over hold). A key that cannot be
//!    reached (token gone) is a temporary `Reject` (451): the sender, or the scheduler, tries
//!    again later. A message an operator releases from hold is processed with [`for_release`].
//!
//! Replies it can produce (`reply.rs`): `550 5.7.5` undecryptable, `550 5.7.1` one per rule
//! requirement (never naming the rule), `451 4.3.0` temporary.
//!
//! Decryption oracles: every failure of a decryption gives the same reply text
//! ([`reply::INBOUND_UNDECRYPTABLE`]) and the same path; the secret-dependent failures are one
//! error inside `smime::decrypt` (RFC 3218 §2.3.2: a bad PKCS#1 v1.5 block goes on with a random
//! content key and fails at content decryption). Only the private reason (hold/, logs) and the
//! header the *recipient* sees say which public fact (no key of ours, unsupported algorithm,
//! malformed) stopped it.
//!
//! Secrets: private keys only through [`SigningIdentity::decrypt`] (file or PKCS#11 token),
//! adapted to `smime::Decrypter` by [`IdentityDecrypter`]; nothing here holds key material.

use std::cell::Cell;
use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use crate::config::{
    InboundAction, InboundConfig, InboundRequirement, InboundRule, OnUndecryptable,
};
use crate::pipeline::headers;
use crate::reply::{self, Failure, Scope};
use crate::runtime::Stores;
use crate::smime::decrypt::{Decrypter, KeyOpFailed, RsaPadding};
use crate::smime::open::{DecryptedLayer, Layer, Opened};
use crate::smime::verify::Signer;
use crate::smime::{self, AuthResult, Limits, OpenError, OrgKey, Trust, authres};
use crate::store::keys::{Decrypt, KeyStore, OaepHash, SigningIdentity};
use crate::store::{normalize_address, validate};

/// Records that cachet removed an encryption layer: for which recipients, with which key
/// (SHA-256 of the organisation certificate) and algorithms (content cipher / key transport or
/// agreement): `X-Cachet-Decrypted: for=<bob@org.example>; key=sha256:…;
/// algorithm=aes-256-gcm/rsa-oaep-sha256`.
pub const DECRYPTED_FIELD: &str = "X-Cachet-Decrypted";
/// The message arrived encrypted and is delivered as it arrived: `reason=` one of `no-key`,
/// `failed`, `unsupported`, `malformed`, `limit`, with a comment.
pub const UNDECRYPTABLE_FIELD: &str = "X-Cachet-Undecryptable";
/// An `[[inbound.rule]]` with `action = "tag"` whose requirement was not met.
pub const RULE_FIELD: &str = "X-Cachet-Inbound-Rule";
/// Header fields only cachet writes; removed from every message that arrives.
pub const OWN_FIELDS: [&str; 3] = [DECRYPTED_FIELD, UNDECRYPTABLE_FIELD, RULE_FIELD];

/// Subject tags (`subject_tags = true`).
pub const TAG_SIGNED: &str = "[signed]";
pub const TAG_SIGNATURE_INVALID: &str = "[signature invalid]";
pub const TAG_DECRYPTED: &str = "[decrypted]";

/// One message for the internal mail server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundCopy {
    /// Envelope recipients (as given to [`process`]) that receive these bytes.
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Deliver(Vec<InboundCopy>),
    /// Private reason, for hold/ and `cachet queue show`.
    Hold(String),
    /// At the end of DATA: the reply to give. A temporary one (4xx) means "try again later"
    /// wherever it is met (the scheduler retries).
    Reject(Failure),
}

#[derive(Debug, Clone)]
pub struct Processed {
    pub verdict: Verdict,
    /// The signers whose signature verified and whose certificate names the From: address,
    /// once each, for certificate harvesting ([`learn`]): `pass` ones are learnt, the others
    /// (no path to a trust anchor) kept pending by the store. Empty when `verify` is off.
    pub signers: Vec<Signer>,
}

/// Certificate harvesting (`inbound.harvest`, docs/inbound.md "Learn"): hands each signer of a
/// processed message to the certificate store, which keeps a `pass` signer's certificate with
/// its capabilities for outbound encryption at once, keeps one without a path to a trust anchor
/// pending for an operator, and refuses the rest (`store::certdb::harvest`). Writes the
/// database (fsync): call it off the async threads. Returns, per signer, its address, the
/// certificate fingerprint and what the store did (or why it could not).
pub fn learn(
    stores: &Stores,
    signers: &[Signer],
    seen: SystemTime,
) -> Vec<(String, String, Result<crate::store::Harvested, String>)> {
    let mut out = Vec::new();
    for s in signers {
        let (Some(cert), Some(from)) = (&s.certificate, &s.address) else {
            continue;
        };
        let h = crate::store::Harvest {
            cert,
            chain: &s.chain,
            capabilities: &s.capabilities,
            signing_time: s.signing_time,
            from,
            verified: s.result == AuthResult::Pass,
            seen,
        };
        let fingerprint = s.fingerprint.clone().unwrap_or_default();
        out.push((
            from.clone(),
            fingerprint,
            stores.certs.harvest(&h, &stores.trust),
        ));
    }
    out
}

/// True when [`process`] may answer `Reject` with a permanent reply under this config: only then
/// does the session run it before answering 250. (A temporary `Reject`, a key that cannot be
/// reached, may come from any config; after 250 the scheduler treats it as "retry".)
pub fn may_reject(inbound: &InboundConfig) -> bool {
    inbound.on_undecryptable == OnUndecryptable::Reject
        || inbound
            .rules
            .iter()
            .any(|r| r.action == InboundAction::Reject)
}

/// The settings to process a message with when an operator releases it from hold: what held
/// it (`on_undecryptable = "hold"`, a rule with `action = "hold"`) now delivers, with the same
/// header fields that say why (`X-Cachet-Undecryptable`; the rule as `tag`). So does what would
/// refuse it: after `250` a refusal can only hold the message (inbound mail is never bounced
/// for S/MIME reasons), and the operator who released it decided.
pub fn for_release(inbound: &InboundConfig) -> InboundConfig {
    let mut released = inbound.clone();
    released.on_undecryptable = OnUndecryptable::Deliver;
    for rule in &mut released.rules {
        rule.action = InboundAction::Tag;
    }
    released
}

/// See the module header. `sender` is the envelope sender: the rules match the `From:`
/// addresses and fall back to it only for a message without any.
pub fn process(
    inbound: &InboundConfig,
    stores: &Stores,
    hostname: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
    now: SystemTime,
) -> Processed {
    let known = known_certificates(stores, message, now);
    let trust = Trust {
        anchors: &stores.trust,
        known: &known,
    };
    let keys = Ring::Store(&stores.keys, None);
    run(
        inbound, keys, &trust, hostname, sender, recipients, message, now,
    )
}

/// Certificates known from elsewhere: the directory's intermediates, and the stored
/// certificate of each `From:` address (for clients that send none, e.g. KMail). None for
/// mail without S/MIME, which no signature check reads: no lookup per plain message.
fn known_certificates(
    stores: &Stores,
    message: &[u8],
    now: SystemTime,
) -> Vec<CertificateDer<'static>> {
    if !smime::open::carries_smime(message) {
        return Vec::new();
    }
    let mut known = stores.certs.intermediates().to_vec();
    for author in headers::authors(message) {
        if let Some(c) = stores.certs.lookup(&author, now).cert {
            known.push(c.der.clone());
        }
    }
    known
}

thread_local! {
    /// "Key unreachable" events (a token that is gone) on this thread: such a failure must not
    /// look like a bad ciphertext (a permanent refusal) but must not change the
    /// secret-dependent path either, so the adapter counts it on the side. Per thread, because
    /// one ring serves every message and `smime::open` runs on the caller's thread: a token
    /// outage while one message opens never makes another message's verdict temporary.
    static UNAVAILABLE: Cell<u64> = const { Cell::new(0) };
}

/// The organisation's decryption keys: signing identities and decryption keys of `[keys]`.
#[derive(Default, Clone)]
pub struct OrgKeys {
    keys: Vec<OrgKey>,
}

impl OrgKeys {
    /// Keys held in this process (tools, tests, the fuzz targets).
    pub fn new(keys: Vec<OrgKey>) -> OrgKeys {
        OrgKeys { keys }
    }

    /// Every identity of the key store (older certificates too, so mail encrypted before a
    /// rotation still opens): each signing identity's certificate, and its own encryption
    /// certificate when that carries the same public key; each decryption key's encryption
    /// certificate ([`crate::store::keys::KeyUse::Decrypt`], RFC 9216's `*.encrypt.crt` with `*.decrypt.key`).
    /// Parses each certificate: [`process`] takes it from [`OrgKeys::shared`], built once per
    /// loaded key store.
    pub fn from_store(store: &KeyStore) -> OrgKeys {
        let mut keys: Vec<OrgKey> = Vec::new();
        for id in store.all() {
            let decrypter: Arc<dyn Decrypter> = Arc::new(IdentityDecrypter {
                identity: id.clone(),
            });
            let Ok(own) = validate::inspect(id.certificate()) else {
                continue;
            };
            let mut certs = vec![id.certificate().clone()];
            if let Some(enc) = &id.encryption_cert
                && enc.spki_der == own.spki_der
            {
                certs.push(enc.der.clone());
            }
            for cert in certs {
                if let Ok(k) = OrgKey::new(cert, decrypter.clone())
                    && !keys.iter().any(|o| o.fingerprint == k.fingerprint)
                {
                    keys.push(k);
                }
            }
        }
        OrgKeys { keys }
    }

    /// [`OrgKeys::from_store`], built on first use and kept with the key store it came from
    /// (a reload loads a new store, so a new ring): no certificate is parsed per message.
    pub fn shared(store: &KeyStore) -> Arc<OrgKeys> {
        store.derived(OrgKeys::from_store)
    }

    pub fn keys(&self) -> &[OrgKey] {
        &self.keys
    }

    fn unavailable_events(&self) -> u64 {
        UNAVAILABLE.with(Cell::get)
    }
}

/// A key-store identity as `smime::Decrypter`: the private step goes to
/// [`SigningIdentity::decrypt`] (file or token). Every failure is the one `KeyOpFailed` the
/// decryptor expects; an unreachable key is also counted, for the temporary verdict.
pub struct IdentityDecrypter {
    identity: Arc<SigningIdentity>,
}

impl IdentityDecrypter {
    fn run(&self, op: Decrypt<'_>) -> Result<Zeroizing<Vec<u8>>, KeyOpFailed> {
        self.identity.decrypt(op).map_err(|e| {
            if e.is_temporary() {
                UNAVAILABLE.with(|n| n.set(n.get() + 1));
            }
            KeyOpFailed
        })
    }
}

impl Decrypter for IdentityDecrypter {
    fn rsa_decrypt(
        &self,
        padding: RsaPadding,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyOpFailed> {
        let hash = match padding {
            RsaPadding::Pkcs1v15 => return self.run(Decrypt::RsaPkcs1(ciphertext)),
            RsaPadding::OaepSha1 => OaepHash::Sha1,
            RsaPadding::OaepSha256 => OaepHash::Sha256,
            RsaPadding::OaepSha384 => OaepHash::Sha384,
            RsaPadding::OaepSha512 => OaepHash::Sha512,
        };
        self.run(Decrypt::RsaOaep { ciphertext, hash })
    }

    fn ecdh_p256(&self, peer_point: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyOpFailed> {
        self.run(Decrypt::EcdhP256 { peer_point })
    }
}

/// Recipients that share the same keys, and what opening the message with them gave.
struct Group<'a> {
    recipients: Vec<&'a str>,
    opened: Opened,
}

/// Where the decryption keys come from: given, or the key store's shared ring, fetched only
/// when a message turns out to be encrypted (most mail is not; the first one builds it).
enum Ring<'a> {
    Given(&'a OrgKeys),
    Store(&'a KeyStore, Option<Arc<OrgKeys>>),
}

impl Ring<'_> {
    fn get(&mut self) -> &OrgKeys {
        match self {
            Ring::Given(k) => k,
            Ring::Store(store, got) => got.get_or_insert_with(|| OrgKeys::shared(store)),
        }
    }
}

/// [`process`] with the keys and trust given (built once and shared, tests, fuzz targets).
#[allow(clippy::too_many_arguments)]
pub fn process_with(
    inbound: &InboundConfig,
    keys: &OrgKeys,
    trust: &Trust<'_>,
    hostname: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
    now: SystemTime,
) -> Processed {
    run(
        inbound,
        Ring::Given(keys),
        trust,
        hostname,
        sender,
        recipients,
        message,
        now,
    )
}

#[allow(clippy::too_many_arguments)]
fn run(
    inbound: &InboundConfig,
    mut keys: Ring<'_>,
    trust: &Trust<'_>,
    hostname: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
    now: SystemTime,
) -> Processed {
    let clean = strip_claims(message, hostname);
    let (groups, unreachable) =
        open_groups(inbound.decrypt, &mut keys, trust, recipients, &clean, now);
    if unreachable || groups.iter().any(|g| temporary(&g.opened)) {
        return Processed {
            verdict: Verdict::Reject(Failure::new(
                reply::INBOUND_TEMPORARY,
                Scope::Message,
                "an organisation key could not be reached (or the crypto library failed) while decrypting",
            )),
            signers: Vec::new(),
        };
    }
    let signers = if inbound.verify {
        harvestable_signers(&groups)
    } else {
        Vec::new()
    };
    let facts = Facts::of(&groups);
    let mut authors = groups
        .first()
        .map(|g| g.opened.from.clone())
        .unwrap_or_default();
    if authors.is_empty() {
        authors.push(normalize_address(sender));
    }
    let broken = broken_rule(&inbound.rules, &authors, &facts);
    let claims = claims_encryption(&clean);
    let mut copies: Vec<InboundCopy> = Vec::new();
    let mut undecryptable: Vec<(String, &OpenError)> = Vec::new();
    for g in &groups {
        let failure = inbound
            .decrypt
            .then(|| decryption_failure(&g.opened, claims))
            .flatten();
        if let Some(e) = failure {
            undecryptable.extend(g.recipients.iter().map(|r| (r.to_string(), e)));
        }
        let tag_rule = broken.filter(|(_, r)| r.action == InboundAction::Tag);
        let bytes = build_copy(inbound, hostname, g, failure, tag_rule);
        match copies.iter_mut().find(|c| c.message == bytes) {
            Some(c) => c
                .recipients
                .extend(g.recipients.iter().map(|r| r.to_string())),
            None => copies.push(InboundCopy {
                recipients: g.recipients.iter().map(|r| r.to_string()).collect(),
                message: bytes,
            }),
        }
    }
    Processed {
        verdict: verdict(inbound, broken, &undecryptable, copies),
        signers,
    }
}

/// Removes what only cachet may say: `Authentication-Results` with our authserv-id and our own
/// header fields.
fn strip_claims<'a>(message: &'a [u8], hostname: &str) -> std::borrow::Cow<'a, [u8]> {
    use std::borrow::Cow;
    // Continuation lines before the first field belong to no field; left in place they would
    // become part of the field we put on top (an injected `smime=pass`).
    let mut start = 0;
    while matches!(message.get(start), Some(b' ' | b'\t')) {
        start = memchr::memchr(b'\n', &message[start..]).map_or(message.len(), |i| start + i + 1);
    }
    let message = &message[start..];
    // Nothing to remove (the common case): no copy of the message.
    let m = authres::strip(message, hostname).map_or(Cow::Borrowed(message), Cow::Owned);
    let own: Vec<String> = OWN_FIELDS.iter().map(|s| s.to_string()).collect();
    headers::remove_fields(&m, &own).map_or(m, Cow::Owned)
}

/// Opens `message` once per set of keys the recipients hold; without encryption (or with
/// `decrypt` off) once for everyone. True beside the groups when a key could not be reached.
fn open_groups<'a>(
    decrypt: bool,
    ring: &mut Ring<'_>,
    trust: &Trust<'_>,
    recipients: &'a [String],
    message: &[u8],
    now: SystemTime,
) -> (Vec<Group<'a>>, bool) {
    let limits = Limits::default();
    let probe = smime::open(message, &[], trust, now, &limits);
    let encrypted = probe
        .layers
        .iter()
        .any(|l| matches!(l, Layer::Encrypted { .. }));
    let everyone = || recipients.iter().map(String::as_str).collect();
    let ring = if decrypt && encrypted {
        Some(ring.get())
    } else {
        None
    };
    let Some(ring) = ring.filter(|r| !r.keys.is_empty()) else {
        let group = Group {
            recipients: everyone(),
            opened: probe,
        };
        return (vec![group], false);
    };
    let before = ring.unavailable_events();
    let keys = ring.keys();
    // Key sets in the order their first recipient came.
    let mut sets: Vec<(Vec<usize>, Vec<&'a str>)> = Vec::new();
    for r in recipients {
        let addr = normalize_address(r);
        let mine: Vec<usize> = (0..keys.len())
            .filter(|&i| {
                // Certificate addresses are normalised when the certificate is read.
                keys[i].addresses.contains(&addr)
            })
            .collect();
        match sets.iter_mut().find(|(s, _)| *s == mine) {
            Some((_, rs)) => rs.push(r),
            None => sets.push((mine, vec![r])),
        }
    }
    let groups = sets
        .into_iter()
        .map(|(set, recipients)| {
            let opened = if set.is_empty() {
                probe.clone()
            } else {
                let subset: Vec<OrgKey> = set.iter().map(|&i| keys[i].clone()).collect();
                smime::open(message, &subset, trust, now, &limits)
            };
            Group { recipients, opened }
        })
        .collect();
    (groups, ring.unavailable_events() != before)
}

fn encryption_errors(o: &Opened) -> impl Iterator<Item = &OpenError> {
    o.layers.iter().filter_map(|l| match l {
        Layer::Encrypted { result: Err(e), .. } => Some(e),
        _ => None,
    })
}

fn temporary(o: &Opened) -> bool {
    encryption_errors(o).any(|e| matches!(e, OpenError::Temporary(_)))
}

/// Why these recipients get the message encrypted as it arrived, if they do: an encryption
/// layer that did not open, or a message that arrived encrypted (its first layer, or its
/// `smime-type` when the layer could not even be parsed: malformed CMS, truncated base64) and
/// was not decrypted because a layer broke (too deep, say). To the recipient all are a message
/// they cannot read; to the sender all get the same answer.
fn decryption_failure(o: &Opened, claims_encryption: bool) -> Option<&OpenError> {
    if let Some(e) = encryption_errors(o).next() {
        return Some(e);
    }
    let arrived_encrypted =
        claims_encryption || matches!(o.layers.first(), Some(Layer::Encrypted { .. }));
    if !arrived_encrypted || o.decrypted {
        return None;
    }
    o.layers.iter().find_map(|l| match l {
        Layer::Broken(e) => Some(e),
        _ => None,
    })
}

/// The top-level Content-Type says enveloped-data or authEnveloped-data (RFC 8551 §3.2.2).
fn claims_encryption(message: &[u8]) -> bool {
    use mail_parser::MimeHeaders;
    let head = &message[..headers::header_len(message)];
    let Some(m) = mail_parser::MessageParser::default().parse_headers(head) else {
        return false;
    };
    m.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("application")
            && ct.subtype().is_some_and(|s| {
                s.eq_ignore_ascii_case("pkcs7-mime") || s.eq_ignore_ascii_case("x-pkcs7-mime")
            })
            && ct.attribute("smime-type").is_some_and(|t| {
                t.eq_ignore_ascii_case("enveloped-data")
                    || t.eq_ignore_ascii_case("authenveloped-data")
            })
    })
}

/// The encryption layers `smime::open` removed (outermost first).
fn removed_layers(o: &Opened) -> Vec<&DecryptedLayer> {
    if !o.decrypted {
        return Vec::new();
    }
    o.layers
        .iter()
        .map_while(|l| match l {
            Layer::Encrypted { result: Ok(d), .. } => Some(d),
            _ => None,
        })
        .collect()
}

/// What the message was, whichever key set looked: the facts `[[inbound.rule]]` judges.
#[derive(Debug, Default, Clone, Copy)]
struct Facts {
    /// At least one signature layer (whatever its result).
    signed: bool,
    /// At least one signer with `smime=pass`.
    valid: bool,
    /// It arrived encrypted (an encryption layer anywhere).
    encrypted: bool,
}

impl Facts {
    fn of(groups: &[Group<'_>]) -> Facts {
        let mut f = Facts::default();
        for g in groups {
            for l in &g.opened.layers {
                match l {
                    Layer::Signed { signers, .. } => {
                        f.signed = true;
                        f.valid |= signers.iter().any(|s| s.result == AuthResult::Pass);
                    }
                    Layer::Encrypted { .. } => f.encrypted = true,
                    Layer::Broken(_) => {}
                }
            }
        }
        f
    }

    fn meets(&self, r: InboundRequirement) -> bool {
        match r {
            InboundRequirement::Signed => self.signed,
            InboundRequirement::ValidSignature => self.valid,
            InboundRequirement::Encrypted => self.encrypted,
        }
    }
}

/// The first rule (1-based position) whose senders match an author and whose requirement the
/// message does not meet.
fn broken_rule<'r>(
    rules: &'r [InboundRule],
    authors: &[String],
    facts: &Facts,
) -> Option<(usize, &'r InboundRule)> {
    rules.iter().enumerate().find_map(|(i, rule)| {
        let applies = rule
            .senders
            .iter()
            .any(|(_, glob)| authors.iter().any(|a| glob.matches(a)));
        (applies && !facts.meets(rule.require)).then_some((i + 1, rule))
    })
}

fn requirement_name(r: InboundRequirement) -> &'static str {
    match r {
        InboundRequirement::Signed => "signed",
        InboundRequirement::ValidSignature => "valid-signature",
        InboundRequirement::Encrypted => "encrypted",
    }
}

/// The Subject tag a rule with `action = "tag"` adds, naming what is missing.
pub fn rule_tag(r: InboundRequirement) -> &'static str {
    match r {
        InboundRequirement::Signed => "[unsigned]",
        InboundRequirement::ValidSignature => "[no valid signature]",
        InboundRequirement::Encrypted => "[not encrypted]",
    }
}

fn rule_reply(r: InboundRequirement) -> reply::Reply {
    match r {
        InboundRequirement::Signed => reply::INBOUND_NOT_SIGNED,
        InboundRequirement::ValidSignature => reply::INBOUND_NO_VALID_SIGNATURE,
        InboundRequirement::Encrypted => reply::INBOUND_NOT_ENCRYPTED,
    }
}

fn describe_rule(pos: usize, rule: &InboundRule) -> String {
    let globs: Vec<&str> = rule.senders.iter().map(|(g, _)| g.as_str()).collect();
    format!(
        "inbound rule {pos} (senders {}) requires {}",
        globs.join(", "),
        requirement_name(rule.require)
    )
}

/// Reject beats hold; a rule speaks before `on_undecryptable`.
fn verdict(
    inbound: &InboundConfig,
    broken: Option<(usize, &InboundRule)>,
    undecryptable: &[(String, &OpenError)],
    copies: Vec<InboundCopy>,
) -> Verdict {
    let rule = broken.map(|(pos, r)| (r.action, r.require, describe_rule(pos, r)));
    let undecryptable = (!undecryptable.is_empty()).then(|| {
        let who: Vec<String> = undecryptable
            .iter()
            .map(|(r, e)| format!("{r} ({e})"))
            .collect();
        format!("not decryptable for {}", who.join(", "))
    });
    if let Some((InboundAction::Reject, require, why)) = &rule {
        return Verdict::Reject(Failure::new(rule_reply(*require), Scope::Message, why));
    }
    if let Some(why) = &undecryptable
        && inbound.on_undecryptable == OnUndecryptable::Reject
    {
        return Verdict::Reject(Failure::new(
            reply::INBOUND_UNDECRYPTABLE,
            Scope::Message,
            why,
        ));
    }
    let mut hold = Vec::new();
    if let Some((InboundAction::Hold, _, why)) = &rule {
        hold.push(why.clone());
    }
    if let Some(why) = undecryptable
        && inbound.on_undecryptable == OnUndecryptable::Hold
    {
        hold.push(why);
    }
    if hold.is_empty() {
        Verdict::Deliver(copies)
    } else {
        Verdict::Hold(hold.join("; "))
    }
}

/// Signers worth showing the certificate store: the signature verified, a certificate address
/// is the From: address, the certificate is at hand. `pass` ones are learnt; the store keeps the
/// others pending (an operator may approve them) or refuses them, by its own checks.
fn harvestable_signers(groups: &[Group<'_>]) -> Vec<Signer> {
    let mut out: Vec<Signer> = Vec::new();
    for s in groups.iter().flat_map(|g| g.opened.signers()) {
        if s.signature_ok
            && s.from_matches
            && s.certificate.is_some()
            && !out
                .iter()
                .any(|o| o.fingerprint.is_some() && o.fingerprint == s.fingerprint)
        {
            out.push(s.clone());
        }
    }
    out
}

/// The bytes one group receives: see the module header, step 3.
fn build_copy(
    inbound: &InboundConfig,
    hostname: &str,
    g: &Group<'_>,
    failure: Option<&OpenError>,
    tag_rule: Option<(usize, &InboundRule)>,
) -> Vec<u8> {
    let o = &g.opened;
    let mut message = if o.decrypted {
        // The decrypted entity's fields join the header: they may claim to be us too.
        strip_claims(&o.message, hostname).into_owned()
    } else {
        o.message.clone()
    };
    if inbound.subject_tags {
        message = subject_tags(message, &earned_tags(inbound, o));
    }
    if let Some((_, rule)) = tag_rule {
        message = add_tags(message, &[rule_tag(rule.require)]);
    }
    let mut top = String::new();
    if inbound.verify {
        top.push_str(&authres::header(hostname, o));
    }
    for d in removed_layers(o) {
        top.push_str(&decrypted_field(&g.recipients, d));
    }
    if let Some(e) = failure {
        top.push_str(&undecryptable_field(e));
    }
    if let Some((pos, rule)) = tag_rule {
        top.push_str(&format!(
            "{RULE_FIELD}: rule={pos}; require={}; result=not-met\r\n",
            requirement_name(rule.require)
        ));
    }
    let mut out = Vec::with_capacity(top.len() + message.len());
    out.extend_from_slice(top.as_bytes());
    out.extend_from_slice(&message);
    out
}

/// An address as it may appear in a header field: no controls, no angle brackets.
fn field_address(a: &str) -> String {
    a.chars()
        .filter(|c| !c.is_control() && !matches!(c, '<' | '>' | ';' | ','))
        .collect()
}

fn decrypted_field(recipients: &[&str], d: &DecryptedLayer) -> String {
    let who: Vec<String> = recipients
        .iter()
        .map(|r| format!("<{}>", field_address(r)))
        .collect();
    format!(
        "{DECRYPTED_FIELD}: for={};\r\n\tkey=sha256:{}; algorithm={}/{}\r\n",
        who.join(",\r\n\t"),
        d.key_fingerprint,
        d.cipher,
        d.key_algorithm
    )
}

fn undecryptable_field(e: &OpenError) -> String {
    let (reason, comment) = match e {
        OpenError::NoKey => (
            "no-key",
            "not encrypted to a key cachet holds for this recipient",
        ),
        OpenError::Undecryptable => ("failed", "decryption with the recipient's key failed"),
        OpenError::Unsupported(_) => ("unsupported", "an algorithm cachet does not implement"),
        OpenError::Malformed(_) => ("malformed", "the encrypted structure is malformed"),
        OpenError::Limit(_) => ("limit", "the encrypted structure exceeds cachet's limits"),
        OpenError::Temporary(_) => ("temporary", "a temporary failure"),
    };
    format!("{UNDECRYPTABLE_FIELD}: reason={reason} ({comment})\r\n")
}

/// The status tags this copy earns (`subject_tags`): decrypted; signed (some signature passed)
/// or signature invalid (signed, none passed), those two only when `verify`.
fn earned_tags(inbound: &InboundConfig, o: &Opened) -> Vec<&'static str> {
    let mut tags = Vec::new();
    if o.decrypted {
        tags.push(TAG_DECRYPTED);
    }
    let signers: Vec<&Signer> = o.signers().collect();
    let signed = o.layers.iter().any(|l| matches!(l, Layer::Signed { .. }));
    if inbound.verify && signed {
        if signers.iter().any(|s| s.result == AuthResult::Pass) {
            tags.push(TAG_SIGNED);
        } else {
            tags.push(TAG_SIGNATURE_INVALID);
        }
    }
    tags
}

/// With `subject_tags`, the status tags are cachet's claims like Authentication-Results: one a
/// sender wrote that this copy does not earn is removed, the earned ones are added once.
fn subject_tags(mut message: Vec<u8>, earned: &[&'static str]) -> Vec<u8> {
    for tag in [TAG_DECRYPTED, TAG_SIGNED, TAG_SIGNATURE_INVALID] {
        if earned.contains(&tag) {
            continue;
        }
        // Each pass removes one occurrence per Subject field; a handful is plenty.
        for _ in 0..4 {
            match headers::strip_triggers(&message, Some(tag), None) {
                Some(m) => message = m,
                None => break,
            }
        }
    }
    add_tags(message, earned)
}

/// Prefixes the first Subject field with the tags its decoded text does not already carry
/// (adds a Subject field when there is none). The rest of the field is kept byte for byte, so
/// RFC 2047 encoded-words stay valid: the tags are plain text separated from them by a space.
fn add_tags(message: Vec<u8>, tags: &[&str]) -> Vec<u8> {
    let subject = headers::read(&message, None).subject;
    let missing: Vec<&str> = tags
        .iter()
        .copied()
        .filter(|t| !headers::has_tag(subject.as_deref(), Some(t)))
        .collect();
    if missing.is_empty() {
        return message;
    }
    let prefix = missing.join(" ");
    let end = headers::header_len(&message);
    let head = &message[..end];
    let mut at = 0;
    while at < head.len() {
        let line_end = memchr::memchr(b'\n', &head[at..]).map_or(head.len(), |k| at + k + 1);
        let line = &head[at..line_end];
        if line.len() >= 8 && line[..8].eq_ignore_ascii_case(b"subject:") {
            let mut value = at + 8;
            while value < line_end && matches!(message[value], b' ' | b'\t') {
                value += 1;
            }
            let rest = &message[value..];
            let mut out = Vec::with_capacity(message.len() + prefix.len() + 2);
            out.extend_from_slice(&message[..at + 8]);
            out.push(b' ');
            out.extend_from_slice(prefix.as_bytes());
            if !(rest.starts_with(b"\r\n") || rest.starts_with(b"\n")) {
                out.push(b' ');
            }
            out.extend_from_slice(rest);
            return out;
        }
        at = line_end;
    }
    let mut out = format!("Subject: {prefix}\r\n").into_bytes();
    out.extend_from_slice(&message);
    out
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
        assert!(may_reject(&inbound));
        let relaxed = for_release(&inbound);
        assert_eq!(relaxed.on_undecryptable, OnUndecryptable::Deliver);
        assert!(relaxed.rules.iter().all(|r| r.action == InboundAction::Tag));
        assert_eq!(relaxed.rules[1].require, inbound.rules[1].require);
        assert!(!may_reject(&relaxed));
    }

    #[test]
    fn tags_go_before_encoded_words_and_are_not_doubled() {
        let m = b"From: a@x.example\r\nSubject: =?UTF-8?B?w6TDtsO8?=\r\n\r\nbody\r\n".to_vec();
        let out = add_tags(m, &[TAG_SIGNED]);
        let subject = headers::read(&out, None).subject.unwrap();
        assert_eq!(subject, "[signed] äöü");
        assert!(out.starts_with(b"From: a@x.example\r\nSubject: [signed] =?UTF-8?B?"));
        // Tagged once, whatever the case.
        let again = add_tags(out.clone(), &["[Signed]"]);
        assert_eq!(again, out);
        // Folded subject: the continuation stays.
        let m = b"Subject:\r\n folded\r\n\r\nx".to_vec();
        let out = add_tags(m, &[TAG_DECRYPTED]);
        assert_eq!(out, b"Subject: [decrypted]\r\n folded\r\n\r\nx");
        // No Subject at all: one is added.
        let out = add_tags(b"From: a@x.example\r\n\r\nx".to_vec(), &[TAG_SIGNED]);
        assert!(out.starts_with(b"Subject: [signed]\r\nFrom:"));
    }

    #[test]
    fn unearned_status_tags_are_removed() {
        let m = b"Subject: Re: [signed] [decrypted] offer\r\n\r\nx".to_vec();
        let out = subject_tags(m, &[]);
        assert_eq!(headers::read(&out, None).subject.unwrap(), "Re: offer");
        let m = b"Subject: [signed] offer\r\n\r\nx".to_vec();
        let out = subject_tags(m, &[TAG_SIGNED]);
        assert_eq!(headers::read(&out, None).subject.unwrap(), "[signed] offer");
    }

    #[test]
    fn own_fields_and_our_authentication_results_are_stripped() {
        let m = b"Authentication-Results: gw.example.org; smime=pass\r\nAuthentication-Results: mx.example.net; dkim=pass\r\nX-Cachet-Decrypted: for=<x@y>; key=sha256:00\r\nx-cachet-inbound-rule: rule=1\r\nSubject: s\r\n\r\nX-Cachet-Decrypted: body\r\n";
        let out = strip_claims(m, "gw.example.org");
        assert_eq!(
            &*out,
            b"Authentication-Results: mx.example.net; dkim=pass\r\nSubject: s\r\n\r\nX-Cachet-Decrypted: body\r\n"
        );
        // Folding with no field before it cannot continue the field we add.
        let out = strip_claims(
            b"\tsmime=pass\r\n more\r\nSubject: s\r\n\r\nx",
            "gw.example.org",
        );
        assert_eq!(&*out, b"Subject: s\r\n\r\nx");
    }
}
