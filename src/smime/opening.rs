//! The vocabulary of opening inbound S/MIME, shared by [`super::open`], [`super::verify`],
//! [`super::decrypt`] and [`super::authres`]: the bounds on the work one message may cause, what
//! signatures are checked against, why a layer could not be opened, and the RFC 7281 results.

use rustls_pki_types::CertificateDer;

use crate::store::TrustAnchors;

/// RFC 7281 §3 results, plus `none` (RFC 8601 §2.7.1 meaning: not signed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// No signature at all.
    None,
    /// Signed, signature good, certificate acceptable.
    Pass,
    /// Signed, but the signature or digest does not verify: altered in transit or forged.
    Fail,
    /// Signature good, but something about it is not acceptable: untrusted or expired
    /// certificate, wrong key usage, signer is not the From: address, refused weak algorithm.
    Policy,
    /// Signed, but could not be processed (e.g. the signer certificate is missing).
    Neutral,
    /// A transient failure (the crypto library failed); retrying may succeed.
    TempError,
    /// Broken or unsupported structure: malformed CMS, unknown algorithm, limits exceeded.
    PermError,
}

impl AuthResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::None => "none",
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::Policy => "policy",
            AuthResult::Neutral => "neutral",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
        }
    }
}

impl std::fmt::Display for AuthResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bounds on what one message may make us do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// S/MIME layers followed (signature and encryption layers together).
    pub max_depth: usize,
    /// RecipientInfos in one EnvelopedData.
    pub max_recipient_infos: usize,
    /// SignerInfos in one SignedData.
    pub max_signers: usize,
    /// Certificates in one SignedData, and their total DER size.
    pub max_certificates: usize,
    pub max_certificate_bytes: usize,
    /// ASN.1 elements in one CMS object (bounds parsing work and memory).
    pub max_asn1_nodes: usize,
    /// Report SHA-1 and RSA < 2048 signatures as `policy` instead of only listing them.
    pub refuse_weak: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 8,
            max_recipient_infos: 256,
            max_signers: 16,
            max_certificates: 64,
            max_certificate_bytes: 1 << 20,
            max_asn1_nodes: 200_000,
            refuse_weak: false,
        }
    }
}

/// What signatures are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Trust<'a> {
    pub anchors: &'a TrustAnchors,
    /// Certificates known from elsewhere (directory, harvested): signers whose message carries
    /// no certificate, and intermediates.
    pub known: &'a [CertificateDer<'static>],
}

/// Why a layer could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Broken MIME, base64 or ASN.1.
    Malformed(String),
    /// An algorithm or form we do not implement.
    Unsupported(String),
    /// A bound in [`Limits`] was exceeded.
    Limit(String),
    /// Encrypted, but to none of our keys.
    NoKey,
    /// Decryption failed. One value for every secret-dependent failure (see `decrypt.rs`).
    Undecryptable,
    /// The crypto library failed in a way that may pass (random source).
    Temporary(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Malformed(r) => write!(f, "malformed: {r}"),
            OpenError::Unsupported(r) => write!(f, "unsupported: {r}"),
            OpenError::Limit(r) => write!(f, "limit exceeded: {r}"),
            OpenError::NoKey => write!(f, "not encrypted to any of our keys"),
            OpenError::Undecryptable => write!(f, "decryption failed"),
            OpenError::Temporary(r) => write!(f, "temporary failure: {r}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl OpenError {
    /// The RFC 7281 result this error gives a signature layer.
    pub fn auth_result(&self) -> AuthResult {
        match self {
            OpenError::Temporary(_) => AuthResult::TempError,
            _ => AuthResult::PermError,
        }
    }
}
