//! The S/MIME stage: sign and/or encrypt one RFC 5322 message, in S/MIME 4.0 form (RFC 8551).
//!
//! Input is a whole message (header + body, CRLF line ends preferred; lone LF/CR are fixed);
//! output is a whole message. Outer header fields (From, To, Subject, Date, Message-ID,
//! Received, ...) stay outside and unprotected; the `Content-*` fields move inside with the body
//! (RFC 8551 §3.1). The entity is canonicalised first (`mime.rs`), then:
//!
//! - [`sign`]: detached `multipart/signed` (default, RFC 8551 §3.5.3) or opaque
//!   `application/pkcs7-mime; smime-type=signed-data` (§3.5.2). No byte is rewritten after it
//!   is signed: the signed entity is copied verbatim between the boundaries.
//! - [`encrypt`]: `application/pkcs7-mime; smime-type=enveloped-data` (AES-256-CBC) or
//!   `smime-type=authEnveloped-data` (AES-GCM, RFC 8551 §3.4); one content key per call.
//! - sign then encrypt is `encrypt(&sign(..)?, ..)`: the whole signed entity is encrypted
//!   (RFC 8551 §3.7).
//!
//! The other direction, for mail that arrives: [`open()`] walks every S/MIME layer of a
//! message, verifies signatures (`verify.rs`) and decrypts what is addressed to the
//! organisation's keys (`decrypt.rs`, through the [`Decrypter`] seam); `authres.rs` writes the
//! RFC 8601 / RFC 7281 `Authentication-Results` field; `ber.rs` turns the BER clients send into
//! DER for the `cms` crate.
//!
//! Choosing the signing key (the From: address), Bcc-safe recipient groups and encrypt-to-self
//! (the sender's `SigningIdentity::encryption_cert` added to a copy, RFC 8551 §3.3) are the
//! pipeline's job: see `crate::pipeline::seal`.
//!
//! Pure CPU work on byte slices (no I/O, no async): callers run it off the async threads.
//! Errors are [`SmimeError`]; none carries key material.

use std::sync::Arc;

use crate::store::certs::RecipientCert;
use crate::store::keys::SigningIdentity;

pub mod algs;
pub mod authres;
pub mod ber;
pub mod decrypt;
mod envelope;
mod mime;
pub mod open;
pub mod opening;
mod sign;
pub mod verify;

pub use authres::AuthResult;
pub use decrypt::{Decrypter, OrgKey};
pub use open::{Layer, Limits, OpenError, Opened, Trust, open};

/// How the signature travels (RFC 8551 §3.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SignForm {
    /// `multipart/signed`: readable by clients without S/MIME.
    #[default]
    Detached,
    /// `application/pkcs7-mime; smime-type=signed-data`: survives gateways that rewrite MIME.
    Opaque,
}

/// Message digest for signatures (RFC 5754). ECDSA P-256 keys always use SHA-256.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Digest {
    #[default]
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignOptions {
    pub form: SignForm,
    pub digest: Digest,
    /// RSASSA-PSS instead of PKCS#1 v1.5 for RSA keys (RFC 4056); ignored for EC keys.
    pub rsa_pss: bool,
    /// What replies to the signer should use, announced in SMIMECapabilities (RFC 8551
    /// §2.5.2). The pipeline fills it from the policy; the default is the policy's default.
    pub replies: ReplyAlgorithms,
}

/// The algorithms a signature announces for replies, most preferred first (RFC 8551 §2.5.2:
/// the SMIMECapabilities list is ordered by preference, and a replying agent takes the first
/// entry it supports, §2.7.1.1).
///
/// Who decrypts a reply is our user's own client (cachet's inbound decryption, [`open()`], is
/// not wired into delivery yet), and what the operator configured is the best statement of what those clients
/// read: so the list holds exactly the ciphers and RSA key transports the policy names, the
/// `[policy]` default first, then those a rule names. AES-256-CBC (EnvelopedData, read by
/// every client) comes before the GCM ciphers (AuthEnvelopedData, RFC 8551 §2.7 SHOULD+ but
/// not yet read everywhere) unless the default itself is GCM: after the default, ciphers of
/// its own family (CBC or GCM) come before the other family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAlgorithms {
    /// Content ciphers; never empty when built with [`ReplyAlgorithms::preferring`].
    pub ciphers: Vec<ContentCipher>,
    /// RSA key transports.
    pub key_transports: Vec<KeyTransport>,
}

impl Default for ReplyAlgorithms {
    fn default() -> Self {
        ReplyAlgorithms::preferring(ContentCipher::default(), KeyTransport::default())
    }
}

impl ReplyAlgorithms {
    /// Starts the list with the preferred (default) cipher and key transport.
    pub fn preferring(cipher: ContentCipher, key_transport: KeyTransport) -> Self {
        ReplyAlgorithms {
            ciphers: vec![cipher],
            key_transports: vec![key_transport],
        }
    }

    /// Adds what one rule names (`None`: the rule keeps the default). A cipher of the
    /// preferred cipher's family goes after the last one of that family already listed, any
    /// other at the end; duplicates are ignored.
    pub fn accept(&mut self, cipher: Option<ContentCipher>, key_transport: Option<KeyTransport>) {
        if let Some(c) = cipher
            && !self.ciphers.contains(&c)
        {
            match self.ciphers.first().copied() {
                Some(first) if first.is_gcm() == c.is_gcm() => {
                    let at = self
                        .ciphers
                        .iter()
                        .rposition(|x| x.is_gcm() == first.is_gcm())
                        .map_or(0, |i| i + 1);
                    self.ciphers.insert(at, c);
                }
                _ => self.ciphers.push(c),
            }
        }
        if let Some(k) = key_transport
            && !self.key_transports.contains(&k)
        {
            self.key_transports.push(k);
        }
    }
}

/// Content encryption (RFC 8551 §2.7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContentCipher {
    /// EnvelopedData, AES-256-CBC: read by every major client.
    #[default]
    Aes256Cbc,
    /// AuthEnvelopedData, AES-128-GCM (RFC 5084).
    Aes128Gcm,
    /// AuthEnvelopedData, AES-256-GCM (RFC 5084).
    Aes256Gcm,
}

impl ContentCipher {
    /// AuthEnvelopedData (AES-GCM) rather than EnvelopedData (AES-CBC).
    pub fn is_gcm(self) -> bool {
        !matches!(self, ContentCipher::Aes256Cbc)
    }
}

/// Key transport for RSA recipients; EC P-256 recipients always use ECDH (RFC 5753).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyTransport {
    /// RSAES-PKCS1-v1_5 (RFC 8551 §2.3 MUST support).
    #[default]
    RsaPkcs1,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 8551 §2.3 SHOULD+, RFC 4055).
    RsaOaep,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncryptOptions {
    pub cipher: ContentCipher,
    pub key_transport: KeyTransport,
}

/// Why a message could not be signed or encrypted. All are permanent for the message except
/// `Crypto`, which means the crypto library failed, and `KeyUnavailable`, a key token that is
/// gone or refusing (both temporary).
#[derive(Debug)]
pub enum SmimeError {
    /// Encrypt was called with no recipient.
    NoRecipients,
    /// A certificate could not be parsed or is unfit (reason inside).
    Certificate(String),
    /// The private key refused to sign (reason inside, no key material).
    Sign(String),
    /// The private key cannot be reached now (a token removed, restarting or refusing): the
    /// message waits and is tried again, never sent unsigned.
    KeyUnavailable(String),
    /// An aws-lc-rs operation failed (which one).
    Crypto(&'static str),
    /// ASN.1 encoding failed.
    Der(der::Error),
    /// The `cms` crate refused to build an attribute.
    Cms(String),
}

impl std::fmt::Display for SmimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SmimeError::NoRecipients => write!(f, "no recipient certificate to encrypt to"),
            SmimeError::Certificate(r) => write!(f, "certificate: {r}"),
            SmimeError::Sign(r) => write!(f, "signing failed: {r}"),
            SmimeError::KeyUnavailable(r) => write!(f, "signing deferred: {r}"),
            SmimeError::Crypto(what) => write!(f, "crypto operation failed: {what}"),
            SmimeError::Der(e) => write!(f, "ASN.1 encoding: {e}"),
            SmimeError::Cms(e) => write!(f, "CMS: {e}"),
        }
    }
}

impl std::error::Error for SmimeError {}

impl SmimeError {
    /// True when retrying later may succeed (the crypto library failed, or the key's token is
    /// unavailable); everything else is a property of the message, key or certificates and
    /// will fail again.
    pub fn is_temporary(&self) -> bool {
        matches!(self, SmimeError::Crypto(_) | SmimeError::KeyUnavailable(_))
    }
}

impl From<der::Error> for SmimeError {
    fn from(e: der::Error) -> Self {
        SmimeError::Der(e)
    }
}

impl From<cms::builder::Error> for SmimeError {
    fn from(e: cms::builder::Error) -> Self {
        SmimeError::Cms(e.to_string())
    }
}

/// A boundary that cannot occur in base64, quoted-printable or our headers by accident.
fn new_boundary() -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut r = [0u8; 12];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut r);
    format!("----=_cachet_{}", crate::store::hex(&r))
}

/// Outer fields + our MIME-Version + the new content fields + CRLF, in a buffer with room for
/// `more` octets after them.
fn outer_with(outer: &[u8], content_fields: &str, more: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(outer.len() + content_fields.len() + 21 + more);
    out.extend_from_slice(outer);
    out.extend_from_slice(MIME_VERSION);
    out.extend_from_slice(content_fields.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// The canonical form [`sign`] protects: (outer header fields, MIME entity), as `mime.rs`
/// makes it. Public for the fuzz targets and tools; the pipeline calls [`sign`]/[`encrypt`].
pub fn canonical_entity(message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let split = mime::split_message(message, true);
    (split.outer, split.entity.to_vec())
}

/// Base64 in 76-column CRLF lines (RFC 2045 §6.8) appended to `out`: how every CMS body
/// leaves cachet. Public for `benches/smime.rs`.
pub fn base64_lines_into(data: &[u8], out: &mut Vec<u8>) {
    mime::base64_lines_into(data, out);
}

/// Sign `message` with `id` (RFC 8551 §3.5). The result verifies with `openssl cms -verify`.
///
/// Speed (issue 12): the canonical entity is digested in one pass and copied once, into the
/// output; the signature's base64 is written into the output directly.
pub fn sign(
    message: &[u8],
    id: &SigningIdentity,
    opts: &SignOptions,
) -> Result<Vec<u8>, SmimeError> {
    Ok(sign_message(message, id, opts)?.into_vec())
}

/// A message [`sign_message`] signed, and where its header fields end: [`encrypt_signed`]
/// takes the outer fields and the signed entity from there without parsing the message again.
/// Cloning shares the bytes.
#[derive(Clone)]
pub struct Signed {
    message: Arc<Vec<u8>>,
    /// The outer header fields are `message[..outer_len]`; `MIME-Version: 1.0` follows, then
    /// the signed entity (its `Content-*` fields, the empty line, its body) to the end.
    outer_len: usize,
}

/// The field [`outer_with`] writes between the outer fields and the entity.
const MIME_VERSION: &[u8] = b"MIME-Version: 1.0\r\n";

/// Lengths only: a message's text does not belong in a log line.
impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("len", &self.message.len())
            .field("outer_len", &self.outer_len)
            .finish()
    }
}

impl Signed {
    /// The signed message as it goes out when it is not encrypted.
    pub fn message(&self) -> &Arc<Vec<u8>> {
        &self.message
    }

    /// The signed message, copied only when another clone still shares it.
    pub fn into_vec(self) -> Vec<u8> {
        Arc::try_unwrap(self.message).unwrap_or_else(|shared| shared.to_vec())
    }

    /// (outer header fields, the signed entity): what encrypting it takes apart.
    fn parts(&self) -> (&[u8], &[u8]) {
        let (outer, rest) = self.message.split_at(self.outer_len);
        (outer, &rest[MIME_VERSION.len()..])
    }
}

/// [`sign`], keeping what [`encrypt_signed`] needs to encrypt the result without parsing it.
pub fn sign_message(
    message: &[u8],
    id: &SigningIdentity,
    opts: &SignOptions,
) -> Result<Signed, SmimeError> {
    let split = mime::split_message(message, true);
    let outer_len = split.outer.len();
    let entity = split.entity;
    match opts.form {
        SignForm::Detached => {
            let p7s = sign::signed_data(&entity.pieces(), id, opts, true)?;
            let (_, micalg) = sign::effective_digest(id.key, opts);
            let mut boundary = new_boundary();
            while entity.contains(boundary.as_bytes()) {
                boundary = new_boundary();
            }
            const PREAMBLE: &[u8] =
                b"This is a cryptographically signed message in MIME format.\r\n\r\n";
            const P7S_FIELDS: &[u8] =
                b"Content-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\n\
                  Content-Transfer-Encoding: base64\r\n\
                  Content-Disposition: attachment; filename=\"smime.p7s\"\r\n\
                  Content-Description: S/MIME Cryptographic Signature\r\n\r\n";
            let more = PREAMBLE.len()
                + entity.len()
                + P7S_FIELDS.len()
                + mime::base64_lines_len(p7s.len())
                + 3 * (boundary.len() + 8);
            let mut out = outer_with(
                &split.outer,
                &format!(
                    "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg={micalg};\r\n\tboundary=\"{boundary}\"\r\n"
                ),
                more,
            );
            out.extend_from_slice(PREAMBLE);
            out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            // RFC 8551 §3.5.3: the first part is exactly the signed entity; the CRLF before
            // the next delimiter belongs to the delimiter (RFC 2046 §5.1.1).
            entity.write_to(&mut out);
            out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
            out.extend_from_slice(P7S_FIELDS);
            mime::base64_lines_into(&p7s, &mut out);
            out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            Ok(Signed {
                message: Arc::new(out),
                outer_len,
            })
        }
        SignForm::Opaque => {
            let p7m = sign::signed_data(&entity.pieces(), id, opts, false)?;
            let mut out = outer_with(
                &split.outer,
                "Content-Type: application/pkcs7-mime; smime-type=signed-data; name=\"smime.p7m\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\
                 Content-Disposition: attachment; filename=\"smime.p7m\"\r\n",
                mime::base64_lines_len(p7m.len()),
            );
            mime::base64_lines_into(&p7m, &mut out);
            Ok(Signed {
                message: Arc::new(out),
                outer_len,
            })
        }
    }
}

/// Encrypt `message` to `recipients` (RFC 8551 §3.3/§3.4): one content key, one RecipientInfo
/// per certificate. Callers pass only certificates the store validated, and split Bcc
/// recipients into their own calls.
///
/// Speed (issue 12): a message that is CRLF already (all of them from SMTP, and every output
/// of [`sign`]) is not copied before encryption; the entity goes straight into the DER buffer
/// where it is encrypted in place, and the base64 lines go straight into the output.
pub fn encrypt(
    message: &[u8],
    recipients: &[Arc<RecipientCert>],
    opts: &EncryptOptions,
) -> Result<Vec<u8>, SmimeError> {
    let enveloped = envelope_message(message, recipients, opts)?;
    Ok(enveloped.into_message())
}

/// [`encrypt`] for a message [`sign_message`] signed: the outer fields and the signed entity
/// are where `sign_message` wrote them, so the message is not parsed again (no CRLF pass, no
/// header parse: ~1% of a 100 KB sign+encrypt). The caller's reference is dropped once the
/// ciphertext exists, before the base64 output is allocated, so the plaintext, the DER and the
/// output are never all in memory at once (the last one is the largest: 4/3 of the DER). Peak
/// memory for a 10 MB message: ~24 MB instead of ~34 MB (docs/performance.md, "Peak RSS: the
/// heap profile").
pub fn encrypt_signed(
    signed: Signed,
    recipients: &[Arc<RecipientCert>],
    opts: &EncryptOptions,
) -> Result<Vec<u8>, SmimeError> {
    let (outer, entity) = signed.parts();
    let (der, smime_type) = envelope::envelope(&[entity], recipients, opts)?;
    let enveloped = Enveloped {
        outer: outer.to_vec(),
        der,
        smime_type,
    };
    drop(signed);
    Ok(enveloped.into_message())
}

/// The EnvelopedData of a message and the outer header fields it goes out under.
struct Enveloped {
    outer: Vec<u8>,
    der: Vec<u8>,
    smime_type: &'static str,
}

fn envelope_message(
    message: &[u8],
    recipients: &[Arc<RecipientCert>],
    opts: &EncryptOptions,
) -> Result<Enveloped, SmimeError> {
    // An already signed or enveloped entity is encrypted byte for byte (only line ends fixed),
    // so its signature keeps verifying after decryption.
    let probe = mime::split_message(message, false);
    let head = probe.entity.head.to_ascii_lowercase();
    let already_smime = memchr::memmem::find(&head, b"multipart/signed").is_some()
        || memchr::memmem::find(&head, b"application/pkcs7-mime").is_some();
    let (outer, entity) = if already_smime {
        (probe.outer, probe.entity)
    } else {
        let split = mime::split_message(message, true);
        (split.outer, split.entity)
    };
    let (der, smime_type) = envelope::envelope(&entity.pieces(), recipients, opts)?;
    Ok(Enveloped {
        outer,
        der,
        smime_type,
    })
}

impl Enveloped {
    /// The outgoing message: the outer fields, the `application/pkcs7-mime` fields, the DER in
    /// base64 lines.
    fn into_message(self) -> Vec<u8> {
        let mut out = outer_with(
            &self.outer,
            &format!(
                "Content-Type: application/pkcs7-mime; smime-type={}; name=\"smime.p7m\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\
                 Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\
                 Content-Description: S/MIME Encrypted Message\r\n",
                self.smime_type
            ),
            mime::base64_lines_len(self.der.len()),
        );
        mime::base64_lines_into(&self.der, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::ContentCipher::{Aes128Gcm, Aes256Cbc, Aes256Gcm};
    use super::KeyTransport::{RsaOaep, RsaPkcs1};
    use super::*;

    /// (default cipher, ciphers rules name in rule order, announced order)
    #[test]
    fn reply_ciphers_put_the_default_first_then_its_own_family() {
        let table: &[(ContentCipher, &[ContentCipher], &[ContentCipher])] = &[
            (Aes256Cbc, &[], &[Aes256Cbc]),
            (
                Aes256Cbc,
                &[Aes256Gcm, Aes128Gcm],
                &[Aes256Cbc, Aes256Gcm, Aes128Gcm],
            ),
            (
                Aes256Gcm,
                &[Aes256Cbc, Aes128Gcm],
                &[Aes256Gcm, Aes128Gcm, Aes256Cbc],
            ),
            (
                Aes128Gcm,
                &[Aes256Cbc, Aes256Gcm],
                &[Aes128Gcm, Aes256Gcm, Aes256Cbc],
            ),
            (Aes256Gcm, &[Aes256Gcm, Aes256Gcm], &[Aes256Gcm]),
        ];
        for (default, named, expected) in table {
            let mut r = ReplyAlgorithms::preferring(*default, RsaPkcs1);
            for c in *named {
                r.accept(Some(*c), None);
            }
            assert_eq!(&r.ciphers, expected, "default {default:?}, rules {named:?}");
        }
    }

    #[test]
    fn reply_key_transports_put_the_default_first() {
        let mut r = ReplyAlgorithms::preferring(Aes256Cbc, RsaOaep);
        r.accept(None, Some(RsaPkcs1));
        r.accept(Some(Aes256Cbc), Some(RsaOaep));
        assert_eq!(r.key_transports, [RsaOaep, RsaPkcs1]);
        assert_eq!(r.ciphers, [Aes256Cbc]);
        assert_eq!(ReplyAlgorithms::default().key_transports, [RsaPkcs1]);
    }
}
