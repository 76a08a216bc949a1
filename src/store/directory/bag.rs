//! The certificates in one directory attribute value.
//!
//! Two forms are found in directories: `userCertificate;binary` holds one DER certificate
//! (RFC 4523 §2.1); `userSMIMECertificate;binary` holds a PKCS#7 / CMS SignedData "certificate
//! bag" (RFC 2798 §2.8: the certificates, usually the user's and its chain, in the
//! `certificates` field, no content and normally no signers). The form is recognised from the
//! bytes, not from the attribute name, so either attribute may hold either form (Active
//! Directory exports have been seen both ways).
//!
//! Pure function of bytes: no I/O. Nothing here decides whether a certificate is trusted.

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use der::{Decode, Encode};
use rustls_pki_types::CertificateDer;

/// id-signedData (RFC 5652 §5.1).
const ID_SIGNED_DATA: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");

/// Largest attribute value we look at; real certificate bags are a few KiB.
pub const MAX_VALUE: usize = 256 * 1024;

/// Certificates in one attribute value, in the order found; an error says why none could be
/// read (it becomes a refused candidate in `cachet certs lookup`).
pub fn certificates(value: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    if value.len() > MAX_VALUE {
        return Err(format!(
            "value of {} bytes is larger than {MAX_VALUE}",
            value.len()
        ));
    }
    if value.first() != Some(&0x30) {
        return Err("not DER (a certificate or a PKCS#7 bag starts with a SEQUENCE)".into());
    }
    // A ContentInfo is SEQUENCE { OID, [0] ... }; a certificate is SEQUENCE { SEQUENCE ... }.
    if let Ok(ci) = ContentInfo::from_der(value) {
        if ci.content_type != ID_SIGNED_DATA {
            return Err(format!(
                "a CMS {} is not a certificate bag (SignedData expected)",
                ci.content_type
            ));
        }
        let sd = ci
            .content
            .decode_as::<SignedData>()
            .map_err(|e| format!("PKCS#7 certificate bag: {e}"))?;
        let mut out = Vec::new();
        for choice in sd.certificates.iter().flat_map(|set| set.0.iter()) {
            if let CertificateChoices::Certificate(cert) = choice {
                let der = cert
                    .to_der()
                    .map_err(|e| format!("PKCS#7 certificate bag: {e}"))?;
                out.push(CertificateDer::from(der));
            }
        }
        if out.is_empty() {
            return Err("PKCS#7 certificate bag holds no certificate".into());
        }
        return Ok(out);
    }
    x509_cert::Certificate::from_der(value)
        .map_err(|e| format!("neither a certificate nor a PKCS#7 certificate bag: {e}"))?;
    Ok(vec![CertificateDer::from(value.to_vec())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcgen_cert(ca: bool) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["x.test".to_string()]).unwrap();
        if ca {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    /// A degenerate SignedData (no content, no signers) holding `certs`, as `openssl
    /// crl2pkcs7 -nocrl` makes it.
    fn bag(certs: &[Vec<u8>]) -> Vec<u8> {
        use cms::content_info::CmsVersion;
        use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignerInfos};
        let choices: Vec<CertificateChoices> = certs
            .iter()
            .map(|c| CertificateChoices::Certificate(x509_cert::Certificate::from_der(c).unwrap()))
            .collect();
        let sd = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: Default::default(),
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: const_oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1"),
                econtent: None,
            },
            certificates: Some(CertificateSet::try_from(choices).unwrap()),
            crls: None,
            signer_infos: SignerInfos(Default::default()),
        };
        ContentInfo {
            content_type: ID_SIGNED_DATA,
            content: der::Any::encode_from(&sd).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    #[test]
    fn a_der_certificate_is_itself() {
        let c = rcgen_cert(false);
        assert_eq!(certificates(&c).unwrap(), vec![CertificateDer::from(c)]);
    }

    #[test]
    fn a_bag_yields_every_certificate() {
        let (a, b) = (rcgen_cert(false), rcgen_cert(true));
        let got = certificates(&bag(&[a.clone(), b.clone()])).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.contains(&CertificateDer::from(a)));
        assert!(got.contains(&CertificateDer::from(b)));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(certificates(b"hello").unwrap_err().contains("not DER"));
        assert!(certificates(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
        assert!(certificates(&[]).is_err());
        let empty = bag(&[]);
        assert!(certificates(&empty).unwrap_err().contains("no certificate"));
        let big = vec![0x30; MAX_VALUE + 1];
        assert!(certificates(&big).unwrap_err().contains("larger"));
    }
}
