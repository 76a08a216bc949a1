//! The serde mirror of `cachet.toml`: field names are the public interface.
//! `deny_unknown_fields` everywhere, so a typo is an error with file, line and key, not a silent default.
//! Defaults come from the parameter table ([`super::params`]), once; `config/cachet.toml` shows
//! each of them (tests/config_reference.rs checks it).

use super::params as P;
use super::units::{Dur, Size};
use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub spool: RawSpool,
    pub upstream: RawUpstream,
    pub keys: Option<RawKeys>,
    pub certificates: Option<RawCertificates>,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Spanned<RawRule>>,
    /// `[[submitter]]`: who may submit mail as whom (first match wins).
    #[serde(default, rename = "submitter")]
    pub submitters: Vec<Spanned<RawSubmitter>>,
    /// `[[directory]]`: LDAP directories asked for recipient certificates, in order.
    #[serde(default, rename = "directory")]
    pub directories: Vec<Spanned<RawDirectory>>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub log: RawLog,
    /// `[inbound]`: the second listener, for mail to local recipients (issue 13).
    pub inbound: Option<Spanned<RawInbound>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "default_listen")]
    pub listen: Vec<Spanned<String>>,
    #[serde(default)]
    pub listen_tls: Vec<Spanned<String>>,
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default = "default_relay_networks")]
    pub relay_networks: Vec<Spanned<String>>,
    #[serde(default = "default_max_message_size")]
    pub max_message_size: Size,
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    pub tls_cert: Option<Spanned<PathBuf>>,
    pub tls_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub require_tls: bool,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    #[serde(default = "default_max_errors")]
    pub max_errors: u32,
    /// Users who may relay from anywhere after AUTH (over TLS).
    pub auth_users: Option<Spanned<PathBuf>>,
    /// The organisation's own domains: the only `From:` domains cachet signs for, and the
    /// addresses a relay_networks client without a `[[submitter]]` entry may use.
    #[serde(default)]
    pub local_domains: Vec<Spanned<String>>,
    /// PEM trust anchors for TLS client certificates matched by issuer and subject.
    pub tls_client_ca: Option<Spanned<PathBuf>>,
}

/// `[[submitter]]`: a client identity (network, AUTH user, TLS client certificate) and the
/// addresses it may use in `MAIL FROM` and `From:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubmitter {
    /// A label for logs, the audit trail and `cachet explain`.
    pub name: Option<String>,
    pub networks: Option<Vec<Spanned<String>>>,
    pub user: Option<Spanned<String>>,
    pub tls_client: Option<Spanned<RawTlsClient>>,
    pub require_header: Option<Spanned<RawRequireHeader>>,
    pub senders: Vec<Spanned<String>>,
}

/// A TLS client certificate: its SHA-256 fingerprint (hex, colons allowed), or the issuer and
/// subject DNs of a certificate that chains to `server.tls_client_ca`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum RawTlsClient {
    Fingerprint(String),
    Names { issuer: String, subject: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequireHeader {
    pub name: String,
    pub value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    #[serde(default = "default_retry")]
    pub retry: Vec<Dur>,
    #[serde(default = "default_max_age")]
    pub max_age: Dur,
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default = "default_in_flow_delay")]
    pub in_flow_delay: Dur,
}

impl Default for RawSpool {
    fn default() -> Self {
        RawSpool {
            dir: default_spool_dir(),
            retry: default_retry(),
            max_age: default_max_age(),
            workers: default_workers(),
            in_flow_delay: default_in_flow_delay(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Spanned<String>,
    #[serde(default = "default_upstream_tls")]
    pub tls: Spanned<String>,
    pub ca_file: Option<Spanned<PathBuf>>,
    pub username: Option<String>,
    pub password_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_upstream_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_upstream_connections")]
    pub max_connections: usize,
    /// The name sent in EHLO upstream; defaults to server.hostname.
    pub helo_name: Option<String>,
    #[serde(default = "default_upstream_pipelining")]
    pub pipelining: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    pub dir: Spanned<PathBuf>,
    pub p12_password_file: Option<Spanned<PathBuf>>,
    pub passphrase_file: Option<Spanned<PathBuf>>,
    pub pkcs11: Option<Spanned<RawPkcs11>>,
}

/// `[keys.pkcs11]`: the token holding the private keys (contract names: module, token, pin_file).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPkcs11 {
    pub module: Spanned<PathBuf>,
    pub token: Spanned<String>,
    pub pin_file: Spanned<PathBuf>,
    #[serde(default = "default_pkcs11_sessions")]
    pub sessions: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificates {
    pub dir: Spanned<PathBuf>,
    #[serde(default)]
    pub trust: Vec<Spanned<PathBuf>>,
    /// Operator-dropped CRLs (DER or PEM), an alternative to fetching them.
    pub crl_dir: Option<Spanned<PathBuf>>,
    /// The certificate database (files, imported, harvested); default under the spool.
    pub store: Option<Spanned<PathBuf>>,
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: Dur,
    #[serde(default = "default_crl_max_size")]
    pub crl_max_size: Size,
    #[serde(default = "default_revocation_interval")]
    pub revocation_interval: Dur,
}

/// `[[directory]]`: one LDAP directory to ask for recipient certificates (issue 10; the key
/// names are the contract).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectory {
    pub url: Spanned<String>,
    #[serde(default = "default_directory_starttls")]
    pub starttls: bool,
    pub ca_file: Option<Spanned<PathBuf>>,
    pub bind_dn: Option<Spanned<String>>,
    pub password_file: Option<Spanned<PathBuf>>,
    pub base: Spanned<String>,
    #[serde(default = "default_directory_filter")]
    pub filter: Spanned<String>,
    #[serde(default = "default_directory_attributes")]
    pub attributes: Vec<Spanned<String>>,
    #[serde(default = "default_directory_cache_ttl")]
    pub cache_ttl: Dur,
    #[serde(default = "default_directory_negative_ttl")]
    pub negative_ttl: Dur,
    #[serde(default = "default_directory_timeout")]
    pub timeout: Dur,
}

/// `[inbound]`: mail the organisation's internet-facing MTA hands in for local recipients,
/// opened and relayed to the internal mail server. `listen`, `relay_networks`, `upstream`,
/// `tls`, `ca_file`, `decrypt`, `verify`, `harvest` are the contract of issue 13.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    #[serde(default = "default_inbound_listen")]
    pub listen: Vec<Spanned<String>>,
    /// Required: the MTAs allowed to hand mail in.
    #[serde(default)]
    pub relay_networks: Vec<Spanned<String>>,
    /// Required: the internal mail server, url forms as `[upstream] url`.
    pub upstream: Spanned<String>,
    #[serde(default = "default_inbound_tls")]
    pub tls: Spanned<String>,
    pub ca_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_inbound_decrypt")]
    pub decrypt: Spanned<bool>,
    #[serde(default = "default_inbound_verify")]
    pub verify: Spanned<bool>,
    #[serde(default = "default_inbound_harvest")]
    pub harvest: Spanned<bool>,
    #[serde(default = "default_inbound_on_undecryptable")]
    pub on_undecryptable: Spanned<String>,
    #[serde(default = "default_inbound_subject_tags")]
    pub subject_tags: bool,
    /// `[[inbound.rule]]`: per-sender requirements, first match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Spanned<RawInboundRule>>,
}

/// `[[inbound.rule]]`: mail from `senders` that does not meet `require` gets `action`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInboundRule {
    pub senders: Vec<Spanned<String>>,
    pub require: Spanned<String>,
    pub action: Spanned<String>,
}

/// `[policy]`: the defaults every rule falls back to.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub sign: Option<Spanned<String>>,
    pub encrypt: Option<Spanned<String>>,
    pub encryption: Option<Spanned<String>>,
    pub encryption_allowed: Option<Spanned<Vec<Spanned<String>>>>,
    pub key_transport: Option<Spanned<String>>,
    pub on_missing_key: Option<Spanned<String>>,
    pub signature: Option<Spanned<String>>,
    pub digest: Option<Spanned<String>>,
    pub rsa_signature: Option<Spanned<String>>,
    pub encrypt_to_self: Option<bool>,
    pub revocation: Option<Spanned<String>>,
    pub subject_tag: Option<String>,
    pub encrypt_header: Option<String>,
}

/// `[[rule]]`: first match on (sender, recipient) wins; unset fields fall back to `[policy]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub from: Option<Vec<Spanned<String>>>,
    pub to: Option<Vec<Spanned<String>>>,
    pub sign: Option<Spanned<String>>,
    pub encrypt: Option<Spanned<String>>,
    pub encryption: Option<Spanned<String>>,
    pub key_transport: Option<Spanned<String>>,
    pub on_missing_key: Option<Spanned<String>>,
    pub revocation: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    pub listen: Option<Spanned<String>>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: default_admin_listen(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// "text" (default) or "json".
    pub format: Option<Spanned<String>>,
    /// tracing filter, e.g. "info" or "cachet=debug".
    pub level: Option<String>,
    /// JSON-lines audit log of every relayed copy.
    pub audit_file: Option<PathBuf>,
}

fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn default_listen() -> Vec<Spanned<String>> {
    P::default::<Vec<String>>("server.listen")
        .into_iter()
        .map(spanned)
        .collect()
}
fn default_hostname() -> String {
    P::default("server.hostname")
}
fn default_relay_networks() -> Vec<Spanned<String>> {
    P::default::<Vec<String>>("server.relay_networks")
        .into_iter()
        .map(spanned)
        .collect()
}
fn default_max_message_size() -> Size {
    P::default("server.max_message_size")
}
fn default_max_recipients() -> usize {
    P::default("server.max_recipients")
}
fn default_max_connections() -> usize {
    P::default("server.max_connections")
}
fn default_idle_timeout() -> Dur {
    P::default("server.idle_timeout")
}
fn default_max_errors() -> u32 {
    P::default("server.max_errors")
}
fn default_spool_dir() -> PathBuf {
    P::default("spool.dir")
}
fn default_retry() -> Vec<Dur> {
    P::default("spool.retry")
}
fn default_max_age() -> Dur {
    P::default("spool.max_age")
}
fn default_in_flow_delay() -> Dur {
    P::default("spool.in_flow_delay")
}
/// Not a literal: it depends on the machine (the table documents it).
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 4)
        .unwrap_or(8)
}
fn default_upstream_tls() -> Spanned<String> {
    spanned(P::default("upstream.tls"))
}
fn default_upstream_timeout() -> Dur {
    P::default("upstream.timeout")
}
fn default_upstream_connections() -> usize {
    P::default("upstream.max_connections")
}
fn default_upstream_pipelining() -> bool {
    P::default("upstream.pipelining")
}
fn default_pkcs11_sessions() -> usize {
    P::default("keys.pkcs11.sessions")
}
fn default_admin_listen() -> Option<Spanned<String>> {
    Some(spanned(P::default("admin.listen")))
}
fn default_fetch_timeout() -> Dur {
    P::default("certificates.fetch_timeout")
}
fn default_crl_max_size() -> Size {
    P::default("certificates.crl_max_size")
}
fn default_revocation_interval() -> Dur {
    P::default("certificates.revocation_interval")
}
fn default_directory_starttls() -> bool {
    P::default("directory.starttls")
}
fn default_directory_filter() -> Spanned<String> {
    spanned(P::default("directory.filter"))
}
fn default_directory_attributes() -> Vec<Spanned<String>> {
    P::default::<Vec<String>>("directory.attributes")
        .into_iter()
        .map(spanned)
        .collect()
}
fn default_directory_cache_ttl() -> Dur {
    P::default("directory.cache_ttl")
}
fn default_directory_negative_ttl() -> Dur {
    P::default("directory.negative_ttl")
}
fn default_directory_timeout() -> Dur {
    P::default("directory.timeout")
}
fn default_inbound_listen() -> Vec<Spanned<String>> {
    P::default::<Vec<String>>("inbound.listen")
        .into_iter()
        .map(spanned)
        .collect()
}
fn default_inbound_tls() -> Spanned<String> {
    spanned(P::default("inbound.tls"))
}
fn default_inbound_decrypt() -> Spanned<bool> {
    spanned(P::default("inbound.decrypt"))
}
fn default_inbound_verify() -> Spanned<bool> {
    spanned(P::default("inbound.verify"))
}
fn default_inbound_harvest() -> Spanned<bool> {
    spanned(P::default("inbound.harvest"))
}
fn default_inbound_on_undecryptable() -> Spanned<String> {
    spanned(P::default("inbound.on_undecryptable"))
}
fn default_inbound_subject_tags() -> bool {
    P::default("inbound.subject_tags")
}
