//! `cachet demo`: a self-contained gateway on a fresh machine. Creates a throwaway PKI and a config
//! in a local folder (never real secrets), listens on 127.0.0.1:2525 and delivers to DIR/outbox,
//! so the result of every message can be read with `openssl cms`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

fn write(path: &Path, contents: &str, private: bool) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// A CA that signs the demo's server certificate (and, with S/MIME, the demo users).
pub struct DemoCa {
    pub key: KeyPair,
    pub cert: rcgen::Certificate,
    pub params: CertificateParams,
}

pub fn new_ca(name: &str) -> Result<DemoCa, String> {
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok(DemoCa { key, cert, params })
}

/// An RSA-2048 S/MIME end-entity certificate for `email` (SAN rfc822Name, EKU emailProtection):
/// (certificate PEM, private key PEM). Also the in-crate unit tests' PKI.
pub fn smime_leaf(
    ca: &DemoCa,
    email: &str,
    usage: KeyUsagePurpose,
) -> Result<(String, String), String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(DnType::CommonName, email);
    params.subject_alt_names = vec![SanType::Rfc822Name(
        email.try_into().map_err(|e: rcgen::Error| e.to_string())?,
    )];
    params.key_usages = vec![usage];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
    let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes the demo folder (idempotent: an existing config is kept) and returns the config path.
pub fn prepare(dir: &Path, listen: &str, admin: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir.join("outbox")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config = dir.join("cachet.toml");
    if !config.exists() {
        let ca = new_ca("cachet demo CA")?;
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
        let server_key = KeyPair::generate().map_err(|e| e.to_string())?;
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| e.to_string())?;
        let server = params
            .signed_by(&server_key, &issuer)
            .map_err(|e| e.to_string())?;
        write(&dir.join("ca.pem"), &ca.cert.pem(), false)?;
        write(&dir.join("server.crt"), &server.pem(), false)?;
        write(&dir.join("server.key"), &server_key.serialize_pem(), true)?;
        // Alice signs; Bob receives encrypted mail (his private key is here so you can decrypt).
        for sub in ["keys", "recipients"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let (alice_cert, alice_key) =
            smime_leaf(&ca, "alice@demo.test", KeyUsagePurpose::DigitalSignature)?;
        write(
            &dir.join("keys/alice@demo.test.pem"),
            &format!("{alice_key}{alice_cert}"),
            true,
        )?;
        let (bob_cert, bob_key) =
            smime_leaf(&ca, "bob@demo.test", KeyUsagePurpose::KeyEncipherment)?;
        write(&dir.join("recipients/bob@demo.test.crt"), &bob_cert, false)?;
        write(&dir.join("bob.crt"), &bob_cert, false)?;
        write(&dir.join("bob.key"), &bob_key, true)?;
        let toml = format!(
            r#"# cachet demo configuration (generated; throwaway keys, never use in production)
[server]
listen = ["{listen}"]
hostname = "cachet.demo"
relay_networks = ["127.0.0.0/8", "::1/128"]
local_domains = ["demo.test"]
tls_cert = "server.crt"
tls_key = "server.key"

[spool]
dir = "spool"
retry = ["10s", "1m"]

[upstream]
url = "file://outbox"

[keys]
dir = "keys"

[certificates]
dir = "recipients"
trust = ["ca.pem"]

[admin]
listen = "{admin}"
"#
        );
        write(&config, &toml, false)?;
    }
    let port = listen.rsplit(':').next().unwrap_or("2525");
    let d = dir.display();
    eprintln!(
        "cachet demo: config {d}/cachet.toml; relayed mail lands in {d}/outbox/\n\
         send:  swaks --server 127.0.0.1:{port} --tls --tls-ca-path {d}/ca.pem --from alice@demo.test --to bob@demo.test\n\
         or:    python3 -c 'import smtplib; s=smtplib.SMTP(\"127.0.0.1\", {port}); s.sendmail(\"alice@demo.test\", [\"bob@demo.test\"], \"From: alice@demo.test\\r\\nTo: bob@demo.test\\r\\nSubject: hello\\r\\n\\r\\nsigned and encrypted\\r\\n\")'\n\
         read:  openssl cms -decrypt -recip {d}/bob.crt -inkey {d}/bob.key -in {d}/outbox/<file>.eml | openssl cms -verify -CAfile {d}/ca.pem\n"
    );
    Ok(config)
}
