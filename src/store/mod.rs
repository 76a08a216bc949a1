//! Keys and certificates: the organisation's keys (signing identities and decryption keys,
//! loaded once per start or reload and held in memory) and recipient certificates, looked up
//! by address from one SQLite database ([`certdb`], `certificates.store`) that holds the files of
//! `certificates.dir` (synced by stat at load), imported certificates and the ones harvested
//! from inbound signed mail, with their announced [`Capability`] lists; directory answers too
//! ([`directory`] fetches them ahead of time, lookups read its cache).
//!
//! Owns, on disk: the `[keys] dir` (one `<address>.pem` or `<address>.p12` per identity), the
//! `[certificates] dir` (recipient certificates, any file names), the certificate database and
//! the trust anchor files. [`keys::KeyStore::load`], [`certs::CertStore::open`] and
//! [`TrustAnchors::load`] run at start and on reload; each returns the store *and* a list of
//! [`Problem`]s, one line each in `cachet check`. A bad file never stops the others from loading,
//! and a certificate that fails validation is reported and never used.
//!
//! Secrets touched: the private keys (and PKCS#12 passwords, the key passphrase, the token PIN).
//! Keys are used only behind [`keys::PrivateKey`] (sign, decrypt): in memory for key files
//! (plain or encrypted, [`keyfile`]), on a PKCS#11 token for `[keys.pkcs11]` ([`pkcs11`]), where
//! they never leave it. `cachet keys list/import` live in [`import`].
//!
//! Validation rules (RFC 8550 §4, RFC 5280 §6) live in [`validate`], shared by both stores.
//! Certificates can also come from LDAP directories ([`directory`]): fetched over the network
//! by an async prefetch into a cache, and validated by the same [`CertStore::validate_found`].

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::TrustAnchor;
use rustls_pki_types::pem::PemObject;

pub mod capability;
pub mod certdb;
pub mod certs;
pub mod directory;
pub mod import;
pub mod keyfile;
pub mod keys;
pub mod pkcs11;
pub mod private_key;
pub mod revocation;
pub mod validate;

pub use capability::Capability;
pub use certdb::harvest::{Harvest, Harvested};
pub use certs::{CertLookup, CertStore, RecipientCert};
pub use keys::{KeyStore, SigningIdentity};

/// One thing `cachet check` reports: which file, and why it (or a certificate in it) is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem was found in (the directory itself when it cannot be read).
    pub path: PathBuf,
    /// Human-readable reason; never contains key material.
    pub reason: String,
}

impl Problem {
    pub(crate) fn new(path: &Path, reason: impl Into<String>) -> Self {
        Problem {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// The public key of a certificate or signing identity, as far as algorithm choice cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA; `bits` is the modulus size (we refuse anything under 2048, RFC 8551 §4).
    Rsa { bits: usize },
    /// ECDSA / ECDH on NIST P-256 (secp256r1).
    EcP256,
}

/// The certificates every other certificate must chain to (`[certificates] trust`).
///
/// Only self-contained roots belong here; intermediates come from the key files and the
/// recipient certificate directory.
#[derive(Debug, Default)]
pub struct TrustAnchors {
    /// Parsed anchors borrowed by webpki; owned copies so the store can live in an `Arc`.
    pub(crate) anchors: Vec<TrustAnchor<'static>>,
    /// The anchor certificates themselves (DER), for callers that want to show them.
    pub(crate) certs: Vec<CertificateDer<'static>>,
}

impl TrustAnchors {
    /// Load every certificate in each file (PEM, one or many, or a single DER certificate).
    pub fn load(files: &[PathBuf]) -> (TrustAnchors, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut out = TrustAnchors::default();
        for file in files {
            match read_certificates(file) {
                Ok(certs) if certs.is_empty() => problems.push(Problem::new(
                    file,
                    "no certificate found in trust anchor file",
                )),
                Ok(certs) => {
                    let (anchors, bad) = TrustAnchors::from_certs(certs);
                    out.anchors.extend(anchors.anchors);
                    out.certs.extend(anchors.certs);
                    problems.extend(bad.into_iter().map(|reason| Problem::new(file, reason)));
                }
                Err(reason) => problems.push(Problem::new(file, reason)),
            }
        }
        (out, problems)
    }

    /// Build anchors from DER certificates already in memory; returns the reasons for any
    /// certificate that cannot serve as an anchor.
    pub fn from_certs(certs: Vec<CertificateDer<'static>>) -> (TrustAnchors, Vec<String>) {
        let mut out = TrustAnchors::default();
        let mut problems = Vec::new();
        for cert in certs {
            match webpki::anchor_from_trusted_cert(&cert) {
                Ok(anchor) => {
                    out.anchors.push(anchor.to_owned());
                    out.certs.push(cert);
                }
                Err(e) => problems.push(format!("certificate cannot be a trust anchor: {e}")),
            }
        }
        (out, problems)
    }

    /// Number of anchors loaded.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// True when no anchor is loaded (then no certificate validates).
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

/// Read all certificates of one file: PEM (any number of CERTIFICATE blocks) or raw DER.
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    parse_certificates(&bytes)
}

/// Certificates of a PEM or DER buffer; DER is recognised by its leading SEQUENCE tag.
pub(crate) fn parse_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateDer::from(bytes.to_vec())]);
    }
    CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))
}

/// The key under which both stores file and look up an address, and under which the policy and
/// the submitter checks compare them: local part lower-cased, domain by [`normalize_domain`].
///
/// The domain is case-insensitive (RFC 5321 §2.4). The local part formally is not, but every mail
/// provider treats it so, and a certificate for `bob@x` must serve `RCPT TO:<Bob@X>` and a key
/// filed as `Alice@x.pem` must sign for `From: alice@x` (issue 9). Non-ASCII (SMTPUTF8) local
/// parts are lower-cased by Unicode rules.
///
/// Only lookups use this key: envelopes and headers are relayed exactly as received.
/// Surrounding whitespace and `<>` are dropped.
pub fn normalize_address(address: &str) -> String {
    let a = address.trim().trim_start_matches('<').trim_end_matches('>');
    match a.rsplit_once('@') {
        Some((local, domain)) => format!("{}@{}", local.to_lowercase(), normalize_domain(domain)),
        None => a.to_lowercase(),
    }
}

/// A domain in one form: U-labels, lower-cased (UTS #46 mapping, the `idna` crate), so the
/// A-label `xn--bcher-kva.example` a certificate's rfc822Name must use equals the U-label
/// `bücher.example` an SMTPUTF8 envelope carries (RFC 6531 §3.2, RFC 8398 §3). Address literals
/// and names IDNA refuses are only lower-cased.
pub fn normalize_domain(domain: &str) -> String {
    let d = domain.trim_end_matches('.');
    if d.starts_with('[') || d.is_ascii() && !d.to_ascii_lowercase().contains("xn--") {
        return d.to_lowercase();
    }
    match idna::domain_to_unicode(d) {
        (u, Ok(())) => u,
        _ => d.to_lowercase(),
    }
}

/// An address glob in the form addresses are compared in ([`crate::store::normalize_address`]):
/// lower-cased, and a domain without wildcards in U-labels.
pub fn normalize_glob(glob: &str) -> String {
    let g = glob.trim();
    match g.rsplit_once('@') {
        Some((_, domain)) if !domain.contains(['*', '?']) => normalize_address(g),
        _ => g.to_lowercase(),
    }
}

/// Lower-case hex, for fingerprints.
pub(crate) use crate::hex::lower as hex;

#[cfg(test)]
mod tests {
    #[test]
    fn a_labels_equal_u_labels() {
        use super::{normalize_address, normalize_domain};
        assert_eq!(normalize_domain("XN--BCHER-KVA.Example"), "bücher.example");
        assert_eq!(normalize_domain("Bücher.Example."), "bücher.example");
        assert_eq!(
            normalize_address("Bob@xn--bcher-kva.example"),
            normalize_address("bob@BÜCHER.example")
        );
        assert_eq!(normalize_address("<A@[192.0.2.1]>"), "a@[192.0.2.1]");
        assert_eq!(normalize_address("Alice@Example.ORG"), "alice@example.org");
    }

    use super::*;

    #[test]
    fn addresses_are_keyed_case_insensitively_in_both_parts() {
        for (given, key) in [
            (" <Alice@SMIME.Example> ", "alice@smime.example"),
            ("bob@x.org", "bob@x.org"),
            ("Bob@Partner.Example", "bob@partner.example"),
            // SMTPUTF8: Unicode lower-casing of local part and U-label domain.
            (
                "J\u{d6}RG@B\u{dc}CHER.example",
                "j\u{f6}rg@b\u{fc}cher.example",
            ),
            ("no-at-sign", "no-at-sign"),
        ] {
            assert_eq!(normalize_address(given), key, "{given}");
        }
    }

    #[test]
    fn stores_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<KeyStore>();
        shared::<CertStore>();
        shared::<TrustAnchors>();
        shared::<std::sync::Arc<SigningIdentity>>();
        assert_eq!(normalize_address("a@B"), "a@b");
    }

    #[test]
    fn hex_is_lowercase_two_digits() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
