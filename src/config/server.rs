//! `[server]`: the outbound listener (addresses, TLS, AUTH, limits) and the organisation's own
//! domains (`local_domains`, which `[[submitter]]` and `[inbound]` read). Key names in problems
//! are `server.<key>`.

use super::problems::{Problems, bounded, existing_file, networks, socket_addrs};
use super::raw::RawServer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

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

/// `[server]`: listeners (at least one), TLS files in pairs (and present where `require_tls`,
/// `listen_tls`, `auth_users` or `tls_client_ca` need them), host name, limits within the
/// parameter table's bounds, `local_domains`.
pub(super) fn server(s: RawServer, base: &Path, p: &mut Problems) -> ServerConfig {
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
    ServerConfig {
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
    }
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
