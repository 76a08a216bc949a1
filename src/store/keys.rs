//! Signing identities: the `[keys] dir`, one identity per sender address.
//!
//! Files: `<address>.pem` holds the private key (PKCS#8, PKCS#1 RSA or SEC1 EC) and the
//! certificate chain; `<address>.p12` is a PKCS#12 file whose password is in `<address>.p12.pass`
//! or the configured `p12_password_file`. Key files and password files readable by group or
//! others are refused (like ssh does), so a mis-set `chmod` is found by `cachet check`, not by an
//! attacker.
//!
//! The signing certificate must name the address of the file, chain to a trust anchor and be fit
//! for signing ([`validate::check`] with [`Purpose::Sign`]). Further end-entity certificates for
//! the same address in a `.pem` file (or the signing certificate itself when its keyUsage allows it)
//! become the identity's own encryption certificate, announced in SMIMEEncryptionKeyPreference
//! (RFC 8551 §2.5.3) and usable for encrypt-to-self (RFC 8551 §3.3).
//!
//! Secrets: the private key is parsed into aws-lc-rs and kept only behind [`Signer`]; it is never
//! logged, and the [`std::fmt::Debug`] output of an identity omits it. Everything else that held
//! key material is wiped when dropped ([`zeroize`]): the key file bytes, the PKCS#12 password and
//! the decoded private-key DER. aws-lc-rs wipes its own key pairs. Not wiped: the copies the
//! `p12-keystore` crate makes while decrypting a `.p12` (it offers no way to), which is one more
//! reason to prefer the `.pem` form.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::certs::RecipientCert;
use super::validate::{self, CertInfo, Purpose};
use super::{KeyKind, Problem, TrustAnchors, normalize_address};

/// Signature schemes a [`Signer`] may be asked for (RFC 8551 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    RsaPkcs1Sha256,
    RsaPkcs1Sha512,
    RsaPssSha256,
    RsaPssSha512,
    EcdsaP256Sha256,
}

/// A private key that can sign; the one seam where keys could move to another process or an HSM.
pub trait Signer: Send + Sync {
    /// Sign `message` (the DER signed attributes; the scheme hashes it). Returns the raw
    /// signature: PKCS#1/PSS octets for RSA, DER `ECDSA-Sig-Value` for ECDSA.
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// An RSA or P-256 key held in this process by aws-lc-rs.
enum LocalKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl Signer for LocalKey {
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match (self, scheme) {
            (LocalKey::Ec(k), SignatureScheme::EcdsaP256Sha256) => k
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed".to_string()),

            (LocalKey::Rsa(k), scheme) => {
                let pad: &'static dyn signature::RsaEncoding = match scheme {
                    SignatureScheme::RsaPkcs1Sha256 => &signature::RSA_PKCS1_SHA256,
                    SignatureScheme::RsaPkcs1Sha512 => &signature::RSA_PKCS1_SHA512,
                    SignatureScheme::RsaPssSha256 => &signature::RSA_PSS_SHA256,
                    SignatureScheme::RsaPssSha512 => &signature::RSA_PSS_SHA512,
                    SignatureScheme::EcdsaP256Sha256 => {
                        return Err("RSA key cannot do ECDSA".into());
                    }
                };
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(pad, &rng, message, &mut sig)
                    .map_err(|_| "RSA signing failed".to_string())?;
                Ok(sig)
            }
            (LocalKey::Ec(_), _) => Err("EC key can only do ECDSA".into()),
        }
    }
}

/// A sender that can sign: certificate chain plus a handle to the private key.
pub struct SigningIdentity {
    /// The address this identity signs for, from the file name, lower-cased
    /// ([`normalize_address`]): `Alice@Example.org.pem` signs for `alice@example.org`.
    pub email: String,
    /// Signer certificate first, then the intermediates from the key file; all go into the
    /// SignedData `certificates` so recipients can build the path (RFC 8551 §2.4.2).
    pub chain: Vec<CertificateDer<'static>>,
    /// SHA-256 of the signer certificate, lower-case hex.
    pub fingerprint: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Decides the signature algorithm (RSA PKCS#1/PSS or ECDSA P-256).
    pub key: KeyKind,
    /// The sender's own encryption certificate, if it has one: announced in
    /// SMIMEEncryptionKeyPreference and usable for encrypt-to-self.
    pub encryption_cert: Option<Arc<RecipientCert>>,
    signer: Arc<dyn Signer>,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("email", &self.email)
            .field("fingerprint", &self.fingerprint)
            .field("key", &self.key)
            .field("chain_len", &self.chain.len())
            .field(
                "encryption_cert",
                &self.encryption_cert.as_ref().map(|c| &c.fingerprint),
            )
            .finish_non_exhaustive()
    }
}

impl SigningIdentity {
    /// Sign with the identity's private key.
    pub fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, String> {
        self.signer.sign(scheme, message)
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
        // Wiped on drop, on every path out of here: only aws-lc-rs keeps the key.
        let key = Zeroizing::new(
            PrivateKeyDer::from_pem_slice(pem)
                .map_err(|e| format!("no usable private key: {e}"))?,
        );
        let certs = super::parse_certificates(pem)?;
        Self::from_parts(address, key.secret_der(), &certs, trust, now)
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
        let address = normalize_address(address);
        let key = parse_private_key(key_der)?;
        let public = match &key {
            LocalKey::Rsa(k) => k.public_key().as_ref().to_vec(),
            LocalKey::Ec(k) => k.public_key().as_ref().to_vec(),
        };
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
        let kind = validate::check(cert, info, &intermediates, trust, now, Purpose::Sign)
            .map_err(|reason| format!("signing certificate {}: {reason}", info.fingerprint))?;
        let encryption_cert = own_encryption_cert(&address, &infos, &intermediates, trust, now);
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
            signer: Arc::new(key),
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

/// Signing identities by sender address; immutable once loaded, shared by `Arc`.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_address: HashMap<String, Arc<SigningIdentity>>,
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
        for path in paths {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let (address, is_p12) = if let Some(a) = name.strip_suffix(".pem") {
                (a, false)
            } else if let Some(a) = name.strip_suffix(".p12") {
                (a, true)
            } else {
                continue;
            };
            if !address.contains('@') {
                problems.push(Problem::new(
                    &path,
                    "file name must be <address>.pem or <address>.p12",
                ));
                continue;
            }
            let loaded = check_private(&path).and_then(|bytes| {
                if is_p12 {
                    let pass = p12_password(&path, p12_password_file)?;
                    SigningIdentity::from_p12(address, &bytes, &pass, trust, now)
                } else {
                    SigningIdentity::from_pem(address, &bytes, trust, now)
                }
            });
            match loaded {
                Ok(id) => {
                    if store.by_address.contains_key(&id.email) {
                        problems.push(Problem::new(
                            &path,
                            format!("second identity for {}, ignored", id.email),
                        ));
                    } else {
                        store.by_address.insert(id.email.clone(), Arc::new(id));
                    }
                }
                Err(reason) => problems.push(Problem::new(&path, reason)),
            }
        }
        (store, problems)
    }

    /// The identity for a sender address (case-insensitive, see [`normalize_address`]).
    pub fn get(&self, address: &str) -> Option<Arc<SigningIdentity>> {
        self.by_address.get(&normalize_address(address)).cloned()
    }

    /// All identities, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<SigningIdentity>> {
        self.by_address.values()
    }

    /// Add an identity built in memory (tools, tests); replaces one for the same address.
    pub fn insert(&mut self, id: SigningIdentity) {
        self.by_address.insert(id.email.clone(), Arc::new(id));
    }

    /// Keep only the identities `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&SigningIdentity) -> bool) {
        self.by_address.retain(|_, id| keep(id));
    }
}

/// The password for the PKCS#12 file at `path`: `<file>.pass` beside it, else the shared
/// `p12_password_file`; one line, trailing newline dropped. Wiped when dropped.
fn p12_password(path: &Path, shared: Option<&Path>) -> Result<Zeroizing<String>, String> {
    let own = path.with_file_name(format!(
        "{}.pass",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let file = if own.exists() {
        own
    } else if let Some(p) = shared {
        p.to_path_buf()
    } else {
        return Err(format!(
            "no password: create {} or set p12_password_file",
            own.display()
        ));
    };
    let bytes =
        check_private(&file).map_err(|e| format!("password file {}: {e}", file.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("password file {} is not UTF-8", file.display()))?;
    Ok(Zeroizing::new(
        text.trim_end_matches(['\r', '\n']).to_string(),
    ))
}

/// Read a secret file, refusing it when group or others may read it (mode & 077). The bytes are
/// wiped when the caller drops them.
fn check_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "readable or writable by group/others (mode {mode:03o}); refusing it, run chmod 600"
            ));
        }
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| format!("cannot read: {e}"))
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
        let pass: Zeroizing<String> = p12_password(&key, None).unwrap();
        assert_eq!(pass.as_str(), "s3cret");
    }

    #[test]
    fn p12_password_falls_back_to_the_shared_file_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let key = secret(dir.path(), "b@x.example.p12", "");
        let err = p12_password(&key, None).unwrap_err();
        assert!(err.contains("b@x.example.p12.pass"), "{err}");
        let shared = secret(dir.path(), "shared", "common\n");
        assert_eq!(
            p12_password(&key, Some(&shared)).unwrap().as_str(),
            "common"
        );
        std::fs::write(&shared, [0xff, 0xfe]).unwrap();
        let err = p12_password(&key, Some(&shared)).unwrap_err();
        assert!(err.contains("shared is not UTF-8"), "{err}");
    }
}
