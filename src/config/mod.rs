//! Configuration: `cachet.toml` -> one immutable, validated [`Config`] shared by `Arc`.
//!
//! Two steps (STYLE habit 6): [`raw`] is the serde mirror with `deny_unknown_fields`; [`Config::load`]
//! validates it into typed values and reports *every* problem it can find, each with file, line and
//! key ([`ConfigError`]). Relative paths resolve from the config file's folder. Checks that need to
//! read other files (keys, certificates) happen in `app::load_stores`, which `cachet check` also runs.

pub mod params;
pub mod policy;
pub mod raw;
pub mod units;

use raw::{RawConfig, RawInbound};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
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

/// Upstream TLS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Verify the certificate chain and name (default).
    Verify,
    /// Encrypt but accept any certificate (tests only).
    Insecure,
    /// Plaintext; must be chosen explicitly.
    None,
}

/// Where relayed mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// `smtp://host:port` (STARTTLS) or `smtps://host:port` (implicit TLS).
    Smtp {
        host: String,
        port: u16,
        implicit_tls: bool,
    },
    /// `file:///dir`: each relayed copy is written as `<queue id>-<n>.eml` (demo and tests).
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    pub hostname: String,
    pub relay_networks: Vec<ipnet::IpNet>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: bool,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub max_errors: u32,
    /// `user:$pbkdf2-sha256$...` lines; AUTH is offered over TLS when set.
    pub auth_users: Option<PathBuf>,
    /// The organisation's own domains, lowercased (also in `Config::submitters`).
    pub local_domains: Vec<String>,
    /// Trust anchors for TLS client certificates matched by issuer and subject.
    pub tls_client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Delays between attempts; the last one repeats.
    pub retry: Vec<Duration>,
    /// After this long undelivered, the message bounces.
    pub max_age: Duration,
    /// Deliveries in flight at once.
    pub workers: usize,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: String,
    pub target: UpstreamTarget,
    pub tls: UpstreamTls,
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub timeout: Duration,
    pub max_connections: usize,
    pub helo_name: String,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub dir: PathBuf,
    pub p12_password_file: Option<PathBuf>,
    /// Opens encrypted PKCS#8 key files (and PKCS#12 files without a password of their own).
    pub passphrase_file: Option<PathBuf>,
    pub pkcs11: Option<Pkcs11Config>,
}

/// `[keys.pkcs11]`: private keys on a PKCS#11 token.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 library (`.so`).
    pub module: PathBuf,
    /// Token label.
    pub token: String,
    pub pin_file: PathBuf,
    /// Most sessions open at once.
    pub sessions: usize,
}

#[derive(Debug, Clone)]
pub struct CertificatesConfig {
    pub dir: PathBuf,
    pub trust: Vec<PathBuf>,
    /// Operator-dropped CRLs (DER or PEM).
    pub crl_dir: Option<PathBuf>,
    /// The certificate database (`store::certdb`): `certificates.store`, by default
    /// `<spool.dir>/certificates/store.sqlite`.
    pub store: PathBuf,
    /// One CRL download or OCSP exchange, connect included.
    pub fetch_timeout: std::time::Duration,
    /// Largest CRL or OCSP response accepted, bytes.
    pub crl_max_size: u64,
    /// Period of the revocation refresher.
    pub revocation_interval: std::time::Duration,
}

/// One `[[directory]]` entry, validated: an LDAP directory asked for recipient certificates
/// (`store::directory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// `ldap://host:port` or `ldaps://host:port`, as written (logs and metrics name it so).
    pub url: String,
    /// Upgrade `ldap://` with StartTLS; always false for `ldaps://`.
    pub starttls: bool,
    /// Extra PEM trust anchors for the directory's TLS certificate (plus the system roots).
    pub ca_file: Option<PathBuf>,
    /// Simple bind DN; `None` binds anonymously.
    pub bind_dn: Option<String>,
    /// Holds only the bind password; read when the runtime loads.
    pub password_file: Option<PathBuf>,
    pub base: String,
    /// Contains `{address}` exactly where the escaped address goes.
    pub filter: String,
    pub attributes: Vec<String>,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub timeout: Duration,
}

impl DirectoryConfig {
    /// Whether the connection is encrypted (ldaps:// or StartTLS).
    pub fn tls(&self) -> bool {
        self.starttls || self.url.starts_with("ldaps://")
    }
}

/// `[inbound]`: the second listener, for mail the organisation's internet-facing MTA hands in for
/// local recipients; cachet verifies, decrypts and learns, then relays to the internal mail server
/// (docs/inbound.md). The names `listen`, `relay_networks`, `upstream`, `tls`, `ca_file`,
/// `decrypt`, `verify`, `harvest` are the contract of issue 13.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub listen: Vec<SocketAddr>,
    /// MTAs allowed to hand mail in; nobody else gets past the banner.
    pub relay_networks: Vec<ipnet::IpNet>,
    /// The internal mail server: `upstream` (url forms as `[upstream]`), `tls`, `ca_file`; the
    /// other fields as `[upstream]` has them.
    pub upstream: UpstreamConfig,
    /// Decrypt what was encrypted to the organisation's keys (`[keys]`).
    pub decrypt: bool,
    /// Verify every signature layer and write `Authentication-Results:`.
    pub verify: bool,
    /// Learn verified signers' certificates and capabilities.
    pub harvest: bool,
    /// What happens to mail encrypted to a recipient cachet holds no usable key for.
    pub on_undecryptable: OnUndecryptable,
    /// Prefix `[signed]`, `[signature invalid]`, `[decrypted]` to the Subject (off by default).
    pub subject_tags: bool,
    /// `[[inbound.rule]]`: per-sender requirements, first match wins.
    pub rules: Vec<InboundRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUndecryptable {
    /// Deliver as it arrived, with the reason in a header.
    Deliver,
    /// Keep in hold/ for an operator.
    Hold,
    /// Refuse at end of DATA (`550 5.7.x`): no backscatter.
    Reject,
}

/// One `[[inbound.rule]]`: mail from `senders` that does not meet `require` gets `action`.
#[derive(Debug, Clone)]
pub struct InboundRule {
    /// Address globs, normalised as `[[rule]]` globs are.
    pub senders: Vec<(String, wildmatch::WildMatch)>,
    pub require: InboundRequirement,
    pub action: InboundAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundRequirement {
    /// At least one signature layer, whatever its result.
    Signed,
    /// At least one signature with `smime=pass`.
    ValidSignature,
    /// Arrived encrypted.
    Encrypted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundAction {
    /// Deliver with a subject tag and a header naming the rule.
    Tag,
    /// Keep in hold/.
    Hold,
    /// Refuse at end of DATA.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub audit_file: Option<PathBuf>,
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

fn validate(raw: RawConfig, path: &Path, base: &Path, p: &mut Problems) -> Config {
    let s = raw.server;
    let listen = socket_addrs(&s.listen, "server.listen", p);
    let listen_tls = socket_addrs(&s.listen_tls, "server.listen_tls", p);
    let relay_networks = networks(&s.relay_networks, "server.relay_networks", p);
    let tls_cert = s
        .tls_cert
        .as_ref()
        .map(|v| existing_file(base, v, "server.tls_cert", p));
    let tls_key = s
        .tls_key
        .as_ref()
        .map(|v| existing_file(base, v, "server.tls_key", p));
    match (&s.tls_cert, &s.tls_key) {
        (Some(v), None) => p.at(
            v.span(),
            "server.tls_key",
            "tls_cert is set but tls_key is not",
        ),
        (None, Some(v)) => p.at(
            v.span(),
            "server.tls_cert",
            "tls_key is set but tls_cert is not",
        ),
        _ => {}
    }
    if tls_cert.is_none() && (s.require_tls || !listen_tls.is_empty()) {
        p.at(
            0..0,
            "server.tls_cert",
            "require_tls and listen_tls need tls_cert and tls_key",
        );
    }
    if let (Some(v), None) = (&s.auth_users, &tls_cert) {
        p.at(
            v.span(),
            "server.auth_users",
            "AUTH is only offered over TLS: set tls_cert and tls_key",
        );
    }
    if s.listen.is_empty() && s.listen_tls.is_empty() {
        p.at(0..0, "server.listen", "no SMTP listener configured");
    }
    if s.hostname.is_empty() || s.hostname.contains(char::is_whitespace) {
        p.at(
            0..0,
            "server.hostname",
            format!("{:?} is not a host name", s.hostname),
        );
    }
    bounded(p, "server.max_message_size", s.max_message_size.0);
    bounded(p, "server.max_recipients", s.max_recipients as u64);
    bounded(p, "server.max_connections", s.max_connections as u64);
    bounded(p, "server.idle_timeout", s.idle_timeout.0.as_secs());
    bounded(p, "server.max_errors", s.max_errors as u64);
    let local_domains = local_domains(&s.local_domains, p);
    let tls_client_ca = s
        .tls_client_ca
        .as_ref()
        .map(|v| existing_file(base, v, "server.tls_client_ca", p));
    if let (Some(v), None) = (&s.tls_client_ca, &tls_cert) {
        p.at(
            v.span(),
            "server.tls_client_ca",
            "client certificates are only asked for over TLS: set tls_cert and tls_key",
        );
    }
    let server = ServerConfig {
        listen,
        listen_tls,
        hostname: s.hostname,
        relay_networks,
        max_message_size: s.max_message_size.0,
        max_recipients: s.max_recipients,
        tls_cert,
        tls_key,
        require_tls: s.require_tls,
        max_connections: s.max_connections,
        idle_timeout: s.idle_timeout.0,
        max_errors: s.max_errors,
        auth_users: s
            .auth_users
            .as_ref()
            .map(|v| existing_file(base, v, "server.auth_users", p)),
        local_domains,
        tls_client_ca,
    };
    let submitters = submitters(&raw.submitters, &server, p);

    let sp = raw.spool;
    if sp.retry.is_empty() {
        p.at(0..0, "spool.retry", "needs at least one interval");
    }
    bounded(p, "spool.workers", sp.workers as u64);
    bounded(p, "spool.max_age", sp.max_age.0.as_secs());
    let spool = SpoolConfig {
        dir: resolve(base, &sp.dir),
        retry: sp.retry.iter().map(|d| d.0).collect(),
        max_age: sp.max_age.0,
        workers: sp.workers,
    };

    let u = raw.upstream;
    let target = parse_upstream_url(u.url.get_ref(), base).unwrap_or_else(|msg| {
        p.at(u.url.span(), "upstream.url", msg);
        UpstreamTarget::File(PathBuf::new())
    });
    let tls = upstream_tls(&u.tls, &target, "upstream.tls", p);
    if u.username.is_some() != u.password_file.is_some() {
        p.at(
            u.url.span(),
            "upstream.username",
            "username and password_file go together",
        );
    }
    bounded(p, "upstream.timeout", u.timeout.0.as_secs());
    bounded(p, "upstream.max_connections", u.max_connections as u64);
    let upstream = UpstreamConfig {
        url: u.url.get_ref().clone(),
        target,
        tls,
        ca_file: u
            .ca_file
            .as_ref()
            .map(|v| existing_file(base, v, "upstream.ca_file", p)),
        username: u.username,
        password_file: u
            .password_file
            .as_ref()
            .map(|v| existing_file(base, v, "upstream.password_file", p)),
        timeout: u.timeout.0,
        max_connections: u.max_connections,
        helo_name: u.helo_name.unwrap_or_else(|| server.hostname.clone()),
    };

    let keys = raw.keys.map(|k| KeysConfig {
        dir: existing_dir(base, &k.dir, "keys.dir", p),
        p12_password_file: k
            .p12_password_file
            .as_ref()
            .map(|v| existing_file(base, v, "keys.p12_password_file", p)),
        passphrase_file: k
            .passphrase_file
            .as_ref()
            .map(|v| existing_file(base, v, "keys.passphrase_file", p)),
        pkcs11: k.pkcs11.as_ref().map(|t| {
            let t = t.get_ref();
            bounded(p, "keys.pkcs11.sessions", t.sessions as u64);
            if t.token.get_ref().trim().is_empty() {
                p.at(
                    t.token.span(),
                    "keys.pkcs11.token",
                    "give the token's label",
                );
            }
            Pkcs11Config {
                module: existing_file(base, &t.module, "keys.pkcs11.module", p),
                token: t.token.get_ref().trim().to_string(),
                pin_file: existing_file(base, &t.pin_file, "keys.pkcs11.pin_file", p),
                sessions: t.sessions,
            }
        }),
    });
    let certificates = raw.certificates.map(|c| {
        bounded(p, "certificates.fetch_timeout", c.fetch_timeout.0.as_secs());
        bounded(p, "certificates.crl_max_size", c.crl_max_size.0);
        bounded(
            p,
            "certificates.revocation_interval",
            c.revocation_interval.0.as_secs(),
        );
        CertificatesConfig {
            dir: existing_dir(base, &c.dir, "certificates.dir", p),
            trust: c
                .trust
                .iter()
                .map(|v| existing_file(base, v, "certificates.trust", p))
                .collect(),
            crl_dir: c
                .crl_dir
                .as_ref()
                .map(|v| existing_dir(base, v, "certificates.crl_dir", p)),
            store: match &c.store {
                Some(v) => resolve(base, v.get_ref()),
                None => spool.dir.join("certificates").join("store.sqlite"),
            },
            fetch_timeout: c.fetch_timeout.0,
            crl_max_size: c.crl_max_size.0,
            revocation_interval: c.revocation_interval.0,
        }
    });
    let policy = policy::build(&raw.policy, &raw.rules, p);
    let directories = directories(
        &raw.directories,
        base,
        certificates.as_ref().is_some_and(|c| !c.trust.is_empty()),
        p,
    );

    let admin_listen = raw.admin.listen.as_ref().and_then(|v| {
        if v.get_ref().is_empty() {
            return None;
        }
        socket_addrs(std::slice::from_ref(v), "admin.listen", p).pop()
    });
    let format = match raw
        .log
        .format
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v.span()))
    {
        None | Some(("text", _)) => LogFormat::Text,
        Some(("json", _)) => LogFormat::Json,
        Some((other, span)) => {
            p.at(
                span,
                "log.format",
                format!("{other:?} is not one of text, json"),
            );
            LogFormat::Text
        }
    };
    let log = LogConfig {
        format,
        level: raw.log.level.unwrap_or_else(|| "info".into()),
        audit_file: raw.log.audit_file.map(|f| resolve(base, &f)),
    };

    let inbound = raw.inbound.as_ref().map(|v| {
        inbound(
            v,
            &Sections {
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

/// `upstream.tls` / `inbound.tls`: verify | insecure | none, and never `none` with `smtps://`.
fn upstream_tls(
    v: &Spanned<String>,
    target: &UpstreamTarget,
    key: &str,
    p: &mut Problems,
) -> UpstreamTls {
    let tls = match v.get_ref().as_str() {
        "verify" => UpstreamTls::Verify,
        "insecure" => UpstreamTls::Insecure,
        "none" => UpstreamTls::None,
        other => {
            p.at(
                v.span(),
                key,
                format!("{other:?} is not one of verify, insecure, none"),
            );
            UpstreamTls::Verify
        }
    };
    if let (
        UpstreamTarget::Smtp {
            implicit_tls: true, ..
        },
        UpstreamTls::None,
    ) = (target, tls)
    {
        p.at(
            v.span(),
            key,
            "smtps:// always uses TLS; use smtp:// for plaintext",
        );
    }
    tls
}

/// What `[inbound]` validation reads of the sections validated before it.
struct Sections<'a> {
    base: &'a Path,
    server: &'a ServerConfig,
    upstream: &'a UpstreamConfig,
    keys: Option<&'a KeysConfig>,
    certificates: Option<&'a CertificatesConfig>,
}

/// Whether two listen addresses would take the same socket (same port, and the same address or
/// either a wildcard).
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `[inbound]`: its own listeners (never one of `[server]`'s), the MTAs allowed to hand mail in,
/// the internal mail server (url, tls and ca_file as `[upstream]`; timeout, connections and EHLO
/// name taken from `[upstream]`, credentials never: the outbound provider's password does not go
/// to the internal server), and what opening needs: `[keys]` to decrypt, trust anchors to
/// verify and harvest.
fn inbound(raw: &Spanned<RawInbound>, s: &Sections, p: &mut Problems) -> InboundConfig {
    let span = raw.span();
    let r = raw.get_ref();
    let listen = socket_addrs(&r.listen, "inbound.listen", p);
    if r.listen.is_empty() {
        p.at(
            span.clone(),
            "inbound.listen",
            "no inbound listener: give at least one address such as \"0.0.0.0:2526\"",
        );
    }
    for (v, a) in r.listen.iter().zip(&listen) {
        let taken = s
            .server
            .listen
            .iter()
            .map(|b| ("server.listen", b))
            .chain(s.server.listen_tls.iter().map(|b| ("server.listen_tls", b)));
        for (key, b) in taken {
            if overlaps(a, b) {
                p.at(
                    v.span(),
                    "inbound.listen",
                    format!("{a} overlaps {key} {b}: the inbound listener needs an address of its own (another port)"),
                );
            }
        }
    }
    let relay_networks = networks(&r.relay_networks, "inbound.relay_networks", p);
    if r.relay_networks.is_empty() {
        p.at(
            span.clone(),
            "inbound.relay_networks",
            "list the MTAs that hand mail in, e.g. [\"10.0.0.5/32\"]: everyone else is refused",
        );
    }
    let target = parse_upstream_url(r.upstream.get_ref(), s.base).unwrap_or_else(|msg| {
        p.at(r.upstream.span(), "inbound.upstream", msg);
        UpstreamTarget::File(PathBuf::new())
    });
    let tls = upstream_tls(&r.tls, &target, "inbound.tls", p);
    let upstream = UpstreamConfig {
        url: r.upstream.get_ref().clone(),
        target,
        tls,
        ca_file: r
            .ca_file
            .as_ref()
            .map(|v| existing_file(s.base, v, "inbound.ca_file", p)),
        username: None,
        password_file: None,
        timeout: s.upstream.timeout,
        max_connections: s.upstream.max_connections,
        helo_name: s.upstream.helo_name.clone(),
    };
    let (decrypt, verify, harvest) = (
        *r.decrypt.get_ref(),
        *r.verify.get_ref(),
        *r.harvest.get_ref(),
    );
    if decrypt && s.keys.is_none() {
        p.at(
            r.decrypt.span(),
            "inbound.decrypt",
            "decrypting needs the organisation's keys: configure [keys] (or set decrypt = false)",
        );
    }
    let have_trust = s.certificates.is_some_and(|c| !c.trust.is_empty());
    if verify && !have_trust {
        p.at(
            r.verify.span(),
            "inbound.verify",
            "verifying needs trust anchors: configure [certificates] with trust (or set verify = false); without them no signature could pass",
        );
    }
    if harvest && !verify {
        p.at(
            r.harvest.span(),
            "inbound.harvest",
            "only verified signers are learnt: harvest needs verify = true",
        );
    } else if harvest && !have_trust {
        p.at(
            r.harvest.span(),
            "inbound.harvest",
            "harvesting learns only certificates that chain to a trust anchor: configure [certificates] with trust (or set harvest = false)",
        );
    }
    let on_undecryptable = match r.on_undecryptable.get_ref().as_str() {
        "deliver" => OnUndecryptable::Deliver,
        "hold" => OnUndecryptable::Hold,
        "reject" => OnUndecryptable::Reject,
        other => {
            p.at(
                r.on_undecryptable.span(),
                "inbound.on_undecryptable",
                format!("{other:?} is not one of deliver, hold, reject"),
            );
            OnUndecryptable::Deliver
        }
    };
    let rules = r
        .rules
        .iter()
        .enumerate()
        .map(|(i, v)| inbound_rule(i, v, p))
        .collect();
    InboundConfig {
        listen,
        relay_networks,
        upstream,
        decrypt,
        verify,
        harvest,
        on_undecryptable,
        subject_tags: r.subject_tags,
        rules,
    }
}

/// One `[[inbound.rule]]`: sender globs as `[[submitter]]` has them, a requirement and an action.
fn inbound_rule(i: usize, v: &Spanned<raw::RawInboundRule>, p: &mut Problems) -> InboundRule {
    let r = v.get_ref();
    let key = |field: &str| format!("inbound.rule #{}: {field}", i + 1);
    if r.senders.is_empty() {
        p.at(
            v.span(),
            &key("senders"),
            "list the sender addresses (globs) the rule is for, e.g. [\"*@partner.example\"]",
        );
    }
    let mut senders = Vec::new();
    for g in &r.senders {
        let glob = crate::store::normalize_glob(g.get_ref());
        if glob.is_empty() || glob.contains(char::is_whitespace) || glob.matches('@').count() != 1 {
            p.at(
                g.span(),
                &key("senders"),
                format!(
                    "{:?} is not an address glob such as \"*@partner.example\"",
                    g.get_ref()
                ),
            );
            continue;
        }
        senders.push((glob.clone(), wildmatch::WildMatch::new(&glob)));
    }
    let require = match r.require.get_ref().as_str() {
        "signed" => InboundRequirement::Signed,
        "valid-signature" => InboundRequirement::ValidSignature,
        "encrypted" => InboundRequirement::Encrypted,
        other => {
            p.at(
                r.require.span(),
                &key("require"),
                format!("{other:?} is not one of signed, valid-signature, encrypted"),
            );
            InboundRequirement::Signed
        }
    };
    let action = match r.action.get_ref().as_str() {
        "tag" => InboundAction::Tag,
        "hold" => InboundAction::Hold,
        "reject" => InboundAction::Reject,
        other => {
            p.at(
                r.action.span(),
                &key("action"),
                format!("{other:?} is not one of tag, hold, reject"),
            );
            InboundAction::Tag
        }
    };
    InboundRule {
        senders,
        require,
        action,
    }
}

/// `[[directory]]` entries: an LDAP URL with TLS unless anonymous, credentials together, a
/// filter with one `{address}` in balanced parentheses, attributes, TTLs and timeout in bounds.
fn directories(
    raw: &[Spanned<raw::RawDirectory>],
    base: &Path,
    have_trust: bool,
    p: &mut Problems,
) -> Vec<DirectoryConfig> {
    let mut out = Vec::new();
    for (i, spanned) in raw.iter().enumerate() {
        let r = spanned.get_ref();
        let key = |field: &str| format!("directory #{}: {field}", i + 1);
        if !have_trust {
            p.at(
                spanned.span(),
                &key("url"),
                "certificates from a directory are validated against certificates.trust: configure [certificates] with trust anchors",
            );
        }
        let url = r.url.get_ref().trim().to_string();
        let ldaps = url.starts_with("ldaps://");
        if let Err(msg) = parse_ldap_url(&url) {
            p.at(r.url.span(), &key("url"), msg);
        }
        if ldaps && r.starttls {
            p.at(
                r.url.span(),
                &key("starttls"),
                "ldaps:// is TLS from the start: starttls applies to ldap:// only",
            );
        }
        let tls = ldaps || r.starttls;
        match (&r.bind_dn, &r.password_file) {
            (Some(v), None) => p.at(
                v.span(),
                &key("password_file"),
                "bind_dn needs password_file (leave both out to bind anonymously)",
            ),
            (None, Some(v)) => p.at(
                v.span(),
                &key("bind_dn"),
                "password_file needs bind_dn (leave both out to bind anonymously)",
            ),
            (Some(v), Some(_)) if !tls => p.at(
                v.span(),
                &key("starttls"),
                "a bind password would cross the network in clear: use ldaps:// or starttls = true",
            ),
            _ => {}
        }
        if let Some(v) = &r.bind_dn
            && v.get_ref().trim().is_empty()
        {
            p.at(
                v.span(),
                &key("bind_dn"),
                "empty bind DN: leave it out to bind anonymously",
            );
        }
        if let (Some(v), false) = (&r.ca_file, tls) {
            p.at(
                v.span(),
                &key("ca_file"),
                "ca_file verifies TLS: use ldaps:// or starttls = true",
            );
        }
        if r.base.get_ref().trim().is_empty() {
            p.at(
                r.base.span(),
                &key("base"),
                "the search base DN must not be empty, e.g. \"dc=example,dc=org\"",
            );
        }
        if let Err(msg) = check_filter_template(r.filter.get_ref()) {
            p.at(r.filter.span(), &key("filter"), msg);
        }
        if r.attributes.is_empty() {
            p.at(
                spanned.span(),
                &key("attributes"),
                "name at least one attribute, e.g. [\"userCertificate;binary\"]",
            );
        }
        for a in &r.attributes {
            let name = a.get_ref();
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ';' | '.'));
            if !ok {
                p.at(
                    a.span(),
                    &key("attributes"),
                    format!("{name:?} is not an attribute description such as \"userCertificate;binary\""),
                );
            }
        }
        for (field, d) in [
            ("cache_ttl", r.cache_ttl.0),
            ("negative_ttl", r.negative_ttl.0),
            ("timeout", r.timeout.0),
        ] {
            if let Err(message) = params::check(&format!("directory.{field}"), d.as_secs()) {
                p.at(spanned.span(), &key(field), message);
            }
        }
        out.push(DirectoryConfig {
            url,
            starttls: r.starttls,
            ca_file: r
                .ca_file
                .as_ref()
                .map(|v| existing_file(base, v, &key("ca_file"), p)),
            bind_dn: r.bind_dn.as_ref().map(|v| v.get_ref().trim().to_string()),
            password_file: r
                .password_file
                .as_ref()
                .map(|v| existing_file(base, v, &key("password_file"), p)),
            base: r.base.get_ref().trim().to_string(),
            filter: r.filter.get_ref().clone(),
            attributes: r.attributes.iter().map(|a| a.get_ref().clone()).collect(),
            cache_ttl: r.cache_ttl.0,
            negative_ttl: r.negative_ttl.0,
            timeout: r.timeout.0,
        });
    }
    out
}

/// `ldap://host[:port]` or `ldaps://host[:port]` (an optional trailing `/`, nothing else).
fn parse_ldap_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("ldap://")
        .or_else(|| url.strip_prefix("ldaps://"))
        .ok_or_else(|| format!("{url:?}: the scheme must be ldap:// or ldaps://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '@', ' ']) {
        return Err(format!(
            "{url:?}: give only scheme, host and port (base, filter and credentials have keys of their own)"
        ));
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in IPv6 address"))?;
            (h, after.strip_prefix(':'))
        }
        None => match rest.rsplit_once(':') {
            Some((h, port)) => (h, Some(port)),
            None => (rest, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{url:?}: missing host"));
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |n| n == 0)
    {
        return Err(format!("{url:?}: bad port {port:?}"));
    }
    Ok(())
}

/// A filter template: an RFC 4515 filter with `{address}` where the escaped address goes
/// (checked by parsing it, filled with a sample address, as the LDAP client will).
pub fn check_filter_template(filter: &str) -> Result<(), String> {
    if !filter.contains("{address}") {
        return Err(format!(
            "{filter:?} does not contain {{address}}: every recipient would get the same answer"
        ));
    }
    let sample = filter.replace("{address}", "someone@example.org");
    if ldap3::parse_filter(sample.trim()).is_err() {
        return Err(format!(
            "{filter:?} is not an LDAP filter (RFC 4515) such as \"(mail={{address}})\""
        ));
    }
    Ok(())
}

/// `server.local_domains`: required, because signing and the relay_networks default both
/// depend on it (fail closed: without it nobody could be allowed anything).
fn local_domains(list: &[Spanned<String>], p: &mut Problems) -> Vec<String> {
    if list.is_empty() {
        p.at(
            0..0,
            "server.local_domains",
            "list the organisation's own domains, e.g. [\"example.org\"]: cachet signs only From: addresses in them",
        );
    }
    let mut out = Vec::new();
    for v in list {
        let d = crate::store::normalize_domain(v.get_ref().trim());
        let ok = !d.is_empty()
            && !d.starts_with('.')
            && !d.contains("..")
            && d.chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
        if ok {
            out.push(d);
        } else {
            p.at(
                v.span(),
                "server.local_domains",
                format!("{:?} is not a domain such as \"example.org\" (no wildcards: list each subdomain)", v.get_ref()),
            );
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

/// `[[submitter]]` entries, checked: each names at least one way to recognise the client and
/// at least one sender glob; a names-based `tls_client` needs `server.tls_client_ca`.
fn submitters(
    raw: &[Spanned<raw::RawSubmitter>],
    server: &ServerConfig,
    p: &mut Problems,
) -> crate::policy::submitter::Submitters {
    use crate::policy::submitter::{RequiredHeader, Submitter, Submitters, TlsClientMatch};
    let mut entries = Vec::new();
    for (i, spanned) in raw.iter().enumerate() {
        let r = spanned.get_ref();
        let name = r
            .name
            .clone()
            .unwrap_or_else(|| format!("submitter #{}", i + 1));
        let key = |field: &str| format!("submitter {name:?}: {field}");
        let nets = networks(r.networks.as_deref().unwrap_or(&[]), &key("networks"), p);
        if r.networks.is_some() && r.networks.as_ref().is_some_and(|n| n.is_empty()) {
            p.at(
                spanned.span(),
                &key("networks"),
                "an empty list matches nobody: remove it or list networks",
            );
        }
        let tls_client = r.tls_client.as_ref().map(|v| match v.get_ref() {
            raw::RawTlsClient::Fingerprint(fp) => {
                let hex: String = fp.chars().filter(|c| *c != ':').collect::<String>().to_lowercase();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    p.at(v.span(), &key("tls_client"), "a SHA-256 fingerprint is 64 hex digits (colons allowed), or use { issuer = \"...\", subject = \"...\" }");
                }
                TlsClientMatch::Fingerprint(hex)
            }
            raw::RawTlsClient::Names { issuer, subject } => {
                if server.tls_client_ca.is_none() {
                    p.at(v.span(), &key("tls_client"), "matching issuer and subject needs server.tls_client_ca (the CA the certificate must chain to)");
                }
                if issuer.trim().is_empty() || subject.trim().is_empty() {
                    p.at(v.span(), &key("tls_client"), "issuer and subject must both be given");
                }
                TlsClientMatch::Names { issuer: issuer.clone(), subject: subject.clone() }
            }
        });
        if r.networks.is_none() && r.user.is_none() && r.tls_client.is_none() {
            p.at(spanned.span(), &key("networks"), "give networks, user or tls_client: an entry that names no client would match everyone");
        }
        if let (Some(u), None) = (&r.user, &server.auth_users) {
            p.at(u.span(), &key("user"), "AUTH users need server.auth_users");
        }
        if r.tls_client.is_some() && server.tls_cert.is_none() {
            p.at(
                spanned.span(),
                &key("tls_client"),
                "client certificates need TLS: set server.tls_cert and tls_key",
            );
        }
        let require_header = r.require_header.as_ref().map(|v| {
            let h = v.get_ref();
            let name_ok =
                !h.name.is_empty() && h.name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !name_ok {
                p.at(
                    v.span(),
                    &key("require_header"),
                    format!("{:?} is not a header field name", h.name),
                );
            }
            if h.value.trim().is_empty() {
                p.at(
                    v.span(),
                    &key("require_header"),
                    "the value must not be empty",
                );
            }
            RequiredHeader {
                name: h.name.clone(),
                value: h.value.trim().to_string(),
            }
        });
        if r.senders.is_empty() {
            p.at(
                spanned.span(),
                &key("senders"),
                "list the addresses (globs) this submitter may use, e.g. [\"*@example.org\"]",
            );
        }
        let mut senders = Vec::new();
        for v in &r.senders {
            let g = crate::store::normalize_glob(v.get_ref());
            if g.is_empty() || g.contains(char::is_whitespace) || g.matches('@').count() != 1 {
                p.at(
                    v.span(),
                    &key("senders"),
                    format!(
                        "{:?} is not an address glob such as \"*@example.org\"",
                        v.get_ref()
                    ),
                );
                continue;
            }
            senders.push((g.clone(), wildmatch::WildMatch::new(&g)));
        }
        entries.push(Submitter {
            name,
            networks: nets,
            user: r.user.as_ref().map(|u| u.get_ref().clone()),
            tls_client,
            require_header,
            senders,
        });
    }
    Submitters {
        entries,
        local_domains: server.local_domains.clone(),
        relay_networks: server.relay_networks.clone(),
    }
}

/// `smtp://host:port`, `smtps://host:port` or `file:///dir` (relative `file://dir` from the config folder).
pub fn parse_upstream_url(url: &str, base: &Path) -> Result<UpstreamTarget, String> {
    if let Some(rest) = url.strip_prefix("file://") {
        if rest.is_empty() {
            return Err("file:// needs a directory, e.g. file:///var/lib/cachet/outbox".into());
        }
        return Ok(UpstreamTarget::File(resolve(base, Path::new(rest))));
    }
    let (implicit_tls, rest, default_port) = if let Some(r) = url.strip_prefix("smtp://") {
        (false, r, 25)
    } else if let Some(r) = url.strip_prefix("smtps://") {
        (true, r, 465)
    } else {
        return Err(format!(
            "{url:?}: scheme must be smtp://, smtps:// or file://"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed [ in IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
            None => default_port,
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            None => (rest.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?}: missing host"));
    }
    Ok(UpstreamTarget::Smtp {
        host,
        port,
        implicit_tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, Vec<ConfigError>> {
        Config::parse(Path::new("/nonexistent/cachet.toml"), src)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://mx.example:587\"\n").unwrap();
        assert_eq!(c.server.listen, vec!["0.0.0.0:2525".parse().unwrap()]);
        assert_eq!(c.server.max_message_size, 50 << 20);
        assert_eq!(c.upstream.tls, UpstreamTls::Verify);
        assert_eq!(
            c.upstream.target,
            UpstreamTarget::Smtp {
                host: "mx.example".into(),
                port: 587,
                implicit_tls: false
            }
        );
        assert_eq!(c.spool.dir, Path::new("/var/spool/cachet"));
        assert_eq!(c.spool.retry.len(), 5);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let errs = parse("[server]\nlisten = []\nlissen = 3\n[upstream]\nurl = \"smtp://a\"\n")
            .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, Some(3));
        assert!(
            errs[0].message.contains("unknown field `lissen`"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn bad_size_is_reported_with_line() {
        let errs =
            parse("[server]\nmax_message_size = \"5 parsecs\"\n[upstream]\nurl = \"smtp://a\"\n")
                .unwrap_err();
        assert_eq!(errs[0].line, Some(2));
        assert!(errs[0].message.contains("invalid size unit"), "{}", errs[0]);
    }

    #[test]
    fn every_semantic_problem_is_listed() {
        let src = "[server]\nlisten = [\"nope\"]\nrelay_networks = [\"10.0.0.0/33\"]\ntls_cert = \"missing.crt\"\n\
                   [upstream]\nurl = \"ftp://x\"\ntls = \"maybe\"\n";
        let errs = parse(src).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = text.join("\n");
        assert!(all.contains("cachet.toml:2: server.listen"), "{all}");
        assert!(
            all.contains("cachet.toml:3: server.relay_networks"),
            "{all}"
        );
        assert!(
            all.contains("cachet.toml:4: server.tls_cert: file"),
            "{all}"
        );
        assert!(
            all.contains("server.tls_key: tls_cert is set but tls_key is not"),
            "{all}"
        );
        assert!(all.contains("cachet.toml:6: upstream.url"), "{all}");
        assert!(all.contains("cachet.toml:7: upstream.tls"), "{all}");
    }

    #[test]
    fn directory_entries_are_checked_with_line_and_key() {
        let head = "[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://a\"\n";
        let with_trust = "[certificates]\ndir = \"/\"\ntrust = [\"/etc/hostname\"]\n";
        let ok = parse(&format!(
            "{head}{with_trust}[[directory]]\nurl = \"ldaps://ldap.example.org\"\nbase = \"dc=example,dc=org\"\n"
        ));
        let c = ok.unwrap_or_else(|e| panic!("{e:?}"));
        let d = &c.directories[0];
        assert_eq!(d.filter, "(mail={address})");
        assert_eq!(
            d.attributes,
            ["userSMIMECertificate;binary", "userCertificate;binary"]
        );
        assert_eq!(
            (d.cache_ttl, d.negative_ttl, d.timeout),
            (
                Duration::from_secs(3600),
                Duration::from_secs(600),
                Duration::from_secs(3)
            )
        );
        assert!(d.tls() && d.bind_dn.is_none());

        for (entry, expected) in [
            (
                "url = \"http://x\"\nbase = \"o=x\"",
                "directory #1: url: \"http://x\": the scheme must be ldap:// or ldaps://",
            ),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\nbind_dn = \"cn=a\"\npassword_file = \"/etc/hostname\"",
                "directory #1: starttls: a bind password would cross the network in clear",
            ),
            (
                "url = \"ldaps://x\"\nstarttls = true\nbase = \"o=x\"",
                "directory #1: starttls: ldaps:// is TLS from the start",
            ),
            (
                "url = \"ldaps://x\"\nbase = \"o=x\"\nbind_dn = \"cn=a\"",
                "directory #1: password_file: bind_dn needs password_file",
            ),
            (
                "url = \"ldaps://x\"\nbase = \"o=x\"\nfilter = \"(mail=bob)\"",
                "does not contain {address}",
            ),
            (
                "url = \"ldaps://x\"\nbase = \"o=x\"\nfilter = \"(mail={address}\"",
                "is not an LDAP filter",
            ),
            (
                "url = \"ldaps://x\"\nbase = \"o=x\"\ntimeout = \"2m\"",
                "directory #1: timeout: 120 seconds is out of range: must be from 1 to 60",
            ),
            (
                "url = \"ldaps://x\"\nbase = \"o=x\"\nattributes = []",
                "directory #1: attributes: name at least one attribute",
            ),
        ] {
            let errs = parse(&format!("{head}{with_trust}[[directory]]\n{entry}\n")).unwrap_err();
            let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            assert!(
                all.iter().any(|e| e.contains(expected)),
                "{expected:?} not in {all:?}"
            );
        }
        // Without trust anchors nothing from a directory could validate.
        let errs = parse(&format!(
            "{head}[[directory]]\nurl = \"ldaps://x\"\nbase = \"o=x\"\n"
        ))
        .unwrap_err();
        assert!(errs[0].to_string().contains("cachet.toml:5: directory #1: url: certificates from a directory are validated against certificates.trust"), "{errs:?}");
    }

    #[test]
    fn pkcs11_keys_are_checked_with_line_and_key() {
        let src = "[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://a\"\n\
                   [keys]\ndir = \"/\"\n[keys.pkcs11]\nmodule = \"/nonexistent/p11.so\"\ntoken = \" \"\n\
                   pin_file = \"/nonexistent/pin\"\nsessions = 0\n";
        let errs = parse(src).unwrap_err();
        let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = all.join("\n");
        assert!(
            all.contains(
                "cachet.toml:8: keys.pkcs11.module: file /nonexistent/p11.so does not exist"
            ),
            "{all}"
        );
        assert!(
            all.contains("cachet.toml:9: keys.pkcs11.token: give the token's label"),
            "{all}"
        );
        assert!(
            all.contains("cachet.toml:10: keys.pkcs11.pin_file"),
            "{all}"
        );
        assert!(
            all.contains("keys.pkcs11.sessions: 0 sessions is out of range"),
            "{all}"
        );
        let errs = parse("[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://a\"\n[keys]\ndir = \"/\"\n[keys.pkcs11]\nmodule = \"x\"\n").unwrap_err();
        assert!(
            errs[0].message.contains("missing field `token`"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn inbound_is_parsed_with_defaults_and_its_problems_named() {
        let head = "[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://relay.example:587\"\ntimeout = \"20s\"\nusername = \"u\"\npassword_file = \"/etc/hostname\"\n";
        let keys_and_trust =
            "[keys]\ndir = \"/\"\n[certificates]\ndir = \"/\"\ntrust = [\"/etc/hostname\"]\n";
        let c = parse(&format!(
            "{head}{keys_and_trust}[inbound]\nrelay_networks = [\"10.0.0.5\"]\nupstream = \"smtps://mailstore.internal\"\n\
             [[inbound.rule]]\nsenders = [\"*@Partner.Example\"]\nrequire = \"valid-signature\"\naction = \"hold\"\n"
        ))
        .unwrap_or_else(|e| panic!("{e:?}"));
        let i = c.inbound.expect("[inbound] parsed");
        assert_eq!(i.listen, vec!["0.0.0.0:2526".parse().unwrap()]);
        assert_eq!(i.relay_networks, vec!["10.0.0.5/32".parse().unwrap()]);
        assert_eq!(
            i.upstream.target,
            UpstreamTarget::Smtp {
                host: "mailstore.internal".into(),
                port: 465,
                implicit_tls: true
            }
        );
        assert_eq!(i.upstream.tls, UpstreamTls::Verify);
        // Timeout as [upstream]; the outbound provider's credentials never go inside.
        assert_eq!(i.upstream.timeout, Duration::from_secs(20));
        assert!(i.upstream.username.is_none() && i.upstream.password_file.is_none());
        assert!(i.decrypt && i.verify && i.harvest && !i.subject_tags);
        assert_eq!(i.on_undecryptable, OnUndecryptable::Deliver);
        assert_eq!(i.rules.len(), 1);
        assert_eq!(i.rules[0].senders[0].0, "*@partner.example");
        assert_eq!(
            (i.rules[0].require, i.rules[0].action),
            (InboundRequirement::ValidSignature, InboundAction::Hold)
        );
        assert!(parse(head).unwrap().inbound.is_none());

        // Without [keys] and trust anchors, the defaults cannot work: said, with the key.
        let errs = parse(&format!(
            "{head}[inbound]\nrelay_networks = [\"10.0.0.5\"]\nupstream = \"smtp://m\"\nharvest = true\nverify = false\n"
        ))
        .unwrap_err();
        let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = all.join("\n");
        assert!(
            all.contains("cachet.toml: inbound.decrypt: decrypting needs the organisation's keys"),
            "{all}"
        );
        assert!(
            all.contains("cachet.toml:11: inbound.harvest: only verified signers are learnt"),
            "{all}"
        );
        assert!(!all.contains("inbound.verify"), "{all}");
        // smtps:// with tls = "none", an overlapping listener, no relay_networks.
        let errs = parse(&format!(
            "{head}[inbound]\nlisten = [\"[::]:2525\"]\nupstream = \"smtps://m\"\ntls = \"none\"\ndecrypt = false\nverify = false\nharvest = false\n"
        ))
        .unwrap_err();
        let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = all.join("\n");
        assert!(
            all.contains(
                "cachet.toml:9: inbound.listen: [::]:2525 overlaps server.listen 0.0.0.0:2525"
            ),
            "{all}"
        );
        assert!(
            all.contains("cachet.toml:11: inbound.tls: smtps:// always uses TLS"),
            "{all}"
        );
        assert!(
            all.contains("inbound.relay_networks: list the MTAs"),
            "{all}"
        );
    }

    #[test]
    fn upstream_urls() {
        let b = Path::new("/etc/cachet");
        assert_eq!(
            parse_upstream_url("smtps://[::1]:4650", b).unwrap(),
            UpstreamTarget::Smtp {
                host: "::1".into(),
                port: 4650,
                implicit_tls: true
            }
        );
        assert_eq!(
            parse_upstream_url("file://outbox", b).unwrap(),
            UpstreamTarget::File("/etc/cachet/outbox".into())
        );
        assert!(parse_upstream_url("smtp://:25", b).is_err());
    }
}
