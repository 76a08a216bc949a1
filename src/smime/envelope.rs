//! CMS EnvelopedData (RFC 5652 §6) and AuthEnvelopedData (RFC 5083) with our own recipient
//! infos, on the `cms` crate's types; every cryptographic operation is aws-lc-rs.
//!
//! - Content: AES-256-CBC (RFC 3565) in EnvelopedData, or AES-128/256-GCM with a 16-octet tag
//!   (RFC 5084) in AuthEnvelopedData. One fresh random content-encryption key (CEK) per call.
//! - RSA recipients: KeyTransRecipientInfo with PKCS#1 v1.5 (RFC 3370 §4.2.1) or RSAES-OAEP
//!   SHA-256/MGF1-SHA-256 (RFC 3560 / RFC 4055 §4).
//! - P-256 recipients: KeyAgreeRecipientInfo, ECDH ephemeral-static (RFC 5753 §3.1) with
//!   dhSinglePass-stdDH-sha256kdf-scheme, the ANSI X9.63 KDF over ECC-CMS-SharedInfo, and AES
//!   key wrap (RFC 3394) of the CEK's strength. (Not `cms`'s KeyAgreeRecipientInfoBuilder: in
//!   0.3.0-rc.0 it wraps under an all-zero key.)
//!
//! Secrets touched: the CEK and the ephemeral ECDH key live only for the call.

use std::sync::Arc;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
use aws_lc_rs::cipher::{self, PaddedBlockEncryptingKey, UnboundCipherKey};
use aws_lc_rs::key_wrap::{self, AesKek, KeyWrap};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, Pkcs1PublicEncryptingKey, PublicEncryptingKey,
};
use cms::authenveloped_data::AuthEnvelopedData;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{
    EncryptedContentInfo, EnvelopedData, KeyAgreeRecipientIdentifier, KeyAgreeRecipientInfo,
    KeyTransRecipientInfo, OriginatorIdentifierOrKey, OriginatorPublicKey, RecipientEncryptedKey,
    RecipientIdentifier, RecipientInfo, RecipientInfos,
};
use der::asn1::{BitString, OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use zeroize::Zeroizing;

use super::algs::{self, alg, alg_null, alg_with};
use super::sign::issuer_and_serial;
use super::{ContentCipher, EncryptOptions, KeyTransport, SmimeError};
use crate::store::KeyKind;
use crate::store::certs::RecipientCert;

/// Encrypt `content` (a canonical MIME entity) to every recipient. Returns the DER ContentInfo
/// and the `smime-type` parameter for the MIME wrapper (RFC 8551 §3.2.2).
pub(crate) fn envelope(
    content: &[u8],
    recipients: &[Arc<RecipientCert>],
    opts: &EncryptOptions,
) -> Result<(Vec<u8>, &'static str), SmimeError> {
    if recipients.is_empty() {
        return Err(SmimeError::NoRecipients);
    }
    let rng = SystemRandom::new();
    let key_len = match opts.cipher {
        ContentCipher::Aes128Gcm => 16,
        ContentCipher::Aes256Cbc | ContentCipher::Aes256Gcm => 32,
    };
    let mut cek = Zeroizing::new(vec![0u8; key_len]);
    rng.fill(&mut cek[..])
        .map_err(|_| SmimeError::Crypto("random"))?;

    let mut infos = Vec::with_capacity(recipients.len());
    for r in recipients {
        infos.push(recipient_info(r, &cek[..], opts.key_transport, &rng)?);
    }
    let any_v3 = infos.iter().any(|i| matches!(i, RecipientInfo::Kari(_)));
    let recip_infos = RecipientInfos(SetOfVec::try_from(infos)?);

    match opts.cipher {
        ContentCipher::Aes256Cbc => {
            let key = UnboundCipherKey::new(&cipher::AES_256, &cek[..])
                .map_err(|_| SmimeError::Crypto("aes key"))?;
            let key = PaddedBlockEncryptingKey::cbc_pkcs7(key)
                .map_err(|_| SmimeError::Crypto("aes-cbc"))?;
            let mut buf = content.to_vec();
            let ctx = key
                .encrypt(&mut buf)
                .map_err(|_| SmimeError::Crypto("aes-cbc encrypt"))?;
            let iv: &[u8] = (&ctx).try_into().map_err(|_| SmimeError::Crypto("iv"))?;
            let eci = EncryptedContentInfo {
                content_type: algs::ID_DATA,
                // RFC 3565 §4.1: parameters are the 16-octet IV.
                content_enc_alg: alg_with(
                    algs::AES256_CBC,
                    &OctetString::new(iv.to_vec())?.to_der()?,
                )?,
                encrypted_content: Some(OctetString::new(buf)?),
            };
            let ed = EnvelopedData {
                // RFC 5652 §6.1: v2 when any RecipientInfo is not v0 (KARI is v3), else v0.
                version: if any_v3 {
                    CmsVersion::V2
                } else {
                    CmsVersion::V0
                },
                originator_info: None,
                recip_infos,
                encrypted_content: eci,
                unprotected_attrs: None,
            };
            let ci = ContentInfo {
                content_type: algs::ID_ENVELOPED_DATA,
                content: Any::encode_from(&ed)?,
            };
            Ok((ci.to_der()?, "enveloped-data"))
        }
        ContentCipher::Aes128Gcm | ContentCipher::Aes256Gcm => {
            let (aead_alg, oid) = if key_len == 16 {
                (&aead::AES_128_GCM, algs::AES128_GCM)
            } else {
                (&aead::AES_256_GCM, algs::AES256_GCM)
            };
            let key = LessSafeKey::new(
                UnboundKey::new(aead_alg, &cek[..]).map_err(|_| SmimeError::Crypto("gcm key"))?,
            );
            let mut nonce = [0u8; 12];
            rng.fill(&mut nonce)
                .map_err(|_| SmimeError::Crypto("random"))?;
            let mut buf = content.to_vec();
            // RFC 5083 §2.1: no authAttrs, so the AAD is empty.
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut buf,
                )
                .map_err(|_| SmimeError::Crypto("gcm seal"))?;
            let eci = EncryptedContentInfo {
                content_type: algs::ID_DATA,
                content_enc_alg: alg_with(oid, &algs::gcm_params(&nonce))?,
                encrypted_content: Some(OctetString::new(buf)?),
            };
            let aed = AuthEnvelopedData {
                version: CmsVersion::V0, // RFC 5083 §2.1: always 0
                originator_info: None,
                recip_infos,
                auth_encrypted_content_info: eci,
                auth_attrs: None,
                mac: OctetString::new(tag.as_ref().to_vec())?,
                unauth_attrs: None,
            };
            let ci = ContentInfo {
                content_type: algs::ID_AUTH_ENVELOPED_DATA,
                content: Any::encode_from(&aed)?,
            };
            Ok((ci.to_der()?, "authEnveloped-data"))
        }
    }
}

fn recipient_info(
    r: &RecipientCert,
    cek: &[u8],
    kt: KeyTransport,
    rng: &SystemRandom,
) -> Result<RecipientInfo, SmimeError> {
    let rid = issuer_and_serial(&r.der)?;
    match r.key {
        KeyKind::Rsa { bits } => {
            if bits < crate::store::validate::MIN_RSA_BITS {
                return Err(SmimeError::Certificate(format!(
                    "{}: RSA key of {bits} bits refused",
                    r.fingerprint
                )));
            }
            let pk = PublicEncryptingKey::from_der(&r.spki_der)
                .map_err(|_| SmimeError::Crypto("rsa public key"))?;
            let (enc_key, key_enc_alg) = match kt {
                KeyTransport::RsaPkcs1 => {
                    let pk = Pkcs1PublicEncryptingKey::new(pk)
                        .map_err(|_| SmimeError::Crypto("rsa key"))?;
                    let mut out = vec![0u8; pk.ciphertext_size()];
                    let n = pk
                        .encrypt(cek, &mut out)
                        .map_err(|_| SmimeError::Crypto("rsa encrypt"))?
                        .len();
                    out.truncate(n);
                    (out, alg_null(algs::RSA_ENCRYPTION))
                }
                KeyTransport::RsaOaep => {
                    let pk = OaepPublicEncryptingKey::new(pk)
                        .map_err(|_| SmimeError::Crypto("rsa key"))?;
                    let mut out = vec![0u8; pk.ciphertext_size()];
                    let n = pk
                        .encrypt(&OAEP_SHA256_MGF1SHA256, cek, &mut out, None)
                        .map_err(|_| SmimeError::Crypto("rsa-oaep encrypt"))?
                        .len();
                    out.truncate(n);
                    (
                        out,
                        alg_with(algs::ID_RSAES_OAEP, &algs::oaep_sha256_params())?,
                    )
                }
            };
            Ok(RecipientInfo::Ktri(KeyTransRecipientInfo {
                version: CmsVersion::V0, // rid is issuerAndSerialNumber (RFC 5652 §6.2.1)
                rid: RecipientIdentifier::IssuerAndSerialNumber(rid),
                key_enc_alg,
                enc_key: OctetString::new(enc_key)?,
            }))
        }
        KeyKind::EcP256 => kari(r, rid, cek, rng),
    }
}

/// ECDH ephemeral-static KeyAgreeRecipientInfo (RFC 5753 §3.1.1).
fn kari(
    r: &RecipientCert,
    rid: cms::cert::IssuerAndSerialNumber,
    cek: &[u8],
    rng: &SystemRandom,
) -> Result<RecipientInfo, SmimeError> {
    let spki = SubjectPublicKeyInfoOwned::from_der(&r.spki_der)?;
    let peer = spki.subject_public_key.raw_bytes().to_vec();
    let (wrap_oid, kek_bits, wrap_cipher) = if cek.len() == 16 {
        (algs::AES128_WRAP, 128u32, &key_wrap::AES_128)
    } else {
        (algs::AES256_WRAP, 256u32, &key_wrap::AES_256)
    };
    // RFC 5753 §7.1.4: the wrap algorithm's parameters are absent, in both places it appears.
    let wrap_alg = alg(wrap_oid);
    let shared_info = algs::ecc_cms_shared_info(&wrap_alg, kek_bits)?;

    let eph = EphemeralPrivateKey::generate(&agreement::ECDH_P256, rng)
        .map_err(|_| SmimeError::Crypto("ecdh key"))?;
    let eph_pub = eph
        .compute_public_key()
        .map_err(|_| SmimeError::Crypto("ecdh public"))?
        .as_ref()
        .to_vec();
    let peer_key = UnparsedPublicKey::new(&agreement::ECDH_P256, peer);
    let kek = agreement::agree_ephemeral(eph, peer_key, SmimeError::Crypto("ecdh agree"), |z| {
        // ANSI X9.63 KDF (RFC 5753 §7.2 / SEC 1 §3.6.1): Hash(Z || counter || SharedInfo),
        // one SHA-256 block covers 128 and 256-bit KEKs.
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(z);
        ctx.update(&1u32.to_be_bytes());
        ctx.update(&shared_info);
        let d = ctx.finish();
        Ok(Zeroizing::new(d.as_ref()[..kek_bits as usize / 8].to_vec()))
    })?;
    let kek = AesKek::new(wrap_cipher, &kek[..]).map_err(|_| SmimeError::Crypto("kek"))?;
    let mut wrapped = vec![0u8; cek.len() + 8];
    let n = kek
        .wrap(cek, &mut wrapped)
        .map_err(|_| SmimeError::Crypto("key wrap"))?
        .len();
    wrapped.truncate(n);

    let key_enc_alg = alg_with(algs::DH_SINGLE_PASS_STD_DH_SHA256KDF, &wrap_alg.to_der()?)?;
    Ok(RecipientInfo::Kari(KeyAgreeRecipientInfo {
        version: CmsVersion::V3, // RFC 5652 §6.2.2: always 3
        originator: OriginatorIdentifierOrKey::OriginatorKey(OriginatorPublicKey {
            // RFC 5753 §3.1.1: id-ecPublicKey, parameters absent (the curve is the recipient's).
            algorithm: alg(algs::ID_EC_PUBLIC_KEY),
            public_key: BitString::from_bytes(&eph_pub)?,
        }),
        ukm: None,
        key_enc_alg,
        recipient_enc_keys: vec![RecipientEncryptedKey {
            rid: KeyAgreeRecipientIdentifier::IssuerAndSerialNumber(rid),
            enc_key: OctetString::new(wrapped)?,
        }],
    }))
}
