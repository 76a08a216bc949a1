//! `cachet keys list` and `cachet keys import FILE`: the operator's view of the organisation's
//! keys (signing identities and decryption keys).
//!
//! `list` prints every key loaded (address, algorithm, where the key lives, certificate expiry,
//! its use: `sign`, `sign (standby ...)` when a newer certificate signs for the address, or
//! `decrypt`). `import` takes a private key with its certificate (PEM, encrypted PEM or
//! PKCS#12), checks it like the key store would, and puts it into the token when
//! `[keys.pkcs11]` is configured (private key CKA_SENSITIVE, never extractable, CKA_SIGN only for
//! a signing key, CKA_ID = the certificate's subjectKeyIdentifier or SHA-1 of its public key,
//! CKA_LABEL = the address; certificates beside it) or into `keys.dir` otherwise (mode 0600,
//! never overwriting: a second certificate for an address becomes `<address>+<fingerprint>.pem`).
//!
//! Secrets: the key is decrypted into [`Zeroizing`] buffers only; passwords come from files.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::keys::{KeySource, KeyUse, SigningIdentity};
use super::pkcs11::{ImportKey, import_templates};
use super::{KeyKind, TrustAnchors, keyfile, validate};
use crate::config::Config;
use crate::runtime::Stores;

/// `cachet keys list`: one line per key (signing identities and decryption keys, each with its
/// use), and the load problems after them.
pub fn list(config: &Config) -> (String, Vec<String>) {
    let (stores, errors) = Stores::load(config);
    let mut out = String::new();
    let keys = &stores.keys;
    for id in keys.all() {
        let active = keys
            .get(&id.email)
            .is_some_and(|a| a.fingerprint == id.fingerprint);
        let usage = match (id.usage, active) {
            (KeyUse::Decrypt, _) => "decrypt (inbound mail only, never signs)",
            (KeyUse::Sign, true) => "sign",
            (KeyUse::Sign, false) => "sign (standby: a newer certificate signs)",
        };
        out.push_str(&format!(
            "{}  {}  expires {}  {}  {}  {usage}\n",
            id.email,
            algorithm(id.key),
            crate::date::rfc3339(id.not_after),
            id.source,
            &id.fingerprint[..16],
        ));
    }
    let mut problems: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    problems.extend(stores.warnings.iter().map(|w| format!("warning: {w}")));
    (out, problems)
}

pub fn algorithm(k: KeyKind) -> String {
    match k {
        KeyKind::Rsa { bits } => format!("RSA-{bits}"),
        KeyKind::EcP256 => "EC-P256".into(),
    }
}

/// `cachet check`'s list: every address with a usable key and where the key lives; then the
/// decryption keys.
pub fn check_lines(stores: &Stores) -> Vec<String> {
    let signing = stores.keys.iter().map(|id| {
        format!(
            "key {}: {} in {}, certificate {} valid until {}",
            id.email,
            algorithm(id.key),
            id.source,
            &id.fingerprint[..16],
            crate::date::rfc3339(id.not_after)
        )
    });
    let decryption = stores.keys.decryption_keys().into_iter().map(|id| {
        format!(
            "decryption key {}: {} in {}, encryption certificate {} valid until {}",
            id.email,
            algorithm(id.key),
            id.source,
            &id.fingerprint[..16],
            crate::date::rfc3339(id.not_after)
        )
    });
    signing.chain(decryption).collect()
}

/// A key file read for import: private key DER (PKCS#8 or PKCS#1/SEC1) and certificates.
struct Material {
    key: Zeroizing<Vec<u8>>,
    certs: Vec<CertificateDer<'static>>,
    /// The bytes to write into keys.dir (the file as given).
    original: Zeroizing<Vec<u8>>,
    p12: bool,
}

fn read_material(file: &Path, password: Option<&[u8]>) -> Result<Material, String> {
    let bytes =
        Zeroizing::new(std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?);
    let name = file.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".p12") || name.ends_with(".pfx") {
        let pass = std::str::from_utf8(password.unwrap_or_default())
            .map_err(|_| "the password is not UTF-8".to_string())?;
        let ks = p12_keystore::KeyStore::from_pkcs12(&bytes, pass)
            .map_err(|e| format!("cannot open PKCS#12 (wrong password?): {e}"))?;
        let (_, chain) = ks
            .private_key_chain()
            .ok_or("PKCS#12 holds no private key")?;
        return Ok(Material {
            key: Zeroizing::new(chain.key().to_vec()),
            certs: chain
                .chain()
                .iter()
                .map(|c| CertificateDer::from(c.as_der().to_vec()))
                .collect(),
            original: bytes,
            p12: true,
        });
    }
    let certs = super::parse_certificates(&bytes)?;
    let key = match keyfile::encrypted_pem(&bytes)? {
        Some(der) => keyfile::decrypt_pkcs8(
            &der,
            password
                .ok_or("the key is encrypted: give --password-file or set keys.passphrase_file")?,
        )?,
        None => Zeroizing::new(
            PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| format!("no private key in {}: {e}", file.display()))?
                .secret_der()
                .to_vec(),
        ),
    };
    Ok(Material {
        key,
        certs,
        original: bytes,
        p12: false,
    })
}

/// The address the material is for: the first rfc822Name of its end-entity certificate that
/// validates as a signing identity (or, for an encryption certificate, a decryption key).
fn validate(m: &Material, trust: &TrustAnchors) -> Result<SigningIdentity, String> {
    let mut emails = Vec::new();
    for c in &m.certs {
        let i = validate::inspect(c)?;
        if !i.is_ca {
            emails.extend(i.emails);
        }
    }
    let mut last = "no end-entity certificate with an rfc822Name in the file".to_string();
    for e in emails {
        // The same check as a key file in keys.dir, so an import that succeeds also loads.
        let mut pem = String::new();
        for c in &m.certs {
            pem.push_str(&pem_cert(c));
        }
        let key_pem = Zeroizing::new(pem_block("PRIVATE KEY", &pkcs8_of(&m.key)?));
        match SigningIdentity::from_pem(
            &e,
            format!("{}{pem}", key_pem.as_str()).as_bytes(),
            trust,
            SystemTime::now(),
        ) {
            Ok(id) => return Ok(id),
            Err(r) => last = r,
        }
    }
    Err(last)
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

fn pem_cert(c: &CertificateDer<'_>) -> String {
    pem_block("CERTIFICATE", c)
}

/// PKCS#8 for any key form we read (PKCS#1 RSA and SEC1 EC are re-encoded by aws-lc-rs).
fn pkcs8_of(der: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, RsaKeyPair};
    if let Ok(k) = RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der)) {
        let d = k.as_der().map_err(|_| "cannot encode the RSA key")?;
        return Ok(Zeroizing::new(d.as_ref().to_vec()));
    }
    let alg = &ECDSA_P256_SHA256_ASN1_SIGNING;
    if let Ok(k) =
        EcdsaKeyPair::from_pkcs8(alg, der).or_else(|_| EcdsaKeyPair::from_private_key_der(alg, der))
    {
        let d = k.to_pkcs8v1().map_err(|_| "cannot encode the EC key")?;
        return Ok(Zeroizing::new(d.as_ref().to_vec()));
    }
    Err("private key is neither RSA nor EC P-256 (or is malformed)".into())
}

/// The key's components for C_CreateObject.
fn import_key(der: &[u8]) -> Result<ImportKey, String> {
    use aws_lc_rs::encoding::AsBigEndian;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    use der::Decode;
    let pkcs8 = pkcs8_of(der)?;
    let info = pkcs8::PrivateKeyInfoRef::from_der(&pkcs8).map_err(|e| format!("PKCS#8: {e}"))?;
    if let Ok(k) = pkcs1::RsaPrivateKeyRef::from_der(info.private_key.as_bytes()) {
        let z = |u: der::asn1::UintRef<'_>| Zeroizing::new(u.as_bytes().to_vec());
        return Ok(ImportKey::Rsa {
            n: z(k.modulus),
            e: z(k.public_exponent),
            d: z(k.private_exponent),
            p: z(k.prime1),
            q: z(k.prime2),
            dp: z(k.exponent1),
            dq: z(k.exponent2),
            qinv: z(k.coefficient),
        });
    }
    let k = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8)
        .map_err(|_| "private key is neither RSA nor EC P-256")?;
    let scalar = k
        .private_key()
        .as_be_bytes()
        .map_err(|_| "cannot read the EC key")?;
    Ok(ImportKey::EcP256 {
        scalar: Zeroizing::new(scalar.as_ref().to_vec()),
    })
}

/// `cachet keys import FILE`: into the token when configured, else into keys.dir. Returns what
/// was done, in one line.
pub fn import(
    config: &Config,
    file: &Path,
    password_file: Option<&Path>,
) -> Result<String, String> {
    let keys = config
        .keys
        .as_ref()
        .ok_or("no [keys] section in the configuration")?;
    let password = match password_file.or(keys.passphrase_file.as_deref()) {
        Some(p) => Some(keyfile::read_passphrase(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let m = read_material(file, password.as_deref().map(|v| &v[..]))?;
    let (trust, _) = TrustAnchors::load(
        &config
            .certificates
            .as_ref()
            .map(|c| c.trust.clone())
            .unwrap_or_default(),
    );
    let id = validate(&m, &trust).map_err(|e| format!("{}: {e}", file.display()))?;
    let kind = match id.usage {
        KeyUse::Sign => "",
        KeyUse::Decrypt => ", decryption key",
    };
    if !config.submitters.is_local(&id.email) {
        return Err(format!(
            "{} is not in server.local_domains: cachet holds keys only for the organisation's own addresses",
            id.email
        ));
    }
    if keys.pkcs11.is_some() {
        let (sources, errors) = crate::runtime::key_sources(config, keys);
        let token = sources.token.ok_or_else(|| {
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let leaf = id.certificate();
        let cka_id = super::keys::subject_key_id(leaf).unwrap_or_else(|| {
            let info = validate::inspect(leaf)
                .map(|i| i.public_key)
                .unwrap_or_default();
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &info)
                .as_ref()
                .to_vec()
        });
        if token.has_key(&cka_id).map_err(|e| e.to_string())? {
            return Err(format!(
                "token {:?} already holds a key with CKA_ID {}",
                token.label,
                super::hex(&cka_id)
            ));
        }
        let key = import_key(&m.key)?;
        let mut certs = Vec::new();
        for c in &id.chain {
            certs.push((c.to_vec(), subject_der(c)?));
        }
        token
            .create(&import_templates(
                &key,
                &cka_id,
                &id.email,
                &certs,
                id.usage == KeyUse::Sign,
            ))
            .map_err(|e| e.to_string())?;
        return Ok(format!(
            "imported {} ({}{}, certificate {}) into token {:?} as CKA_ID {}; {} is no longer needed: remove it (shred -u)",
            id.email,
            algorithm(id.key),
            kind,
            &id.fingerprint[..16],
            token.label,
            super::hex(&cka_id),
            file.display()
        ));
    }
    // Into keys.dir, as the file was given (plain, encrypted or PKCS#12), never overwriting.
    let ext = if m.p12 { "p12" } else { "pem" };
    let mut target = keys.dir.join(format!("{}.{ext}", id.email));
    if target.exists() {
        target = keys
            .dir
            .join(format!("{}+{}.{ext}", id.email, &id.fingerprint[..16]));
    }
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(|e| format!("{}: {e}", target.display()))?
    };
    f.write_all(&m.original)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", target.display()))?;
    let source = if m.p12 {
        KeySource::File(target.clone())
    } else if keyfile::encrypted_pem(&m.original)?.is_some() {
        KeySource::EncryptedFile(target.clone())
    } else {
        KeySource::File(target.clone())
    };
    Ok(format!(
        "imported {} ({}{}, certificate {}) as {source}; reload cachet (SIGHUP) to use it",
        id.email,
        algorithm(id.key),
        kind,
        &id.fingerprint[..16],
    ))
}

/// DER of the certificate's subject Name (CKA_SUBJECT).
fn subject_der(c: &CertificateDer<'_>) -> Result<Vec<u8>, String> {
    use der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(c).map_err(|e| format!("certificate: {e}"))?;
    cert.tbs_certificate()
        .subject()
        .to_der()
        .map_err(|e| format!("certificate subject: {e}"))
}
