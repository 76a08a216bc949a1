//! `[[directory]]`: LDAP directories asked for recipient certificates (`store::directory`).
//! Key names in problems are `directory #N: <key>`.

use super::params;
use super::problems::{Problems, existing_file};
use super::raw;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

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

/// `[[directory]]` entries: an LDAP URL with TLS unless anonymous, credentials together, a
/// filter with one `{address}` in balanced parentheses, attributes, TTLs and timeout in bounds.
pub(super) fn directories(
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
