//! The seam between spool and relay: (envelope, message bytes, pending recipients) -> outgoing
//! copies, each for a group of recipients that get the same treatment, plus the recipients whose
//! required protection cannot be met (refused, held or bounced — never sent in plaintext).
//!
//! [`decide`] is the one policy decision for a (sender, recipient) pair with the loaded stores;
//! the session's RCPT check ([`rcpt_check`]), delivery ([`seal`]) and `cachet explain` all call
//! it. [`seal`] then groups recipients by treatment (Bcc recipients of encrypted copies alone,
//! so their certificate never shows in a copy others receive), signs once per message and
//! encrypts once per group (one content key per copy). CPU work: callers run it off the async
//! threads.

pub mod explain;
pub mod headers;

use crate::config::Config;
use crate::policy::{
    Cipher, Digest, KeyTransport, Mode, OnMissing, Revocation, SignatureForm, Treatment,
};
use crate::reply::{self, Reply};
use crate::runtime::{Runtime, Stores};
use crate::smime;
use crate::spool::Envelope;
use crate::store::revocation::Status;
use crate::store::{RecipientCert, SigningIdentity};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
/// `from` is `None` at RCPT time (the header is not known yet): signing is then not decided.
pub fn decide(
    rt: &Runtime,
    sender: &str,
    from: Option<&str>,
    recipient: &str,
    triggered: bool,
    during_smtp: bool,
) -> Decision {
    let (rule, mut t) = rt.config.policy.treatment(sender, recipient);
    if triggered {
        t.encrypt = t.encrypt.max(Mode::Required);
    }
    let (lookup, cert_pending) = recipient_certificate(rt, &t, recipient);
    // Only addresses in the organisation's own domains are ever signed for.
    let (signer, signer_pending) = match from.filter(|f| rt.config.submitters.is_local(f)) {
        Some(f) => signing_identity(rt, &t, f),
        None => (None, None),
    };
    // A certificate passed over only because its first revocation answer is still to come
    // (hard mode) makes the recipient wait at delivery; during SMTP it is accepted.
    let wait = |pending: Option<String>, otherwise: Fate| match pending {
        Some(_) if during_smtp => Fate::Send,
        Some(reason) => Fate::Defer(reason),
        None => otherwise,
    };
    let no_cert = t.encrypt != Mode::Never && lookup.cert.is_none();
    let no_signer = from.is_some() && t.sign != Mode::Never && signer.is_none();
    let fate = if t.encrypt == Mode::Required && lookup.cert.is_none() {
        let otherwise = missing(t.on_missing_key, no_certificate(recipient), during_smtp);
        wait(cert_pending, otherwise)
    } else if from.is_some() && t.sign == Mode::Required && signer.is_none() {
        let otherwise = missing(t.on_missing_key, no_signing_key(from), during_smtp);
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
        recipient: recipient.to_string(),
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

/// The recipient's certificate, revocation checked per `t.revocation`; the second value is set
/// when a certificate was passed over only because its first answer is still to come.
fn recipient_certificate(
    rt: &Runtime,
    t: &Treatment,
    recipient: &str,
) -> (crate::store::CertLookup, Option<String>) {
    let now = SystemTime::now();
    if t.encrypt == Mode::Never || t.revocation == Revocation::Off {
        return (rt.stores.certs.lookup(recipient, now), None);
    }
    let pending = std::cell::Cell::new(None::<String>);
    let lookup = rt.stores.certs.lookup_with(recipient, now, &|der, chain| {
        let status = rt
            .stores
            .revocation
            .status(der, chain, &rt.stores.trust, now);
        revocation_verdict(
            rt,
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
    rt: &Runtime,
    t: &Treatment,
    from: &str,
) -> (Option<Arc<SigningIdentity>>, Option<String>) {
    let Some(id) = rt.stores.signer(from) else {
        return (None, None);
    };
    if t.sign == Mode::Never || t.revocation == Revocation::Off {
        return (Some(id), None);
    }
    let status = rt.stores.signer_status(&id);
    if let Status::Revoked(source) = &status {
        // An alert: the organisation's own certificate must be replaced.
        tracing::error!(address = %id.email, fingerprint = %id.fingerprint, source = source.name(), "ALERT: our signing certificate is revoked; not signing with it");
    }
    match revocation_verdict(rt, t.revocation, &status, "signing certificate", &id.email) {
        Ok(()) => (Some(id), None),
        Err((reason, pending)) => (None, pending.then_some(reason)),
    }
}

/// What the revocation mode makes of a certificate's status: `Ok` = use it; `Err((reason,
/// pending))` = treat it as absent. Revoked is never used; unknown is used under `soft` (logged
/// and counted) and refused under `hard`. Every check is counted by result and source.
fn revocation_verdict(
    rt: &Runtime,
    mode: Revocation,
    status: &Status,
    what: &str,
    address: &str,
) -> Result<(), (String, bool)> {
    rt.stores.revocation.count(status);
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
pub fn rcpt_check(rt: &Runtime, sender: &str, recipient: &str) -> Option<Reply> {
    match decide(rt, sender, None, recipient, false, true).fate {
        Fate::Refuse(r) => Some(r),
        _ => None,
    }
}

/// End-of-DATA check, once the From: header is known: a required signature that is impossible
/// with on_missing_key = reject refuses the message (`550 5.7.1`) before it is queued.
pub fn data_check(rt: &Runtime, sender: &str, recipients: &[String], head: &[u8]) -> Option<Reply> {
    let h = headers::read(head, rt.config.policy.encrypt_header.as_deref());
    recipients.iter().find_map(|r| {
        match decide(
            rt,
            sender,
            Some(h.from.as_deref().unwrap_or("")),
            r,
            false,
            true,
        )
        .fate
        {
            Fate::Refuse(reply) => Some(reply),
            _ => None,
        }
    })
}

/// One message to relay.
#[derive(Debug)]
pub struct Copy {
    pub recipients: Vec<String>,
    /// Shared: several groups signed by the same key carry the same signed bytes, uncopied.
    pub message: Arc<Vec<u8>>,
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
    /// Recipients to try again later (a temporary crypto failure), with the reason.
    pub deferred: Vec<(String, String)>,
}

pub fn cipher_name(c: Cipher) -> &'static str {
    match c {
        Cipher::Aes256Cbc => "aes256-cbc",
        Cipher::Aes128Gcm => "aes128-gcm",
        Cipher::Aes256Gcm => "aes256-gcm",
    }
}

fn sign_options(rt: &Runtime) -> smime::SignOptions {
    let p = &rt.config.policy;
    let cipher = |c: Cipher| match c {
        Cipher::Aes256Cbc => smime::ContentCipher::Aes256Cbc,
        Cipher::Aes128Gcm => smime::ContentCipher::Aes128Gcm,
        Cipher::Aes256Gcm => smime::ContentCipher::Aes256Gcm,
    };
    let transport = |k: KeyTransport| match k {
        KeyTransport::RsaPkcs1 => smime::KeyTransport::RsaPkcs1,
        KeyTransport::RsaOaep => smime::KeyTransport::RsaOaep,
    };
    // SMIMECapabilities (RFC 8551 §2.5.2, §2.7.1): the [policy] default first, then what the
    // rules name; `smime::ReplyAlgorithms` says why and orders them.
    let mut replies = smime::ReplyAlgorithms::preferring(
        cipher(p.defaults.encryption),
        transport(p.defaults.key_transport),
    );
    for rule in &p.rules {
        let (c, k) = rule.algorithms();
        replies.accept(c.map(cipher), k.map(transport));
    }
    smime::SignOptions {
        replies,
        form: match p.signature_form {
            SignatureForm::Detached => smime::SignForm::Detached,
            SignatureForm::Opaque => smime::SignForm::Opaque,
        },
        digest: match p.digest {
            Digest::Sha256 => smime::Digest::Sha256,
            Digest::Sha512 => smime::Digest::Sha512,
        },
        rsa_pss: p.rsa_pss,
    }
}

fn encrypt_options(t: &Treatment) -> smime::EncryptOptions {
    smime::EncryptOptions {
        cipher: match t.encryption {
            Cipher::Aes256Cbc => smime::ContentCipher::Aes256Cbc,
            Cipher::Aes128Gcm => smime::ContentCipher::Aes128Gcm,
            Cipher::Aes256Gcm => smime::ContentCipher::Aes256Gcm,
        },
        key_transport: match t.key_transport {
            KeyTransport::RsaPkcs1 => smime::KeyTransport::RsaPkcs1,
            KeyTransport::RsaOaep => smime::KeyTransport::RsaOaep,
        },
    }
}

/// Per-message triggers: honoured for every accepted message (only relay networks and
/// authenticated users can submit), never for our own bounces.
fn triggered(rt: &Runtime, env: &Envelope, h: &headers::Headers) -> bool {
    let p = &rt.config.policy;
    !env.is_bounce
        && (h.encrypt_header || headers::has_tag(h.subject.as_deref(), p.subject_tag.as_deref()))
}

/// Builds the outgoing copies for `recipients` (the envelope's pending ones).
pub fn seal(rt: &Runtime, env: &Envelope, message: &[u8], recipients: &[String]) -> Sealed {
    let p = &rt.config.policy;
    let h = headers::read(message, p.encrypt_header.as_deref());
    let trig = triggered(rt, env, &h);
    let mut sealed = Sealed {
        message_id: h.message_id.clone(),
        ..Default::default()
    };
    let from = h.from.clone().unwrap_or_default();

    // Group: same (signer, encryption settings); encrypted Bcc recipients alone.
    type Key = (
        Option<String>,
        Option<(Cipher, KeyTransport)>,
        Option<String>,
    );
    let mut groups: Vec<(Key, Vec<Decision>)> = Vec::new();
    for r in recipients {
        let d = decide(rt, &env.sender, Some(&from), r, trig, false);
        match &d.fate {
            Fate::Send => {}
            Fate::Hold(reason) => {
                sealed.held.push((r.clone(), reason.clone()));
                continue;
            }
            Fate::Defer(reason) => {
                tracing::info!(queue_id = %env.id, rcpt = %r, reason = %reason, "deferred: waiting for revocation status");
                sealed.deferred.push((
                    r.clone(),
                    format!("4.7.0 waiting for revocation status: {reason}"),
                ));
                continue;
            }
            Fate::Refuse(reply) | Fate::Bounce(reply) => {
                sealed.failed.push((r.clone(), reply.clone()));
                continue;
            }
        }
        let enc = d
            .cert
            .as_ref()
            .map(|_| (d.treatment.encryption, d.treatment.key_transport));
        let blind = enc.is_some() && !h.visible.contains(&r.to_ascii_lowercase());
        let key: Key = (
            d.signer.as_ref().map(|s| s.fingerprint.clone()),
            enc,
            blind.then(|| r.clone()),
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(d),
            None => groups.push((key, vec![d])),
        }
    }
    if groups.is_empty() {
        return sealed;
    }

    // A submitter's tenant header and the triggers never leave the gateway; nothing is
    // rewritten after signing.
    let without_tenant = headers::remove_fields(message, &env.remove_headers);
    let message: &[u8] = without_tenant.as_deref().unwrap_or(message);
    let stripped = headers::strip_triggers(
        message,
        p.subject_tag.as_deref(),
        p.encrypt_header.as_deref(),
    );
    let base: &[u8] = stripped.as_deref().unwrap_or(message);
    // Sign once per signer, encrypt once per group.
    // Signed entity per signer fingerprint, made once and shared by every group it signs.
    type Signed = Result<Arc<Vec<u8>>, smime::SmimeError>;
    let mut signed: Vec<(String, Signed)> = Vec::new();
    for ((signer_fp, enc, _), decisions) in groups {
        let rcpts: Vec<String> = decisions.iter().map(|d| d.recipient.clone()).collect();
        let first = &decisions[0];
        let fail = |sealed: &mut Sealed, e: &smime::SmimeError| {
            tracing::error!(queue_id = %env.id, error = %e, "S/MIME failed");
            for r in &rcpts {
                if e.is_temporary() {
                    sealed
                        .deferred
                        .push((r.clone(), format!("4.3.0 S/MIME: {e}")));
                } else {
                    sealed.failed.push((
                        r.clone(),
                        Reply::owned(554, "5.7.1", format!("S/MIME: {e}")),
                    ));
                }
            }
        };
        let body: Arc<Vec<u8>> = match (&signer_fp, &first.signer) {
            (Some(fp), Some(id)) => {
                if !signed.iter().any(|(f, _)| f == fp) {
                    signed.push((
                        fp.clone(),
                        smime::sign(base, id, &sign_options(rt)).map(Arc::new),
                    ));
                }
                match &signed
                    .iter()
                    .find(|(f, _)| f == fp)
                    .expect("just inserted")
                    .1
                {
                    Ok(b) => Arc::clone(b),
                    Err(e) => {
                        fail(&mut sealed, e);
                        continue;
                    }
                }
            }
            _ => Arc::new(base.to_vec()),
        };
        let (message, encrypted_to, algorithm) = match enc {
            None => (body, Vec::new(), None),
            Some(_) => {
                let mut certs: Vec<Arc<RecipientCert>> =
                    decisions.iter().filter_map(|d| d.cert.clone()).collect();
                if p.encrypt_to_self
                    && let Some(own) = rt
                        .stores
                        .signer(&from)
                        .and_then(|s| s.encryption_cert.clone())
                    && !certs.iter().any(|c| c.fingerprint == own.fingerprint)
                {
                    certs.push(own);
                }
                match smime::encrypt(&body, &certs, &encrypt_options(&first.treatment)) {
                    Ok(m) => (
                        Arc::new(m),
                        certs.iter().map(|c| c.fingerprint.clone()).collect(),
                        Some(cipher_name(first.treatment.encryption)),
                    ),
                    Err(e) => {
                        fail(&mut sealed, &e);
                        continue;
                    }
                }
            }
        };
        sealed.copies.push(Copy {
            recipients: rcpts,
            message,
            rule: first.rule.clone(),
            signer: signer_fp,
            encrypted_to,
            algorithm,
        });
    }
    sealed
}

/// Lines `cachet check` prints after "ok": what was loaded, then warnings (unusable files,
/// certificates and keys expiring within 30 days).
pub fn check_summary(rt: &Runtime) -> Vec<String> {
    let s = &rt.stores;
    let mut out = vec![format!(
        "policy {} with {} rule(s); upstream {}; {} signing key(s), {} recipient certificate(s), {} trust anchor(s)",
        rt.config.policy.version,
        rt.config.policy.rules.len(),
        rt.config.upstream.url,
        s.keys.iter().count(),
        s.certs.addresses().len(),
        s.trust.len()
    )];
    out.extend(s.warnings.iter().map(|w| format!("warning: {w}")));
    out.extend(submitter_warnings(&rt.config));
    // Policy settings a key cannot honour.
    if rt.config.policy.digest == Digest::Sha512 {
        for id in s
            .keys
            .iter()
            .filter(|id| id.key == crate::store::KeyKind::EcP256)
        {
            out.push(format!("warning: policy.digest = \"sha512\" but the signing key for {} is EC P-256: it signs with SHA-256", id.email));
        }
    }
    if rt.config.policy.rsa_pss {
        for id in s
            .keys
            .iter()
            .filter(|id| id.key == crate::store::KeyKind::EcP256)
        {
            out.push(format!("warning: policy.rsa_signature = \"pss\" does not apply to the EC P-256 key for {} (ECDSA)", id.email));
        }
    }
    out.extend(revocation_advice(&rt.config.policy));
    out.extend(revocation_warnings(rt));
    let soon = SystemTime::now() + Duration::from_secs(30 * 86400);
    for id in s.keys.iter().filter(|id| id.not_after < soon) {
        out.push(format!(
            "warning: signing key {} ({}) expires within 30 days ({})",
            id.email,
            id.fingerprint,
            crate::date::rfc5322(id.not_after)
        ));
    }
    for addr in s.certs.addresses() {
        if let Some(c) = s.certs.lookup(addr, SystemTime::now()).cert
            && c.not_after < soon
        {
            out.push(format!(
                "warning: certificate for {addr} ({}) expires within 30 days ({})",
                c.fingerprint,
                crate::date::rfc5322(c.not_after)
            ));
        }
    }
    out
}

/// `cachet check` advice: where encryption is required, an unknown revocation status should
/// not let a possibly revoked certificate through (`revocation = "hard"`).
pub fn revocation_advice(policy: &crate::policy::Policy) -> Vec<String> {
    let mut out = Vec::new();
    let d = policy.defaults;
    if d.encrypt == Mode::Required && d.revocation != Revocation::Hard {
        out.push("suggestion: [policy] encrypt = \"required\": consider revocation = \"hard\" so a certificate whose revocation status is unknown is not used".to_string());
    }
    for r in &policy.rules {
        let encrypt = r.set.encrypt.unwrap_or(d.encrypt);
        let revocation = r.set.revocation.unwrap_or(d.revocation);
        if encrypt == Mode::Required && revocation != Revocation::Hard {
            out.push(format!("suggestion: rule {:?} has encrypt = \"required\": consider revocation = \"hard\" so a certificate whose revocation status is unknown is not used", r.name));
        }
    }
    out
}

/// `cachet check` warnings about recipient certificates whose revocation status is known now
/// (from `crl_dir`) to be revoked, or can never be known (no CRL distribution point, no OCSP
/// responder, no CRL in `crl_dir`) while some rule says `revocation = "hard"`.
pub fn revocation_warnings(rt: &Runtime) -> Vec<String> {
    let p = &rt.config.policy;
    let hard = p.defaults.revocation == Revocation::Hard
        || p.rules
            .iter()
            .any(|r| r.set.revocation == Some(Revocation::Hard));
    if !p.revocation_in_use() {
        return Vec::new();
    }
    let s = &rt.stores;
    let now = SystemTime::now();
    let mut out = Vec::new();
    for addr in s.certs.addresses() {
        let seen = std::cell::RefCell::new(Vec::new());
        s.certs.lookup_with(addr, now, &|der, chain| {
            let fp = crate::store::hex(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref(),
            );
            seen.borrow_mut()
                .push((fp, s.revocation.status(der, chain, &s.trust, now)));
            Ok(())
        });
        for (fp, status) in seen.into_inner() {
            match status {
                Status::Revoked(source) => out.push(format!(
                    "warning: certificate for {addr} ({fp}) is revoked ({}); it is never used",
                    source.name()
                )),
                Status::Unknown {
                    reason,
                    pending: false,
                } if hard => out.push(format!(
                    "warning: certificate for {addr} ({fp}): its revocation status cannot be known ({reason}); rules with revocation = \"hard\" will not use it"
                )),
                _ => {}
            }
        }
    }
    out
}

/// `cachet check` warnings about who may submit: public ranges in `relay_networks` that no
/// `[[submitter]]` entry narrows (every tenant of a shared platform could send as you).
pub fn submitter_warnings(config: &Config) -> Vec<String> {
    let subs = &config.submitters;
    let mut out = Vec::new();
    for net in &subs.relay_networks {
        if is_private(net) {
            continue;
        }
        let narrowed = subs.entries.iter().any(|e| {
            e.networks
                .iter()
                .any(|n| n.contains(net) || net.contains(n))
        });
        if !narrowed {
            out.push(format!(
                "warning: {}: server.relay_networks: {net} is a public range and no [[submitter]] entry restricts it: every host there (on a shared platform, every tenant) may send as any address in server.local_domains; authenticate the platform with a [[submitter]] entry (tls_client + require_header) instead, see docs/deployment.md",
                config.path.display()
            ));
        }
    }
    out
}

/// Loopback, RFC 1918, link-local, CGNAT, ULA: ranges only the organisation's own hosts use.
fn is_private(net: &ipnet::IpNet) -> bool {
    use std::net::IpAddr;
    let private: [&str; 9] = [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ];
    let inside = |n: &ipnet::IpNet| {
        private
            .iter()
            .filter_map(|p| p.parse::<ipnet::IpNet>().ok())
            .any(|p| p.contains(n))
    };
    match net.addr() {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            let v4 = v6.to_ipv4_mapped().unwrap();
            let len = net.prefix_len().saturating_sub(96);
            ipnet::Ipv4Net::new(v4, len).is_ok_and(|n| inside(&ipnet::IpNet::V4(n)))
        }
        _ => inside(net),
    }
}

/// Prometheus gauges for certificate expiry (one per signing key and recipient certificate).
pub fn expiry_gauges(stores: &Stores) -> String {
    use std::fmt::Write;
    let mut s = String::from(
        "# HELP cachet_certificate_expiry_seconds Unix time when a certificate in use expires.\n# TYPE cachet_certificate_expiry_seconds gauge\n",
    );
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    };
    for id in stores.keys.iter() {
        let _ = writeln!(
            s,
            "cachet_certificate_expiry_seconds{{kind=\"signing\",address=\"{}\",fingerprint=\"{}\"}} {}",
            id.email,
            id.fingerprint,
            secs(id.not_after)
        );
    }
    for addr in stores.certs.addresses() {
        if let Some(c) = stores.certs.lookup(addr, SystemTime::now()).cert {
            let _ = writeln!(
                s,
                "cachet_certificate_expiry_seconds{{kind=\"recipient\",address=\"{addr}\",fingerprint=\"{}\"}} {}",
                c.fingerprint,
                secs(c.not_after)
            );
        }
    }
    s
}
