//! CMS EnvelopedData (RFC 5652 §6) and AuthEnvelopedData (RFC 5083) with our own recipient
//! infos; every cryptographic operation is aws-lc-rs. The DER is written directly
//! ([`Frame`]): the content is copied once into the output buffer and encrypted in place; the
//! `cms` crate's types encode only the KeyAgreeRecipientInfo and stay the reference the unit
//! tests hold the writer to (and what `decrypt.rs` parses with).
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
use aws_lc_rs::cipher::{self, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::key_wrap::{self, AesKek, KeyWrap};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, Pkcs1PublicEncryptingKey, PublicEncryptingKey,
};
use cms::content_info::CmsVersion;
use cms::enveloped_data::{
    KeyAgreeRecipientIdentifier, KeyAgreeRecipientInfo, OriginatorIdentifierOrKey,
    OriginatorPublicKey, RecipientEncryptedKey, RecipientInfo,
};
use der::asn1::{BitString, OctetString};
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use zeroize::Zeroizing;

use super::algs::{self, alg, alg_null, alg_with, put_header, tlv_len};
use super::sign::issuer_and_serial;
use super::{ContentCipher, EncryptOptions, KeyTransport, SmimeError};
use crate::store::KeyKind;
use crate::store::certs::RecipientCert;

/// AES block size: CBC pads to a multiple of it (PKCS #7, RFC 5652 §6.3).
const BLOCK: usize = 16;
/// GCM tag length we write (RFC 5084 §3.2: explicit 16-octet ICV).
const GCM_TAG: usize = 16;

/// Encrypt `content` (a canonical MIME entity, in pieces taken in order) to every recipient.
/// Returns the DER ContentInfo and the `smime-type` parameter for the MIME wrapper (RFC 8551
/// §3.2.2).
///
/// The DER is written front to back into one buffer sized in advance: the framing (whose
/// lengths follow from the content length), then the content copied once into its place,
/// encrypted there in one aws-lc-rs call (AES-CBC over the whole buffer, or GCM), then the
/// GCM tag. No other copy of the message is made.
pub(crate) fn envelope(
    content: &[&[u8]],
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
    let mut any_v3 = false;
    for r in recipients {
        let (der, v3) = recipient_info(r, &cek[..], opts.key_transport, &rng)?;
        infos.push(der);
        any_v3 |= v3;
    }
    let content_len: usize = content.iter().map(|c| c.len()).sum();
    match opts.cipher {
        ContentCipher::Aes256Cbc => {
            let mut iv = [0u8; BLOCK];
            rng.fill(&mut iv)
                .map_err(|_| SmimeError::Crypto("random"))?;
            // RFC 3565 §4.1: parameters are the 16-octet IV.
            let enc_alg = alg_with(algs::AES256_CBC, &OctetString::new(iv.to_vec())?.to_der()?)?;
            let frame = Frame {
                // RFC 5652 §6.1: v2 when any RecipientInfo is not v0 (KARI is v3), else v0.
                version: if any_v3 { 2 } else { 0 },
                content_type: algs::ID_ENVELOPED_DATA,
                infos,
                enc_alg: enc_alg.to_der()?,
                ciphertext_len: (content_len / BLOCK + 1) * BLOCK,
                mac_len: None,
            };
            let (mut out, at) = frame.write(content)?;
            // PKCS #7 padding (RFC 5652 §6.3): 1 to 16 octets, each the padding length.
            let pad = frame.ciphertext_len - content_len;
            out.resize(out.len() + pad, pad as u8);
            let key = UnboundCipherKey::new(&cipher::AES_256, &cek[..])
                .map_err(|_| SmimeError::Crypto("aes key"))?;
            let key = EncryptingKey::cbc(key).map_err(|_| SmimeError::Crypto("aes-cbc"))?;
            key.less_safe_encrypt(
                &mut out[at..],
                EncryptionContext::Iv128(FixedLength::from(iv)),
            )
            .map_err(|_| SmimeError::Crypto("aes-cbc encrypt"))?;
            Ok((out, "enveloped-data"))
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
            let frame = Frame {
                version: 0, // RFC 5083 §2.1: always 0
                content_type: algs::ID_AUTH_ENVELOPED_DATA,
                infos,
                enc_alg: alg_with(oid, &algs::gcm_params(&nonce))?.to_der()?,
                ciphertext_len: content_len,
                mac_len: Some(GCM_TAG),
            };
            let (mut out, at) = frame.write(content)?;
            // RFC 5083 §2.1: no authAttrs, so the AAD is empty.
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut out[at..],
                )
                .map_err(|_| SmimeError::Crypto("gcm seal"))?;
            // mac MessageAuthenticationCode (OCTET STRING) after the content info.
            put_header(&mut out, 0x04, GCM_TAG);
            out.extend_from_slice(tag.as_ref());
            Ok((out, "authEnveloped-data"))
        }
    }
}

/// The DER around the ciphertext of an EnvelopedData (RFC 5652 §6.1) or AuthEnvelopedData
/// (RFC 5083 §2.1); neither carries originatorInfo or attributes:
///
/// ```text
/// ContentInfo { contentType, [0] EXPLICIT SEQUENCE {
///   version, recipientInfos SET OF RecipientInfo,
///   EncryptedContentInfo { id-data, contentEncryptionAlgorithm,
///                          encryptedContent [0] IMPLICIT OCTET STRING },
///   mac OCTET STRING (AuthEnvelopedData only) } }
/// ```
struct Frame {
    version: u8,
    content_type: const_oid::ObjectIdentifier,
    /// DER RecipientInfos, in any order (written in DER SET OF order).
    infos: Vec<Vec<u8>>,
    /// DER AlgorithmIdentifier of the content cipher.
    enc_alg: Vec<u8>,
    ciphertext_len: usize,
    /// Length of the MAC that follows the content info (AuthEnvelopedData).
    mac_len: Option<usize>,
}

impl Frame {
    /// Writes everything up to the ciphertext, then the plaintext in its place. Returns the
    /// buffer (capacity for the padding and the MAC included) and where the plaintext starts.
    fn write(&self, content: &[&[u8]]) -> Result<(Vec<u8>, usize), SmimeError> {
        let id_data = algs::ID_DATA.to_der()?;
        let content_type = self.content_type.to_der()?;
        // SET OF: DER orders the encodings as octet strings (X.690 §11.6).
        let mut infos: Vec<&[u8]> = self.infos.iter().map(Vec::as_slice).collect();
        infos.sort_unstable();
        let infos_len: usize = infos.iter().map(|i| i.len()).sum();
        let eci_len = id_data.len() + self.enc_alg.len() + tlv_len(self.ciphertext_len);
        let body_len = 3 + tlv_len(infos_len) + tlv_len(eci_len) + self.mac_len.map_or(0, tlv_len);
        let ci_len = content_type.len() + tlv_len(tlv_len(body_len));

        let mut out = Vec::with_capacity(tlv_len(ci_len));
        put_header(&mut out, 0x30, ci_len);
        out.extend_from_slice(&content_type);
        put_header(&mut out, 0xa0, tlv_len(body_len));
        put_header(&mut out, 0x30, body_len);
        out.extend_from_slice(&[0x02, 0x01, self.version]);
        put_header(&mut out, 0x31, infos_len);
        for i in infos {
            out.extend_from_slice(i);
        }
        put_header(&mut out, 0x30, eci_len);
        out.extend_from_slice(&id_data);
        out.extend_from_slice(&self.enc_alg);
        put_header(&mut out, 0x80, self.ciphertext_len);
        let at = out.len();
        for piece in content {
            out.extend_from_slice(piece);
        }
        Ok((out, at))
    }
}

/// One recipient's RecipientInfo, DER, and whether it is a v3 one (KeyAgreeRecipientInfo).
fn recipient_info(
    r: &RecipientCert,
    cek: &[u8],
    kt: KeyTransport,
    rng: &SystemRandom,
) -> Result<(Vec<u8>, bool), SmimeError> {
    match r.key {
        KeyKind::Rsa { bits } => {
            if bits < crate::store::validate::MIN_RSA_BITS {
                return Err(SmimeError::Certificate(format!(
                    "{}: RSA key of {bits} bits refused",
                    r.fingerprint
                )));
            }
            let pk = match &r.rsa_key {
                Some(k) => k.clone(),
                None => PublicEncryptingKey::from_der(&r.spki_der)
                    .map_err(|_| SmimeError::Crypto("rsa public key"))?,
            };
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
            Ok((
                ktri(
                    &issuer_and_serial(&r.der, 0x30)?,
                    &key_enc_alg.to_der()?,
                    &enc_key,
                ),
                false,
            ))
        }
        KeyKind::EcP256 => {
            let rid =
                cms::cert::IssuerAndSerialNumber::from_der(&issuer_and_serial(&r.der, 0x30)?)?;
            Ok((kari(r, rid, cek, rng)?.to_der()?, true))
        }
    }
}

/// KeyTransRecipientInfo (RFC 5652 §6.2.1): version 0 because rid is issuerAndSerialNumber.
fn ktri(rid: &[u8], key_enc_alg: &[u8], enc_key: &[u8]) -> Vec<u8> {
    let len = 3 + rid.len() + key_enc_alg.len() + tlv_len(enc_key.len());
    let mut out = Vec::with_capacity(tlv_len(len));
    put_header(&mut out, 0x30, len);
    out.extend_from_slice(&[0x02, 0x01, 0x00]);
    out.extend_from_slice(rid);
    out.extend_from_slice(key_enc_alg);
    put_header(&mut out, 0x04, enc_key.len());
    out.extend_from_slice(enc_key);
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use cms::authenveloped_data::AuthEnvelopedData;
    use cms::content_info::ContentInfo;
    use cms::enveloped_data::{
        EncryptedContentInfo, EnvelopedData, KeyTransRecipientInfo, RecipientIdentifier,
        RecipientInfos,
    };
    use der::Any;
    use der::asn1::SetOfVec;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    fn cert(name: &str) -> CertificateDer<'static> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/interop/rfc9216");
        CertificateDer::from_pem_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
    }

    /// A KeyTransRecipientInfo as the `cms` types encode it.
    fn ktri_reference(
        cert: &[u8],
        key_enc_alg: spki::AlgorithmIdentifierOwned,
        key: &[u8],
    ) -> Vec<u8> {
        RecipientInfo::Ktri(KeyTransRecipientInfo {
            version: CmsVersion::V0,
            rid: RecipientIdentifier::IssuerAndSerialNumber(
                cms::cert::IssuerAndSerialNumber::from_der(&issuer_and_serial(cert, 0x30).unwrap())
                    .unwrap(),
            ),
            key_enc_alg,
            enc_key: OctetString::new(key.to_vec()).unwrap(),
        })
        .to_der()
        .unwrap()
    }

    #[test]
    fn ktri_writer_equals_the_cms_encoding() {
        for name in ["bob.encrypt.crt", "alice.encrypt.crt"] {
            let c = cert(name);
            for (alg, len) in [
                (alg_null(algs::RSA_ENCRYPTION), 256),
                (
                    alg_with(algs::ID_RSAES_OAEP, &algs::oaep_sha256_params()).unwrap(),
                    512,
                ),
            ] {
                let key: Vec<u8> = (0..len).map(|i| i as u8).collect();
                assert_eq!(
                    ktri(
                        &issuer_and_serial(&c, 0x30).unwrap(),
                        &alg.to_der().unwrap(),
                        &key
                    ),
                    ktri_reference(&c, alg, &key)
                );
            }
        }
    }

    /// The framing as the `cms` types encode it, around the same (here unencrypted) octets.
    fn frame_reference(f: &Frame, content: &[u8], mac: &[u8]) -> Vec<u8> {
        let infos: Vec<RecipientInfo> = f
            .infos
            .iter()
            .map(|d| RecipientInfo::from_der(d).unwrap())
            .collect();
        let recip_infos = RecipientInfos(SetOfVec::try_from(infos).unwrap());
        let eci = EncryptedContentInfo {
            content_type: algs::ID_DATA,
            content_enc_alg: spki::AlgorithmIdentifierOwned::from_der(&f.enc_alg).unwrap(),
            encrypted_content: Some(OctetString::new(content.to_vec()).unwrap()),
        };
        let content = if f.mac_len.is_some() {
            Any::encode_from(&AuthEnvelopedData {
                version: CmsVersion::V0,
                originator_info: None,
                recip_infos,
                auth_encrypted_content_info: eci,
                auth_attrs: None,
                mac: OctetString::new(mac.to_vec()).unwrap(),
                unauth_attrs: None,
            })
        } else {
            Any::encode_from(&EnvelopedData {
                version: if f.version == 2 {
                    CmsVersion::V2
                } else {
                    CmsVersion::V0
                },
                originator_info: None,
                recip_infos,
                encrypted_content: eci,
                unprotected_attrs: None,
            })
        }
        .unwrap();
        ContentInfo {
            content_type: f.content_type,
            content,
        }
        .to_der()
        .unwrap()
    }

    #[test]
    fn frame_writer_equals_the_cms_encoding() {
        let (bob, alice) = (cert("bob.encrypt.crt"), cert("alice.encrypt.crt"));
        let rsa = alg_null(algs::RSA_ENCRYPTION).to_der().unwrap();
        let infos = [
            ktri(&issuer_and_serial(&bob, 0x30).unwrap(), &rsa, &[1u8; 256]),
            ktri(&issuer_and_serial(&alice, 0x30).unwrap(), &rsa, &[2u8; 256]),
            ktri(&issuer_and_serial(&alice, 0x30).unwrap(), &rsa, &[0u8; 256]),
        ];
        for n in [1, 3] {
            for size in [0usize, 15, 16, 100, 65_520, 65_536, 150_001] {
                let content: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
                let (a, b) = content.split_at(size / 2);
                for gcm in [false, true] {
                    let f = Frame {
                        version: 0,
                        content_type: if gcm {
                            algs::ID_AUTH_ENVELOPED_DATA
                        } else {
                            algs::ID_ENVELOPED_DATA
                        },
                        infos: infos[..n].to_vec(),
                        enc_alg: if gcm {
                            alg_with(algs::AES256_GCM, &algs::gcm_params(&[9; 12])).unwrap()
                        } else {
                            alg_with(
                                algs::AES256_CBC,
                                &[0x04, 16, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7],
                            )
                            .unwrap()
                        }
                        .to_der()
                        .unwrap(),
                        ciphertext_len: size,
                        mac_len: gcm.then_some(GCM_TAG),
                    };
                    let (mut out, at) = f.write(&[a, b]).unwrap();
                    assert_eq!(&out[at..], &content[..]);
                    let mac = [5u8; GCM_TAG];
                    if gcm {
                        put_header(&mut out, 0x04, GCM_TAG);
                        out.extend_from_slice(&mac);
                    }
                    assert_eq!(out, frame_reference(&f, &content, &mac), "{n} {size} {gcm}");
                }
            }
        }
    }
}
