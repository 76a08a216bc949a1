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
//! `directory.rs`, `admin.rs`, `log.rs`, `inbound.rs`. This file keeps what they share (the error
//! type, [`Problems`], path, address, network and bounds checks) and `validate`, which is only the
//! list of sections in the order their problems are reported. Defaults and bounds come from the
//! parameter table ([`params`]).

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
pub use server::ServerConfig;
pub use spool::SpoolConfig;
pub use upstream::{UpstreamConfig, UpstreamTarget, UpstreamTls, parse_upstream_url};

use raw::RawConfig;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// One problem found in the configuration, with where it is.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file.display(), line)?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Collects problems while validating, turning byte spans into line numbers.
pub struct Problems<'a> {
    file: &'a Path,
    source: &'a str,
    pub errors: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    pub fn new(file: &'a Path, source: &'a str) -> Self {
        Problems {
            file,
            source,
            errors: Vec::new(),
        }
    }

    /// Records a problem at `span` (an empty span at 0 means "a default value": no line).
    pub fn at(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let line = (span != (0..0)).then(|| line_of(self.source, span.start));
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            key: key.to_string(),
            message: message.into(),
        });
    }
}

fn line_of(source: &str, offset: usize) -> usize {
    source.as_bytes()[..offset.min(source.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

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

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// A path that must name an existing file.
fn existing_file(base: &Path, v: &Spanned<PathBuf>, key: &str, p: &mut Problems) -> PathBuf {
    let path = resolve(base, v.get_ref());
    if !path.is_file() {
        p.at(
            v.span(),
            key,
            format!("file {} does not exist", path.display()),
        );
    }
    path
}

fn existing_dir(base: &Path, v: &Spanned<PathBuf>, key: &str, p: &mut Problems) -> PathBuf {
    let path = resolve(base, v.get_ref());
    if !path.is_dir() {
        p.at(
            v.span(),
            key,
            format!("directory {} does not exist", path.display()),
        );
    }
    path
}

/// Reports `value` out of the parameter table's bounds for `key`.
fn bounded(p: &mut Problems, key: &str, value: u64) {
    if let Err(message) = params::check(key, value) {
        p.at(0..0, key, message);
    }
}

fn socket_addrs(list: &[Spanned<String>], key: &str, p: &mut Problems) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for v in list {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => out.push(a),
            Err(_) => p.at(
                v.span(),
                key,
                format!(
                    "{:?} is not an address:port such as \"0.0.0.0:2525\" or \"[::]:25\"",
                    v.get_ref()
                ),
            ),
        }
    }
    out
}

fn networks(list: &[Spanned<String>], key: &str, p: &mut Problems) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for v in list {
        let text = v.get_ref();
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(n) => out.push(n),
            Err(_) => p.at(
                v.span(),
                key,
                format!("{text:?} is not a network such as \"10.0.0.0/8\""),
            ),
        }
    }
    out
}

/// Sender address globs (`[[submitter]]` and `[[inbound.rule]]` `senders`), normalised as
/// lookups compare them: exactly one `@`, no spaces; `example` is the glob the message suggests.
fn sender_globs(
    list: &[Spanned<String>],
    key: &str,
    example: &str,
    p: &mut Problems,
) -> Vec<(String, wildmatch::WildMatch)> {
    let mut out = Vec::new();
    for v in list {
        let g = crate::store::normalize_glob(v.get_ref());
        if g.is_empty() || g.contains(char::is_whitespace) || g.matches('@').count() != 1 {
            p.at(
                v.span(),
                key,
                format!(
                    "{:?} is not an address glob such as \"{example}\"",
                    v.get_ref()
                ),
            );
            continue;
        }
        out.push((g.clone(), wildmatch::WildMatch::new(&g)));
    }
    out
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
