//! The loaded world every stage reads: validated config, policy, key and certificate stores
//! ([`Stores`]) and the inbound TLS acceptor. Built whole by [`Runtime::load`]; a reload builds a new one and
//! swaps it in atomically, so sessions in flight finish on the one they started with.

use crate::config::{Config, ConfigError};
use crate::store::revocation::{Revocation, Status, refresh::Target};
use crate::store::{CertStore, KeyStore, SigningIdentity, TrustAnchors};
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_rustls::TlsAcceptor;

pub struct Runtime {
    pub config: Config,
    pub stores: Stores,
    /// Present when `server.tls_cert`/`tls_key` are set: STARTTLS is offered, SMTPS possible.
    pub tls: Option<TlsAcceptor>,
    /// `server.tls_client_ca`: what TLS client certificates matched by issuer and subject must
    /// chain to.
    pub tls_client_anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    /// The upstream client (its connection pool lives as long as this runtime).
    pub relay: crate::relay::Relay,
    /// `[inbound] upstream`: the internal mail server inbound mail is relayed to; its own pool,
    /// swapped with the outbound one on reload. `None` without `[inbound]`.
    pub inbound_relay: Option<crate::relay::Relay>,
    /// `server.auth_users`: who may relay after AUTH.
    pub users: Option<crate::users::Users>,
    /// `log.audit_file`, opened for appending.
    pub audit: Option<crate::audit::Audit>,
}

impl Runtime {
    /// Loads and checks everything the config refers to. Every problem is returned, so
    /// `cachet check` and a failed reload can list them all.
    pub fn load(path: &Path) -> Result<Runtime, Vec<ConfigError>> {
        let config = Config::load(path)?;
        let mut errors = Vec::new();
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => match crate::tls::tls_acceptor(
                cert,
                key,
                config
                    .submitters
                    .entries
                    .iter()
                    .any(|e| e.tls_client.is_some()),
            ) {
                Ok(a) => Some(a),
                Err(e) => {
                    errors.push(ConfigError {
                        file: path.to_path_buf(),
                        line: None,
                        key: "server.tls_cert".into(),
                        message: e,
                    });
                    None
                }
            },
            _ => None,
        };
        if let Some(ca) = &config.upstream.ca_file
            && let Err(e) = crate::relay::tls::load_ca_file(ca)
        {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: "upstream.ca_file".into(),
                message: e,
            });
        }
        let relay = crate::relay::Relay::new(&config.upstream).map_err(|message| {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: "upstream".into(),
                message,
            })
        });
        let mut inbound_relay = None;
        if let Some(inbound) = &config.inbound {
            if let Some(ca) = &inbound.upstream.ca_file
                && let Err(e) = crate::relay::tls::load_ca_file(ca)
            {
                errors.push(ConfigError {
                    file: path.to_path_buf(),
                    line: None,
                    key: "inbound.ca_file".into(),
                    message: e,
                });
            }
            match crate::relay::Relay::new(&inbound.upstream) {
                Ok(r) => inbound_relay = Some(r),
                Err(message) => errors.push(ConfigError {
                    file: path.to_path_buf(),
                    line: None,
                    key: "inbound.upstream".into(),
                    message,
                }),
            }
        }
        let users = match &config.server.auth_users {
            Some(path) => crate::users::Users::load(path)
                .map(Some)
                .unwrap_or_else(|problems| {
                    errors.extend(problems.into_iter().map(|p| ConfigError {
                        file: path.to_path_buf(),
                        line: p.line,
                        key: "server.auth_users".into(),
                        message: p.message,
                    }));
                    None
                }),
            None => None,
        };
        let audit = match &config.log.audit_file {
            Some(path) => crate::audit::Audit::open(path)
                .map(Some)
                .unwrap_or_else(|message| {
                    errors.push(ConfigError {
                        file: path.to_path_buf(),
                        line: None,
                        key: "log.audit_file".into(),
                        message,
                    });
                    None
                }),
            None => None,
        };
        let mut tls_client_anchors = Vec::new();
        if let Some(ca) = &config.server.tls_client_ca {
            let (anchors, problems) = crate::store::TrustAnchors::load(std::slice::from_ref(ca));
            errors.extend(problems.into_iter().map(|p| ConfigError {
                file: p.path,
                line: None,
                key: "server.tls_client_ca".into(),
                message: p.reason,
            }));
            tls_client_anchors = anchors.anchors;
        }
        let (stores, problems) = Stores::load(&config);
        errors.extend(problems);
        match relay {
            Ok(relay) if errors.is_empty() => Ok(Runtime {
                config,
                stores,
                tls,
                tls_client_anchors,
                relay,
                inbound_relay,
                users,
                audit,
            }),
            _ => Err(errors),
        }
    }

    pub fn shared(self) -> Arc<Runtime> {
        Arc::new(self)
    }
}

/// What `[keys]` points at, opened: the passphrase (read once, wiped when the load ends) and the
/// token (logged in). Failures are configuration errors naming the key.
pub fn key_sources(
    config: &Config,
    k: &crate::config::KeysConfig,
) -> (crate::store::keys::KeySources, Vec<ConfigError>) {
    use crate::store::keys::KeySources;
    let mut errors = Vec::new();
    let mut sources = KeySources {
        dir: k.dir.clone(),
        p12_password_file: k.p12_password_file.clone(),
        token_expected: k.pkcs11.is_some(),
        ..Default::default()
    };
    if let Some(p) = &k.passphrase_file {
        match crate::store::keyfile::read_passphrase(p) {
            Ok(v) => sources.passphrase = Some(v),
            Err(message) => errors.push(ConfigError {
                file: p.clone(),
                line: None,
                key: "keys.passphrase_file".into(),
                message,
            }),
        }
    }
    if let Some(t) = &k.pkcs11 {
        let opened = crate::store::keyfile::read_passphrase(&t.pin_file)
            .map_err(|e| format!("PIN file {}: {e}", t.pin_file.display()))
            .and_then(|pin| {
                crate::store::pkcs11::Token::open(&crate::store::pkcs11::TokenConfig {
                    module: t.module.clone(),
                    label: t.token.clone(),
                    pin: zeroize::Zeroizing::new(String::from_utf8_lossy(&pin).into_owned()),
                    sessions: t.sessions,
                })
            });
        match opened {
            Ok(token) => sources.token = Some(token),
            Err(message) => errors.push(ConfigError {
                file: config.path.clone(),
                line: None,
                key: "keys.pkcs11".into(),
                // Every message names the token, the module or the PIN file already.
                message: format!("{message}; keys on it cannot be used"),
            }),
        }
    }
    (sources, errors)
}

/// Recipient certificates handed to the revocation refresher at start, most recently seen
/// first; the others join when a lookup first asks about them.
pub const REVOCATION_PRELOAD: usize = 10_000;

/// Signing keys and recipient certificates, loaded at start and on reload; recipient
/// certificates are read from the certificate database (an indexed query per lookup).
#[derive(Default)]
pub struct Stores {
    pub trust: TrustAnchors,
    pub keys: KeyStore,
    pub certs: CertStore,
    /// `[[directory]]`: certificates from LDAP, fetched by `prefetch`, read from its cache.
    pub directory: crate::store::directory::Directory,
    /// Problems with individual keys or certificates: reported by `check` and at load, and
    /// those files are never used, but they do not stop the gateway.
    pub warnings: Vec<String>,
    /// CRLs and OCSP answers in memory; `app` hands the same one to every reloaded runtime and
    /// to the background refresher.
    pub revocation: Arc<Revocation>,
}

impl Stores {
    /// Loads the configured stores. Unreadable trust anchors are errors (nothing could validate);
    /// a bad key or certificate file is a warning.
    pub fn load(config: &Config) -> (Stores, Vec<ConfigError>) {
        let now = SystemTime::now();
        let mut errors = Vec::new();
        let mut stores = Stores::default();
        let err = |key: &str, p: crate::store::Problem| ConfigError {
            file: p.path,
            line: None,
            key: key.into(),
            message: p.reason,
        };
        if let Some(c) = &config.certificates {
            let (trust, problems) = TrustAnchors::load(&c.trust);
            errors.extend(problems.into_iter().map(|p| err("certificates.trust", p)));
            stores.trust = trust;
            // The database is opened (and the directory synced into it) by every load: the
            // old runtime's store holds only its few connections and intermediates, so a
            // reload does not double memory.
            match CertStore::open(&c.store, Some(&c.dir), &stores.trust, now) {
                Ok((certs, problems)) => {
                    stores
                        .warnings
                        .extend(problems.iter().map(|p| p.to_string()));
                    stores.certs = certs;
                }
                Err(p) => errors.push(err("certificates.store", p)),
            }
            if let Some(dir) = &c.crl_dir {
                let problems = stores.revocation.load_dir(dir);
                stores
                    .warnings
                    .extend(problems.iter().map(|p| p.to_string()));
            }
        }
        if let Some(k) = &config.keys {
            let (sources, mut source_errors) = key_sources(config, k);
            let token_down =
                config.keys.as_ref().is_some_and(|k| k.pkcs11.is_some()) && sources.token.is_none();
            errors.append(&mut source_errors);
            let (mut keys, problems) = KeyStore::load_with(&sources, &stores.trust, now);
            // Only the organisation signs as the organisation: a key for another domain is a
            // configuration error, never silently unused.
            for id in keys.all() {
                if !config.submitters.is_local(&id.email) {
                    errors.push(ConfigError {
                        file: k.dir.clone(),
                        line: None,
                        key: "keys.dir".into(),
                        message: format!(
                            "{} key for {} ({}): its domain is not in server.local_domains; cachet holds keys only for the organisation's own addresses",
                            match id.usage {
                                crate::store::keys::KeyUse::Sign => "signing",
                                crate::store::keys::KeyUse::Decrypt => "decryption",
                            },
                            id.email,
                            id.fingerprint
                        ),
                    });
                }
            }
            for p in problems {
                // A key file others can read is a configuration error, not a skipped file; so is
                // a key that should be on a token we could not open, and an encrypted key the
                // configured passphrase does not open.
                let encrypted = p.reason.contains("cannot decrypt the private key")
                    || p.reason.contains("the private key is encrypted");
                if p.reason.contains("readable")
                    || encrypted
                    || (token_down && p.reason.contains("token"))
                {
                    errors.push(err("keys.dir", p));
                } else {
                    stores.warnings.push(p.to_string());
                }
            }
            // Plain key files beside a token or a passphrase: the operator meant to protect keys.
            if k.pkcs11.is_some() || k.passphrase_file.is_some() {
                for id in keys.all() {
                    if let crate::store::keys::KeySource::File(path) = &id.source {
                        stores.warnings.push(format!(
                            "{}: plain private key for {} although {} is configured: import it into the token (cachet keys import) or encrypt it (openssl pkcs8 -topk8 -v2 aes-256-cbc)",
                            path.display(),
                            id.email,
                            if k.pkcs11.is_some() { "[keys.pkcs11]" } else { "keys.passphrase_file" }
                        ));
                    }
                }
            }
            // ... and never in the store, so no decision can pick it (`pipeline::decide`
            // relies on this).
            keys.retain(|id| config.submitters.is_local(&id.email));
            stores.keys = keys;
        }
        match crate::store::directory::Directory::new(&config.directories) {
            Ok(d) => stores.directory = d,
            Err(problems) => {
                errors.extend(problems.into_iter().map(|(i, key, message)| ConfigError {
                    file: config.path.clone(),
                    line: None,
                    key: format!("directory #{}: {key}", i + 1),
                    message,
                }))
            }
        }
        (stores, errors)
    }

    /// The certificate to encrypt to `address` at `now`: the certificate files first, then
    /// what the directories answered (their cache only: call [`Stores::prefetch`] first).
    pub fn lookup(&self, address: &str, now: SystemTime) -> crate::store::CertLookup {
        self.lookup_with(address, now, &|_, _| Ok(()))
    }

    /// [`Stores::lookup`] with one more test (revocation) for each file or directory
    /// certificate that is otherwise valid; see [`crate::store::directory::Accept`].
    pub fn lookup_with(
        &self,
        address: &str,
        now: SystemTime,
        accept: &crate::store::directory::Accept<'_>,
    ) -> crate::store::CertLookup {
        let mut out = self.certs.lookup_with(address, now, accept);
        if out.cert.is_none() {
            self.directory
                .lookup_into(address, &self.certs, now, accept, &mut out);
        }
        out
    }

    /// Ask the directories about `addresses` (those without a usable certificate file) unless
    /// their answers are cached; bounded by the directories' timeouts.
    pub async fn prefetch(&self, addresses: &[String], metrics: &crate::metrics::Metrics) {
        self.directory
            .prefetch(addresses, &self.certs, metrics)
            .await;
    }

    /// The signing identity for the From: address, if valid now.
    pub fn signer(&self, from: &str) -> Option<Arc<SigningIdentity>> {
        self.signer_at(from, SystemTime::now())
    }

    /// The signing identity for the From: address, if its certificate is valid at `now`.
    pub fn signer_at(&self, from: &str, now: SystemTime) -> Option<Arc<SigningIdentity>> {
        self.keys
            .get_at(from, now)
            .filter(|id| id.not_before <= now && now < id.not_after)
    }

    /// The revocation status of signing identity `id`'s certificate, from memory.
    pub fn signer_status(&self, id: &SigningIdentity) -> Status {
        let mut chain: Vec<CertificateDer<'_>> = id.chain.iter().skip(1).cloned().collect();
        chain.extend(self.certs.intermediates().iter().cloned());
        self.revocation
            .status(id.certificate(), &chain, &self.trust, SystemTime::now())
    }

    /// Every certificate whose revocation status may be asked (recipients, their intermediates,
    /// signing certificates and their chains), each with its issuer when one is loaded.
    pub fn revocation_targets(&self) -> Vec<Target> {
        // Certificates a decision asked about that the stores do not list (directory answers).
        let wanted = self.revocation.wanted();
        let ids: Vec<_> = self.keys.iter().collect();
        let mut cas: Vec<&CertificateDer<'static>> = self.certs.intermediates().iter().collect();
        for id in &ids {
            cas.extend(id.chain.iter().skip(1));
        }
        for (_, chain) in &wanted {
            cas.extend(chain.iter());
        }
        cas.extend(self.trust.certs.iter());
        let issuer_of = |der: &CertificateDer<'static>| -> Option<CertificateDer<'static>> {
            use der::{Decode, Encode};
            let cert = x509_cert::Certificate::from_der(der).ok()?;
            let want = cert.tbs_certificate().issuer().to_der().ok()?;
            cas.iter()
                .find(|ca| {
                    x509_cert::Certificate::from_der(ca).is_ok_and(|c| {
                        c.tbs_certificate()
                            .subject()
                            .to_der()
                            .is_ok_and(|s| s == want)
                    })
                })
                .map(|ca| (*ca).clone())
        };
        // Recipient certificates: the most recently seen ones; any other is added when a
        // lookup asks for its status (`Revocation::wanted`).
        let recent = self.certs.recent_certificates(REVOCATION_PRELOAD);
        let mut ders: Vec<(&CertificateDer<'static>, bool)> =
            recent.iter().map(|d| (d, true)).collect();
        ders.extend(self.certs.intermediates().iter().map(|d| (d, false)));
        for id in &ids {
            ders.extend(id.chain.iter().enumerate().map(|(i, d)| (d, i == 0)));
            // The sender's own encryption certificate (encrypt_to_self).
            if let Some(own) = &id.encryption_cert {
                ders.push((&own.der, true));
            }
        }
        ders.extend(wanted.iter().map(|(d, _)| (d, true)));
        ders.into_iter()
            .map(|(d, end_entity)| Target {
                der: d.clone(),
                issuer: issuer_of(d),
                end_entity,
            })
            .collect()
    }
}
