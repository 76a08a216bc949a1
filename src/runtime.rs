//! The loaded world every stage reads: validated config, policy, key and certificate stores and
//! the inbound TLS acceptor. Built whole by [`Runtime::load`]; a reload builds a new one and
//! swaps it in atomically, so sessions in flight finish on the one they started with.

use crate::config::{Config, ConfigError};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

pub struct Runtime {
    pub config: Config,
    pub stores: crate::pipeline::Stores,
    /// Present when `server.tls_cert`/`tls_key` are set: STARTTLS is offered, SMTPS possible.
    pub tls: Option<TlsAcceptor>,
    /// `server.tls_client_ca`: what TLS client certificates matched by issuer and subject must
    /// chain to.
    pub tls_client_anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    /// The upstream client (its connection pool lives as long as this runtime).
    pub relay: crate::relay::Relay,
    /// `server.auth_users`: who may relay after AUTH.
    pub users: Option<crate::session::auth::Users>,
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
            (Some(cert), Some(key)) => match crate::listener::tls_acceptor(
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
        let users = match &config.server.auth_users {
            Some(path) => crate::session::auth::Users::load(path)
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
        let (stores, problems) = crate::pipeline::Stores::load(&config);
        errors.extend(problems);
        match relay {
            Ok(relay) if errors.is_empty() => Ok(Runtime {
                config,
                stores,
                tls,
                tls_client_anchors,
                relay,
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
