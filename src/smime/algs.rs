//! Algorithm identifiers and the small ASN.1 pieces the `cms` crate has no type for.
//!
//! Only algorithms RFC 8551 §2 allows us to *send* are here: SHA-256/512, RSA PKCS#1 v1.5,
//! RSASSA-PSS and RSAES-OAEP with SHA-256 (RFC 4055), ECDSA P-256, AES-CBC (RFC 3565),
//! AES-GCM (RFC 5084), AES key wrap (RFC 3394) and ECDH ephemeral-static (RFC 5753).
//! Never 3DES, RC2 or SHA-1.

use const_oid::ObjectIdentifier as Oid;
use der::asn1::Null;
use der::{Any, Decode, Encode};
use spki::AlgorithmIdentifierOwned;

use super::{ContentCipher, KeyTransport, ReplyAlgorithms};

// Content types (RFC 5652 §4-6, RFC 5083 §1).
pub const ID_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
pub const ID_SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
pub const ID_ENVELOPED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.3");
pub const ID_AUTH_ENVELOPED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.9.16.1.23");

// Signed attributes (RFC 5652 §11, RFC 8551 §2.5).
pub const ID_SMIME_CAPABILITIES: Oid = Oid::new_unwrap("1.2.840.113549.1.9.15");
pub const ID_ENCRYPTION_KEY_PREFERENCE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.16.2.11");
/// id-aa-signingCertificateV2 (RFC 5035 §5.4).
pub const ID_SIGNING_CERTIFICATE_V2: Oid = Oid::new_unwrap("1.2.840.113549.1.9.16.2.47");

// Digests (RFC 5754 §2).
pub const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
pub const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");

// Signatures and key transport (RFC 3370 §3.2, RFC 4055, RFC 5754 §3).
pub const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
pub const ID_RSAES_OAEP: Oid = Oid::new_unwrap("1.2.840.113549.1.1.7");
pub const ID_MGF1: Oid = Oid::new_unwrap("1.2.840.113549.1.1.8");
pub const ID_RSASSA_PSS: Oid = Oid::new_unwrap("1.2.840.113549.1.1.10");
pub const SHA256_WITH_RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
pub const ECDSA_WITH_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
pub const ID_EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");

// Content encryption and key wrap (RFC 3565 §4, RFC 5084 §3).
pub const AES256_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.42");
pub const AES128_GCM: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.6");
pub const AES256_GCM: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.46");
pub const AES128_WRAP: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.5");
pub const AES256_WRAP: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.45");
/// dhSinglePass-stdDH-sha256kdf-scheme (RFC 5753 §7.1.4 / SEC 1).
pub const DH_SINGLE_PASS_STD_DH_SHA256KDF: Oid = Oid::new_unwrap("1.3.132.1.11.1");

/// AlgorithmIdentifier with absent parameters (RFC 5754 §2 for SHA-2, RFC 3394 for key wrap).
pub fn alg(oid: Oid) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    }
}

/// AlgorithmIdentifier with NULL parameters (rsaEncryption, RFC 3370 §3.2).
pub fn alg_null(oid: Oid) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid,
        parameters: Some(Any::from(Null)),
    }
}

/// AlgorithmIdentifier whose parameters are the given DER.
pub fn alg_with(oid: Oid, params_der: &[u8]) -> Result<AlgorithmIdentifierOwned, der::Error> {
    Ok(AlgorithmIdentifierOwned {
        oid,
        parameters: Some(Any::from_der(params_der)?),
    })
}

/// DER tag-length-value.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tlv_len(content.len()));
    put_header(&mut out, tag, content.len());
    out.extend_from_slice(content);
    out
}

/// Octets of a DER header (one tag octet and the length) for `len` content octets.
pub fn header_len(len: usize) -> usize {
    if len < 0x80 {
        2
    } else {
        2 + (usize::BITS - len.leading_zeros()).div_ceil(8) as usize
    }
}

/// Octets of a whole TLV with `len` content octets.
pub fn tlv_len(len: usize) -> usize {
    header_len(len) + len
}

/// Appends a DER tag and definite length (X.690 §8.1.3, shortest form as DER requires).
/// How the S/MIME writers frame content they write themselves, with lengths known in advance.
pub fn put_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// One DER TLV read from the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u8,
    /// The whole TLV: header and content.
    pub whole: &'a [u8],
    pub content: &'a [u8],
    /// What follows it.
    pub rest: &'a [u8],
}

/// One DER TLV at the start of `input`. Single-octet tags and definite lengths only, which is
/// all certificates use.
pub fn read_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let head = input.len() - rest.len();
    Some(Tlv {
        tag,
        whole: &input[..head + len],
        content: &rest[..len],
        rest: &rest[len..],
    })
}

/// The issuer `Name` and `serialNumber` of a DER certificate as the TLVs it holds (RFC 5280
/// §4.1.1.2): what IssuerAndSerialNumber (RFC 5652 §10.2.4) and ESS IssuerSerial are made of.
/// Copied, not parsed and re-encoded: a walk over four headers instead of a certificate parse
/// per message, and the bytes are exactly the certificate's.
pub fn cert_issuer_serial(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    fn expect(input: &[u8], tag: u8) -> Option<Tlv<'_>> {
        read_tlv(input).filter(|t| t.tag == tag)
    }
    let cert = expect(cert, 0x30)?.content;
    let tbs = expect(cert, 0x30)?.content;
    // version [0] EXPLICIT is absent in v1 certificates.
    let first = read_tlv(tbs)?;
    let rest = if first.tag == 0xa0 { first.rest } else { tbs };
    let serial = expect(rest, 0x02)?;
    let signature = expect(serial.rest, 0x30)?;
    let issuer = expect(signature.rest, 0x30)?;
    Some((issuer.whole, serial.whole))
}

/// DER IssuerAndSerialNumber (RFC 5652 §10.2.4) of a certificate, with `tag` as its outer
/// tag (0x30, or 0xa0 where a CHOICE puts it under [0] IMPLICIT).
pub fn issuer_and_serial_der(cert: &[u8], tag: u8) -> Option<Vec<u8>> {
    let (issuer, serial) = cert_issuer_serial(cert)?;
    let mut out = Vec::with_capacity(tlv_len(issuer.len() + serial.len()));
    put_header(&mut out, tag, issuer.len() + serial.len());
    out.extend_from_slice(issuer);
    out.extend_from_slice(serial);
    Some(out)
}

/// The hash AlgorithmIdentifier inside RSASSA-PSS / RSAES-OAEP parameters and MGF1 (RFC 4055
/// §2.1: SHA-2 here with NULL parameters, which is what OpenSSL writes and every reader takes).
fn hash_alg_der(hash: Oid) -> Vec<u8> {
    alg_null(hash)
        .to_der()
        .expect("static AlgorithmIdentifier encodes")
}

fn mgf1_der(hash: Oid) -> Vec<u8> {
    let mut content = ID_MGF1.to_der().expect("oid");
    content.extend_from_slice(&hash_alg_der(hash));
    tlv(0x30, &content)
}

/// RSASSA-PSS-params (RFC 4055 §3.1): hash, MGF1 with the same hash, salt = hash length.
pub fn pss_params(hash: Oid, salt_len: u8) -> Vec<u8> {
    let mut content = tlv(0xa0, &hash_alg_der(hash));
    content.extend(tlv(0xa1, &mgf1_der(hash)));
    content.extend(tlv(0xa2, &[0x02, 0x01, salt_len]));
    tlv(0x30, &content)
}

/// RSAES-OAEP-params (RFC 4055 §4.1) for SHA-256 + MGF1-SHA-256, empty label (default pSource).
pub fn oaep_sha256_params() -> Vec<u8> {
    let mut content = tlv(0xa0, &hash_alg_der(SHA256));
    content.extend(tlv(0xa1, &mgf1_der(SHA256)));
    tlv(0x30, &content)
}

/// GCMParameters (RFC 5084 §3.2): 12-octet nonce, explicit 16-octet ICV (default would be 12).
pub fn gcm_params(nonce: &[u8; 12]) -> Vec<u8> {
    let mut content = tlv(0x04, nonce);
    content.extend_from_slice(&[0x02, 0x01, 16]);
    tlv(0x30, &content)
}

/// ECC-CMS-SharedInfo (RFC 5753 §7.2) without entityUInfo: keyInfo is the key-wrap algorithm,
/// suppPubInfo the KEK length in bits as a 32-bit big-endian integer.
pub fn ecc_cms_shared_info(
    wrap: &AlgorithmIdentifierOwned,
    kek_bits: u32,
) -> Result<Vec<u8>, der::Error> {
    let mut content = wrap.to_der()?;
    content.extend(tlv(0xa2, &tlv(0x04, &kek_bits.to_be_bytes())));
    Ok(tlv(0x30, &content))
}

/// SMIMECapabilities value (RFC 8551 §2.5.2): what replies to the signer should use, most
/// preferred first. Content ciphers, then key encipherment, then signatures, each in the order
/// of `replies` (see [`ReplyAlgorithms`] for why the policy decides it):
///
/// - AES-CBC (RFC 3565 §4) and AES-GCM (RFC 5084 §3) with absent parameters;
/// - RSAES-OAEP with explicit SHA-256 / MGF1-SHA-256 parameters (RFC 4055 §4.1): empty
///   parameters would mean the SHA-1 defaults (RFC 3560 §5); rsaEncryption with NULL
///   (RFC 3370 §4.2.1); ECDH with the SHA-256 KDF, which EC recipients always get (RFC 5753);
/// - the RSA signature scheme the policy signs with: RSASSA-PSS with explicit SHA-256 /
///   MGF1-SHA-256 / salt 32 parameters (RFC 4055 §3.1, the default would be SHA-1), or
///   sha256WithRSAEncryption with NULL (RFC 5754 §3.2); then ECDSA with SHA-256.
///
/// Only SHA-256 variants are announced: the digest option is about what we send, and SHA-256
/// is what every S/MIME 4.0 agent reads (RFC 8551 §2.1).
pub fn smime_capabilities(replies: &ReplyAlgorithms, rsa_pss: bool) -> Result<Vec<u8>, der::Error> {
    let mut caps: Vec<AlgorithmIdentifierOwned> = Vec::new();
    for c in &replies.ciphers {
        caps.push(alg(match c {
            ContentCipher::Aes256Cbc => AES256_CBC,
            ContentCipher::Aes128Gcm => AES128_GCM,
            ContentCipher::Aes256Gcm => AES256_GCM,
        }));
    }
    for k in &replies.key_transports {
        caps.push(match k {
            KeyTransport::RsaOaep => alg_with(ID_RSAES_OAEP, &oaep_sha256_params())?,
            KeyTransport::RsaPkcs1 => alg_null(RSA_ENCRYPTION),
        });
    }
    caps.push(alg(DH_SINGLE_PASS_STD_DH_SHA256KDF));
    caps.push(if rsa_pss {
        alg_with(ID_RSASSA_PSS, &pss_params(SHA256, 32))?
    } else {
        alg_null(SHA256_WITH_RSA_ENCRYPTION)
    });
    caps.push(alg(ECDSA_WITH_SHA256));
    caps.to_der()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_long_length() {
        let v = tlv(0x04, &[0u8; 300]);
        assert_eq!(&v[..4], &[0x04, 0x82, 0x01, 0x2c]);
        for n in [0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0x123456] {
            let v = tlv(0x04, &vec![0u8; n]);
            assert_eq!(v.len(), tlv_len(n), "{n}");
            assert_eq!(
                read_tlv(&v).map(|t| (t.tag, t.whole.len(), t.content.len(), t.rest.len())),
                Some((0x04, v.len(), n, 0))
            );
            let any = der::asn1::OctetString::new(vec![0u8; n])
                .unwrap()
                .to_der()
                .unwrap();
            assert_eq!(v, any, "{n}");
        }
    }

    #[test]
    fn issuer_and_serial_are_the_certificates_own_bytes() {
        use rustls_pki_types::pem::PemObject;
        use x509_cert::Certificate;
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/interop/rfc9216");
        for name in [
            "alice.sign.crt",
            "bob.encrypt.crt",
            "ca.rsa.crt",
            "ca.25519.crt",
        ] {
            let pem = std::fs::read(dir.join(name)).unwrap();
            let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
            let cert = Certificate::from_der(&der).unwrap();
            let ias = cms::cert::IssuerAndSerialNumber {
                issuer: cert.tbs_certificate().issuer().clone(),
                serial_number: cert.tbs_certificate().serial_number().clone(),
            };
            assert_eq!(
                issuer_and_serial_der(&der, 0x30).unwrap(),
                ias.to_der().unwrap(),
                "{name}"
            );
        }
        assert_eq!(cert_issuer_serial(b"\x30\x03\x30\x01"), None);
        assert_eq!(cert_issuer_serial(&[]), None);
    }

    #[test]
    fn oaep_params_are_the_rfc4055_sha256_encoding() {
        // RFC 4055 §4.1 / OpenSSL output for -keyopt rsa_oaep_md:sha256
        let expected = "302fa00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500";
        assert_eq!(crate::store::hex(&oaep_sha256_params()), expected);
    }

    #[test]
    fn shared_info_for_aes256_wrap() {
        let si = ecc_cms_shared_info(&alg(AES256_WRAP), 256).unwrap();
        assert_eq!(
            crate::store::hex(&si),
            "3015300b060960864801650304012da20604040000".to_owned() + "0100"
        );
    }

    #[test]
    fn capabilities_carry_the_rfc4055_sha256_parameters_openssl_writes() {
        use crate::smime::{ContentCipher, KeyTransport, ReplyAlgorithms};
        let mut replies =
            ReplyAlgorithms::preferring(ContentCipher::Aes256Gcm, KeyTransport::RsaOaep);
        replies.accept(Some(ContentCipher::Aes256Cbc), Some(KeyTransport::RsaPkcs1));
        let der = smime_capabilities(&replies, true).unwrap();
        let caps = Vec::<AlgorithmIdentifierOwned>::from_der(&der).unwrap();
        let hex: Vec<String> = caps
            .iter()
            .map(|c| crate::store::hex(&c.to_der().unwrap()))
            .collect();
        assert_eq!(
            hex,
            [
                "060960864801650304012e",
                "060960864801650304012a",
                // id-RSAES-OAEP { sha256 NULL, mgf1 { sha256 NULL } } (RFC 4055 §4.1; OpenSSL
                // -keyopt rsa_oaep_md:sha256 writes the same parameters)
                "06092a864886f70d010107302fa00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500",
                // rsaEncryption NULL (RFC 3370 §4.2.1)
                "06092a864886f70d0101010500",
                "06062b8104010b01",
                // id-RSASSA-PSS { sha256 NULL, mgf1 { sha256 NULL }, salt 32 } (RFC 4055 §3.1),
                // as `openssl req -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32
                // -sha256` writes it
                "06092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120",
                "06082a8648ce3d040302",
            ]
            .map(|h| format!("30{:02x}{h}", h.len() / 2))
        );
        // PKCS#1 v1.5 signatures: sha256WithRSAEncryption NULL (RFC 5754 §3.2).
        let der = smime_capabilities(&ReplyAlgorithms::default(), false).unwrap();
        let caps = Vec::<AlgorithmIdentifierOwned>::from_der(&der).unwrap();
        assert_eq!(caps[0], alg(AES256_CBC));
        assert_eq!(caps[1], alg_null(RSA_ENCRYPTION));
        assert_eq!(caps[3], alg_null(SHA256_WITH_RSA_ENCRYPTION));
        assert_eq!(caps.len(), 5);
    }
}
