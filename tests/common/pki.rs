//! Test PKI: a throwaway CA and a `localhost` / 127.0.0.1 server certificate, generated with rcgen and written
//! as PEM files into a temp dir (`ca.pem`, `server.crt`, `server.key`). Nothing here is ever committed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// The one crypto provider of the project (aws-lc-rs), passed explicitly so no process default is needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A leaf certificate and its key, as PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

/// A CA plus one server leaf for `localhost` and `127.0.0.1`, with PEM files in a private temp dir.
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// PEM of the CA certificate (the trust anchor to hand to clients).
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    /// The server leaf, signed by the CA.
    pub server: Leaf,
}

impl TestPki {
    /// A fresh CA named `common_name` and a server leaf for `localhost` + `127.0.0.1`.
    pub fn new(common_name: &str) -> TestPki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "cachet tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign ca");
        let ca_pem = issuer.pem();
        let ca_der = issuer.der().clone();
        let dir = tempfile::Builder::new()
            .prefix("cachet-pki-")
            .tempdir()
            .expect("pki tempdir");
        let mut pki = TestPki {
            dir,
            issuer,
            ca_pem,
            ca_der,
            server: Leaf {
                cert_pem: String::new(),
                key_pem: String::new(),
                cert_der: CertificateDer::from(Vec::new()),
                key_der: Vec::new(),
            },
        };
        pki.server = pki.issue_server(&["localhost", "127.0.0.1"]);
        std::fs::write(pki.ca_path(), &pki.ca_pem).expect("write ca.pem");
        std::fs::write(pki.cert_path(), &pki.server.cert_pem).expect("write server.crt");
        std::fs::write(pki.key_path(), &pki.server.key_pem).expect("write server.key");
        pki
    }

    /// Issue another server leaf from this CA for the given DNS names / IP addresses.
    pub fn issue_server(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// The temp dir holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// `ca.pem`: the CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    /// `server.crt`: the server leaf certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }
    /// `server.key`: the server leaf key (PKCS#8).
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// A rustls server config presenting the server leaf.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        server_config_for(&self.server)
    }

    /// A rustls client config trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config_from_pem(self.ca_pem.as_bytes())
    }
}

/// A rustls server config presenting `leaf`.
pub fn server_config_for(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone()));
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.cert_der.clone()], key)
        .expect("server cert");
    Arc::new(config)
}

/// A rustls client config trusting exactly the certificates in `ca_pem` (PEM bytes).
pub fn client_config_from_pem(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("parse CA PEM")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A rustls client config trusting exactly the certificates in the PEM file at `ca_path`.
pub fn client_config_from_file(ca_path: &Path) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(ca_path).unwrap_or_else(|e| panic!("read {}: {e}", ca_path.display()));
    client_config_from_pem(&pem)
}

/// `localhost` -> DNS name, `127.0.0.1` -> IP address, as rustls wants it.
pub fn server_name(name: &str) -> ServerName<'static> {
    match name.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(name.to_string()).expect("valid DNS name"),
    }
}
