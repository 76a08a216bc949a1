//! The parameter table: every scalar configuration key once, with its default, bounds, unit and
//! meaning (as Postfix declares each `main.cf` parameter once). It drives the loader's defaults
//! ([`default`], called by the serde mirror in [`super::raw`]), the bounds the validator checks
//! ([`check`]), `cachet config --defaults` / `--changed` (like `postconf -d` / `postconf -n`), and
//! the test that `config/cachet.toml` shows the real defaults.
//!
//! Defaults are TOML literals, so the table, the reference file and `--defaults` print the same
//! text. `[[rule]]` and `[[submitter]]` entries are described in docs/configuration.md; a rule's
//! fields have no defaults of their own (they fall back to `[policy]`). `[[directory]]` keys are
//! listed as `directory.<key>`: the defaults and bounds of every `[[directory]]` entry.

use serde::de::DeserializeOwned;

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// `section.key`.
    pub key: &'static str,
    /// The default as a TOML literal; `None`: unset unless given (or required, see `doc`).
    pub default: Option<&'static str>,
    /// Inclusive bounds for counts, sizes (bytes) and durations (seconds).
    pub min: Option<u64>,
    pub max: Option<u64>,
    /// What the number counts, for messages and `--defaults`.
    pub unit: &'static str,
    pub doc: &'static str,
}

const fn p(
    key: &'static str,
    default: Option<&'static str>,
    min: Option<u64>,
    max: Option<u64>,
    unit: &'static str,
    doc: &'static str,
) -> Param {
    Param {
        key,
        default,
        min,
        max,
        unit,
        doc,
    }
}

/// Every scalar key, in the order of `config/cachet.toml`.
pub const PARAMS: &[Param] = &[
    p(
        "server.listen",
        Some(r#"["0.0.0.0:2525"]"#),
        None,
        None,
        "",
        "SMTP listeners (STARTTLS offered when tls_cert is set)",
    ),
    p(
        "server.listen_tls",
        Some("[]"),
        None,
        None,
        "",
        "implicit-TLS (SMTPS) listeners",
    ),
    p(
        "server.hostname",
        Some(r#""localhost""#),
        None,
        None,
        "",
        "name in the banner, EHLO reply and Received:",
    ),
    p(
        "server.relay_networks",
        Some(r#"["127.0.0.0/8", "::1/128"]"#),
        None,
        None,
        "",
        "clients that may relay (as local_domains addresses without a [[submitter]] entry)",
    ),
    p(
        "server.local_domains",
        None,
        None,
        None,
        "",
        "required: the organisation's own domains",
    ),
    p(
        "server.max_message_size",
        Some(r#""50MiB""#),
        Some(1),
        Some(1 << 40),
        "bytes",
        "EHLO SIZE, enforced with 552 5.3.4",
    ),
    p(
        "server.max_recipients",
        Some("1000"),
        Some(1),
        Some(100_000),
        "recipients",
        "per message; 452 4.5.3 beyond",
    ),
    p(
        "server.tls_cert",
        None,
        None,
        None,
        "",
        "inbound TLS certificate chain (PEM)",
    ),
    p(
        "server.tls_key",
        None,
        None,
        None,
        "",
        "inbound TLS key (PEM)",
    ),
    p(
        "server.require_tls",
        Some("false"),
        None,
        None,
        "",
        "530 5.7.0 for MAIL/RCPT before STARTTLS",
    ),
    p(
        "server.max_connections",
        Some("500"),
        Some(1),
        Some(100_000),
        "connections",
        "concurrent SMTP connections; 421 4.7.0 beyond",
    ),
    p(
        "server.idle_timeout",
        Some(r#""5m""#),
        Some(1),
        Some(3600),
        "seconds",
        "silent clients get 421 4.4.2; also bounds the TLS handshake (at most 30 s)",
    ),
    p(
        "server.max_errors",
        Some("20"),
        Some(1),
        Some(1000),
        "replies",
        "error replies per session before 421 4.7.0",
    ),
    p(
        "server.auth_users",
        None,
        None,
        None,
        "",
        "users file for AUTH PLAIN/LOGIN over TLS",
    ),
    p(
        "server.tls_client_ca",
        None,
        None,
        None,
        "",
        "trust anchors for [[submitter]] tls_client issuer/subject matching",
    ),
    p(
        "spool.dir",
        Some(r#""/var/spool/cachet""#),
        None,
        None,
        "",
        "the queue (relative paths resolve from the config file's folder)",
    ),
    p(
        "spool.retry",
        Some(r#"["1m", "5m", "15m", "1h", "4h"]"#),
        None,
        None,
        "",
        "delays between attempts; the last repeats",
    ),
    p(
        "spool.max_age",
        Some(r#""5d""#),
        Some(60),
        Some(90 * 86400),
        "seconds",
        "undelivered this long: DSN 4.4.7",
    ),
    p(
        "spool.workers",
        None,
        Some(1),
        Some(10_000),
        "deliveries",
        "in flight at once (default: 4 x CPU cores)",
    ),
    p(
        "spool.in_flow_delay",
        Some(r#""1s""#),
        Some(0),
        Some(10),
        "seconds",
        "longest pause before accepting a message while deliveries lag (Postfix's in_flow_delay); 0: never",
    ),
    p(
        "upstream.url",
        None,
        None,
        None,
        "",
        "required: smtp://host:port, smtps://host:port or file:///dir",
    ),
    p(
        "upstream.tls",
        Some(r#""verify""#),
        None,
        None,
        "",
        "verify | insecure | none",
    ),
    p(
        "upstream.ca_file",
        None,
        None,
        None,
        "",
        "extra trust anchors for the upstream (PEM)",
    ),
    p(
        "upstream.username",
        None,
        None,
        None,
        "",
        "AUTH to the upstream",
    ),
    p(
        "upstream.password_file",
        None,
        None,
        None,
        "",
        "the upstream password, alone in a file",
    ),
    p(
        "upstream.timeout",
        Some(r#""60s""#),
        Some(1),
        Some(3600),
        "seconds",
        "per command towards the upstream",
    ),
    p(
        "upstream.max_connections",
        Some("8"),
        Some(1),
        Some(10_000),
        "connections",
        "upstream connections at once (idle ones reused)",
    ),
    p(
        "upstream.pipelining",
        Some("true"),
        None,
        None,
        "",
        "MAIL, RCPT and DATA in one write when the upstream offers PIPELINING (RFC 2920); false: one command at a time",
    ),
    p(
        "upstream.helo_name",
        None,
        None,
        None,
        "",
        "EHLO name upstream (default: server.hostname)",
    ),
    p(
        "keys.dir",
        None,
        None,
        None,
        "",
        "signing keys (PEM key + chain, or PKCS#12)",
    ),
    p(
        "keys.p12_password_file",
        None,
        None,
        None,
        "",
        "password for PKCS#12 files",
    ),
    p(
        "keys.passphrase_file",
        None,
        None,
        None,
        "",
        "passphrase for encrypted PKCS#8 key files (and PKCS#12 files without their own password)",
    ),
    p(
        "keys.pkcs11.module",
        None,
        None,
        None,
        "",
        "PKCS#11 library of the token holding the private keys (setting [keys.pkcs11] needs module, token and pin_file)",
    ),
    p(
        "keys.pkcs11.token",
        None,
        None,
        None,
        "",
        "label of the token",
    ),
    p(
        "keys.pkcs11.pin_file",
        None,
        None,
        None,
        "",
        "file holding the token's user PIN",
    ),
    p(
        "keys.pkcs11.sessions",
        Some("4"),
        Some(1),
        Some(256),
        "sessions",
        "token sessions open at once (signatures in parallel)",
    ),
    p(
        "certificates.dir",
        None,
        None,
        None,
        "",
        "recipient certificates",
    ),
    p(
        "certificates.trust",
        None,
        None,
        None,
        "",
        "trust anchors for S/MIME certificates (none: nothing validates)",
    ),
    p(
        "certificates.crl_dir",
        None,
        None,
        None,
        "",
        "CRLs dropped by the operator (DER or PEM), used besides those fetched from distribution points",
    ),
    p(
        "certificates.store",
        None,
        None,
        None,
        "",
        "the certificate database (directory files, imported and harvested certificates); default <spool.dir>/certificates/store.sqlite",
    ),
    p(
        "certificates.fetch_timeout",
        Some(r#""10s""#),
        Some(1),
        Some(300),
        "seconds",
        "one CRL download or OCSP exchange, connect included (connect alone: at most 5 s)",
    ),
    p(
        "certificates.crl_max_size",
        Some(r#""64MiB""#),
        Some(1024),
        Some(1 << 32),
        "bytes",
        "largest CRL or OCSP response accepted (CRLs stream to disk)",
    ),
    p(
        "certificates.revocation_interval",
        Some(r#""5m""#),
        Some(1),
        Some(86400),
        "seconds",
        "how often the background task looks for CRLs and OCSP answers due for refresh, and retries failed ones",
    ),
    p(
        "directory.url",
        None,
        None,
        None,
        "",
        "required per [[directory]]: ldap://host:port (with starttls) or ldaps://host:port",
    ),
    p(
        "directory.starttls",
        Some("false"),
        None,
        None,
        "",
        "upgrade an ldap:// connection with StartTLS (RFC 4513 section 3)",
    ),
    p(
        "directory.ca_file",
        None,
        None,
        None,
        "",
        "extra trust anchors (PEM) for the directory's TLS certificate; system roots otherwise",
    ),
    p(
        "directory.bind_dn",
        None,
        None,
        None,
        "",
        "simple bind DN (unset: anonymous); needs password_file",
    ),
    p(
        "directory.password_file",
        None,
        None,
        None,
        "",
        "file holding only the bind password",
    ),
    p(
        "directory.base",
        None,
        None,
        None,
        "",
        "required per [[directory]]: search base DN (subtree)",
    ),
    p(
        "directory.filter",
        Some(r#""(mail={address})""#),
        None,
        None,
        "",
        "search filter; {address} is replaced by the RFC 4515-escaped address",
    ),
    p(
        "directory.attributes",
        Some(r#"["userSMIMECertificate;binary", "userCertificate;binary"]"#),
        None,
        None,
        "",
        "attributes holding certificates (PKCS#7 bag or DER)",
    ),
    p(
        "directory.cache_ttl",
        Some(r#""1h""#),
        Some(1),
        Some(7 * 86400),
        "seconds",
        "how long an answer with certificates is kept",
    ),
    p(
        "directory.negative_ttl",
        Some(r#""10m""#),
        Some(1),
        Some(86400),
        "seconds",
        "how long \"no entry\" or a failed lookup is kept (one timeout per address per negative_ttl)",
    ),
    p(
        "directory.timeout",
        Some(r#""3s""#),
        Some(1),
        Some(60),
        "seconds",
        "bound on one lookup: connect, TLS, bind and search",
    ),
    p(
        "inbound.listen",
        Some(r#"["0.0.0.0:2526"]"#),
        None,
        None,
        "",
        "[inbound] listeners (STARTTLS offered when server.tls_cert is set); never the same address as server.listen",
    ),
    p(
        "inbound.relay_networks",
        None,
        None,
        None,
        "",
        "required in [inbound]: the MTAs allowed to hand mail in (others get 554 5.7.1 at connect)",
    ),
    p(
        "inbound.upstream",
        None,
        None,
        None,
        "",
        "required in [inbound]: the internal mail server, smtp://host:port, smtps://host:port or file:///dir",
    ),
    p(
        "inbound.tls",
        Some(r#""verify""#),
        None,
        None,
        "",
        "towards the internal mail server: verify | insecure | none",
    ),
    p(
        "inbound.ca_file",
        None,
        None,
        None,
        "",
        "extra trust anchors for the internal mail server (PEM)",
    ),
    p(
        "inbound.decrypt",
        Some("true"),
        None,
        None,
        "",
        "decrypt mail encrypted to the organisation's keys ([keys])",
    ),
    p(
        "inbound.verify",
        Some("true"),
        None,
        None,
        "",
        "verify every signature layer; result in Authentication-Results (needs certificates.trust)",
    ),
    p(
        "inbound.harvest",
        Some("true"),
        None,
        None,
        "",
        "learn verified signers' certificates and capabilities (needs verify and certificates.trust)",
    ),
    p(
        "inbound.on_undecryptable",
        Some(r#""deliver""#),
        None,
        None,
        "",
        "encrypted to a recipient cachet holds no key for: deliver | hold | reject",
    ),
    p(
        "inbound.subject_tags",
        Some("false"),
        None,
        None,
        "",
        "prefix [signed], [signature invalid], [decrypted] to the Subject",
    ),
    p(
        "inbound.rule.senders",
        None,
        None,
        None,
        "",
        "required per [[inbound.rule]]: envelope-sender globs",
    ),
    p(
        "inbound.rule.require",
        None,
        None,
        None,
        "",
        "required per [[inbound.rule]]: signed | valid-signature | encrypted",
    ),
    p(
        "inbound.rule.action",
        None,
        None,
        None,
        "",
        "required per [[inbound.rule]]: tag | hold | reject, when the requirement is not met",
    ),
    p(
        "policy.sign",
        Some(r#""opportunistic""#),
        None,
        None,
        "",
        "never | opportunistic | required",
    ),
    p(
        "policy.encrypt",
        Some(r#""opportunistic""#),
        None,
        None,
        "",
        "never | opportunistic | required",
    ),
    p(
        "policy.encryption",
        Some(r#""aes256-cbc""#),
        None,
        None,
        "",
        "aes256-cbc | aes128-gcm | aes256-gcm",
    ),
    p(
        "policy.encryption_allowed",
        Some(r#"["aes256-gcm", "aes128-gcm", "aes256-cbc"]"#),
        None,
        None,
        "",
        "ciphers a recipient's announced SMIMECapabilities may select, in the recipient's order",
    ),
    p(
        "policy.key_transport",
        Some(r#""rsa-pkcs1""#),
        None,
        None,
        "",
        "rsa-pkcs1 | rsa-oaep",
    ),
    p(
        "policy.on_missing_key",
        Some(r#""reject""#),
        None,
        None,
        "",
        "reject | hold | bounce",
    ),
    p(
        "policy.signature",
        Some(r#""detached""#),
        None,
        None,
        "",
        "detached | opaque",
    ),
    p(
        "policy.digest",
        Some(r#""sha256""#),
        None,
        None,
        "",
        "sha256 | sha512",
    ),
    p(
        "policy.rsa_signature",
        Some(r#""pkcs1""#),
        None,
        None,
        "",
        "pkcs1 | pss",
    ),
    p(
        "policy.encrypt_to_self",
        Some("false"),
        None,
        None,
        "",
        "also encrypt to the sender's own certificate",
    ),
    p(
        "policy.revocation",
        Some(r#""soft""#),
        None,
        None,
        "",
        "off, soft (unknown status: use the certificate, log, count) or hard (unknown = no certificate); revoked is never used",
    ),
    p(
        "policy.subject_tag",
        None,
        None,
        None,
        "",
        "subject tag that raises encryption to required",
    ),
    p(
        "policy.encrypt_header",
        None,
        None,
        None,
        "",
        "header that raises encryption to required when \"yes\"",
    ),
    p(
        "admin.listen",
        Some(r#""127.0.0.1:9925""#),
        None,
        None,
        "",
        "/metrics and /healthz (\"\" = off)",
    ),
    p(
        "log.format",
        Some(r#""text""#),
        None,
        None,
        "",
        "text | json",
    ),
    p(
        "log.level",
        Some(r#""info""#),
        None,
        None,
        "",
        "tracing filter (RUST_LOG overrides)",
    ),
    p(
        "log.audit_file",
        None,
        None,
        None,
        "",
        "JSON-lines audit trail of every relayed copy",
    ),
];

/// The entry for `key`. Panics on a key not in the table: a programming error caught by tests.
pub fn param(key: &str) -> &'static Param {
    PARAMS
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("{key} is not in the parameter table"))
}

/// The default of `key`, parsed from its TOML literal into the loader's type.
pub fn default<T: DeserializeOwned>(key: &str) -> T {
    #[derive(serde::Deserialize)]
    struct V<T> {
        v: T,
    }
    let lit = param(key)
        .default
        .unwrap_or_else(|| panic!("{key} has no default"));
    toml::from_str::<V<T>>(&format!("v = {lit}"))
        .unwrap_or_else(|e| panic!("{key}: default {lit} does not parse: {e}"))
        .v
}

/// Checks `value` against the bounds of `key`; the message names unit and range.
pub fn check(key: &str, value: u64) -> Result<(), String> {
    let p = param(key);
    let low = p.min.is_some_and(|m| value < m);
    let high = p.max.is_some_and(|m| value > m);
    if low || high {
        return Err(format!(
            "{value} {} is out of range: must be {}",
            p.unit,
            match (p.min, p.max) {
                (Some(a), Some(b)) => format!("from {a} to {b}"),
                (Some(a), None) => format!("at least {a}"),
                (None, Some(b)) => format!("at most {b}"),
                (None, None) => String::new(),
            }
        ));
    }
    Ok(())
}

/// `cachet config --defaults`: every key with its default (`postconf -d`).
pub fn render_defaults() -> String {
    let mut out = String::new();
    for p in PARAMS {
        match p.default {
            Some(d) => out.push_str(&format!("{} = {d}\n", p.key)),
            None => out.push_str(&format!("# {} (unset: {})\n", p.key, p.doc)),
        }
    }
    out
}

/// `cachet config --changed`: the keys `source` sets to something other than the default
/// (`postconf -n`), as `section.key = value`; then how many `[[rule]]` / `[[submitter]]` /
/// `[policy]` entries it has.
pub fn render_changed(source: &str) -> Result<String, String> {
    let table: toml::Table = toml::from_str(source).map_err(|e| e.message().to_string())?;
    let mut out = String::new();
    for p in PARAMS {
        // `section.key` or `section.sub.key` ([keys.pkcs11]).
        let mut parts = p.key.split('.');
        let first = table.get(parts.next().expect("section.key"));
        let Some(v) = parts.fold(first, |t, k| t.and_then(|t| t.get(k))) else {
            continue;
        };
        let default: Option<toml::Value> = p
            .default
            .and_then(|d| toml::from_str::<toml::Table>(&format!("v = {d}")).ok())
            .and_then(|t| t.get("v").cloned());
        if default.as_ref() != Some(v) {
            out.push_str(&format!("{} = {v}\n", p.key));
        }
    }
    for (name, what) in [
        ("rule", "[[rule]]"),
        ("submitter", "[[submitter]]"),
        ("directory", "[[directory]]"),
    ] {
        if let Some(list) = table.get(name).and_then(|v| v.as_array()) {
            out.push_str(&format!("# {} {what} entries\n", list.len()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_parses_and_keys_are_unique() {
        for p in PARAMS {
            if let Some(d) = p.default {
                let t: toml::Table = toml::from_str(&format!("v = {d}"))
                    .unwrap_or_else(|e| panic!("{}: {e}", p.key));
                assert!(t.contains_key("v"));
            }
            assert_eq!(
                PARAMS.iter().filter(|q| q.key == p.key).count(),
                1,
                "{}",
                p.key
            );
        }
    }

    #[test]
    fn bounds_name_the_range() {
        assert!(check("server.max_connections", 1).is_ok());
        assert_eq!(
            check("upstream.max_connections", 0).unwrap_err(),
            "0 connections is out of range: must be from 1 to 10000"
        );
    }

    #[test]
    fn changed_lists_only_what_differs() {
        let out = render_changed(
            "[server]\nhostname = \"localhost\"\nmax_connections = 50\nlocal_domains = [\"example.org\"]\n\
             [upstream]\nurl = \"smtp://a\"\n[[rule]]\nname = \"r\"\n",
        )
        .unwrap();
        assert_eq!(
            out,
            "server.local_domains = [\"example.org\"]\nserver.max_connections = 50\nupstream.url = \"smtp://a\"\n# 1 [[rule]] entries\n"
        );
    }
}
