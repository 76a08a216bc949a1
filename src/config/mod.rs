//! Configuration: `cachet.toml` -> one immutable, validated [`Config`] shared by `Arc`.
//!
//! Two steps (STYLE habit 6): [`raw`] is the serde mirror with `deny_unknown_fields`; [`Config::load`]
//! validates it into typed values and reports *every* problem it can find, each with file, line and
//! key ([`ConfigError`]). Relative paths resolve from the config file's folder. Checks that need to
//! read other files (keys, certificates) happen when the runtime loads its stores, which `cachet
//! check` also does.
//!
//! One file per section holds its typed value and its checks: `server.rs`, `submitter.rs`,
//! `spool.rs`, `upstream.rs`, `keys.rs`, `certificates.rs`, `policy.rs` (`[policy]` + `[[rule]]`),
//! `directory.rs`, `admin.rs`, `log.rs`, `inbound.rs`. What they share sits below them in
//! `problems.rs` (the error type, [`Problems`], path, address, network, glob and bounds checks);
//! defaults and bounds come from the parameter table ([`params`]). This file holds [`Config`]
//! and `validate`, which is only the list of sections in the order their problems are reported.

pub mod params;
pub mod policy;
pub mod raw;
pub mod units;

mod admin;
mod certificates;
mod directory;
mod inbound;
mod keys;
mod log;
mod problems;
mod server;
mod spool;
mod submitter;
#[cfg(test)]
mod tests;
mod upstream;

pub use certificates::CertificatesConfig;
pub use directory::{DirectoryConfig, check_filter_template};
pub use inbound::{InboundAction, InboundConfig, InboundRequirement, InboundRule, OnUndecryptable};
pub use keys::{KeysConfig, Pkcs11Config};
pub use log::{LogConfig, LogFormat};
pub use problems::{ConfigError, Problems};
pub use server::ServerConfig;
pub use spool::SpoolConfig;
pub use upstream::{UpstreamConfig, UpstreamTarget, UpstreamTls, parse_upstream_url};

use problems::line_of;
use raw::RawConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The validated configuration. Immutable; a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub spool: SpoolConfig,
    pub upstream: UpstreamConfig,
    pub keys: Option<KeysConfig>,
    pub certificates: Option<CertificatesConfig>,
    pub policy: crate::policy::Policy,
    /// `[[submitter]]` + `local_domains` + `relay_networks`: who may send as whom.
    pub submitters: crate::policy::submitter::Submitters,
    /// `[[directory]]` entries, asked in this order.
    pub directories: Vec<DirectoryConfig>,
    pub admin_listen: Option<SocketAddr>,
    pub log: LogConfig,
    /// `[inbound]`; absent: no inbound listener.
    pub inbound: Option<InboundConfig>,
}

impl Config {
    /// Reads and validates `path`. On failure, returns every problem found.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }]
        })?;
        Self::parse(path, &source)
    }

    /// Validates `source` as if read from `path` (relative paths resolve from its folder).
    pub fn parse(path: &Path, source: &str) -> Result<Config, Vec<ConfigError>> {
        let raw: RawConfig = toml::from_str(source).map_err(|e| {
            let line = e.span().map(|s| line_of(source, s.start));
            vec![ConfigError {
                file: path.to_path_buf(),
                line,
                key: String::new(),
                message: e.message().trim().to_string(),
            }]
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let mut p = Problems::new(path, source);
        let config = validate(raw, path, &base, &mut p);
        if p.errors.is_empty() {
            Ok(config)
        } else {
            Err(p.errors)
        }
    }
}

/// The sections, each validated by its own file, in the order their problems are listed.
/// `[[submitter]]` reads `[server]`; `[upstream]` takes its EHLO name from `[server]`;
/// `[certificates]` puts its database under the spool by default; `[[directory]]` needs trust
/// anchors; `[inbound]` reads all of these.
fn validate(raw: RawConfig, path: &Path, base: &Path, p: &mut Problems) -> Config {
    let server = server::server(raw.server, base, p);
    let submitters = submitter::submitters(&raw.submitters, &server, p);
    let spool = spool::spool(raw.spool, base, p);
    let upstream = upstream::upstream(raw.upstream, base, &server, p);
    let keys = raw.keys.map(|k| keys::keys(k, base, p));
    let certificates = raw
        .certificates
        .map(|c| certificates::certificates(c, base, &spool, p));
    let policy = policy::build(&raw.policy, &raw.rules, p);
    let directories = directory::directories(
        &raw.directories,
        base,
        certificates.as_ref().is_some_and(|c| !c.trust.is_empty()),
        p,
    );
    let admin_listen = admin::admin_listen(&raw.admin, p);
    let log = log::log(raw.log, base, p);
    let inbound = raw.inbound.as_ref().map(|v| {
        inbound::inbound(
            v,
            &inbound::Sections {
                base,
                server: &server,
                upstream: &upstream,
                keys: keys.as_ref(),
                certificates: certificates.as_ref(),
            },
            p,
        )
    });

    Config {
        path: path.to_path_buf(),
        server,
        spool,
        upstream,
        keys,
        certificates,
        policy,
        submitters,
        directories,
        admin_listen,
        log,
        inbound,
    }
}
