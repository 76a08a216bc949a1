//! Signing identities: the `[keys] dir` and the `[keys.pkcs11]` token, by sender address.
//!
//! Files: `<address>.pem` holds the private key (PKCS#8, PKCS#1 RSA or SEC1 EC, or an encrypted
//! PKCS#8 opened with `keys.passphrase_file`, see [`keyfile`]) and the certificate chain;
//! `<address>.p12` is a PKCS#12 file whose password is in `<address>.p12.pass`, the configured
//! `p12_password_file` or `passphrase_file`. With a token, a `.pem` holding only certificates
//! names a key on the token; certificates on the token work too (`token_identities`).
//! `<address>+<tag>.pem` is a second certificate for the address (rotation: the newest valid one
//! signs, [`KeyStore::get`]). Key files and password files readable by group or others are
//! refused (like ssh does), so a mis-set `chmod` is found by `cachet check`, not by an attacker.
//!
//! The signing certificate must name the address of the file, chain to a trust anchor and be fit
//! for signing ([`validate::check`] with [`Purpose::Sign`]). Further end-entity certificates for
//! the same address in a `.pem` file (or the signing certificate itself when its keyUsage allows it)
//! become the identity's own encryption certificate, announced in SMIMEEncryptionKeyPreference
//! (RFC 8551 §2.5.3) and usable for encrypt-to-self (RFC 8551 §3.3).
//!
//! Decryption keys: a key file (or token key) whose certificate is an *encryption certificate*
//! (keyUsage present, without digitalSignature, with keyEncipherment or keyAgreement: RFC 9216's
//! `alice.encrypt.crt`) loads as a [`KeyUse::Decrypt`] identity, validated with
//! [`Purpose::Encrypt`]: inbound mail encrypted to it opens, it is never asked to sign
//! ([`KeyStore::get`] skips it, [`SigningIdentity::sign`] refuses) and never refused for "cannot
//! sign". It usually sits beside the signing key as `<address>+<tag>.pem`. On a token such a key
//! is matched to its certificate by a test decryption instead of a test signature.
//!
//! Secrets: a private key is reached only through [`PrivateKey`] (sign; decrypt for the inbound
//! path): in this process (aws-lc-rs) or on the token ([`super::pkcs11`]); it is never logged,
//! and the [`std::fmt::Debug`] output of an identity omits it. Everything else that held key
//! material is wiped when dropped ([`zeroize`]): the key file bytes, passwords and passphrases,
//! the decrypted and decoded private-key DER. aws-lc-rs wipes its own key pairs. Not wiped: the
//! copies the `p12-keystore` crate makes while decrypting a `.p12` (it offers no way to), which
//! is one more reason to prefer the `.pem` form.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::certs::RecipientCert;
use super::keyfile::{self, check_private};
use super::pkcs11::{Token, TokenKey, TokenObject};
use super::validate::{self, CertInfo, Purpose};
use super::{KeyKind, Problem, TrustAnchors, normalize_address};

pub use super::private_key::{Decrypt, KeyError, OaepHash, PrivateKey, SignatureScheme};

/// The name the first version of this seam had.
pub use PrivateKey as Signer;

/// An RSA or P-256 key held in this process by aws-lc-rs.
enum LocalKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl PrivateKey for LocalKey {
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        let failed = |m: &str| KeyError::Failed(m.to_string());
        match (self, scheme) {
            (LocalKey::Ec(k), SignatureScheme::EcdsaP256Sha256) => k
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| failed("ECDSA signing failed")),

            (LocalKey::Rsa(k), scheme) => {
                let pad: &'static dyn signature::RsaEncoding = match scheme {
                    SignatureScheme::RsaPkcs1Sha256 => &signature::RSA_PKCS1_SHA256,
                    SignatureScheme::RsaPkcs1Sha512 => &signature::RSA_PKCS1_SHA512,
                    SignatureScheme::RsaPssSha256 => &signature::RSA_PSS_SHA256,
                    SignatureScheme::RsaPssSha512 => &signature::RSA_PSS_SHA512,
                    SignatureScheme::EcdsaP256Sha256 => {
                        return Err(failed("RSA key cannot do ECDSA"));
                    }
                };
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(pad, &rng, message, &mut sig)
                    .map_err(|_| failed("RSA signing failed"))?;
                Ok(sig)
            }
            (LocalKey::Ec(_), _) => Err(failed("EC key can only do ECDSA")),
        }
    }

    fn decrypt(&self, op: Decrypt<'_>) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        use aws_lc_rs::encoding::{AsBigEndian, AsDer};
        use aws_lc_rs::rsa::{self, PrivateDecryptingKey};
        let failed = |m: &str| KeyError::Failed(m.to_string());
        let rsa_key = |k: &RsaKeyPair| {
            let der = k.as_der().map_err(|_| failed("cannot use the RSA key"))?;
            PrivateDecryptingKey::from_pkcs8(der.as_ref())
                .map_err(|_| failed("cannot use the RSA key for decryption"))
        };
        match (self, op) {
            (LocalKey::Rsa(k), Decrypt::RsaPkcs1(ct)) => {
                let key = rsa::Pkcs1PrivateDecryptingKey::new(rsa_key(k)?)
                    .map_err(|_| failed("cannot use the RSA key for PKCS#1 v1.5"))?;
                let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
                let n = key
                    .decrypt(ct, &mut out)
                    .map_err(|_| failed("RSA PKCS#1 v1.5 decryption failed"))?
                    .len();
                out.truncate(n);
                Ok(out)
            }
            (LocalKey::Rsa(k), Decrypt::RsaOaep { ciphertext, hash }) => {
                let key = rsa::OaepPrivateDecryptingKey::new(rsa_key(k)?)
                    .map_err(|_| failed("cannot use the RSA key for OAEP"))?;
                let alg = match hash {
                    OaepHash::Sha1 => &rsa::OAEP_SHA1_MGF1SHA1,
                    OaepHash::Sha256 => &rsa::OAEP_SHA256_MGF1SHA256,
                    OaepHash::Sha384 => &rsa::OAEP_SHA384_MGF1SHA384,
                    OaepHash::Sha512 => &rsa::OAEP_SHA512_MGF1SHA512,
                };
                let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
                let n = key
                    .decrypt(alg, ciphertext, &mut out, None)
                    .map_err(|_| failed("RSA OAEP decryption failed"))?
                    .len();
                out.truncate(n);
                Ok(out)
            }
            (LocalKey::Ec(k), Decrypt::EcdhP256 { peer_point }) => {
                use aws_lc_rs::agreement;
                let scalar = k
                    .private_key()
                    .as_be_bytes()
                    .map_err(|_| failed("cannot use the EC key"))?;
                let mine =
                    agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, scalar.as_ref())
                        .map_err(|_| failed("cannot use the EC key for ECDH"))?;
                agreement::agree(
                    &mine,
                    agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, peer_point),
                    failed("ECDH with this public point failed"),
                    |z| Ok(Zeroizing::new(z.to_vec())),
                )
            }
            _ => Err(failed("operation does not fit the key's type")),
        }
    }
}

/// Where an identity's private key lives (`cachet keys list`, `cachet check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A plain key file (PEM or a PKCS#12 file).
    File(PathBuf),
    /// An encrypted PKCS#8 PEM file, opened with `keys.passphrase_file`.
    EncryptedFile(PathBuf),
    /// A PKCS#11 token: its label and the key's CKA_ID (hex); where the certificate came from.
    Token {
        label: String,
        id: String,
        certificate: Option<PathBuf>,
    },
    /// Built in memory (tools, tests).
    Memory,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "file {}", p.display()),
            KeySource::EncryptedFile(p) => write!(f, "encrypted file {}", p.display()),
            KeySource::Token {
                label,
                id,
                certificate,
            } => {
                write!(f, "token {label:?} id {id}")?;
                match certificate {
                    Some(p) => write!(f, " (certificate {})", p.display()),
                    None => write!(f, " (certificate on the token)"),
                }
            }
            KeySource::Memory => write!(f, "memory"),
        }
    }
}

/// What an identity's private key is used for, decided by its certificate's keyUsage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// A signing certificate: signs outbound mail (and decrypts mail encrypted to it, as it
    /// always did when its keyUsage allows that too).
    Sign,
    /// An encryption certificate (keyEncipherment or keyAgreement, no digitalSignature): only
    /// decrypts inbound mail; never signs.
    Decrypt,
}

/// Whether a certificate is an encryption certificate: keyUsage present, without
/// digitalSignature, with keyEncipherment or keyAgreement (RFC 8550 §4.4.2).
pub fn is_encryption_certificate(info: &CertInfo) -> bool {
    info.key_usage
        .as_ref()
        .is_some_and(|ku| !ku.digital_signature() && (ku.key_encipherment() || ku.key_agreement()))
}

/// An organisation key: certificate chain plus a handle to the private key. A signing identity
/// (`usage = Sign`) signs for its address; a decryption key (`usage = Decrypt`) only opens
/// inbound mail encrypted to its certificate.
pub struct SigningIdentity {
    /// The address this identity signs for, from the file name, lower-cased
    /// ([`normalize_address`]): `Alice@Example.org.pem` signs for `alice@example.org`.
    pub email: String,
    /// Signer certificate first, then the intermediates from the key file; all go into the
    /// SignedData `certificates` so recipients can build the path (RFC 8551 §2.4.2).
    pub chain: Vec<CertificateDer<'static>>,
    /// SHA-256 of the signer certificate, lower-case hex.
    pub fingerprint: String,
    /// Validity of the signer certificate: with two identities for one address, the newest one
    /// valid now signs (rotation without downtime, docs/keys.md).
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Decides the signature algorithm (RSA PKCS#1/PSS or ECDSA P-256).
    pub key: KeyKind,
    /// The sender's own encryption certificate, if it has one: announced in
    /// SMIMEEncryptionKeyPreference and usable for encrypt-to-self.
    pub encryption_cert: Option<Arc<RecipientCert>>,
    /// Where the private key lives (file, encrypted file, token).
    pub source: KeySource,
    /// Signing identity or decryption-only key (from the certificate's keyUsage).
    pub usage: KeyUse,
    signer: Arc<dyn PrivateKey>,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("email", &self.email)
            .field("fingerprint", &self.fingerprint)
            .field("key", &self.key)
            .field("source", &self.source)
            .field("usage", &self.usage)
            .field("chain_len", &self.chain.len())
            .field(
                "encryption_cert",
                &self.encryption_cert.as_ref().map(|c| &c.fingerprint),
            )
            .finish_non_exhaustive()
    }
}

impl SigningIdentity {
    /// Sign with the identity's private key. A decryption key never signs: its certificate
    /// says the key is not for signatures, and a signature nobody can verify helps no one.
    pub fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        if self.usage == KeyUse::Decrypt {
            return Err(KeyError::Failed(format!(
                "{} is a decryption key (certificate {}): it never signs",
                self.email, self.fingerprint
            )));
        }
        self.signer.sign(scheme, message)
    }

    /// The private-key step of decrypting mail sent to this identity's certificate: the seam
    /// inbound decryption uses ([`Decrypt`]). Works the same for file and token keys.
    pub fn decrypt(&self, op: Decrypt<'_>) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.signer.decrypt(op)
    }

    /// The signer certificate (first in [`Self::chain`]).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// Build an identity from an in-memory PEM (key + chain), validated like a key file.
    /// Used by `load`; public so tools and tests can make identities without a directory.
    pub fn from_pem(
        address: &str,
        pem: &[u8],
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> Result<SigningIdentity, String> {
        Self::from_pem_with(address, pem, None, trust, now)
    }

    /// Like [`Self::from_pem`], also for an `ENCRYPTED PRIVATE KEY` (PKCS#8 PBES2, RFC 8018)
    /// opened with `passphrase`.
    pub fn from_pem_with(
        address: &str,
        pem: &[u8],
        passphrase: Option<&[u8]>,
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> Result<SigningIdentity, String> {
        let certs = super::parse_certificates(pem)?;
        // Wiped on drop, on every path out of here: only aws-lc-rs keeps the key.
        let key: Zeroizing<Vec<u8>> = match keyfile::encrypted_pem(pem)? {
            Some(encrypted) => {
                let pass = passphrase.ok_or(
                    "the private key is encrypted: set keys.passphrase_file to the file holding its passphrase",
                )?;
                keyfile::decrypt_pkcs8(&encrypted, pass)?
            }
            None => Zeroizing::new(
                PrivateKeyDer::from_pem_slice(pem)
                    .map_err(|e| format!("no usable private key: {e}"))?
                    .secret_der()
                    .to_vec(),
            ),
        };
        Self::from_parts(address, &key, &certs, trust, now)
    }

    /// Build an identity from PKCS#12 bytes and their password, validated like a key file.
    ///
    /// Only the key's own chain is read: p12-keystore drops certificates without a localKeyId,
    /// so a separate encryption certificate needs the `.pem` form.
    pub fn from_p12(
        address: &str,
        p12: &[u8],
        password: &str,
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> Result<SigningIdentity, String> {
        let ks = p12_keystore::KeyStore::from_pkcs12(p12, password)
            .map_err(|e| format!("cannot open PKCS#12 (wrong password?): {e}"))?;
        let (_, chain) = ks
            .private_key_chain()
            .ok_or("PKCS#12 holds no private key")?;
        let certs: Vec<CertificateDer<'static>> = chain
            .chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_der().to_vec()))
            .collect();
        Self::from_parts(address, chain.key(), &certs, trust, now)
    }

    fn from_parts(
        address: &str,
        key_der: &[u8],
        certs: &[CertificateDer<'static>],
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> Result<SigningIdentity, String> {
        let key = parse_private_key(key_der)?;
        let public = match &key {
            LocalKey::Rsa(k) => k.public_key().as_ref().to_vec(),
            LocalKey::Ec(k) => k.public_key().as_ref().to_vec(),
        };
        Self::from_key(
            address,
            Arc::new(key),
            &public,
            certs,
            trust,
            now,
            KeySource::Memory,
        )
    }

    /// Build an identity from any [`PrivateKey`] whose public key is `public` (the
    /// subjectPublicKey contents its certificate must carry) and the certificates that may hold
    /// its certificate and chain; validated like a key file.
    pub fn from_key(
        address: &str,
        key: Arc<dyn PrivateKey>,
        public: &[u8],
        certs: &[CertificateDer<'static>],
        trust: &TrustAnchors,
        now: SystemTime,
        source: KeySource,
    ) -> Result<SigningIdentity, String> {
        let address = normalize_address(address);
        let mut infos = Vec::new();
        for der in certs {
            infos.push((der.clone(), validate::inspect(der)?));
        }
        let intermediates: Vec<CertificateDer<'static>> = infos
            .iter()
            .filter(|(_, i)| i.is_ca)
            .map(|(d, _)| d.clone())
            .collect();
        let Some((cert, info)) = infos
            .iter()
            .find(|(_, i)| !i.is_ca && i.public_key == public)
        else {
            return Err("no certificate in the file matches the private key".into());
        };
        if !info.emails.contains(&address) {
            return Err(format!(
                "certificate {} is for {}, not for {address}",
                info.fingerprint,
                if info.emails.is_empty() {
                    format!("no address ({})", validate::NO_RFC822_NAME)
                } else {
                    info.emails.join(", ")
                }
            ));
        }
        // An encryption certificate makes a decryption key: validated for what it will do,
        // never for signing.
        let (usage, purpose, what) = if is_encryption_certificate(info) {
            (KeyUse::Decrypt, Purpose::Encrypt, "encryption")
        } else {
            (KeyUse::Sign, Purpose::Sign, "signing")
        };
        let kind = validate::check(cert, info, &intermediates, trust, now, purpose)
            .map_err(|reason| format!("{what} certificate {}: {reason}", info.fingerprint))?;
        let encryption_cert = match usage {
            KeyUse::Sign => own_encryption_cert(&address, &infos, &intermediates, trust, now),
            KeyUse::Decrypt => None,
        };
        let mut chain = vec![cert.clone()];
        chain.extend(
            intermediates
                .into_iter()
                .filter(|d| !trust.certs.contains(d)),
        );
        Ok(SigningIdentity {
            email: address,
            chain,
            fingerprint: info.fingerprint.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            key: kind,
            encryption_cert,
            source,
            usage,
            signer: key,
        })
    }
}

/// Newest certificate in the key file that names `address` and validates for encryption.
fn own_encryption_cert(
    address: &str,
    infos: &[(CertificateDer<'static>, CertInfo)],
    intermediates: &[CertificateDer<'static>],
    trust: &TrustAnchors,
    now: SystemTime,
) -> Option<Arc<RecipientCert>> {
    infos
        .iter()
        .filter(|(_, i)| !i.is_ca && i.emails.iter().any(|e| e == address))
        .filter(|(d, i)| validate::check(d, i, intermediates, trust, now, Purpose::Encrypt).is_ok())
        .max_by_key(|(_, i)| (i.not_before, i.not_after))
        .and_then(|(d, i)| RecipientCert::from_info(d.clone(), i).ok())
        .map(Arc::new)
}

/// PKCS#8 (RSA or P-256), PKCS#1 RSAPrivateKey or SEC1 ECPrivateKey, into aws-lc-rs.
fn parse_private_key(der: &[u8]) -> Result<LocalKey, String> {
    if let Ok(k) = RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der)) {
        return Ok(LocalKey::Rsa(k));
    }
    let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    if let Ok(k) =
        EcdsaKeyPair::from_pkcs8(alg, der).or_else(|_| EcdsaKeyPair::from_private_key_der(alg, der))
    {
        return Ok(LocalKey::Ec(k));
    }
    Err("private key is neither RSA nor EC P-256 (or is malformed)".into())
}

/// Where [`KeyStore::load_with`] finds keys: the directory, the secrets that open encrypted
/// files, and the token.
#[derive(Default)]
pub struct KeySources {
    pub dir: PathBuf,
    pub p12_password_file: Option<PathBuf>,
    /// `keys.passphrase_file`, read once by the caller; wiped when dropped.
    pub passphrase: Option<Zeroizing<Vec<u8>>>,
    /// `[keys.pkcs11]`, opened and logged in.
    pub token: Option<Arc<Token>>,
    /// `[keys.pkcs11]` is configured (even when `token` could not be opened).
    pub token_expected: bool,
}

/// Signing identities and decryption keys by address; immutable once loaded, shared by `Arc`.
#[derive(Debug, Default)]
pub struct KeyStore {
    /// Newest first (notBefore, then notAfter): rotation adds a newer one beside the old.
    /// Decryption keys ([`KeyUse::Decrypt`]) are here too; [`KeyStore::get`] never returns one.
    by_address: HashMap<String, Vec<Arc<SigningIdentity>>>,
    /// One value derived from the loaded keys and kept as long as they are (the inbound
    /// decryption ring, `pipeline::inbound::OrgKeys`, built on first use instead of per
    /// message); typed by the caller so this module needs no upward import. Cleared by every
    /// change ([`KeyStore::insert`], [`KeyStore::retain`]).
    derived: OnceLock<Arc<dyn Any + Send + Sync>>,
}

/// What a key-directory file name says: the address, and whether it is PKCS#12.
/// `<address>.pem`, `<address>.p12`, or with a tag for a second certificate during rotation:
/// `<address>+<tag>.pem` (a `+` after the `@` cannot be part of a domain).
fn file_address(name: &str) -> Option<(&str, bool)> {
    let (stem, p12) = if let Some(a) = name.strip_suffix(".pem") {
        (a, false)
    } else if let Some(a) = name.strip_suffix(".p12") {
        (a, true)
    } else {
        return None;
    };
    let at = stem.rfind('@')?;
    let address = match stem[at..].find('+') {
        Some(plus) => &stem[..at + plus],
        None => stem,
    };
    Some((address, p12))
}

impl KeyStore {
    /// Read every `<address>.pem` / `<address>.p12` in `dir`. Problems are reported per file and
    /// the file is skipped; the rest still load.
    pub fn load(
        dir: &Path,
        p12_password_file: Option<&Path>,
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> (KeyStore, Vec<Problem>) {
        let sources = KeySources {
            dir: dir.to_path_buf(),
            p12_password_file: p12_password_file.map(Path::to_path_buf),
            ..Default::default()
        };
        Self::load_with(&sources, trust, now)
    }

    /// Read the key directory and, when configured, the token: key files (plain or
    /// encrypted), certificate-only files whose key is on the token, and certificates on the
    /// token. Problems are reported per file or token object; the rest still load.
    pub fn load_with(
        sources: &KeySources,
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> (KeyStore, Vec<Problem>) {
        let dir = &sources.dir;
        let mut store = KeyStore::default();
        let mut problems = Vec::new();
        let mut paths: Vec<_> = match std::fs::read_dir(dir) {
            Ok(e) => e.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                problems.push(Problem::new(dir, format!("cannot read key directory: {e}")));
                return (store, problems);
            }
        };
        paths.sort();
        // Certificate-only files: their key is on the token.
        let mut for_token: Vec<(PathBuf, String, Vec<CertificateDer<'static>>)> = Vec::new();
        for path in paths {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some((address, is_p12)) = file_address(name) else {
                if name.ends_with(".pem") || name.ends_with(".p12") {
                    problems.push(Problem::new(
                        &path,
                        "file name must be <address>.pem or <address>.p12 (or <address>+<tag>.pem)",
                    ));
                }
                continue;
            };
            let loaded = check_private(&path).and_then(|bytes| {
                if is_p12 {
                    let pass = p12_password(
                        &path,
                        sources.p12_password_file.as_deref(),
                        sources.passphrase.as_deref().map(|v| &v[..]),
                    )?;
                    let (pass, beside) = pass;
                    let id = SigningIdentity::from_p12(address, &bytes, &pass, trust, now)?;
                    // A password from a file beside the key protects nothing; one from a
                    // secret elsewhere makes this an encrypted file.
                    let source = if beside {
                        KeySource::File(path.clone())
                    } else {
                        KeySource::EncryptedFile(path.clone())
                    };
                    return Ok(Some((id, source)));
                }
                if keyfile::encrypted_pem(&bytes)?.is_some() {
                    let id = SigningIdentity::from_pem_with(
                        address,
                        &bytes,
                        sources.passphrase.as_deref().map(|v| &v[..]),
                        trust,
                        now,
                    )?;
                    return Ok(Some((id, KeySource::EncryptedFile(path.clone()))));
                }
                if PrivateKeyDer::from_pem_slice(&bytes).is_err() {
                    if sources.token.is_some() {
                        let certs = super::parse_certificates(&bytes)?;
                        for_token.push((path.clone(), address.to_string(), certs));
                        return Ok(None);
                    }
                    if sources.token_expected {
                        return Err(format!(
                            "the private key for {address} is on the token, which cannot be used (see keys.pkcs11)"
                        ));
                    }
                }
                let id = SigningIdentity::from_pem(address, &bytes, trust, now)?;
                Ok(Some((id, KeySource::File(path.clone()))))
            });
            match loaded {
                Ok(Some((mut id, source))) => {
                    id.source = source;
                    store.insert(id);
                }
                Ok(None) => {}
                Err(reason) => problems.push(Problem::new(&path, reason)),
            }
        }
        if let Some(token) = &sources.token {
            token_identities(token, for_token, &mut store, &mut problems, trust, now);
        }
        (store, problems)
    }

    /// The identity that signs for a sender address (case-insensitive, see
    /// [`normalize_address`]): the newest one valid now.
    pub fn get(&self, address: &str) -> Option<Arc<SigningIdentity>> {
        self.get_at(address, SystemTime::now())
    }

    /// [`KeyStore::get`] at `now`: the newest signing identity valid then, else the newest
    /// signing identity. Decryption keys are never returned.
    pub fn get_at(&self, address: &str, now: SystemTime) -> Option<Arc<SigningIdentity>> {
        let list = self.by_address.get(&normalize_address(address))?;
        let mut signing = list.iter().filter(|id| id.usage == KeyUse::Sign);
        signing
            .clone()
            .find(|id| id.not_before <= now && now < id.not_after)
            .or_else(|| signing.next())
            .cloned()
    }

    /// The decryption keys ([`KeyUse::Decrypt`]), sorted by address, newest first.
    pub fn decryption_keys(&self) -> Vec<Arc<SigningIdentity>> {
        self.all()
            .into_iter()
            .filter(|id| id.usage == KeyUse::Decrypt)
            .collect()
    }

    /// A value derived from the loaded keys, built by `build` on first use and shared until
    /// the store changes. One slot: a caller asking for another type gets a fresh build each
    /// time (correct, only not cached).
    pub fn derived<T: Any + Send + Sync>(&self, build: impl FnOnce(&KeyStore) -> T) -> Arc<T> {
        if let Some(v) = self.derived.get() {
            return match v.clone().downcast::<T>() {
                Ok(v) => v,
                Err(_) => Arc::new(build(self)),
            };
        }
        let built = Arc::new(build(self));
        // Two threads may build at once: the first stored wins, both built the same thing.
        let _ = self.derived.set(built.clone());
        built
    }

    /// The signing identities valid now, one per address, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = Arc<SigningIdentity>> + '_ {
        self.by_address.keys().filter_map(|a| self.get(a))
    }

    /// Every identity loaded (signing identities, including those a newer one replaces, and
    /// decryption keys); sorted by address, newest first.
    pub fn all(&self) -> Vec<Arc<SigningIdentity>> {
        let mut addresses: Vec<&String> = self.by_address.keys().collect();
        addresses.sort();
        addresses
            .into_iter()
            .flat_map(|a| self.by_address[a].iter().cloned())
            .collect()
    }

    /// Add an identity built in memory (tools, tests); beside others for the same address, kept
    /// newest first (one with the same certificate is replaced).
    pub fn insert(&mut self, id: SigningIdentity) {
        self.derived = OnceLock::new();
        let list = self.by_address.entry(id.email.clone()).or_default();
        list.retain(|old| old.fingerprint != id.fingerprint);
        list.push(Arc::new(id));
        list.sort_by(|a, b| {
            (b.not_before, b.not_after)
                .cmp(&(a.not_before, a.not_after))
                .then_with(|| a.fingerprint.cmp(&b.fingerprint))
        });
    }

    /// Keep only the identities `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&SigningIdentity) -> bool) {
        self.derived = OnceLock::new();
        for list in self.by_address.values_mut() {
            list.retain(|id| keep(id));
        }
        self.by_address.retain(|_, list| !list.is_empty());
    }
}

/// A certificate to find the token key for: its file (None: on the token), the addresses it
/// signs for, its CKA_ID on the token (empty for files), the certificates.
type MatchJob = (
    Option<PathBuf>,
    Vec<String>,
    Vec<u8>,
    Vec<CertificateDer<'static>>,
);

/// Match token keys to certificates (from `for_token` files and from the token itself) and add
/// an identity for each match. A key matches a certificate when a test signature made on the
/// token verifies with the certificate's public key; candidates are the keys with the
/// certificate's CKA_ID (token certificates) or its subjectKeyIdentifier, or labelled with the
/// address, else every key on the token.
fn token_identities(
    token: &Arc<Token>,
    for_token: Vec<(PathBuf, String, Vec<CertificateDer<'static>>)>,
    store: &mut KeyStore,
    problems: &mut Vec<Problem>,
    trust: &TrustAnchors,
    now: SystemTime,
) {
    use cryptoki::object::ObjectClass;
    let where_ = PathBuf::from(format!("token {:?}", token.label));
    let keys = match token.objects(ObjectClass::PRIVATE_KEY) {
        Ok(k) => k,
        Err(e) => {
            problems.push(Problem::new(&where_, e.to_string()));
            return;
        }
    };
    let token_certs = match token.objects(ObjectClass::CERTIFICATE) {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem::new(&where_, e.to_string()));
            Vec::new()
        }
    };
    // Certificates the token holds: leaves become candidates, CA certificates are intermediates
    // for all of them.
    let mut token_cas = Vec::new();
    let mut jobs: Vec<MatchJob> = Vec::new();
    for o in &token_certs {
        let der = CertificateDer::from(o.value.clone());
        match validate::inspect(&der) {
            Ok(i) if i.is_ca => token_cas.push(der),
            Ok(i) => jobs.push((None, i.emails.clone(), o.id.clone(), vec![der])),
            Err(e) => problems.push(Problem::new(
                &where_,
                format!(
                    "certificate CKA_ID {} ({}): {e}",
                    super::hex(&o.id),
                    o.label
                ),
            )),
        }
    }
    for (path, address, certs) in for_token {
        jobs.push((
            Some(path),
            vec![normalize_address(&address)],
            Vec::new(),
            certs,
        ));
    }
    let mut used = std::collections::HashSet::new();
    for (path, addresses, cert_id, mut certs) in jobs {
        certs.extend(token_cas.iter().cloned());
        let place = path.clone().unwrap_or_else(|| where_.clone());
        let leaf = certs
            .iter()
            .filter_map(|d| validate::inspect(d).ok().map(|i| (d, i)))
            .find(|(_, i)| !i.is_ca);
        let Some((_, info)) = leaf else {
            problems.push(Problem::new(&place, "no end-entity certificate"));
            continue;
        };
        let ski = subject_key_id(&certs[0]);
        let mut candidates: Vec<&TokenObject> = keys
            .iter()
            .filter(|k| {
                (!cert_id.is_empty() && k.id == cert_id)
                    || ski.as_ref().is_some_and(|s| *s == k.id)
                    || addresses.iter().any(|a| normalize_address(&k.label) == *a)
            })
            .collect();
        if candidates.is_empty() && path.is_some() {
            candidates = keys.iter().collect();
        }
        let rsa = matches!(info.key, Some(KeyKind::Rsa { .. }));
        // A decryption key need not be allowed to sign (CKA_SIGN false): it is matched by a
        // test decryption instead.
        let decrypt_only = is_encryption_certificate(&info);
        let Some(key) = candidates.into_iter().find(|k| {
            let tk = TokenKey {
                token: token.clone(),
                id: k.id.clone(),
                rsa,
                public: info.public_key.clone(),
            };
            if decrypt_only {
                key_decrypts(&tk, &info.spki_der, rsa)
            } else {
                key_matches(&tk, rsa)
            }
        }) else {
            if path.is_some() || !cert_id.is_empty() {
                problems.push(Problem::new(
                    &place,
                    format!(
                        "no private key on token {:?} matches certificate {}",
                        token.label, info.fingerprint
                    ),
                ));
            }
            continue;
        };
        used.insert(key.id.clone());
        for address in &addresses {
            let tk = Arc::new(TokenKey {
                token: token.clone(),
                id: key.id.clone(),
                rsa,
                public: info.public_key.clone(),
            });
            let source = KeySource::Token {
                label: token.label.clone(),
                id: super::hex(&key.id),
                certificate: path.clone(),
            };
            match SigningIdentity::from_key(
                address,
                tk,
                &info.public_key,
                &certs,
                trust,
                now,
                source,
            ) {
                Ok(id) => store.insert(id),
                Err(reason) => problems.push(Problem::new(&place, reason)),
            }
        }
    }
    for k in keys.iter().filter(|k| !used.contains(&k.id)) {
        problems.push(Problem::new(
            &where_,
            format!(
                "private key CKA_ID {} ({:?}) has no certificate: put it on the token with the same CKA_ID, or <address>.pem in keys.dir",
                super::hex(&k.id),
                k.label
            ),
        ));
    }
}

/// Whether `key` is the private half of its certificate's public key: a test signature over a
/// fixed text must verify (the token key checks every signature). Proves the PIN, the mechanism
/// and the pairing at once.
fn key_matches(key: &TokenKey, rsa: bool) -> bool {
    let scheme = if rsa {
        SignatureScheme::RsaPkcs1Sha256
    } else {
        SignatureScheme::EcdsaP256Sha256
    };
    key.sign(scheme, b"cachet key match").is_ok()
}

/// Whether `key` is the private half of an encryption certificate's public key, by a test
/// decryption: RSA, a random block wrapped in-process with the certificate's key (PKCS#1 v1.5,
/// else OAEP with SHA-1) must come back; EC P-256, the token's ECDH with a fresh ephemeral key must give the shared
/// secret computed in-process from the certificate's point.
fn key_decrypts(key: &TokenKey, spki_der: &[u8], rsa: bool) -> bool {
    use aws_lc_rs::rand::SecureRandom;
    if rsa {
        use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
        let mut probe = [0u8; 32];
        if SystemRandom::new().fill(&mut probe).is_err() {
            return false;
        }
        let Some(public) = PublicEncryptingKey::from_der(spki_der)
            .ok()
            .and_then(|k| Pkcs1PublicEncryptingKey::new(k).ok())
        else {
            return false;
        };
        let mut out = vec![0u8; public.ciphertext_size()];
        let Ok(ct) = public.encrypt(&probe, &mut out) else {
            return false;
        };
        if key
            .decrypt(Decrypt::RsaPkcs1(ct))
            .is_ok_and(|p| p[..] == probe[..])
        {
            return true;
        }
        // A module that refuses PKCS#1 v1.5 decryption (FIPS mode) may still do OAEP.
        use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPublicEncryptingKey};
        let Some(public) = PublicEncryptingKey::from_der(spki_der)
            .ok()
            .and_then(|k| OaepPublicEncryptingKey::new(k).ok())
        else {
            return false;
        };
        let mut out = vec![0u8; public.ciphertext_size()];
        let Ok(ct) = public.encrypt(&OAEP_SHA1_MGF1SHA1, &probe, &mut out, None) else {
            return false;
        };
        key.decrypt(Decrypt::RsaOaep {
            ciphertext: ct,
            hash: OaepHash::Sha1,
        })
        .is_ok_and(|p| p[..] == probe[..])
    } else {
        use aws_lc_rs::agreement::{self, ECDH_P256, UnparsedPublicKey};
        let Ok(eph) = agreement::PrivateKey::generate(&ECDH_P256) else {
            return false;
        };
        let Ok(eph_public) = eph.compute_public_key() else {
            return false;
        };
        let Ok(z) = agreement::agree(
            &eph,
            UnparsedPublicKey::new(&ECDH_P256, &key.public),
            (),
            |z| Ok(Zeroizing::new(z.to_vec())),
        ) else {
            return false;
        };
        key.decrypt(Decrypt::EcdhP256 {
            peer_point: eph_public.as_ref(),
        })
        .is_ok_and(|mine| mine[..] == z[..])
    }
}

/// The subjectKeyIdentifier of a certificate, if it has one (the usual CKA_ID).
pub(crate) fn subject_key_id(der: &[u8]) -> Option<Vec<u8>> {
    use der::Decode;
    use x509_cert::ext::pkix::SubjectKeyIdentifier;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let exts = cert.tbs_certificate().extensions()?;
    exts.iter()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
        .and_then(|e| SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).ok())
        .map(|s| s.0.as_bytes().to_vec())
}

/// The password for the PKCS#12 file at `path`: `<file>.pass` beside it, else the shared
/// `p12_password_file`, else `keys.passphrase_file`; one line, trailing newline dropped. Wiped
/// when dropped. The flag says it came from beside the file.
fn p12_password(
    path: &Path,
    shared: Option<&Path>,
    passphrase: Option<&[u8]>,
) -> Result<(Zeroizing<String>, bool), String> {
    let own = path.with_file_name(format!(
        "{}.pass",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let beside = own.exists();
    let file = if beside {
        own
    } else if let Some(p) = shared {
        p.to_path_buf()
    } else if let Some(pass) = passphrase {
        let text = std::str::from_utf8(pass)
            .map_err(|_| "keys.passphrase_file is not UTF-8".to_string())?;
        return Ok((Zeroizing::new(text.to_string()), false));
    } else {
        return Err(format!(
            "no password: create {}, or set p12_password_file or passphrase_file",
            own.display()
        ));
    };
    let bytes =
        check_private(&file).map_err(|e| format!("password file {}: {e}", file.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("password file {} is not UTF-8", file.display()))?;
    Ok((
        Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_string()),
        beside,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn key_file_bytes_and_p12_passwords_come_wrapped_for_wiping() {
        let dir = tempfile::tempdir().unwrap();
        let key = secret(dir.path(), "a@x.example.p12", "not really pkcs12");
        // The types are the point: both are wiped on drop.
        let bytes: Zeroizing<Vec<u8>> = check_private(&key).unwrap();
        assert_eq!(&bytes[..], b"not really pkcs12");
        secret(dir.path(), "a@x.example.p12.pass", "s3cret\r\n");
        let (pass, beside): (Zeroizing<String>, bool) = p12_password(&key, None, None).unwrap();
        assert!(beside);
        assert_eq!(pass.as_str(), "s3cret");
    }

    #[test]
    fn p12_password_falls_back_to_the_shared_file_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let key = secret(dir.path(), "b@x.example.p12", "");
        let err = p12_password(&key, None, None).unwrap_err();
        assert!(err.contains("b@x.example.p12.pass"), "{err}");
        let shared = secret(dir.path(), "shared", "common\n");
        assert_eq!(
            p12_password(&key, Some(&shared), None).unwrap().0.as_str(),
            "common"
        );
        std::fs::write(&shared, [0xff, 0xfe]).unwrap();
        let err = p12_password(&key, Some(&shared), None).unwrap_err();
        assert!(err.contains("shared is not UTF-8"), "{err}");
    }
}
