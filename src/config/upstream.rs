//! `[upstream]`: the next hop for outbound mail (url, TLS policy, credentials, timeout,
//! connections, EHLO name). The url and TLS checks are shared with `[inbound]`'s `upstream` and
//! `tls` (`parse_upstream_url`, `upstream_tls`).

use super::problems::{Problems, bounded, existing_file, resolve};
use super::raw::RawUpstream;
use super::server::ServerConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

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
    /// Pipeline MAIL, RCPT and DATA (RFC 2920) when the upstream offers it.
    pub pipelining: bool,
}

/// `[upstream]`: a url cachet can reach, a TLS policy that fits it, username and password_file
/// together; `helo_name` defaults to `server.hostname`.
pub(super) fn upstream(
    u: RawUpstream,
    base: &Path,
    server: &ServerConfig,
    p: &mut Problems,
) -> UpstreamConfig {
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
    UpstreamConfig {
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
        pipelining: u.pipelining,
    }
}

/// `upstream.tls` / `inbound.tls`: verify | insecure | none, and never `none` with `smtps://`.
pub(super) fn upstream_tls(
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
