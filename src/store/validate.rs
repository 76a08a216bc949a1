//! Certificate validation for S/MIME: is this certificate fit to sign, or to encrypt to, now?
//!
//! Rules, checked in this order so the reason `cachet check` shows is the most useful one:
//! 1. the public key is RSA >= 2048 bits or EC P-256 (RFC 8551 §4: no smaller keys);
//! 2. within notBefore..notAfter (RFC 5280 §4.1.2.5);
//! 3. keyUsage, when present, allows the job (RFC 8550 §4.4.2): digitalSignature to sign,
//!    keyEncipherment for RSA key transport, keyAgreement for ECDH;
//! 4. extendedKeyUsage, when present, contains emailProtection (RFC 8550 §4.4.4);
//! 5. a path to a trust anchor exists (RFC 5280 §6, done by `webpki`), using intermediates from
//!    the key file or the certificate directory.
//!
//! Pure functions of bytes and time: no I/O.

use std::time::{Duration, SystemTime};

use const_oid::ObjectIdentifier;
use der::Decode;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_cert::Certificate;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};

use super::{KeyKind, TrustAnchors, hex};

/// id-kp-emailProtection (RFC 5280 §4.2.1.12).
pub const ID_KP_EMAIL_PROTECTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.4");
/// DER contents of id-kp-emailProtection, the form webpki wants.
const EMAIL_PROTECTION_DER: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x04];
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// Smallest RSA modulus we sign with or encrypt to (RFC 8551 §4, issue 3).
pub const MIN_RSA_BITS: usize = 2048;

/// What the certificate is about to be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Signing mail (digitalSignature).
    Sign,
    /// Encrypting to the certificate: keyEncipherment for RSA, keyAgreement for EC.
    Encrypt,
}

/// The facts about a certificate the stores need, parsed once.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// rfc822Name entries of subjectAltName, lower-cased ([`super::normalize_address`]). Never
    /// the subject emailAddress: see [`inspect`].
    pub emails: Vec<String>,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub fingerprint: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `None` for key types we cannot use (the reason is in `key_error`).
    pub key: Option<KeyKind>,
    pub key_error: Option<String>,
    /// keyUsage bits when the extension is present.
    pub key_usage: Option<KeyUsage>,
    /// extendedKeyUsage OIDs when the extension is present.
    pub ext_key_usage: Option<Vec<ObjectIdentifier>>,
    /// basicConstraints cA flag: CA certificates are intermediates, never recipients.
    pub is_ca: bool,
    /// DER SubjectPublicKeyInfo, to feed aws-lc-rs.
    pub spki_der: Vec<u8>,
    /// The subjectPublicKey BIT STRING contents (PKCS#1 RSAPublicKey or EC point), to match a
    /// private key to its certificate.
    pub public_key: Vec<u8>,
}

impl CertInfo {
    /// The key kind, or why the key is unusable.
    pub fn key_kind(&self) -> Result<KeyKind, String> {
        self.key.ok_or_else(|| {
            self.key_error
                .clone()
                .unwrap_or_else(|| "unsupported key".into())
        })
    }
}

/// The reason shown for a certificate that binds no address.
pub const NO_RFC822_NAME: &str =
    "no rfc822Name in subjectAltName (the subject emailAddress is not used)";

/// Parse a DER certificate into [`CertInfo`].
///
/// Addresses come from subjectAltName rfc822Name only (RFC 8550 §3 prefers it). The subject DN
/// `emailAddress` fallback is gone on purpose (issue 9 §5): name constraints on rfc822Name are
/// enforced against subjectAltName, so a sub-CA constrained to `partner.example` could issue a
/// SAN-less certificate with `E=ceo@example.org` that passes path validation; with the fallback
/// we would have filed it under ceo@example.org.
pub fn inspect(der: &[u8]) -> Result<CertInfo, String> {
    let cert = Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let tbs = cert.tbs_certificate();
    let fingerprint = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref());
    let validity = tbs.validity();
    let not_before = validity.not_before.to_system_time();
    let not_after = validity.not_after.to_system_time();

    let mut emails = Vec::new();
    if let Ok(Some((_, san))) = tbs.get_extension::<SubjectAltName>() {
        for name in san.0.iter() {
            if let GeneralName::Rfc822Name(email) = name {
                emails.push(super::normalize_address(email.as_str()));
            }
        }
    }

    let spki = tbs.subject_public_key_info();
    let spki_der = der::Encode::to_der(spki).map_err(|e| format!("bad public key: {e}"))?;
    let (key, key_error) = classify_key(spki.algorithm.oid, spki, &spki_der);
    let key_usage = tbs
        .get_extension::<KeyUsage>()
        .ok()
        .flatten()
        .map(|(_, ku)| ku);
    let ext_key_usage = tbs
        .get_extension::<ExtendedKeyUsage>()
        .ok()
        .flatten()
        .map(|(_, eku)| eku.0);
    let is_ca = matches!(tbs.get_extension::<BasicConstraints>(), Ok(Some((_, bc))) if bc.ca);
    Ok(CertInfo {
        emails,
        fingerprint,
        not_before,
        not_after,
        key,
        key_error,
        key_usage,
        ext_key_usage,
        is_ca,
        spki_der,
        public_key: spki.subject_public_key.raw_bytes().to_vec(),
    })
}

/// A certificate's notAfter, without the rest of [`inspect`]; `None` when it does not parse.
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    let cert = Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate().validity().not_after.to_system_time())
}

fn classify_key(
    alg: ObjectIdentifier,
    spki: &x509_cert::spki::SubjectPublicKeyInfoOwned,
    spki_der: &[u8],
) -> (Option<KeyKind>, Option<String>) {
    if alg == RSA_ENCRYPTION {
        // Size from the modulus itself: aws-lc-rs refuses small keys outright, and we want
        // to say how small.
        match rsa_modulus_bits(spki.subject_public_key.raw_bytes()) {
            Some(bits) if bits < MIN_RSA_BITS => (Some(KeyKind::Rsa { bits }), None),
            Some(_) => match aws_lc_rs::rsa::PublicEncryptingKey::from_der(spki_der) {
                Ok(k) => (
                    Some(KeyKind::Rsa {
                        bits: k.key_size_bits(),
                    }),
                    None,
                ),
                Err(e) => (None, Some(format!("unusable RSA public key: {e}"))),
            },
            None => (None, Some("malformed RSA public key".into())),
        }
    } else if alg == ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if curve == Some(SECP256R1) {
            (Some(KeyKind::EcP256), None)
        } else {
            (
                None,
                Some("EC key on a curve other than P-256 is not supported".into()),
            )
        }
    } else {
        (
            None,
            Some(format!(
                "public key algorithm {alg} is not supported for S/MIME here"
            )),
        )
    }
}

/// Bit length of the modulus in a PKCS#1 RSAPublicKey (RFC 8017 §A.1.1):
/// `SEQUENCE { INTEGER n, INTEGER e }`.
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    fn header(b: &[u8], tag: u8) -> Option<(usize, &[u8])> {
        if *b.first()? != tag {
            return None;
        }
        let first = *b.get(1)? as usize;
        if first < 0x80 {
            return Some((first, b.get(2..)?));
        }
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = b
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |a, &x| (a << 8) | x as usize);
        Some((len, b.get(2 + n..)?))
    }
    let (_, seq) = header(der, 0x30)?;
    let (len, rest) = header(seq, 0x02)?;
    let modulus = rest.get(..len)?;
    let start = modulus.iter().position(|&b| b != 0)?;
    let m = &modulus[start..];
    Some(m.len() * 8 - m[0].leading_zeros() as usize)
}

/// Check everything except the trust path; returns the first reason the certificate is unfit.
pub fn check_local(info: &CertInfo, now: SystemTime, purpose: Purpose) -> Result<KeyKind, String> {
    let key = info.key_kind()?;
    if let KeyKind::Rsa { bits } = key
        && bits < MIN_RSA_BITS
    {
        return Err(format!(
            "RSA key of {bits} bits is below the {MIN_RSA_BITS}-bit minimum"
        ));
    }
    if now < info.not_before {
        return Err(format!(
            "not yet valid (notBefore {})",
            crate::date::rfc3339(info.not_before)
        ));
    }
    if now > info.not_after {
        return Err(format!(
            "expired (notAfter {})",
            crate::date::rfc3339(info.not_after)
        ));
    }
    if let Some(ku) = &info.key_usage {
        match (purpose, key) {
            (Purpose::Sign, _) if !ku.digital_signature() => {
                return Err("keyUsage lacks digitalSignature, cannot sign".into());
            }
            (Purpose::Encrypt, KeyKind::Rsa { .. }) if !ku.key_encipherment() => {
                return Err("keyUsage lacks keyEncipherment, cannot encrypt to it".into());
            }
            (Purpose::Encrypt, KeyKind::EcP256) if !ku.key_agreement() => {
                return Err("keyUsage lacks keyAgreement, cannot encrypt to it".into());
            }
            _ => {}
        }
    }
    if let Some(eku) = &info.ext_key_usage
        && !eku.contains(&ID_KP_EMAIL_PROTECTION)
    {
        return Err("extendedKeyUsage lacks emailProtection".into());
    }
    if info.emails.is_empty() {
        return Err(NO_RFC822_NAME.into());
    }
    Ok(key)
}

/// Full check: [`check_local`] and a path to one of `trust` through `intermediates`.
pub fn check(
    der: &CertificateDer<'_>,
    info: &CertInfo,
    intermediates: &[CertificateDer<'_>],
    trust: &TrustAnchors,
    now: SystemTime,
    purpose: Purpose,
) -> Result<KeyKind, String> {
    let key = check_local(info, now, purpose)?;
    check_path(der, intermediates, trust, now)?;
    Ok(key)
}

/// RFC 5280 §6 path validation by webpki, with emailProtection required if EKU is present.
pub fn check_path(
    der: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &TrustAnchors,
    now: SystemTime,
) -> Result<(), String> {
    if trust.is_empty() {
        return Err("no trust anchors loaded, nothing can be validated".into());
    }
    let ee = webpki::EndEntityCert::try_from(der).map_err(|e| format!("bad certificate: {e}"))?;
    verify(&ee, intermediates, trust, now, None).map_err(|e| match e {
        webpki::Error::UnknownIssuer => "does not chain to a trusted root (unknown issuer)".into(),
        webpki::Error::CertExpired { .. } => "a certificate in the chain has expired".into(),
        webpki::Error::CertNotValidYet { .. } => {
            "a certificate in the chain is not yet valid".into()
        }
        other => format!("chain validation failed: {other}"),
    })
}

fn verify(
    ee: &webpki::EndEntityCert<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &TrustAnchors,
    now: SystemTime,
    revocation: Option<webpki::RevocationOptions<'_>>,
) -> Result<(), webpki::Error> {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &trust.anchors,
        intermediates,
        UnixTime::since_unix_epoch(secs),
        webpki::KeyUsage::required_if_present(EMAIL_PROTECTION_DER),
        revocation,
        None,
    )
    .map(|_| ())
}

/// What the CRLs we hold say about a certificate and its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrlVerdict {
    /// A current CRL signed by the issuer covers the certificate and does not list it; no CRL
    /// we hold lists any certificate of the chain.
    Good,
    /// The certificate or one of its issuers is listed.
    Revoked,
    /// No usable CRL (none, expired, or not signed by the issuer's key): why.
    Unknown(String),
}

/// Revocation by CRL (RFC 5280 §6.3), checked by webpki's revocation options in two passes:
/// 1. the whole chain against every CRL held, with expired CRLs refused
///    (`ExpirationPolicy::Enforce`) and a certificate without a CRL allowed
///    (`UnknownStatusPolicy::Allow`): a revoked intermediate is found here;
/// 2. the end-entity certificate alone with `UnknownStatusPolicy::Deny`: it must be covered.
///
/// A CRL signed by any key but the issuer's fails webpki's signature check and makes the status
/// unknown, never good.
pub fn crl_status(
    der: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &TrustAnchors,
    crls: &[&webpki::CertRevocationList<'_>],
    now: SystemTime,
) -> CrlVerdict {
    use webpki::{
        ExpirationPolicy, RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
    };
    let Ok(builder) = RevocationOptionsBuilder::new(crls) else {
        return CrlVerdict::Unknown("no CRL".into());
    };
    let ee = match webpki::EndEntityCert::try_from(der) {
        Ok(ee) => ee,
        Err(e) => return CrlVerdict::Unknown(format!("bad certificate: {e}")),
    };
    let judge = |e: webpki::Error| match e {
        webpki::Error::CertRevoked => CrlVerdict::Revoked,
        webpki::Error::UnknownRevocationStatus => {
            CrlVerdict::Unknown("no CRL covers this certificate".into())
        }
        webpki::Error::CrlExpired { .. } => {
            CrlVerdict::Unknown("the CRL is past its nextUpdate".into())
        }
        webpki::Error::InvalidCrlSignatureForPublicKey
        | webpki::Error::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_)
        | webpki::Error::UnsupportedCrlSignatureAlgorithmContext(_) => {
            CrlVerdict::Unknown("the CRL is not signed by the issuer's key".into())
        }
        other => CrlVerdict::Unknown(format!("CRL check failed: {other}")),
    };
    let chain = builder
        .with_depth(RevocationCheckDepth::Chain)
        .with_status_policy(UnknownStatusPolicy::Allow)
        .with_expiration_policy(ExpirationPolicy::Enforce)
        .build();
    if let Err(e) = verify(&ee, intermediates, trust, now, Some(chain)) {
        return judge(e);
    }
    let leaf = builder
        .with_depth(RevocationCheckDepth::EndEntity)
        .with_status_policy(UnknownStatusPolicy::Deny)
        .with_expiration_policy(ExpirationPolicy::Enforce)
        .build();
    match verify(&ee, intermediates, trust, now, Some(leaf)) {
        Ok(()) => CrlVerdict::Good,
        Err(e) => judge(e),
    }
}
