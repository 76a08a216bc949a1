//! CMS SignedData for S/MIME signatures (RFC 5652 §5, RFC 8551 §2.5, §3.5).
//!
//! Built directly on the `cms` crate's types; all key operations go through
//! [`SigningIdentity::sign`] (aws-lc-rs). The signed attributes are content-type,
//! signing-time, message-digest, smimeCapabilities (what replies should use, from the policy),
//! ESS signingCertificateV2 (RFC 5035, binding the signature to the signer certificate), and
//! SMIMEEncryptionKeyPreference when the signer has its own encryption certificate
//! (RFC 8551 §2.5.3); `SetOfVec` keeps them in DER SET OF order. The signer's chain (without
//! the trust anchor) is included.

use aws_lc_rs::digest;
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignatureValue, SignedData, SignerIdentifier,
    SignerInfo, SignerInfos,
};
use const_oid::ObjectIdentifier as Oid;
use der::asn1::{OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use x509_cert::Certificate;
use x509_cert::attr::Attribute;

use super::algs::{self, alg, alg_null, alg_with};
use super::{Digest, SignOptions, SmimeError};
use crate::store::KeyKind;
use crate::store::keys::{KeyError, SignatureScheme, SigningIdentity};

/// Issuer and serial number of a DER certificate: how SignerInfo and RecipientInfos name it
/// (RFC 5652 §10.2.4).
pub(crate) fn issuer_and_serial(der: &[u8]) -> Result<IssuerAndSerialNumber, SmimeError> {
    let cert = Certificate::from_der(der).map_err(|e| SmimeError::Certificate(e.to_string()))?;
    Ok(IssuerAndSerialNumber {
        issuer: cert.tbs_certificate().issuer().clone(),
        serial_number: cert.tbs_certificate().serial_number().clone(),
    })
}

/// SigningCertificateV2 (RFC 5035 §5.4) naming the signer certificate `cert_der`, so the
/// signature cannot be re-attributed to another certificate with the same key (RFC 5035 §3,
/// RFC 8551 §2.5 recommends it). One ESSCertIDv2: certHash is the SHA-256 of the certificate,
/// hashAlgorithm is left out because SHA-256 is its DEFAULT (DER omits defaults, X.690
/// §11.5), and issuerSerial names the issuer as a directoryName GeneralName.
pub(crate) fn signing_certificate_v2(cert_der: &[u8]) -> Result<Vec<u8>, SmimeError> {
    let ias = issuer_and_serial(cert_der)?;
    let hash = digest::digest(&digest::SHA256, cert_der);
    // GeneralNames ::= SEQUENCE OF GeneralName; directoryName [4] EXPLICIT Name.
    let general_names = algs::tlv(0x30, &algs::tlv(0xa4, &ias.issuer.to_der()?));
    let mut issuer_serial = general_names;
    issuer_serial.extend(ias.serial_number.to_der()?);
    let mut cert_id = algs::tlv(0x04, hash.as_ref());
    cert_id.extend(algs::tlv(0x30, &issuer_serial));
    let certs = algs::tlv(0x30, &algs::tlv(0x30, &cert_id));
    Ok(algs::tlv(0x30, &certs))
}

fn attribute(oid: Oid, value_der: &[u8]) -> Result<Attribute, SmimeError> {
    let mut values = SetOfVec::new();
    values.insert(Any::from_der(value_der)?)?;
    Ok(Attribute { oid, values })
}

/// The digest the signature uses, and its MIME `micalg` name (RFC 8551 §3.5.3.1).
/// P-256 keys always sign with SHA-256 (RFC 5753 §2.1.1 pairs P-256 with SHA-256, and
/// aws-lc-rs offers no other hash for it); the SHA-512 option applies to RSA keys.
pub(crate) fn effective_digest(key: KeyKind, opts: &SignOptions) -> (Digest, &'static str) {
    match (key, opts.digest) {
        (KeyKind::EcP256, _) | (_, Digest::Sha256) => (Digest::Sha256, "sha-256"),
        (_, Digest::Sha512) => (Digest::Sha512, "sha-512"),
    }
}

/// Build a DER `ContentInfo` holding SignedData over `content` (the canonical MIME entity).
/// `detached`: leave eContent out (multipart/signed, RFC 8551 §3.5.3) or carry it (opaque).
pub(crate) fn signed_data(
    content: &[u8],
    id: &SigningIdentity,
    opts: &SignOptions,
    detached: bool,
) -> Result<Vec<u8>, SmimeError> {
    let (dig, _) = effective_digest(id.key, opts);
    let (digest_oid, digest_alg) = match dig {
        Digest::Sha256 => (algs::SHA256, &digest::SHA256),
        Digest::Sha512 => (algs::SHA512, &digest::SHA512),
    };
    let message_digest = digest::digest(digest_alg, content);

    // Signed attributes (RFC 5652 §5.3, §11; RFC 8551 §2.5).
    let mut attrs: Vec<Attribute> = vec![
        cms::builder::create_content_type_attribute(algs::ID_DATA)?,
        cms::builder::create_signing_time_attribute()?,
        cms::builder::create_message_digest_attribute(message_digest.as_ref())?,
        attribute(
            algs::ID_SMIME_CAPABILITIES,
            &algs::smime_capabilities(&opts.replies, opts.rsa_pss)?,
        )?,
        attribute(
            algs::ID_SIGNING_CERTIFICATE_V2,
            &signing_certificate_v2(id.certificate())?,
        )?,
    ];
    if let Some(enc) = &id.encryption_cert {
        // SMIMEEncryptionKeyPreference ::= CHOICE { issuerAndSerialNumber [0] IMPLICIT ... }:
        // same contents as the SEQUENCE, tag changed to [0] constructed.
        let mut ias = issuer_and_serial(&enc.der)?.to_der()?;
        ias[0] = 0xa0;
        attrs.push(attribute(algs::ID_ENCRYPTION_KEY_PREFERENCE, &ias)?);
    }
    let signed_attrs: SetOfVec<Attribute> = SetOfVec::try_from(attrs)?;
    // RFC 5652 §5.4: the signature covers the DER of the attributes with the SET OF tag.
    let to_sign = signed_attrs.to_der()?;

    let (scheme, sig_alg) = match (id.key, opts.rsa_pss, dig) {
        (KeyKind::EcP256, _, _) => (
            SignatureScheme::EcdsaP256Sha256,
            alg(algs::ECDSA_WITH_SHA256),
        ),
        // RFC 3370 §3.2 / RFC 5754 §3.2: rsaEncryption with NULL is what OpenSSL, gpgsm and
        // Outlook write and all read.
        (KeyKind::Rsa { .. }, false, Digest::Sha256) => (
            SignatureScheme::RsaPkcs1Sha256,
            alg_null(algs::RSA_ENCRYPTION),
        ),
        (KeyKind::Rsa { .. }, false, Digest::Sha512) => (
            SignatureScheme::RsaPkcs1Sha512,
            alg_null(algs::RSA_ENCRYPTION),
        ),
        // RFC 4055 §3.1: salt length = hash length, which is what aws-lc-rs uses.
        (KeyKind::Rsa { .. }, true, Digest::Sha256) => (
            SignatureScheme::RsaPssSha256,
            alg_with(algs::ID_RSASSA_PSS, &algs::pss_params(algs::SHA256, 32))?,
        ),
        (KeyKind::Rsa { .. }, true, Digest::Sha512) => (
            SignatureScheme::RsaPssSha512,
            alg_with(algs::ID_RSASSA_PSS, &algs::pss_params(algs::SHA512, 64))?,
        ),
    };
    let signature = id.sign(scheme, &to_sign).map_err(|e| match e {
        KeyError::Unavailable(r) => SmimeError::KeyUnavailable(r),
        KeyError::Failed(r) => SmimeError::Sign(r),
    })?;

    let signer_info = SignerInfo {
        version: CmsVersion::V1, // sid is issuerAndSerialNumber (RFC 5652 §5.3)
        sid: SignerIdentifier::IssuerAndSerialNumber(issuer_and_serial(id.certificate())?),
        digest_alg: alg(digest_oid),
        signed_attrs: Some(signed_attrs),
        signature_algorithm: sig_alg,
        signature: SignatureValue::new(signature)?,
        unsigned_attrs: None,
    };
    let mut certs = SetOfVec::new();
    for der in &id.chain {
        let cert =
            Certificate::from_der(der).map_err(|e| SmimeError::Certificate(e.to_string()))?;
        certs.insert(CertificateChoices::Certificate(cert))?;
    }
    let econtent = if detached {
        None
    } else {
        Some(Any::encode_from(&OctetString::new(content.to_vec())?)?)
    };
    let mut digest_algorithms = SetOfVec::new();
    digest_algorithms.insert(alg(digest_oid))?;
    let sd = SignedData {
        // RFC 5652 §5.1: v1 with only v3 certificates, v1 SignerInfos and id-data content.
        version: CmsVersion::V1,
        digest_algorithms,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: algs::ID_DATA,
            econtent,
        },
        certificates: Some(CertificateSet(certs)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info])?),
    };
    let ci = ContentInfo {
        content_type: algs::ID_SIGNED_DATA,
        content: Any::encode_from(&sd)?,
    };
    Ok(ci.to_der()?)
}
