//! Verifying one CMS SignedData layer (RFC 5652 §5, RFC 8551 §3.5), signer by signer.
//!
//! For each SignerInfo:
//! 1. the digest algorithm is one we know (SHA-1, SHA-224/256/384/512);
//! 2. the signer certificate is found by IssuerAndSerialNumber or SubjectKeyIdentifier among
//!    the certificates in the message, then among the caller's known certificates;
//! 3. with signed attributes: contentType equals the eContentType, messageDigest equals the
//!    digest of the content *as transmitted* (for `multipart/signed` the first part's bytes
//!    between the boundaries); the signature covers the DER SET OF signed attributes
//!    (RFC 5652 §5.4). Without them, the signature covers the content;
//! 4. the signature verifies with aws-lc-rs: RSA PKCS#1 v1.5 (SHA-1/256/384/512), RSASSA-PSS
//!    (SHA-256/384/512), ECDSA P-256/P-384;
//! 5. the certificate chains to a trust anchor (webpki, intermediates from the message and
//!    the known certificates) at the signing time (the signingTime attribute when it is not
//!    more than a day ahead of now, else now), keyUsage allows digitalSignature or
//!    nonRepudiation (RFC 8550 §4.4.2), extendedKeyUsage (if present) has emailProtection;
//! 6. a subjectAltName rfc822Name equals a From: address.
//!
//! Result per signer (RFC 7281 §3): `fail` when 3 or 4 fails; `policy` when the signature is
//! good but 5 or 6 is not met (or a weak algorithm is refused by the limits); `neutral` when
//! the certificate is missing; `permerror` for unknown algorithms or broken structure and
//! when path building exceeds webpki's budgets (certificate loops); `pass` otherwise. SHA-1
//! and RSA keys under 2048 bits are listed in [`Signer::weak`].
//!
//! Certificates are taken as the raw bytes the message carries (never re-encoded), bounded in
//! number and total size by [`Limits`].

use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use const_oid::ObjectIdentifier as Oid;
use der::{Decode, Encode};
use rustls_pki_types::CertificateDer;
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectKeyIdentifier;

use super::algs;
use super::ber::Node;
use super::opening::AuthResult;
use super::opening::{Limits, OpenError, Trust};
pub use crate::store::Capability;
use crate::store::KeyKind;
use crate::store::validate::{self, CertInfo};

/// What one signature said, and what we concluded.
#[derive(Debug, Clone)]
pub struct Signer {
    pub result: AuthResult,
    /// Why, in a few words; for a `pass`, notes (expired since signing, weak algorithms) or
    /// empty. Shown in the header comment.
    pub reason: String,
    /// The certificate address that matched From:, else its first rfc822Name.
    pub address: Option<String>,
    /// Every rfc822Name of the certificate.
    pub addresses: Vec<String>,
    /// True when a certificate address equals a From: address.
    pub from_matches: bool,
    /// The signature itself verified with the certificate's key (whatever the chain, the dates
    /// and the addresses say): what certificate harvesting requires before it keeps anything.
    pub signature_ok: bool,
    /// SHA-256 of the signer certificate, lower-case hex.
    pub fingerprint: Option<String>,
    /// Serial number, upper-case hex, and issuer DN (RFC 4514 form), for the RFC 7281
    /// `smime-serial` / `smime-issuer` properties.
    pub serial: Option<String>,
    pub issuer: Option<String>,
    pub signing_time: Option<SystemTime>,
    pub capabilities: Vec<Capability>,
    /// The signer certificate (for harvesting) and the other certificates the message carried.
    pub certificate: Option<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    /// Digest and signature algorithm names, e.g. `sha256`, `rsa-pkcs1`.
    pub digest: &'static str,
    pub signature_algorithm: &'static str,
    /// Weak algorithms seen (`sha1`, `rsa-1024`): reported, refused only with
    /// [`Limits::refuse_weak`].
    pub weak: Vec<String>,
    /// The chain was valid at the signing time but the certificate has expired since.
    pub expired_since_signing: bool,
}

impl Signer {
    fn new(result: AuthResult, reason: impl Into<String>) -> Signer {
        Signer {
            result,
            reason: reason.into(),
            address: None,
            addresses: Vec::new(),
            from_matches: false,
            signature_ok: false,
            fingerprint: None,
            serial: None,
            issuer: None,
            signing_time: None,
            capabilities: Vec::new(),
            certificate: None,
            chain: Vec::new(),
            digest: "",
            signature_algorithm: "",
            weak: Vec::new(),
            expired_since_signing: false,
        }
    }

    /// A whole layer that could not be read: one permerror entry.
    pub(crate) fn broken(e: &OpenError) -> Signer {
        Signer::new(e.auth_result(), e.to_string())
    }
}

const ID_CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
const ID_SIGNING_TIME: Oid = Oid::new_unwrap("1.2.840.113549.1.9.5");
const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
const SHA224: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.4");
const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA1_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.5");
const SHA384_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
const ECDSA_SHA1: Oid = Oid::new_unwrap("1.2.840.10045.4.1");
const ECDSA_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_SHA512: Oid = Oid::new_unwrap("1.2.840.10045.4.3.4");
const SECP256R1: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: Oid = Oid::new_unwrap("1.3.132.0.34");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_oid(oid: Oid) -> Option<Hash> {
        Some(match oid {
            o if o == SHA1 => Hash::Sha1,
            o if o == SHA224 => Hash::Sha224,
            o if o == algs::SHA256 => Hash::Sha256,
            o if o == SHA384 => Hash::Sha384,
            o if o == algs::SHA512 => Hash::Sha512,
            _ => return None,
        })
    }
    fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha224 => &digest::SHA224,
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha384 => &digest::SHA384,
            Hash::Sha512 => &digest::SHA512,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Hash::Sha1 => "sha1",
            Hash::Sha224 => "sha224",
            Hash::Sha256 => "sha256",
            Hash::Sha384 => "sha384",
            Hash::Sha512 => "sha512",
        }
    }
}

/// A parsed SignedData layer: the encapsulated content (opaque form) and each signer.
#[derive(Debug)]
pub(crate) struct Verified {
    pub econtent: Option<Vec<u8>>,
    pub econtent_is_data: bool,
    pub signers: Vec<Signer>,
}

/// Verify a SignedData (`node` is its SEQUENCE, BER-normalised). `detached` is the content
/// as transmitted for `multipart/signed`; `from` the message's From: addresses.
pub(crate) fn verify(
    mut node: Node<'_>,
    detached: Option<&[u8]>,
    from: &[String],
    trust: &Trust<'_>,
    now: SystemTime,
    limits: &Limits,
) -> Result<Verified, OpenError> {
    // Certificates and CRLs are taken out raw before the `cms` crate sees the rest: it would
    // re-encode them (breaking their signatures if they were not DER) and refuse the whole
    // layer for one certificate it cannot read.
    let mut certs: Vec<CertificateDer<'static>> = Vec::new();
    let kids = node
        .children_mut()
        .ok_or_else(|| OpenError::Malformed("SignedData is not a SEQUENCE".into()))?;
    let mut total = 0usize;
    for bag in kids.iter().filter(|n| n.tag == [0xa0]) {
        for c in bag.children() {
            if c.tag != [0x30] {
                continue; // other CertificateChoices: attribute certificates, ...
            }
            total += c.encoded_len();
            if certs.len() >= limits.max_certificates || total > limits.max_certificate_bytes {
                return Err(OpenError::Limit(format!(
                    "certificate bag over {} certificates or {} bytes",
                    limits.max_certificates, limits.max_certificate_bytes
                )));
            }
            certs.push(CertificateDer::from(c.to_der()));
        }
    }
    kids.retain(|n| n.tag != [0xa0] && n.tag != [0xa1]);
    let signer_count = kids
        .iter()
        .rfind(|n| n.tag == [0x31])
        .map_or(0, |s| s.children().len());
    if signer_count > limits.max_signers {
        return Err(OpenError::Limit(format!(
            "{signer_count} SignerInfos (limit {})",
            limits.max_signers
        )));
    }
    let sd = SignedData::from_der(&node.to_der())
        .map_err(|e| OpenError::Malformed(format!("SignedData: {e}")))?;
    let eci = &sd.encap_content_info;
    let econtent = match &eci.econtent {
        Some(any) => Some(
            any.decode_as::<der::asn1::OctetString>()
                .map_err(|e| OpenError::Malformed(format!("eContent: {e}")))?
                .into_bytes()
                .into_vec(),
        ),
        None => None,
    };
    let content: &[u8] = match (detached, &econtent) {
        (Some(d), _) => d,
        (None, Some(e)) => e,
        (None, None) => {
            return Err(OpenError::Malformed(
                "detached SignedData without the content it signs".into(),
            ));
        }
    };
    if sd.signer_infos.0.is_empty() {
        return Err(OpenError::Malformed(
            "SignedData without a SignerInfo".into(),
        ));
    }
    let parsed: Vec<(CertificateDer<'static>, Certificate)> = certs
        .iter()
        .chain(trust.known.iter())
        .filter_map(|d| Certificate::from_der(d).ok().map(|c| (d.clone(), c)))
        .collect();
    let signers = sd
        .signer_infos
        .0
        .iter()
        .map(|si| {
            check_signer(
                si,
                content,
                eci.econtent_type,
                &certs,
                &parsed,
                from,
                trust,
                now,
                limits,
            )
        })
        .collect();
    Ok(Verified {
        econtent_is_data: eci.econtent_type == algs::ID_DATA,
        econtent,
        signers,
    })
}

#[allow(clippy::too_many_arguments)]
fn check_signer(
    si: &SignerInfo,
    content: &[u8],
    econtent_type: Oid,
    message_certs: &[CertificateDer<'static>],
    parsed: &[(CertificateDer<'static>, Certificate)],
    from: &[String],
    trust: &Trust<'_>,
    now: SystemTime,
    limits: &Limits,
) -> Signer {
    let Some(hash) = Hash::from_oid(si.digest_alg.oid) else {
        return Signer::new(
            AuthResult::PermError,
            format!("unknown digest algorithm {}", si.digest_alg.oid),
        );
    };
    let Some((cert_der, cert)) = parsed.iter().find(|(_, c)| is_signer(si, c)) else {
        return Signer::new(
            AuthResult::Neutral,
            "signer certificate is neither in the message nor known",
        );
    };
    let mut s = Signer::new(AuthResult::Pass, "");
    s.digest = hash.name();
    s.certificate = Some(cert_der.clone());
    s.chain = message_certs
        .iter()
        .filter(|c| *c != cert_der)
        .cloned()
        .collect();
    let tbs = cert.tbs_certificate();
    s.serial = Some(crate::store::hex(tbs.serial_number().as_bytes()).to_ascii_uppercase());
    s.issuer = Some(tbs.issuer().to_string());
    let info = match validate::inspect(cert_der) {
        Ok(i) => i,
        Err(e) => {
            return Signer {
                result: AuthResult::PermError,
                reason: e,
                ..s
            };
        }
    };
    s.fingerprint = Some(info.fingerprint.clone());
    s.addresses = info.emails.clone();
    s.from_matches = info.emails.iter().any(|e| from.contains(e));
    s.address = info
        .emails
        .iter()
        .find(|e| from.contains(e))
        .or(info.emails.first())
        .cloned();
    if hash == Hash::Sha1 {
        s.weak.push("sha1".into());
    }

    // Step 3: what the signature covers.
    let content_digest = digest::digest(hash.algorithm(), content);
    let signed: Vec<u8> = match &si.signed_attrs {
        Some(attrs) => {
            let mut content_type = None;
            let mut message_digest = None;
            for a in attrs.iter() {
                let Some(v) = a.values.iter().next() else {
                    continue;
                };
                match a.oid {
                    o if o == ID_CONTENT_TYPE => content_type = v.decode_as::<Oid>().ok(),
                    o if o == ID_MESSAGE_DIGEST => {
                        message_digest = v
                            .decode_as::<der::asn1::OctetString>()
                            .ok()
                            .map(|d| d.into_bytes().into_vec())
                    }
                    o if o == ID_SIGNING_TIME => {
                        s.signing_time = v
                            .to_der()
                            .ok()
                            .and_then(|d| x509_cert::time::Time::from_der(&d).ok())
                            .map(|t| t.to_system_time())
                    }
                    o if o == algs::ID_SMIME_CAPABILITIES => {
                        s.capabilities = v
                            .to_der()
                            .map(|d| parse_capabilities(&d))
                            .unwrap_or_default()
                    }
                    _ => {}
                }
            }
            if content_type != Some(econtent_type) {
                return Signer {
                    result: AuthResult::Fail,
                    reason: "contentType attribute missing or not the content's type".into(),
                    ..s
                };
            }
            match message_digest {
                Some(d) if d == content_digest.as_ref() => {}
                Some(_) => {
                    return Signer {
                        result: AuthResult::Fail,
                        reason: "message digest does not match the content".into(),
                        ..s
                    };
                }
                None => {
                    return Signer {
                        result: AuthResult::Fail,
                        reason: "no messageDigest attribute".into(),
                        ..s
                    };
                }
            }
            // RFC 5652 §5.4: the DER of the SET OF, not the [0] IMPLICIT tag.
            match attrs.to_der() {
                Ok(d) => d,
                Err(e) => {
                    return Signer {
                        result: AuthResult::PermError,
                        reason: format!("signed attributes: {e}"),
                        ..s
                    };
                }
            }
        }
        None => content.to_vec(),
    };

    // Step 4: the signature.
    let (alg, alg_name, weak_key) = match verification_alg(si, hash, cert, &info) {
        Ok(a) => a,
        Err(reason) => {
            return Signer {
                result: AuthResult::PermError,
                reason,
                ..s
            };
        }
    };
    s.signature_algorithm = alg_name;
    if let Some(w) = weak_key {
        s.weak.push(w);
    }
    let public = cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    if UnparsedPublicKey::new(alg, public)
        .verify(&signed, si.signature.as_bytes())
        .is_err()
    {
        return Signer {
            result: AuthResult::Fail,
            reason: "signature does not verify".into(),
            ..s
        };
    }

    s.signature_ok = true;

    // Step 5: the certificate, at the signing time.
    let day = Duration::from_secs(86_400);
    let when = match s.signing_time {
        Some(t) if t <= now + day => t,
        _ => now,
    };
    let intermediates: Vec<CertificateDer<'_>> = parsed
        .iter()
        .filter(|(d, _)| d != cert_der)
        .map(|(d, _)| d.clone())
        .collect();
    if let Err(e) = path(cert_der, &intermediates, trust, when) {
        return Signer {
            result: e.0,
            reason: e.1,
            ..s
        };
    }
    if now > info.not_after {
        s.expired_since_signing = true;
    }
    if let Some(ku) = &info.key_usage
        && !ku.digital_signature()
        && !ku.non_repudiation()
    {
        return Signer {
            result: AuthResult::Policy,
            reason: "keyUsage allows neither digitalSignature nor nonRepudiation".into(),
            ..s
        };
    }
    if info.emails.is_empty() {
        return Signer {
            result: AuthResult::Policy,
            reason: validate::NO_RFC822_NAME.into(),
            ..s
        };
    }
    // Step 6.
    if !s.from_matches {
        let reason = format!(
            "signer {} is not the From: address {}",
            info.emails.join(","),
            if from.is_empty() {
                "(none)".to_string()
            } else {
                from.join(",")
            }
        );
        return Signer {
            result: AuthResult::Policy,
            reason,
            ..s
        };
    }
    if limits.refuse_weak && !s.weak.is_empty() {
        let reason = format!("weak algorithm: {}", s.weak.join(", "));
        return Signer {
            result: AuthResult::Policy,
            reason,
            ..s
        };
    }
    // A pass still says what a reader may want to know.
    let mut notes = Vec::new();
    if s.expired_since_signing {
        notes.push("certificate valid when signed, expired since".to_string());
    }
    if !s.weak.is_empty() {
        notes.push(format!("weak algorithm: {}", s.weak.join(", ")));
    }
    s.reason = notes.join("; ");
    s
}

/// webpki at `when`; the error as (result, reason).
fn path(
    cert: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &Trust<'_>,
    when: SystemTime,
) -> Result<(), (AuthResult, String)> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| (AuthResult::PermError, format!("signer certificate: {e}")))?;
    let secs = when
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let time = rustls_pki_types::UnixTime::since_unix_epoch(secs);
    const EMAIL_PROTECTION: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x04];
    if trust.anchors.is_empty() {
        return Err((AuthResult::Policy, "no trust anchors configured".into()));
    }
    match ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &trust.anchors.anchors,
        intermediates,
        time,
        webpki::KeyUsage::required_if_present(EMAIL_PROTECTION),
        None,
        None,
    ) {
        Ok(_) => Ok(()),
        // Budgets exceeded: a certificate loop or a maze built to burn CPU.
        Err(
            e @ (webpki::Error::MaximumPathBuildCallsExceeded
            | webpki::Error::MaximumSignatureChecksExceeded
            | webpki::Error::MaximumPathDepthExceeded),
        ) => Err((
            AuthResult::PermError,
            format!("chain building gave up: {e}"),
        )),
        Err(webpki::Error::UnknownIssuer) => Err((
            AuthResult::Policy,
            "certificate does not chain to a trust anchor".into(),
        )),
        Err(webpki::Error::CertExpired { .. }) => Err((
            AuthResult::Policy,
            "certificate had expired at signing time".into(),
        )),
        Err(webpki::Error::CertNotValidYet { .. }) => Err((
            AuthResult::Policy,
            "certificate was not yet valid at signing time".into(),
        )),
        Err(e) => Err((
            AuthResult::Policy,
            format!("certificate not acceptable: {}", webpki_reason(&e)),
        )),
    }
}

/// A short reason for a webpki error: the variant name, without the (long) context some
/// variants carry, and a plain word for the common ones.
fn webpki_reason(e: &webpki::Error) -> String {
    use webpki::Error as E;
    match e {
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "the chain is signed with an algorithm we do not accept (e.g. SHA-1)".into()
        }
        E::CaUsedAsEndEntity => "signer certificate is a CA certificate".into(),
        E::InvalidSignatureForPublicKey => "a certificate signature in the chain is bad".into(),
        E::RequiredEkuNotFoundContext(_) => "extendedKeyUsage lacks emailProtection".into(),
        other => {
            let text = format!("{other:?}");
            let end = text.find(['(', '{', ' ']).unwrap_or(text.len());
            text[..end].to_string()
        }
    }
}

fn is_signer(si: &SignerInfo, cert: &Certificate) -> bool {
    let tbs = cert.tbs_certificate();
    match &si.sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => {
            ias.serial_number.as_bytes() == tbs.serial_number().as_bytes()
                && ias.issuer.to_der().ok() == tbs.issuer().to_der().ok()
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => tbs
            .get_extension::<SubjectKeyIdentifier>()
            .ok()
            .flatten()
            .is_some_and(|(_, s)| s.0.as_bytes() == ski.0.as_bytes()),
    }
}

type Alg = (
    &'static dyn VerificationAlgorithm,
    &'static str,
    Option<String>,
);

/// The aws-lc-rs algorithm for this SignerInfo and certificate key.
fn verification_alg(
    si: &SignerInfo,
    digest_hash: Hash,
    cert: &Certificate,
    info: &CertInfo,
) -> Result<Alg, String> {
    let oid = si.signature_algorithm.oid;
    let unknown = || format!("unsupported signature algorithm {oid}");
    let spki = cert.tbs_certificate().subject_public_key_info();
    if spki.algorithm.oid == algs::ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<Oid>().ok());
        // RFC 5753 §2.1.1: ecdsa-with-SHAxxx; some writers put id-ecPublicKey here and let
        // the digest algorithm decide.
        let hash = match oid {
            o if o == algs::ECDSA_WITH_SHA256 => Hash::Sha256,
            o if o == ECDSA_SHA384 => Hash::Sha384,
            o if o == ECDSA_SHA512 => Hash::Sha512,
            o if o == ECDSA_SHA1 => Hash::Sha1,
            o if o == algs::ID_EC_PUBLIC_KEY => digest_hash,
            _ => return Err(unknown()),
        };
        let alg: &'static dyn VerificationAlgorithm = match (curve, hash) {
            (Some(c), Hash::Sha256) if c == SECP256R1 => &signature::ECDSA_P256_SHA256_ASN1,
            (Some(c), Hash::Sha384) if c == SECP256R1 => &signature::ECDSA_P256_SHA384_ASN1,
            (Some(c), Hash::Sha512) if c == SECP256R1 => &signature::ECDSA_P256_SHA512_ASN1,
            (Some(c), Hash::Sha1) if c == SECP256R1 => &signature::ECDSA_P256_SHA1_ASN1,
            (Some(c), Hash::Sha256) if c == SECP384R1 => &signature::ECDSA_P384_SHA256_ASN1,
            (Some(c), Hash::Sha384) if c == SECP384R1 => &signature::ECDSA_P384_SHA384_ASN1,
            (Some(c), Hash::Sha512) if c == SECP384R1 => &signature::ECDSA_P384_SHA512_ASN1,
            _ => return Err("ECDSA curve or hash not supported (P-256, P-384)".into()),
        };
        return Ok((alg, "ecdsa", None));
    }
    let Some(KeyKind::Rsa { bits }) = info.key else {
        return Err(format!(
            "signer key not supported: {}",
            info.key_error.clone().unwrap_or_default()
        ));
    };
    let weak = (bits < validate::MIN_RSA_BITS).then(|| format!("rsa-{bits}"));
    if oid == algs::ID_RSASSA_PSS {
        let hash = pss_hash(si)?;
        if weak.is_some() {
            return Err(format!("RSASSA-PSS with a {bits}-bit key"));
        }
        let alg: &'static dyn VerificationAlgorithm = match hash {
            Hash::Sha256 => &signature::RSA_PSS_2048_8192_SHA256,
            Hash::Sha384 => &signature::RSA_PSS_2048_8192_SHA384,
            Hash::Sha512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return Err("RSASSA-PSS with a hash other than SHA-256/384/512".into()),
        };
        return Ok((alg, "rsa-pss", weak));
    }
    let hash = match oid {
        o if o == algs::RSA_ENCRYPTION => digest_hash,
        o if o == SHA1_RSA => Hash::Sha1,
        o if o == algs::SHA256_WITH_RSA_ENCRYPTION => Hash::Sha256,
        o if o == SHA384_RSA => Hash::Sha384,
        o if o == SHA512_RSA => Hash::Sha512,
        _ => return Err(unknown()),
    };
    let small = weak.is_some();
    let alg: &'static dyn VerificationAlgorithm = match (hash, small) {
        (Hash::Sha1, true) => &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        (Hash::Sha256, true) => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        (Hash::Sha512, true) => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
        (Hash::Sha1, false) => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        (Hash::Sha256, false) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (Hash::Sha384, false) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (Hash::Sha512, false) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (h, _) => return Err(format!("RSA PKCS#1 with {} not supported", h.name())),
    };
    Ok((alg, "rsa-pkcs1", weak))
}

/// RSASSA-PSS-params (RFC 4055 §3.1): the hash in [0] (default SHA-1).
fn pss_hash(si: &SignerInfo) -> Result<Hash, String> {
    let Some(params) = &si.signature_algorithm.parameters else {
        return Ok(Hash::Sha1);
    };
    let der = params.to_der().map_err(|e| e.to_string())?;
    let node = super::ber::parse(&der, 64).map_err(|e| e.to_string())?;
    for f in node.children() {
        if f.tag == [0xa0] {
            let oid = f
                .children()
                .first()
                .and_then(|a| a.children().first())
                .and_then(Node::primitive)
                .and_then(|b| Oid::from_bytes(b).ok())
                .ok_or("RSASSA-PSS parameters: bad hash")?;
            return Hash::from_oid(oid).ok_or_else(|| format!("RSASSA-PSS hash {oid}"));
        }
    }
    Ok(Hash::Sha1)
}

/// SMIMECapabilities ::= SEQUENCE OF SEQUENCE { OID, parameters ANY OPTIONAL }; entries we
/// cannot read are skipped.
pub fn parse_capabilities(der: &[u8]) -> Vec<Capability> {
    let Ok(node) = super::ber::parse(der, 4096) else {
        return Vec::new();
    };
    node.children()
        .iter()
        .filter_map(|cap| {
            let kids = cap.children();
            let oid = kids
                .first()
                .filter(|o| o.tag == [0x06])
                .and_then(Node::primitive)
                .and_then(|b| Oid::from_bytes(b).ok())?;
            Some(Capability {
                oid,
                parameters: kids.get(1).map(Node::to_der),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_keep_the_senders_order_and_parameters() {
        let replies = crate::smime::ReplyAlgorithms::default();
        let der = algs::smime_capabilities(&replies, false).unwrap();
        let caps = parse_capabilities(&der);
        assert!(!caps.is_empty());
        assert_eq!(caps[0].oid, algs::AES256_CBC);
        assert!(parse_capabilities(b"\x30\x03\x06").is_empty());
    }

    #[test]
    fn hash_names_and_oids_agree() {
        for (oid, name) in [
            (SHA1, "sha1"),
            (algs::SHA256, "sha256"),
            (SHA384, "sha384"),
            (algs::SHA512, "sha512"),
        ] {
            assert_eq!(Hash::from_oid(oid).unwrap().name(), name);
        }
        assert_eq!(Hash::from_oid(Oid::new_unwrap("1.2.3")), None);
    }
}
