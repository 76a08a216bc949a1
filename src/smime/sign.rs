//! CMS SignedData for S/MIME signatures (RFC 5652 §5, RFC 8551 §2.5, §3.5).
//!
//! The signed attributes are built on the `cms` crate's types; all key operations go through
//! [`SigningIdentity::sign`] (aws-lc-rs). The signed attributes are content-type,
//! signing-time, message-digest, smimeCapabilities (what replies should use, from the policy),
//! ESS signingCertificateV2 (RFC 5035, binding the signature to the signer certificate), and
//! SMIMEEncryptionKeyPreference when the signer has its own encryption certificate
//! (RFC 8551 §2.5.3); `SetOfVec` keeps them in DER SET OF order. The signer's chain (without
//! the trust anchor) is included.
//!
//! The SignedData around them is written as DER directly ([`write_signed_data`]): lengths
//! are known before a byte is written, the certificates go in as the DER the key store holds
//! (no parse and re-encode per message), issuer and serial number are the certificate's own
//! TLVs (`algs::cert_issuer_serial`), and an opaque signature's content is copied once, into
//! its place in the output. The `cms` types stay for parsing (`verify.rs`); a unit test holds
//! the writer to what they encode.

use aws_lc_rs::digest;
use const_oid::ObjectIdentifier as Oid;
use der::asn1::SetOfVec;
use der::{Any, Decode, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::Attribute;

use super::algs::{self, alg, alg_null, alg_with, put_header, tlv, tlv_len};
use super::{Digest, SignOptions, SmimeError};
use crate::store::KeyKind;
use crate::store::keys::{KeyError, SignatureScheme, SigningIdentity};

fn unfit(what: &str) -> SmimeError {
    SmimeError::Certificate(format!("{what}: not a DER X.509 certificate"))
}

/// DER IssuerAndSerialNumber of a certificate (RFC 5652 §10.2.4), tagged `tag`: how
/// SignerInfo and RecipientInfos name it.
pub(crate) fn issuer_and_serial(der: &[u8], tag: u8) -> Result<Vec<u8>, SmimeError> {
    algs::issuer_and_serial_der(der, tag).ok_or_else(|| unfit("issuer and serial number"))
}

/// SigningCertificateV2 (RFC 5035 §5.4) naming the signer certificate `cert_der`, so the
/// signature cannot be re-attributed to another certificate with the same key (RFC 5035 §3,
/// RFC 8551 §2.5 recommends it). One ESSCertIDv2: certHash is the SHA-256 of the certificate,
/// hashAlgorithm is left out because SHA-256 is its DEFAULT (DER omits defaults, X.690
/// §11.5), and issuerSerial names the issuer as a directoryName GeneralName.
pub(crate) fn signing_certificate_v2(cert_der: &[u8]) -> Result<Vec<u8>, SmimeError> {
    let (issuer, serial) =
        algs::cert_issuer_serial(cert_der).ok_or_else(|| unfit("signer certificate"))?;
    let hash = digest::digest(&digest::SHA256, cert_der);
    // GeneralNames ::= SEQUENCE OF GeneralName; directoryName [4] EXPLICIT Name.
    let general_names = tlv(0x30, &tlv(0xa4, issuer));
    let mut issuer_serial = general_names;
    issuer_serial.extend_from_slice(serial);
    let mut cert_id = tlv(0x04, hash.as_ref());
    cert_id.extend(tlv(0x30, &issuer_serial));
    let certs = tlv(0x30, &tlv(0x30, &cert_id));
    Ok(tlv(0x30, &certs))
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

/// Build a DER `ContentInfo` holding SignedData over `content` (the canonical MIME entity,
/// in pieces that are digested and, when opaque, written in order).
/// `detached`: leave eContent out (multipart/signed, RFC 8551 §3.5.3) or carry it (opaque).
pub(crate) fn signed_data(
    content: &[&[u8]],
    id: &SigningIdentity,
    opts: &SignOptions,
    detached: bool,
) -> Result<Vec<u8>, SmimeError> {
    let (dig, _) = effective_digest(id.key, opts);
    let (digest_oid, digest_alg) = match dig {
        Digest::Sha256 => (algs::SHA256, &digest::SHA256),
        Digest::Sha512 => (algs::SHA512, &digest::SHA512),
    };
    // One pass over the content, whatever its pieces.
    let mut ctx = digest::Context::new(digest_alg);
    for piece in content {
        ctx.update(piece);
    }
    let message_digest = ctx.finish();

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
        attrs.push(attribute(
            algs::ID_ENCRYPTION_KEY_PREFERENCE,
            &issuer_and_serial(&enc.der, 0xa0)?,
        )?);
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
    write_signed_data(
        content,
        &Signer {
            digest_alg: alg(digest_oid),
            signature_alg: sig_alg,
            signed_attrs_der: to_sign,
            signature,
            chain: &id.chain,
        },
        detached,
    )
}

/// What the SignerInfo and the certificate set are made of, once the signature exists.
pub(crate) struct Signer<'a> {
    pub digest_alg: AlgorithmIdentifierOwned,
    pub signature_alg: AlgorithmIdentifierOwned,
    /// The DER SET OF the signature covers (tag 0x31).
    pub signed_attrs_der: Vec<u8>,
    pub signature: Vec<u8>,
    /// Signer certificate first, then intermediates (DER).
    pub chain: &'a [rustls_pki_types::CertificateDer<'static>],
}

/// The DER ContentInfo of a SignedData (RFC 5652 §5.1), written front to back into one buffer:
///
/// ```text
/// ContentInfo { id-signedData, [0] SignedData {
///   version 1, digestAlgorithms SET { d }, encapContentInfo { id-data, [0] OCTET STRING? },
///   certificates [0] IMPLICIT SET OF Certificate, signerInfos SET { SignerInfo } } }
/// SignerInfo { version 1, sid IssuerAndSerialNumber, digestAlgorithm,
///   signedAttrs [0] IMPLICIT (the signed SET OF), signatureAlgorithm, signature OCTET STRING }
/// ```
///
/// Version 1 throughout: only v3 certificates, v1 SignerInfos (sid is issuerAndSerialNumber)
/// and id-data content (RFC 5652 §5.1, §5.3).
pub(crate) fn write_signed_data(
    content: &[&[u8]],
    s: &Signer<'_>,
    detached: bool,
) -> Result<Vec<u8>, SmimeError> {
    const VERSION_1: [u8; 3] = [0x02, 0x01, 0x01];
    let cert = s.chain.first().ok_or_else(|| unfit("signer certificate"))?;
    let digest_alg = s.digest_alg.to_der()?;

    // SignerInfo; signedAttrs is the signed SET OF with its tag changed to [0] IMPLICIT.
    let sid = issuer_and_serial(cert, 0x30)?;
    let sig_alg = s.signature_alg.to_der()?;
    let mut attrs = s.signed_attrs_der.clone();
    if attrs.first() != Some(&0x31) {
        return Err(SmimeError::Cms("signed attributes are not a SET OF".into()));
    }
    attrs[0] = 0xa0;
    let si_len = VERSION_1.len()
        + sid.len()
        + digest_alg.len()
        + attrs.len()
        + sig_alg.len()
        + tlv_len(s.signature.len());
    let mut signer_infos = Vec::with_capacity(tlv_len(tlv_len(si_len)));
    put_header(&mut signer_infos, 0x31, tlv_len(si_len));
    put_header(&mut signer_infos, 0x30, si_len);
    signer_infos.extend_from_slice(&VERSION_1);
    signer_infos.extend_from_slice(&sid);
    signer_infos.extend_from_slice(&digest_alg);
    signer_infos.extend_from_slice(&attrs);
    signer_infos.extend_from_slice(&sig_alg);
    put_header(&mut signer_infos, 0x04, s.signature.len());
    signer_infos.extend_from_slice(&s.signature);

    // certificates [0] IMPLICIT CertificateSet: a SET OF, so DER orders the encodings as
    // octet strings (X.690 §11.6).
    let mut certs: Vec<&[u8]> = s.chain.iter().map(|c| c.as_ref()).collect();
    certs.sort_unstable();
    let certs_len: usize = certs.iter().map(|c| c.len()).sum();

    let digest_algs_len = tlv_len(digest_alg.len());
    let id_data = algs::ID_DATA.to_der()?;
    let content_len: usize = content.iter().map(|c| c.len()).sum();
    // eContent [0] EXPLICIT OCTET STRING, absent when detached.
    let econtent_len = if detached {
        0
    } else {
        tlv_len(tlv_len(content_len))
    };
    let eci_len = id_data.len() + econtent_len;
    let sd_len = VERSION_1.len()
        + digest_algs_len
        + tlv_len(eci_len)
        + tlv_len(certs_len)
        + signer_infos.len();
    let id_signed = algs::ID_SIGNED_DATA.to_der()?;
    let ci_len = id_signed.len() + tlv_len(tlv_len(sd_len));

    let mut out = Vec::with_capacity(tlv_len(ci_len));
    put_header(&mut out, 0x30, ci_len);
    out.extend_from_slice(&id_signed);
    put_header(&mut out, 0xa0, tlv_len(sd_len));
    put_header(&mut out, 0x30, sd_len);
    out.extend_from_slice(&VERSION_1);
    put_header(&mut out, 0x31, digest_alg.len());
    out.extend_from_slice(&digest_alg);
    put_header(&mut out, 0x30, eci_len);
    out.extend_from_slice(&id_data);
    if !detached {
        put_header(&mut out, 0xa0, tlv_len(content_len));
        put_header(&mut out, 0x04, content_len);
        for piece in content {
            out.extend_from_slice(piece);
        }
    }
    put_header(&mut out, 0xa0, certs_len);
    for c in certs {
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&signer_infos);
    debug_assert_eq!(out.len(), tlv_len(ci_len));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
    use cms::content_info::{CmsVersion, ContentInfo};
    use cms::signed_data::{
        CertificateSet, EncapsulatedContentInfo, SignatureValue, SignedData, SignerIdentifier,
        SignerInfo, SignerInfos,
    };
    use der::asn1::OctetString;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use x509_cert::Certificate;

    /// The SignedData as the `cms` crate's types encode it: how it was built before the
    /// writer, kept as the reference.
    fn reference(content: &[u8], s: &Signer<'_>, detached: bool) -> Vec<u8> {
        let cert = Certificate::from_der(&s.chain[0]).unwrap();
        let signer_info = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: cert.tbs_certificate().issuer().clone(),
                serial_number: cert.tbs_certificate().serial_number().clone(),
            }),
            digest_alg: s.digest_alg.clone(),
            signed_attrs: Some(SetOfVec::from_der(&s.signed_attrs_der).unwrap()),
            signature_algorithm: s.signature_alg.clone(),
            signature: SignatureValue::new(s.signature.clone()).unwrap(),
            unsigned_attrs: None,
        };
        let mut certs = SetOfVec::new();
        for der in s.chain {
            certs
                .insert(CertificateChoices::Certificate(
                    Certificate::from_der(der).unwrap(),
                ))
                .unwrap();
        }
        let econtent = (!detached)
            .then(|| Any::encode_from(&OctetString::new(content.to_vec()).unwrap()).unwrap());
        let mut digest_algorithms = SetOfVec::new();
        digest_algorithms.insert(s.digest_alg.clone()).unwrap();
        let sd = SignedData {
            version: CmsVersion::V1,
            digest_algorithms,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: algs::ID_DATA,
                econtent,
            },
            certificates: Some(CertificateSet(certs)),
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info]).unwrap()),
        };
        ContentInfo {
            content_type: algs::ID_SIGNED_DATA,
            content: Any::encode_from(&sd).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    fn cert(name: &str) -> CertificateDer<'static> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/interop/rfc9216");
        CertificateDer::from_pem_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
    }

    #[test]
    fn writer_equals_the_cms_encoding() {
        let chains = [
            vec![cert("alice.sign.crt")],
            vec![
                cert("alice.sign.crt"),
                cert("ca.rsa.crt"),
                cert("bob.sign.crt"),
            ],
        ];
        let attrs: SetOfVec<Attribute> = SetOfVec::try_from(vec![
            cms::builder::create_content_type_attribute(algs::ID_DATA).unwrap(),
            cms::builder::create_signing_time_attribute().unwrap(),
        ])
        .unwrap();
        for chain in &chains {
            for (sig_len, sig_alg) in [
                (256, alg_null(algs::RSA_ENCRYPTION)),
                (71, alg(algs::ECDSA_WITH_SHA256)),
                (
                    512,
                    alg_with(algs::ID_RSASSA_PSS, &algs::pss_params(algs::SHA512, 64)).unwrap(),
                ),
            ] {
                let s = Signer {
                    digest_alg: alg(algs::SHA256),
                    signature_alg: sig_alg,
                    signed_attrs_der: attrs.to_der().unwrap(),
                    signature: (0..sig_len).map(|i| i as u8).collect(),
                    chain,
                };
                for size in [0usize, 1, 100, 127, 128, 65_535, 65_536, 200_000] {
                    let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                    let (a, b) = content.split_at(size / 3);
                    for detached in [true, false] {
                        assert_eq!(
                            write_signed_data(&[a, b], &s, detached).unwrap(),
                            reference(&content, &s, detached),
                            "chain {}, size {size}, detached {detached}",
                            chain.len()
                        );
                    }
                }
            }
        }
    }
}
