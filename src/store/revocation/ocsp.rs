//! RFC 6960 OCSP, the few structures cachet needs, written on `der` (no released OCSP crate
//! matches our `der` 0.8 / `x509-cert` 0.3): an `OCSPRequest` with one `CertID` (SHA-1, the hash
//! every responder knows, RFC 6960 §4.1.1) and a nonce (RFC 8954), and the `BasicOCSPResponse`
//! with its checks (RFC 6960 §3.2):
//! 1. the response is signed by the issuer itself, or by a delegated responder whose certificate
//!    the issuer signed and which carries id-kp-OCSPSigning (§4.2.2.2); signatures are checked
//!    with aws-lc-rs;
//! 2. a `SingleResponse` names exactly the certificate asked about (hash algorithm, issuer name
//!    and key hashes, serial); a response about another certificate is refused;
//! 3. `thisUpdate` is not in the future beyond [`SKEW`], `nextUpdate` is not past (an old
//!    response replayed later is refused), and a response without `nextUpdate` is used for at
//!    most [`MAX_AGE_WITHOUT_NEXT_UPDATE`] after `thisUpdate`;
//! 4. a nonce in the response must be the one we sent.
//!
//! Pure functions of bytes and time: no I/O.

use std::time::{Duration, SystemTime};

use const_oid::ObjectIdentifier;
use der::asn1::{BitString, GeneralizedTime, Null, OctetString};
use der::{Any, Decode, Encode, Enumerated, Sequence};
use x509_cert::Certificate;
use x509_cert::ext::Extensions;
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

/// How far in the future a `thisUpdate` may be (clocks differ).
pub const SKEW: Duration = Duration::from_secs(300);
/// How long a response without `nextUpdate` is believed after its `thisUpdate`.
pub const MAX_AGE_WITHOUT_NEXT_UPDATE: Duration = Duration::from_secs(3600);

const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// id-pkix-ocsp-basic (RFC 6960 §4.2.1).
const ID_PKIX_OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// id-pkix-ocsp-nonce (RFC 6960 §4.4.1).
const ID_PKIX_OCSP_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
/// id-kp-OCSPSigning (RFC 5280 §4.2.1.12).
pub const ID_KP_OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");

/// `CertID` (RFC 6960 §4.1.1).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct CertId {
    pub hash_algorithm: AlgorithmIdentifierOwned,
    pub issuer_name_hash: OctetString,
    pub issuer_key_hash: OctetString,
    pub serial_number: SerialNumber,
}

/// `Request` (RFC 6960 §4.1.1).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct Request {
    pub req_cert: CertId,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub single_request_extensions: Option<Extensions>,
}

/// `TBSRequest` without `requestorName` (we never sign requests).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TbsRequest {
    /// DEFAULT v1: absent in DER.
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub version: Option<u8>,
    pub request_list: Vec<Request>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    pub request_extensions: Option<Extensions>,
}

/// `OCSPRequest`, unsigned.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct OcspRequest {
    pub tbs_request: TbsRequest,
}

/// `OCSPResponseStatus` (RFC 6960 §4.2.1).
#[derive(Clone, Copy, Debug, Eq, PartialEq, Enumerated)]
#[repr(u32)]
pub enum ResponseStatus {
    Successful = 0,
    MalformedRequest = 1,
    InternalError = 2,
    TryLater = 3,
    SigRequired = 5,
    Unauthorized = 6,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct ResponseBytes {
    pub response_type: ObjectIdentifier,
    pub response: OctetString,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct OcspResponse {
    pub response_status: ResponseStatus,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub response_bytes: Option<ResponseBytes>,
}

/// `BasicOCSPResponse`; `tbs_response_data` stays raw so the signature is checked over exactly
/// the bytes the responder signed.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct BasicOcspResponse {
    pub tbs_response_data: Any,
    pub signature_algorithm: AlgorithmIdentifierOwned,
    pub signature: BitString,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub certs: Option<Vec<Certificate>>,
}

/// `ResponderID` (RFC 6960 §4.2.1).
#[derive(Clone, Debug, Eq, PartialEq, der::Choice)]
pub enum ResponderId {
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", constructed = "true")]
    ByName(Name),
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", constructed = "true")]
    ByKey(OctetString),
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct ResponseData {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub version: Option<u8>,
    pub responder_id: ResponderId,
    pub produced_at: GeneralizedTime,
    pub responses: Vec<SingleResponse>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    pub response_extensions: Option<Extensions>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct SingleResponse {
    pub cert_id: CertId,
    pub cert_status: CertStatus,
    pub this_update: GeneralizedTime,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub next_update: Option<GeneralizedTime>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    pub single_extensions: Option<Extensions>,
}

#[derive(Clone, Debug, Eq, PartialEq, der::Choice)]
pub enum CertStatus {
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT")]
    Good(Null),
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", constructed = "true")]
    Revoked(RevokedInfo),
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT")]
    Unknown(Null),
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct RevokedInfo {
    pub revocation_time: GeneralizedTime,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub revocation_reason: Option<Any>,
}

/// What a verified response says about the certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Good,
    Revoked,
    /// The responder does not know the certificate (RFC 6960 §2.2 "unknown").
    Unknown,
}

/// A response that passed every check, with its validity window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub answer: Answer,
    pub this_update: SystemTime,
    /// Until when the answer may be used: `nextUpdate`, or `thisUpdate` +
    /// [`MAX_AGE_WITHOUT_NEXT_UPDATE`] when the responder gives none.
    pub valid_until: SystemTime,
}

fn hash(alg: &ObjectIdentifier, data: &[u8]) -> Result<Vec<u8>, String> {
    let algorithm = if *alg == ID_SHA1 {
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY
    } else if *alg == ID_SHA256 {
        &aws_lc_rs::digest::SHA256
    } else {
        return Err(format!("CertID hash algorithm {alg} is not supported"));
    };
    Ok(aws_lc_rs::digest::digest(algorithm, data).as_ref().to_vec())
}

/// The `CertID` of `cert` (issued by `issuer`) with hash algorithm `alg` (SHA-1 or SHA-256).
pub fn cert_id(
    cert: &Certificate,
    issuer: &Certificate,
    alg: ObjectIdentifier,
) -> Result<CertId, String> {
    let name = cert
        .tbs_certificate()
        .issuer()
        .to_der()
        .map_err(|e| e.to_string())?;
    let key = issuer
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    let octets = |v: Vec<u8>| OctetString::new(v).map_err(|e| e.to_string());
    Ok(CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: alg,
            parameters: Some(Any::from(Null)),
        },
        issuer_name_hash: octets(hash(&alg, &name)?)?,
        issuer_key_hash: octets(hash(&alg, key)?)?,
        serial_number: cert.tbs_certificate().serial_number().clone(),
    })
}

/// A DER `OCSPRequest` for `cert`, with `nonce` when given.
pub fn request(
    cert: &Certificate,
    issuer: &Certificate,
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>, String> {
    let request_extensions = match nonce {
        Some(n) => {
            // RFC 8954 §2.1: the extnValue holds an OCTET STRING with the nonce.
            let inner = OctetString::new(n.to_vec())
                .and_then(|o| o.to_der())
                .map_err(|e| e.to_string())?;
            Some(vec![x509_cert::ext::Extension {
                extn_id: ID_PKIX_OCSP_NONCE,
                critical: false,
                extn_value: OctetString::new(inner).map_err(|e| e.to_string())?,
            }])
        }
        None => None,
    };
    OcspRequest {
        tbs_request: TbsRequest {
            version: None,
            request_list: vec![Request {
                req_cert: cert_id(cert, issuer, ID_SHA1)?,
                single_request_extensions: None,
            }],
            request_extensions,
        },
    }
    .to_der()
    .map_err(|e| e.to_string())
}

fn nonce_of(exts: &Option<Extensions>) -> Option<Vec<u8>> {
    exts.as_ref()?
        .iter()
        .find(|e| e.extn_id == ID_PKIX_OCSP_NONCE)
        .map(|e| e.extn_value.as_bytes().to_vec())
}

/// Check `der` (an `OCSPResponse`) as the answer about `cert` issued by `issuer`, at `now`.
/// `nonce` is what the request carried, if anything.
pub fn verify_response(
    der: &[u8],
    cert: &Certificate,
    issuer: &Certificate,
    nonce: Option<&[u8]>,
    now: SystemTime,
) -> Result<Verified, String> {
    let resp = OcspResponse::from_der(der).map_err(|e| format!("not an OCSP response: {e}"))?;
    if resp.response_status != ResponseStatus::Successful {
        return Err(format!("responder answered {:?}", resp.response_status));
    }
    let bytes = resp
        .response_bytes
        .ok_or("successful response without responseBytes")?;
    if bytes.response_type != ID_PKIX_OCSP_BASIC {
        return Err(format!(
            "response type {} is not basic",
            bytes.response_type
        ));
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| format!("bad BasicOCSPResponse: {e}"))?;
    let tbs = basic
        .tbs_response_data
        .to_der()
        .map_err(|e| e.to_string())?;
    let data = ResponseData::from_der(&tbs).map_err(|e| format!("bad ResponseData: {e}"))?;
    let signature = basic
        .signature
        .as_bytes()
        .ok_or("signature is not a whole number of bytes")?;

    // 1. Who signed it: the issuer, or a delegate the issuer certified for OCSP signing.
    let issuer_spki = issuer.tbs_certificate().subject_public_key_info();
    let mut signed = verify_signature(issuer_spki, &basic.signature_algorithm, &tbs, signature);
    if signed.is_err() {
        for delegate in basic.certs.iter().flatten() {
            if delegate_ok(delegate, issuer, now).is_ok()
                && verify_signature(
                    delegate.tbs_certificate().subject_public_key_info(),
                    &basic.signature_algorithm,
                    &tbs,
                    signature,
                )
                .is_ok()
            {
                signed = Ok(());
                break;
            }
        }
    }
    signed.map_err(|e| {
        format!("response not signed by the issuer or a responder it authorised ({e})")
    })?;

    // 2. About our certificate, and no other.
    let mut single = None;
    for s in &data.responses {
        let ours = cert_id(cert, issuer, s.cert_id.hash_algorithm.oid)?;
        if s.cert_id.issuer_name_hash == ours.issuer_name_hash
            && s.cert_id.issuer_key_hash == ours.issuer_key_hash
            && s.cert_id.serial_number == ours.serial_number
        {
            single = Some(s);
            break;
        }
    }
    let single = single.ok_or("the response is not about this certificate")?;

    // 4. Nonce, when both sides used one.
    if let (Some(sent), Some(got)) = (nonce, nonce_of(&data.response_extensions)) {
        let inner = OctetString::new(sent.to_vec())
            .and_then(|o| o.to_der())
            .map_err(|e| e.to_string())?;
        if got != inner && got != sent {
            return Err("the response carries another request's nonce".into());
        }
    }

    // 3. Time window.
    let this_update = single.this_update.to_system_time();
    if this_update > now + SKEW {
        return Err(format!(
            "thisUpdate {} is in the future",
            crate::date::rfc3339(this_update)
        ));
    }
    let valid_until = match &single.next_update {
        Some(n) => n.to_system_time(),
        None => this_update + MAX_AGE_WITHOUT_NEXT_UPDATE,
    };
    if now >= valid_until {
        return Err(format!(
            "stale response: valid until {} (an old answer replayed?)",
            crate::date::rfc3339(valid_until)
        ));
    }
    let answer = match single.cert_status {
        CertStatus::Good(_) => Answer::Good,
        CertStatus::Revoked(_) => Answer::Revoked,
        CertStatus::Unknown(_) => Answer::Unknown,
    };
    Ok(Verified {
        answer,
        this_update,
        valid_until,
    })
}

/// A delegated responder certificate (RFC 6960 §4.2.2.2): issued and signed by `issuer`,
/// valid now, with id-kp-OCSPSigning.
fn delegate_ok(
    delegate: &Certificate,
    issuer: &Certificate,
    now: SystemTime,
) -> Result<(), String> {
    let tbs = delegate.tbs_certificate();
    if tbs.issuer() != issuer.tbs_certificate().subject() {
        return Err("not issued by the certificate's issuer".into());
    }
    let validity = tbs.validity();
    if now < validity.not_before.to_system_time() || now > validity.not_after.to_system_time() {
        return Err("responder certificate outside its validity".into());
    }
    match tbs.get_extension::<ExtendedKeyUsage>() {
        Ok(Some((_, eku))) if eku.0.contains(&ID_KP_OCSP_SIGNING) => {}
        _ => return Err("responder certificate lacks id-kp-OCSPSigning".into()),
    }
    let tbs_der = tbs.to_der().map_err(|e| e.to_string())?;
    let sig = delegate
        .signature()
        .as_bytes()
        .ok_or("bad certificate signature")?;
    verify_signature(
        issuer.tbs_certificate().subject_public_key_info(),
        delegate.signature_algorithm(),
        &tbs_der,
        sig,
    )
}

/// Check `signature` over `data` with `spki` (aws-lc-rs). RSA PKCS#1 v1.5 and ECDSA with
/// SHA-256/384/512; SHA-1 signatures are refused.
pub fn verify_signature(
    spki: &SubjectPublicKeyInfoOwned,
    alg: &AlgorithmIdentifierOwned,
    data: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use aws_lc_rs::signature as s;
    const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    const EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
    let key_alg = spki.algorithm.oid;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let verifier: &dyn s::VerificationAlgorithm =
        match (alg.oid.to_string().as_str(), key_alg, curve) {
            ("1.2.840.113549.1.1.11", k, _) if k == RSA => &s::RSA_PKCS1_2048_8192_SHA256,
            ("1.2.840.113549.1.1.12", k, _) if k == RSA => &s::RSA_PKCS1_2048_8192_SHA384,
            ("1.2.840.113549.1.1.13", k, _) if k == RSA => &s::RSA_PKCS1_2048_8192_SHA512,
            ("1.2.840.10045.4.3.2", k, Some(c)) if k == EC && c == P256 => {
                &s::ECDSA_P256_SHA256_ASN1
            }
            ("1.2.840.10045.4.3.3", k, Some(c)) if k == EC && c == P256 => {
                &s::ECDSA_P256_SHA384_ASN1
            }
            ("1.2.840.10045.4.3.2", k, Some(c)) if k == EC && c == P384 => {
                &s::ECDSA_P384_SHA256_ASN1
            }
            ("1.2.840.10045.4.3.3", k, Some(c)) if k == EC && c == P384 => {
                &s::ECDSA_P384_SHA384_ASN1
            }
            (other, _, _) => {
                return Err(format!(
                    "signature algorithm {other} with this key is not accepted"
                ));
            }
        };
    s::UnparsedPublicKey::new(verifier, spki.subject_public_key.raw_bytes())
        .verify(data, signature)
        .map_err(|_| "bad signature".to_string())
}
