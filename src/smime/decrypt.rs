//! Opening CMS EnvelopedData (RFC 5652 §6) and AuthEnvelopedData (RFC 5083) addressed to one
//! of the organisation's keys; every cryptographic operation is aws-lc-rs.
//!
//! - Recipient found by IssuerAndSerialNumber or SubjectKeyIdentifier of an [`OrgKey`]'s
//!   certificate (RFC 5652 §6.2.1, §6.2.2).
//! - Key transport: RSAES-PKCS1-v1_5 (RFC 3370 §4.2.1) and RSAES-OAEP with SHA-1, SHA-256,
//!   SHA-384 or SHA-512 (hash and MGF1 hash equal, empty label; RFC 3560 / RFC 8017).
//! - Key agreement: ECDH P-256 ephemeral-static, dhSinglePass-stdDH-sha1kdf / -sha256kdf /
//!   -sha384kdf / -sha512kdf (RFC 5753 §3.1, X9.63 KDF over ECC-CMS-SharedInfo), then AES key
//!   unwrap (RFC 3394, 128 or 256-bit KEK).
//! - Content: AES-128/192/256-CBC (RFC 3565), AES-128/192/256-GCM with a 16-octet tag and
//!   12-octet nonce (RFC 5084), and, read only, DES-EDE3-CBC (RFC 3370 §5.1, aws-lc-rs
//!   `legacy-des`). We never produce 3DES.
//!
//! Decryption oracles (RFC 3218, Bleichenbacher): everything that depends on a secret goes
//! down one path. A failed private-key operation (bad PKCS#1 padding, OAEP check, wrong ECDH
//! key, failed key unwrap, wrong key length) does not return early: it silently replaces the
//! content-encryption key by a random one of the right length, and content decryption then
//! fails like any other bad key (bad CBC padding, bad GCM tag) with the single
//! [`OpenError::Undecryptable`] value. What is distinguished before that point is public
//! structure only (no RecipientInfo for our keys, an algorithm we do not implement, bad
//! ASN.1). The caller gets the whole plaintext or an error, never a part.
//!
//! EnvelopedData (CBC) has no integrity: as with any CBC decryptor, a wrong key passes the
//! padding check about once in 256 and yields garbage. A signature inside the entity is what
//! proves integrity; AuthEnvelopedData (GCM) checks its tag.
//!
//! Secrets touched: the private key (only through [`Decrypter`]), the ECDH shared secret, the
//! KEK and the content-encryption key; each is wiped when dropped ([`Zeroizing`]).

use std::sync::Arc;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, UnparsedPublicKey};
use aws_lc_rs::cipher::{self, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::key_wrap::{self, AesKek, KeyWrap};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OAEP_SHA384_MGF1SHA384, OAEP_SHA512_MGF1SHA512,
    OaepPrivateDecryptingKey, Pkcs1PrivateDecryptingKey, PrivateDecryptingKey,
};
use cms::authenveloped_data::AuthEnvelopedData;
use cms::enveloped_data::{
    EncryptedContentInfo, EnvelopedData, KeyAgreeRecipientIdentifier, KeyAgreeRecipientInfo,
    OriginatorIdentifierOrKey, RecipientIdentifier, RecipientInfo, RecipientInfos,
};
use const_oid::ObjectIdentifier as Oid;
use der::{Decode, Encode};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use zeroize::Zeroizing;

use super::algs;
use super::ber::{self, Node};
use super::opening::{Limits, OpenError};
use crate::store::KeyKind;
use crate::store::validate;

/// RSA decryption paddings the [`Decrypter`] may be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaPadding {
    Pkcs1v15,
    OaepSha1,
    OaepSha256,
    OaepSha384,
    OaepSha512,
}

/// A private-key operation failed; deliberately without detail (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOpFailed;

/// The organisation's private key, for decryption: the one seam where the key could live in
/// another process or an HSM (the key store's PKCS#11 keys implement it too).
pub trait Decrypter: Send + Sync {
    /// RSA decryption of a key-transport ciphertext; returns the plaintext (the CEK).
    fn rsa_decrypt(
        &self,
        padding: RsaPadding,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyOpFailed>;
    /// ECDH on P-256 with the sender's ephemeral public point (uncompressed SEC1); returns
    /// the shared secret Z (the x coordinate).
    fn ecdh_p256(&self, peer_point: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyOpFailed>;
}

/// A private key held in this process by aws-lc-rs, loaded from PEM.
pub enum LocalDecrypter {
    /// aws-lc-rs has one wrapper per padding, each owning its key: both are made at load time
    /// (from the same PKCS#8), so no decryption copies the secret again.
    Rsa {
        pkcs1: Pkcs1PrivateDecryptingKey,
        oaep: OaepPrivateDecryptingKey,
        /// The public half (SubjectPublicKeyInfo DER), to find the matching certificate.
        spki: Vec<u8>,
    },
    Ec(agreement::PrivateKey),
}

impl LocalDecrypter {
    /// From unencrypted PKCS#8 (RSA 2048..8192 bits or EC P-256) or SEC1 (EC P-256).
    pub fn from_der(secret: &[u8]) -> Result<LocalDecrypter, String> {
        if let Ok(k) = PrivateDecryptingKey::from_pkcs8(secret) {
            use aws_lc_rs::encoding::AsDer;
            let spki = k.public_key().as_der().map_err(|_| "RSA public key")?;
            let spki = spki.as_ref().to_vec();
            let pkcs1 = Pkcs1PrivateDecryptingKey::new(k).map_err(|_| "RSA key")?;
            let k = PrivateDecryptingKey::from_pkcs8(secret).map_err(|_| "RSA key")?;
            let oaep = OaepPrivateDecryptingKey::new(k).map_err(|_| "RSA key")?;
            return Ok(LocalDecrypter::Rsa { pkcs1, oaep, spki });
        }
        agreement::PrivateKey::from_private_key_der(&agreement::ECDH_P256, secret)
            .map(LocalDecrypter::Ec)
            .map_err(|_| "private key is neither RSA of 2048 to 8192 bits nor EC P-256".into())
    }

    /// What the certificate must carry: the RSA SubjectPublicKeyInfo or the EC point.
    fn public(&self) -> Result<Public, String> {
        match self {
            LocalDecrypter::Rsa { spki, .. } => Ok(Public::Spki(spki.clone())),
            LocalDecrypter::Ec(k) => {
                let p = k.compute_public_key().map_err(|_| "EC public key")?;
                Ok(Public::Point(p.as_ref().to_vec()))
            }
        }
    }
}

impl Decrypter for LocalDecrypter {
    fn rsa_decrypt(
        &self,
        padding: RsaPadding,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyOpFailed> {
        let LocalDecrypter::Rsa { pkcs1, oaep, .. } = self else {
            return Err(KeyOpFailed);
        };
        let mut out = Zeroizing::new(vec![0u8; pkcs1.key_size_bytes()]);
        let n = match padding {
            RsaPadding::Pkcs1v15 => pkcs1
                .decrypt(ciphertext, &mut out)
                .map_err(|_| KeyOpFailed)?
                .len(),
            other => {
                let alg = match other {
                    RsaPadding::OaepSha1 => &OAEP_SHA1_MGF1SHA1,
                    RsaPadding::OaepSha256 => &OAEP_SHA256_MGF1SHA256,
                    RsaPadding::OaepSha384 => &OAEP_SHA384_MGF1SHA384,
                    _ => &OAEP_SHA512_MGF1SHA512,
                };
                oaep.decrypt(alg, ciphertext, &mut out, None)
                    .map_err(|_| KeyOpFailed)?
                    .len()
            }
        };
        out.truncate(n);
        Ok(out)
    }

    fn ecdh_p256(&self, peer_point: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyOpFailed> {
        let LocalDecrypter::Ec(key) = self else {
            return Err(KeyOpFailed);
        };
        let peer = UnparsedPublicKey::new(&agreement::ECDH_P256, peer_point);
        agreement::agree(key, peer, KeyOpFailed, |z| Ok(Zeroizing::new(z.to_vec())))
    }
}

/// One organisation decryption key: its certificate (to match RecipientInfos and name the key
/// in headers) and the private-key handle. Cloning shares the handle (the inbound step hands
/// each group of recipients the subset of keys that are theirs).
#[derive(Clone)]
pub struct OrgKey {
    /// SHA-256 of the certificate, lower-case hex.
    pub fingerprint: String,
    /// rfc822Name addresses of the certificate.
    pub addresses: Vec<String>,
    pub certificate: CertificateDer<'static>,
    kind: KeyKind,
    /// DER of the issuer Name and the serial INTEGER contents, for IssuerAndSerialNumber.
    issuer: Vec<u8>,
    serial: Vec<u8>,
    ski: Option<Vec<u8>>,
    decrypter: Arc<dyn Decrypter>,
}

impl std::fmt::Debug for OrgKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgKey")
            .field("fingerprint", &self.fingerprint)
            .field("addresses", &self.addresses)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl OrgKey {
    /// A key whose private half is behind `decrypter`.
    pub fn new(
        certificate: CertificateDer<'static>,
        decrypter: Arc<dyn Decrypter>,
    ) -> Result<OrgKey, String> {
        let info = validate::inspect(&certificate)?;
        let kind = info.key_kind()?;
        let cert = Certificate::from_der(&certificate).map_err(|e| e.to_string())?;
        let tbs = cert.tbs_certificate();
        let issuer = tbs.issuer().to_der().map_err(|e| e.to_string())?;
        let serial = tbs.serial_number().as_bytes().to_vec();
        let ski = tbs
            .get_extension::<SubjectKeyIdentifier>()
            .ok()
            .flatten()
            .map(|(_, s)| s.0.as_bytes().to_vec());
        Ok(OrgKey {
            fingerprint: info.fingerprint,
            addresses: info.emails,
            certificate,
            kind,
            issuer,
            serial,
            ski,
            decrypter,
        })
    }

    /// Certificate and PKCS#8 (or SEC1 EC) private key from one PEM text, held in this
    /// process. The first certificate whose public key is the private key's is used.
    pub fn from_pem(pem: &[u8]) -> Result<OrgKey, String> {
        use rustls_pki_types::PrivateKeyDer;
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        let secret = Zeroizing::new(key.secret_der().to_vec());
        let decrypter = match &key {
            PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Sec1(_) => LocalDecrypter::from_der(&secret)?,
            _ => return Err("only PKCS#8 or SEC1 private keys are read here".into()),
        };
        let public = decrypter.public()?;
        let cert = certs
            .into_iter()
            .find(|c| {
                validate::inspect(c).is_ok_and(|i| match &public {
                    Public::Spki(spki) => i.spki_der == *spki,
                    Public::Point(p) => i.public_key == *p,
                })
            })
            .ok_or("no certificate in the file matches the private key")?;
        OrgKey::new(cert, Arc::new(decrypter))
    }

    fn matches_ias(&self, ias: &cms::cert::IssuerAndSerialNumber) -> bool {
        ias.serial_number.as_bytes() == self.serial.as_slice()
            && ias.issuer.to_der().is_ok_and(|d| d == self.issuer)
    }

    fn matches_ski(&self, ski: &SubjectKeyIdentifier) -> bool {
        self.ski.as_deref() == Some(ski.0.as_bytes())
    }
}

enum Public {
    Spki(Vec<u8>),
    Point(Vec<u8>),
}

/// What a successful decryption reports.
#[derive(Debug, Clone)]
pub struct Decrypted {
    /// The decrypted MIME entity, whole.
    pub content: Vec<u8>,
    /// Fingerprint of the organisation certificate whose key opened it.
    pub key_fingerprint: String,
    /// Content cipher, e.g. `aes-256-cbc`, `aes-128-gcm`, `des-ede3-cbc`.
    pub cipher: &'static str,
    /// Key transport or agreement, e.g. `rsa-pkcs1`, `rsa-oaep-sha256`, `ecdh-p256-sha256kdf`.
    pub key_algorithm: &'static str,
}

/// The content cipher, parsed and checked before any secret is touched.
enum ContentAlg {
    Cbc {
        alg: &'static cipher::Algorithm,
        key_len: usize,
        iv: Vec<u8>,
        name: &'static str,
    },
    Gcm {
        alg: &'static aead::Algorithm,
        nonce: [u8; 12],
        name: &'static str,
    },
}

impl ContentAlg {
    fn key_len(&self) -> usize {
        match self {
            ContentAlg::Cbc { key_len, .. } => *key_len,
            ContentAlg::Gcm { alg, .. } => alg.key_len(),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            ContentAlg::Cbc { name, .. } | ContentAlg::Gcm { name, .. } => name,
        }
    }
}

const AES128_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.2");
const AES192_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.22");
const AES192_GCM: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.26");
const DES_EDE3_CBC: Oid = Oid::new_unwrap("1.2.840.113549.3.7");
const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
const DH_SHA1KDF: Oid = Oid::new_unwrap("1.3.133.16.840.63.0.2");
const DH_SHA384KDF: Oid = Oid::new_unwrap("1.3.132.1.11.2");
const DH_SHA512KDF: Oid = Oid::new_unwrap("1.3.132.1.11.3");
const AES192_WRAP: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.25");

fn unsupported(what: impl Into<String>) -> OpenError {
    OpenError::Unsupported(what.into())
}

fn malformed(what: impl Into<String>) -> OpenError {
    OpenError::Malformed(what.into())
}

#[allow(deprecated)] // DES_EDE3_FOR_LEGACY_USE_ONLY: read-only legacy support, see header
fn content_alg(eci: &EncryptedContentInfo) -> Result<ContentAlg, OpenError> {
    let oid = eci.content_enc_alg.oid;
    let params = eci
        .content_enc_alg
        .parameters
        .as_ref()
        .map(|p| p.to_der())
        .transpose()
        .map_err(|e| malformed(format!("content algorithm parameters: {e}")))?
        .unwrap_or_default();
    let cbc = |alg, key_len, name, iv_len| -> Result<ContentAlg, OpenError> {
        let node = ber::parse(&params, 4).map_err(|e| malformed(format!("CBC IV: {e}")))?;
        match node.primitive() {
            Some(iv) if node.tag == [0x04] && iv.len() == iv_len => Ok(ContentAlg::Cbc {
                alg,
                key_len,
                iv: iv.to_vec(),
                name,
            }),
            _ => Err(malformed("CBC IV is not an OCTET STRING of the block size")),
        }
    };
    let gcm = |alg, name| -> Result<ContentAlg, OpenError> {
        // GCMParameters ::= SEQUENCE { aes-nonce OCTET STRING, aes-ICVlen INTEGER DEFAULT 12 }
        let node = ber::parse(&params, 8).map_err(|e| malformed(format!("GCM parameters: {e}")))?;
        let kids = node.children();
        let nonce = kids
            .first()
            .filter(|n| n.tag == [0x04])
            .and_then(Node::primitive)
            .ok_or_else(|| malformed("GCM parameters without a nonce"))?;
        let icv_len = match kids.get(1) {
            Some(n) if n.tag == [0x02] => n.primitive().map_or(0, |v| {
                v.iter()
                    .fold(0usize, |a, &b| a.saturating_mul(256) + b as usize)
            }),
            None => 12,
            Some(_) => return Err(malformed("GCM parameters: bad ICV length")),
        };
        if icv_len != 16 {
            return Err(unsupported(format!("AES-GCM with a {icv_len}-octet tag")));
        }
        let nonce: [u8; 12] = nonce
            .try_into()
            .map_err(|_| unsupported(format!("AES-GCM with a {}-octet nonce", nonce.len())))?;
        Ok(ContentAlg::Gcm { alg, nonce, name })
    };
    match oid {
        o if o == AES128_CBC => cbc(&cipher::AES_128, 16, "aes-128-cbc", 16),
        o if o == AES192_CBC => cbc(&cipher::AES_192, 24, "aes-192-cbc", 16),
        o if o == algs::AES256_CBC => cbc(&cipher::AES_256, 32, "aes-256-cbc", 16),
        o if o == DES_EDE3_CBC => cbc(&cipher::DES_EDE3_FOR_LEGACY_USE_ONLY, 24, "des-ede3-cbc", 8),
        o if o == algs::AES128_GCM => gcm(&aead::AES_128_GCM, "aes-128-gcm"),
        o if o == AES192_GCM => gcm(&aead::AES_192_GCM, "aes-192-gcm"),
        o if o == algs::AES256_GCM => gcm(&aead::AES_256_GCM, "aes-256-gcm"),
        o => Err(unsupported(format!("content encryption algorithm {o}"))),
    }
}

/// Schema fix-up after BER parsing: `encryptedContent [0] IMPLICIT OCTET STRING` may arrive
/// chunked (constructed). `envelope` is the EnvelopedData / AuthEnvelopedData SEQUENCE.
pub(crate) fn fix_encrypted_content(envelope: &mut Node<'_>) -> Result<(), OpenError> {
    let kids = envelope
        .children_mut()
        .ok_or_else(|| malformed("EnvelopedData is not a SEQUENCE"))?;
    // version, [0] originatorInfo?, SET recipientInfos, SEQUENCE encryptedContentInfo, ...
    let eci = kids
        .iter_mut()
        .skip_while(|n| n.tag != [0x31])
        .nth(1)
        .ok_or_else(|| malformed("EnvelopedData without EncryptedContentInfo"))?;
    if let Some(parts) = eci.children_mut()
        && let Some(content) = parts.get_mut(2)
        && content.tag == [0xa0]
    {
        content
            .flatten_octets(0x80)
            .map_err(|e| malformed(format!("encrypted content: {e}")))?;
    }
    Ok(())
}

/// Number of RecipientInfos in an EnvelopedData / AuthEnvelopedData SEQUENCE node, counted
/// before the `cms` crate decodes (and sorts) them.
pub(crate) fn recipient_count(envelope: &Node<'_>) -> usize {
    envelope
        .children()
        .iter()
        .find(|n| n.tag == [0x31])
        .map_or(0, |s| s.children().len())
}

/// Decrypt an EnvelopedData (`auth == false`) or AuthEnvelopedData DER with one of `keys`.
pub(crate) fn decrypt(
    der: &[u8],
    auth: bool,
    keys: &[OrgKey],
    limits: &Limits,
) -> Result<Decrypted, OpenError> {
    let (recips, eci, mac, aad) = if auth {
        let aed = AuthEnvelopedData::from_der(der)
            .map_err(|e| malformed(format!("AuthEnvelopedData: {e}")))?;
        // RFC 5083 §2.2: the authenticated attributes, DER with the SET OF tag, are the AAD.
        let aad = match &aed.auth_attrs {
            Some(a) => a
                .to_der()
                .map_err(|e| malformed(format!("authAttrs: {e}")))?,
            None => Vec::new(),
        };
        (
            aed.recip_infos,
            aed.auth_encrypted_content_info,
            Some(aed.mac.as_bytes().to_vec()),
            aad,
        )
    } else {
        let ed =
            EnvelopedData::from_der(der).map_err(|e| malformed(format!("EnvelopedData: {e}")))?;
        (ed.recip_infos, ed.encrypted_content, None, Vec::new())
    };
    if recips.0.len() > limits.max_recipient_infos {
        return Err(OpenError::Limit(format!(
            "{} RecipientInfos (limit {})",
            recips.0.len(),
            limits.max_recipient_infos
        )));
    }
    let alg = content_alg(&eci)?;
    if auth != matches!(alg, ContentAlg::Gcm { .. }) {
        return Err(unsupported(format!(
            "{} in {}",
            alg.name(),
            if auth {
                "AuthEnvelopedData"
            } else {
                "EnvelopedData"
            }
        )));
    }
    let ciphertext = eci
        .encrypted_content
        .as_ref()
        .ok_or_else(|| unsupported("detached encrypted content"))?
        .as_bytes();
    let (key, unwrap) = find_recipient(&recips, keys)?;

    // From here on, secrets are involved: one path, one error (module header).
    let rng = SystemRandom::new();
    let mut cek = Zeroizing::new(vec![0u8; alg.key_len()]);
    rng.fill(&mut cek[..])
        .map_err(|_| OpenError::Temporary("random".into()))?;
    if let Some(real) = unwrap.run(key, alg.key_len())
        && real.len() == cek.len()
    {
        cek.copy_from_slice(&real);
    }
    let content = decrypt_content(&alg, &cek, ciphertext, mac.as_deref(), &aad)
        .ok_or(OpenError::Undecryptable)?;
    Ok(Decrypted {
        content,
        key_fingerprint: key.fingerprint.clone(),
        cipher: alg.name(),
        key_algorithm: unwrap.name(),
    })
}

/// How the CEK reaches us, parsed from public data.
enum Unwrap<'a> {
    Rsa {
        padding: RsaPadding,
        ciphertext: &'a [u8],
    },
    Ecdh {
        kdf: &'static aws_lc_rs::digest::Algorithm,
        kdf_name: &'static str,
        wrap_alg_der: Vec<u8>,
        kek_len: usize,
        ukm: Option<Vec<u8>>,
        ephemeral: Vec<u8>,
        wrapped: &'a [u8],
    },
}

impl Unwrap<'_> {
    fn name(&self) -> &'static str {
        match self {
            Unwrap::Rsa { padding, .. } => match padding {
                RsaPadding::Pkcs1v15 => "rsa-pkcs1",
                RsaPadding::OaepSha1 => "rsa-oaep-sha1",
                RsaPadding::OaepSha256 => "rsa-oaep-sha256",
                RsaPadding::OaepSha384 => "rsa-oaep-sha384",
                RsaPadding::OaepSha512 => "rsa-oaep-sha512",
            },
            Unwrap::Ecdh { kdf_name, .. } => kdf_name,
        }
    }

    /// The CEK, or `None` on any failure (the caller does not branch on which).
    fn run(&self, key: &OrgKey, cek_len: usize) -> Option<Zeroizing<Vec<u8>>> {
        match self {
            Unwrap::Rsa {
                padding,
                ciphertext,
            } => key.decrypter.rsa_decrypt(*padding, ciphertext).ok(),
            Unwrap::Ecdh {
                kdf,
                wrap_alg_der,
                kek_len,
                ukm,
                ephemeral,
                wrapped,
                ..
            } => {
                let z = key.decrypter.ecdh_p256(ephemeral).ok()?;
                let info = shared_info(wrap_alg_der, ukm.as_deref(), *kek_len as u32 * 8);
                let kek = x963_kdf(kdf, &z, &info, *kek_len);
                let wrap = if *kek_len == 16 {
                    &key_wrap::AES_128
                } else {
                    &key_wrap::AES_256
                };
                let kek = AesKek::new(wrap, &kek).ok()?;
                let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
                let n = kek.unwrap(wrapped, &mut out).ok()?.len();
                out.truncate(n);
                (n == cek_len).then_some(out)
            }
        }
    }
}

/// ECC-CMS-SharedInfo (RFC 5753 §7.2): keyInfo, entityUInfo [0] (the ukm), suppPubInfo [2]
/// (the KEK length in bits, 32-bit big-endian).
fn shared_info(wrap_alg_der: &[u8], ukm: Option<&[u8]>, kek_bits: u32) -> Vec<u8> {
    let mut inner = wrap_alg_der.to_vec();
    if let Some(u) = ukm {
        inner.extend(algs::tlv(0xa0, &algs::tlv(0x04, u)));
    }
    inner.extend(algs::tlv(0xa2, &algs::tlv(0x04, &kek_bits.to_be_bytes())));
    algs::tlv(0x30, &inner)
}

/// ANSI X9.63 KDF (SEC 1 §3.6.1): Hash(Z || counter || SharedInfo), counter from 1.
fn x963_kdf(
    alg: &'static aws_lc_rs::digest::Algorithm,
    z: &[u8],
    info: &[u8],
    len: usize,
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + 64));
    let mut counter = 1u32;
    while out.len() < len {
        let mut ctx = aws_lc_rs::digest::Context::new(alg);
        ctx.update(z);
        ctx.update(&counter.to_be_bytes());
        ctx.update(info);
        out.extend_from_slice(ctx.finish().as_ref());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// The first of our keys (in configuration order) that some RecipientInfo names.
fn find_recipient<'a, 'k>(
    recips: &'a RecipientInfos,
    keys: &'k [OrgKey],
) -> Result<(&'k OrgKey, Unwrap<'a>), OpenError> {
    for key in keys {
        for ri in recips.0.iter() {
            match ri {
                RecipientInfo::Ktri(k) => {
                    let ours = match &k.rid {
                        RecipientIdentifier::IssuerAndSerialNumber(ias) => key.matches_ias(ias),
                        RecipientIdentifier::SubjectKeyIdentifier(ski) => key.matches_ski(ski),
                    };
                    if ours && matches!(key.kind, KeyKind::Rsa { .. }) {
                        let padding = key_transport(&k.key_enc_alg)?;
                        return Ok((
                            key,
                            Unwrap::Rsa {
                                padding,
                                ciphertext: k.enc_key.as_bytes(),
                            },
                        ));
                    }
                }
                RecipientInfo::Kari(k) => {
                    for rek in &k.recipient_enc_keys {
                        let ours = match &rek.rid {
                            KeyAgreeRecipientIdentifier::IssuerAndSerialNumber(ias) => {
                                key.matches_ias(ias)
                            }
                            KeyAgreeRecipientIdentifier::RKeyId(r) => {
                                key.matches_ski(&r.subject_key_identifier)
                            }
                        };
                        if ours && key.kind == KeyKind::EcP256 {
                            return Ok((key, key_agreement(k, rek.enc_key.as_bytes())?));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Err(OpenError::NoKey)
}

fn key_transport(alg: &spki::AlgorithmIdentifierOwned) -> Result<RsaPadding, OpenError> {
    if alg.oid == algs::RSA_ENCRYPTION {
        return Ok(RsaPadding::Pkcs1v15);
    }
    if alg.oid != algs::ID_RSAES_OAEP {
        return Err(unsupported(format!("key transport {}", alg.oid)));
    }
    // RSAES-OAEP-params (RFC 8017 §A.2.1): [0] hash DEFAULT sha1, [1] MGF DEFAULT mgf1SHA1,
    // [2] pSource DEFAULT empty label.
    let params = match &alg.parameters {
        Some(p) => p
            .to_der()
            .map_err(|e| malformed(format!("OAEP parameters: {e}")))?,
        None => vec![0x30, 0x00],
    };
    let node = ber::parse(&params, 64).map_err(|e| malformed(format!("OAEP parameters: {e}")))?;
    let mut hash = SHA1;
    let mut mgf_hash = SHA1;
    for field in node.children() {
        let inner = field.children().first();
        match field.tag.as_slice() {
            [0xa0] => hash = first_oid(inner)?,
            [0xa1] => {
                let mgf = inner.ok_or_else(|| malformed("OAEP MGF"))?;
                if first_oid(Some(mgf))? != algs::ID_MGF1 {
                    return Err(unsupported("OAEP mask generation other than MGF1"));
                }
                mgf_hash = first_oid(mgf.children().get(1))?;
            }
            [0xa2] => return Err(unsupported("OAEP with a label")),
            _ => return Err(malformed("OAEP parameters")),
        }
    }
    match (hash, mgf_hash) {
        (h, m) if h == SHA1 && m == SHA1 => Ok(RsaPadding::OaepSha1),
        (h, m) if h == algs::SHA256 && m == algs::SHA256 => Ok(RsaPadding::OaepSha256),
        (h, m) if h == SHA384 && m == SHA384 => Ok(RsaPadding::OaepSha384),
        (h, m) if h == algs::SHA512 && m == algs::SHA512 => Ok(RsaPadding::OaepSha512),
        (h, m) => Err(unsupported(format!("OAEP with hash {h} and MGF1 hash {m}"))),
    }
}

/// The OID at the start of an AlgorithmIdentifier node.
fn first_oid(alg: Option<&Node<'_>>) -> Result<Oid, OpenError> {
    alg.and_then(|a| a.children().first())
        .filter(|o| o.tag == [0x06])
        .and_then(Node::primitive)
        .and_then(|b| Oid::from_bytes(b).ok())
        .ok_or_else(|| malformed("AlgorithmIdentifier without an OID"))
}

fn key_agreement<'a>(
    k: &KeyAgreeRecipientInfo,
    wrapped: &'a [u8],
) -> Result<Unwrap<'a>, OpenError> {
    let (kdf, kdf_name): (&'static aws_lc_rs::digest::Algorithm, &'static str) =
        match k.key_enc_alg.oid {
            o if o == algs::DH_SINGLE_PASS_STD_DH_SHA256KDF => {
                (&aws_lc_rs::digest::SHA256, "ecdh-p256-sha256kdf")
            }
            o if o == DH_SHA1KDF => (
                &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                "ecdh-p256-sha1kdf",
            ),
            o if o == DH_SHA384KDF => (&aws_lc_rs::digest::SHA384, "ecdh-p256-sha384kdf"),
            o if o == DH_SHA512KDF => (&aws_lc_rs::digest::SHA512, "ecdh-p256-sha512kdf"),
            o => return Err(unsupported(format!("key agreement {o}"))),
        };
    let wrap_alg_der = k
        .key_enc_alg
        .parameters
        .as_ref()
        .ok_or_else(|| malformed("key agreement without a wrap algorithm"))?
        .to_der()
        .map_err(|e| malformed(format!("wrap algorithm: {e}")))?;
    let wrap = spki::AlgorithmIdentifierOwned::from_der(&wrap_alg_der)
        .map_err(|e| malformed(format!("wrap algorithm: {e}")))?;
    let kek_len = match wrap.oid {
        o if o == algs::AES128_WRAP => 16,
        o if o == algs::AES256_WRAP => 32,
        o if o == AES192_WRAP => return Err(unsupported("AES-192 key wrap")),
        o => return Err(unsupported(format!("key wrap {o}"))),
    };
    let OriginatorIdentifierOrKey::OriginatorKey(orig) = &k.originator else {
        return Err(unsupported("key agreement with a static originator key"));
    };
    let ephemeral = orig
        .public_key
        .as_bytes()
        .ok_or_else(|| malformed("originator key has unused bits"))?
        .to_vec();
    Ok(Unwrap::Ecdh {
        kdf,
        kdf_name,
        wrap_alg_der,
        kek_len,
        ukm: k.ukm.as_ref().map(|u| u.as_bytes().to_vec()),
        ephemeral,
        wrapped,
    })
}

/// `None` for every failure: wrong key, bad padding, bad tag.
fn decrypt_content(
    alg: &ContentAlg,
    cek: &[u8],
    ciphertext: &[u8],
    mac: Option<&[u8]>,
    aad: &[u8],
) -> Option<Vec<u8>> {
    match alg {
        ContentAlg::Cbc { alg, iv, .. } => {
            let key =
                PaddedBlockDecryptingKey::cbc_pkcs7(UnboundCipherKey::new(alg, cek).ok()?).ok()?;
            let ctx = if iv.len() == 16 {
                DecryptionContext::Iv128(FixedLength::from(<[u8; 16]>::try_from(&iv[..]).ok()?))
            } else {
                DecryptionContext::Iv64(FixedLength::from(<[u8; 8]>::try_from(&iv[..]).ok()?))
            };
            let mut buf = ciphertext.to_vec();
            let n = key.decrypt(&mut buf, ctx).ok()?.len();
            buf.truncate(n);
            Some(buf)
        }
        ContentAlg::Gcm { alg, nonce, .. } => {
            let key = LessSafeKey::new(UnboundKey::new(alg, cek).ok()?);
            let mut buf = Vec::with_capacity(ciphertext.len() + 16);
            buf.extend_from_slice(ciphertext);
            buf.extend_from_slice(mac?);
            let n = key
                .open_in_place(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(aad),
                    &mut buf,
                )
                .ok()?
                .len();
            buf.truncate(n);
            Some(buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x963_kdf_matches_a_hand_computed_block() {
        // One block: SHA-256(Z || 00000001 || info), truncated.
        let z = [7u8; 32];
        let info = b"info";
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&z);
        ctx.update(&[0, 0, 0, 1]);
        ctx.update(info);
        let want = ctx.finish();
        let got = x963_kdf(&aws_lc_rs::digest::SHA256, &z, info, 16);
        assert_eq!(&got[..], &want.as_ref()[..16]);
        // SHA-1 needs two blocks for a 256-bit KEK; the second uses counter 2.
        let long = x963_kdf(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &z, info, 32);
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
        ctx.update(&z);
        ctx.update(&[0, 0, 0, 2]);
        ctx.update(info);
        assert_eq!(&long[20..], &ctx.finish().as_ref()[..12]);
    }

    #[test]
    fn shared_info_matches_what_we_send() {
        let wrap = algs::alg(algs::AES256_WRAP);
        assert_eq!(
            shared_info(&wrap.to_der().unwrap(), None, 256),
            algs::ecc_cms_shared_info(&wrap, 256).unwrap()
        );
    }

    #[test]
    fn chunked_encrypted_content_is_flattened_and_recipients_counted() {
        // EnvelopedData { version 0, SET { 3 x NULL }, EncryptedContentInfo { OID, AlgId,
        // [0] constructed { "ab", "cd" } } } as BER with indefinite lengths.
        let ber = [
            0x30, 0x80, 0x02, 0x01, 0x00, 0x31, 0x06, 0x05, 0x00, 0x05, 0x00, 0x05, 0x00, 0x30,
            0x80, 0x06, 0x01, 0x2a, 0x30, 0x03, 0x06, 0x01, 0x2a, 0xa0, 0x80, 0x04, 0x02, b'a',
            b'b', 0x04, 0x02, b'c', b'd', 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let mut node = ber::parse(&ber, 100).unwrap();
        assert_eq!(recipient_count(&node), 3);
        fix_encrypted_content(&mut node).unwrap();
        let der = node.to_der();
        assert!(
            der.ends_with(&[0x80, 0x04, b'a', b'b', b'c', b'd']),
            "{der:02x?}"
        );
        // Without an EncryptedContentInfo: malformed, not a panic.
        let mut short = ber::parse(&[0x30, 0x03, 0x02, 0x01, 0x00], 10).unwrap();
        assert!(matches!(
            fix_encrypted_content(&mut short),
            Err(OpenError::Malformed(_))
        ));
    }

    #[test]
    fn oaep_parameters_select_the_padding() {
        let default = spki::AlgorithmIdentifierOwned {
            oid: algs::ID_RSAES_OAEP,
            parameters: None,
        };
        assert_eq!(key_transport(&default).unwrap(), RsaPadding::OaepSha1);
        let sha256 = algs::alg_with(algs::ID_RSAES_OAEP, &algs::oaep_sha256_params()).unwrap();
        assert_eq!(key_transport(&sha256).unwrap(), RsaPadding::OaepSha256);
        let pkcs1 = algs::alg_null(algs::RSA_ENCRYPTION);
        assert_eq!(key_transport(&pkcs1).unwrap(), RsaPadding::Pkcs1v15);
        let other = algs::alg(Oid::new_unwrap("1.2.3.4"));
        assert!(matches!(
            key_transport(&other),
            Err(OpenError::Unsupported(_))
        ));
    }
}
