//! `cachet demo`: a self-contained gateway on a fresh machine. Creates a throwaway PKI and a config
//! in a local folder (never real secrets), listens on 127.0.0.1:2525 and delivers to DIR/outbox,
//! so the result of every message can be read with `openssl cms`.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
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

/// Writes the demo folder (idempotent: an existing config is kept) and returns the config path.
pub fn prepare(dir: &Path, listen: &str) -> Result<PathBuf, String> {
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
        let toml = format!(
            r#"# cachet demo configuration (generated; throwaway keys, never use in production)
[server]
listen = ["{listen}"]
hostname = "cachet.demo"
relay_networks = ["127.0.0.0/8", "::1/128"]
tls_cert = "server.crt"
tls_key = "server.key"

[spool]
dir = "spool"
retry = ["10s", "1m"]

[upstream]
url = "file://outbox"

[admin]
listen = "127.0.0.1:9925"
"#
        );
        write(&config, &toml, false)?;
    }
    let port = listen.rsplit(':').next().unwrap_or("2525");
    eprintln!(
        "cachet demo: config {cfg}; relayed mail lands in {out}/\n\
         try:   swaks --server 127.0.0.1:{port} --from alice@demo.test --to bob@demo.test --tls\n\
         then:  ls {out}/ && openssl cms -cmsout -print -in {out}/<file>.eml   (for S/MIME output)\n",
        cfg = config.display(),
        out = dir.join("outbox").display(),
    );
    Ok(config)
}
