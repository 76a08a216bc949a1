//! Recipient certificates: the `[certificates] dir`, indexed by email address.
//!
//! Every `*.pem`, `*.crt`, `*.cer` and `*.der` file in the directory is read (any file name, any
//! number of certificates per PEM file). CA certificates (basicConstraints cA) serve as
//! intermediates for the others. End-entity certificates are indexed by each rfc822Name of their
//! subjectAltName, case-insensitively ([`normalize_address`]). The subject emailAddress is never
//! used (see [`validate::inspect`]): a certificate without an rfc822Name is reported, not indexed.
//!
//! A certificate is used only when [`validate::check`] accepts it for encryption at lookup time;
//! of several usable ones the newest (latest notBefore) wins. Lookups never touch the disk: the
//! store is rebuilt on reload.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use super::validate::{self, CertInfo, Purpose};
use super::{KeyKind, Problem, TrustAnchors, normalize_address};

/// An extra test for a lookup candidate (the certificate, the intermediates to chain it):
/// `Err(reason)` passes it over. Used for revocation ([`CertStore::lookup_with`]).
pub type Accept<'a> =
    dyn Fn(&CertificateDer<'static>, &[CertificateDer<'static>]) -> Result<(), String> + 'a;

/// One SMIMECapability (RFC 8551 §2.5.2): what a correspondent said it can decrypt, kept in the
/// correspondent's order of preference. Read from signatures (`smime::verify`), stored with
/// harvested certificates, and consulted when choosing how to encrypt to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub oid: const_oid::ObjectIdentifier,
    /// DER of the parameters, when present.
    pub parameters: Option<Vec<u8>>,
}

/// A certificate we may encrypt to (or one that was considered and rejected).
#[derive(Debug, Clone)]
pub struct RecipientCert {
    /// All rfc822Names of the certificate's subjectAltName, lower-cased.
    pub emails: Vec<String>,
    /// SHA-256 over the DER certificate, lower-case hex: what logs and `check` show.
    pub fingerprint: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Decides the key management: RSA key transport or ECDH P-256 key agreement.
    pub key: KeyKind,
    /// The certificate itself; RecipientInfos name it by issuer and serial number.
    pub der: CertificateDer<'static>,
    /// DER SubjectPublicKeyInfo, fed to aws-lc-rs when encrypting.
    pub spki_der: Vec<u8>,
    /// What the holder announced in their last signed message (SMIMECapabilities), most
    /// preferred first; empty when unknown (certificates from files and directories).
    pub capabilities: Vec<Capability>,
}

impl RecipientCert {
    /// Parse a certificate for use as an encryption target. Does NOT validate it: callers go
    /// through [`CertStore::lookup`] (or validate themselves) before encrypting.
    pub fn from_der(der: CertificateDer<'static>) -> Result<RecipientCert, String> {
        let info = validate::inspect(&der)?;
        Self::from_info(der, &info)
    }

    pub(crate) fn from_info(
        der: CertificateDer<'static>,
        info: &CertInfo,
    ) -> Result<RecipientCert, String> {
        let key = info.key_kind()?;
        Ok(RecipientCert {
            emails: info.emails.clone(),
            fingerprint: info.fingerprint.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            key,
            der,
            spki_der: info.spki_der.clone(),
            capabilities: Vec::new(),
        })
    }
}

/// Result of a lookup: the certificate to use, if any, and every candidate that was refused.
#[derive(Debug, Clone, Default)]
pub struct CertLookup {
    pub cert: Option<Arc<RecipientCert>>,
    /// (fingerprint, reason) of each certificate for this address that cannot be used.
    pub rejected: Vec<(String, String)>,
}

/// One indexed end-entity certificate.
#[derive(Debug)]
struct Candidate {
    cert: Option<Arc<RecipientCert>>,
    info: CertInfo,
    der: CertificateDer<'static>,
}

/// Recipient certificates by address; immutable once loaded, shared by `Arc`.
#[derive(Debug, Default)]
pub struct CertStore {
    by_address: HashMap<String, Vec<Candidate>>,
    /// CA certificates found in the directory, offered to path building.
    intermediates: Vec<CertificateDer<'static>>,
    /// Copied anchors so lookups need no other reference (reload swaps the whole store).
    trust: TrustAnchors,
}

impl CertStore {
    /// Read the directory; report unreadable files and every certificate that does not validate
    /// for encryption at `now`.
    pub fn load(dir: &Path, trust: &TrustAnchors, now: SystemTime) -> (CertStore, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut loaded: Vec<(std::path::PathBuf, CertificateDer<'static>)> = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(Problem::new(
                    dir,
                    format!("cannot read certificate directory: {e}"),
                ));
                return (
                    CertStore {
                        trust: clone_trust(trust),
                        ..Default::default()
                    },
                    problems,
                );
            }
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            if !matches!(ext.as_str(), "pem" | "crt" | "cer" | "der") || !path.is_file() {
                continue;
            }
            match super::read_certificates(&path) {
                Ok(certs) if certs.is_empty() => {
                    problems.push(Problem::new(&path, "no certificate in file"))
                }
                Ok(certs) => loaded.extend(certs.into_iter().map(|c| (path.clone(), c))),
                Err(reason) => problems.push(Problem::new(&path, reason)),
            }
        }
        let (store, more) = Self::index(loaded, trust, now);
        problems.extend(more);
        (store, problems)
    }

    /// A store from certificates already in memory (tools and tests); problems name `<memory>`.
    pub fn from_certs(
        certs: Vec<CertificateDer<'static>>,
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> (CertStore, Vec<Problem>) {
        let here = std::path::PathBuf::from("<memory>");
        Self::index(
            certs.into_iter().map(|c| (here.clone(), c)).collect(),
            trust,
            now,
        )
    }

    /// Index end-entity certificates by address and keep CA certificates as intermediates;
    /// every certificate that does not validate for encryption at `now` is reported.
    fn index(
        loaded: Vec<(std::path::PathBuf, CertificateDer<'static>)>,
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> (CertStore, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut store = CertStore {
            trust: clone_trust(trust),
            ..Default::default()
        };
        let mut parsed = Vec::new();
        for (path, der) in loaded {
            match validate::inspect(&der) {
                Ok(info) if info.is_ca => store.intermediates.push(der),
                Ok(info) => parsed.push((path, der, info)),
                Err(reason) => problems.push(Problem::new(&path, reason)),
            }
        }
        for (path, der, info) in parsed {
            if info.emails.is_empty() {
                problems.push(Problem::new(
                    &path,
                    format!(
                        "certificate {}: {}",
                        info.fingerprint,
                        validate::NO_RFC822_NAME
                    ),
                ));
                continue;
            }
            if let Err(reason) = store.validate(&der, &info, now) {
                problems.push(Problem::new(
                    &path,
                    format!(
                        "certificate {} for {}: {reason}",
                        info.fingerprint,
                        info.emails.join(", ")
                    ),
                ));
            }
            let cert = RecipientCert::from_info(der.clone(), &info)
                .ok()
                .map(Arc::new);
            for email in &info.emails {
                let list = store.by_address.entry(email.clone()).or_default();
                if !list.iter().any(|c| c.info.fingerprint == info.fingerprint) {
                    list.push(Candidate {
                        cert: cert.clone(),
                        info: info.clone(),
                        der: der.clone(),
                    });
                }
            }
        }
        (store, problems)
    }

    fn validate(
        &self,
        der: &CertificateDer<'_>,
        info: &CertInfo,
        now: SystemTime,
    ) -> Result<KeyKind, String> {
        self.validate_found(der, info, &[], now)
    }

    /// The one check for every recipient certificate, wherever it was found: this store's
    /// files, or a directory (`store::directory`), whose bag may bring CA certificates of its
    /// own (`extra_intermediates`, tried after this store's).
    pub fn validate_found(
        &self,
        der: &CertificateDer<'_>,
        info: &CertInfo,
        extra_intermediates: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> Result<KeyKind, String> {
        let intermediates: std::borrow::Cow<'_, [CertificateDer<'static>]> =
            if extra_intermediates.is_empty() {
                std::borrow::Cow::Borrowed(&self.intermediates)
            } else {
                std::borrow::Cow::Owned(
                    self.intermediates
                        .iter()
                        .chain(extra_intermediates)
                        .cloned()
                        .collect(),
                )
            };
        validate::check(
            der,
            info,
            &intermediates,
            &self.trust,
            now,
            Purpose::Encrypt,
        )
    }

    /// The newest certificate for `address` that validates for encryption at `now`, and the
    /// reasons every other candidate was refused. In memory only.
    pub fn lookup(&self, address: &str, now: SystemTime) -> CertLookup {
        self.lookup_with(address, now, &|_, _| Ok(()))
    }

    /// [`CertStore::lookup`] with one more test for each otherwise valid candidate (given the
    /// certificate and the intermediates to chain it): revocation. A refusal's reason lands in
    /// `rejected` and the next candidate may win.
    pub fn lookup_with(&self, address: &str, now: SystemTime, accept: &Accept<'_>) -> CertLookup {
        let mut out = CertLookup::default();
        let Some(cands) = self.by_address.get(&normalize_address(address)) else {
            return out;
        };
        for c in cands {
            let verdict = self
                .validate(&c.der, &c.info, now)
                .and_then(|k| accept(&c.der, &self.intermediates).map(|_| k));
            match (verdict, &c.cert) {
                (Ok(_), Some(cert)) => {
                    // Several valid certificates: the newest wins (issue 3).
                    let newer = out.cert.as_ref().is_none_or(|best| {
                        (cert.not_before, cert.not_after) > (best.not_before, best.not_after)
                    });
                    if newer {
                        out.cert = Some(cert.clone());
                    }
                }
                (Err(reason), _) => out.rejected.push((c.info.fingerprint.clone(), reason)),
                (Ok(_), None) => out
                    .rejected
                    .push((c.info.fingerprint.clone(), "unsupported key".into())),
            }
        }
        out
    }

    /// Every indexed end-entity certificate (once each), for the revocation refresher.
    pub fn certificates(&self) -> Vec<&CertificateDer<'static>> {
        let mut seen = std::collections::HashSet::new();
        self.by_address
            .values()
            .flatten()
            .filter(|c| seen.insert(c.info.fingerprint.as_str()))
            .map(|c| &c.der)
            .collect()
    }

    /// The CA certificates of the directory, offered to path building.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// Addresses with at least one indexed certificate (valid or not), sorted.
    pub fn addresses(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_address.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

fn clone_trust(t: &TrustAnchors) -> TrustAnchors {
    TrustAnchors {
        anchors: t.anchors.clone(),
        certs: t.certs.clone(),
    }
}
