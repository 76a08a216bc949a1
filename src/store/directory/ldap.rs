//! One LDAP question: connect (ldaps:// or ldap:// + StartTLS, verified by rustls on aws-lc-rs),
//! bind (simple, or anonymous), search the subtree under `base` with the filter template
//! filled in with the RFC 4515-escaped address, read the certificate attributes, unbind.
//!
//! The whole exchange is bounded by the caller's timeout; a new connection per question keeps
//! the state machine trivial and answers are cached by [`super::Directory`], so a directory
//! sees at most one question per address per TTL.
//!
//! Secrets touched: the bind password (held in memory, wiped on drop, never logged).

use ldap3::asn1::{PL, StructureTag};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchOptions};
use std::sync::Arc;

use crate::config::DirectoryConfig;

/// At most this many entries per answer: an address names a person, not a department. A filter
/// that matches more is answered with the first ones (the server's size limit, result code 4).
pub const MAX_ENTRIES: i32 = 16;

/// One attribute value as the directory sent it.
#[derive(Debug, Clone)]
pub struct RawValue {
    /// The attribute description returned (e.g. `userSMIMECertificate;binary`).
    pub attribute: String,
    pub bytes: Vec<u8>,
}

/// One entry the filter matched.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub dn: String,
    pub values: Vec<RawValue>,
}

/// How a question failed, for the metric label and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer within `timeout` (connect, TLS, bind and search together).
    Timeout,
    /// Anything else: refused connection, TLS verification, bind refused, search error.
    Error(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => write!(f, "no answer within the timeout"),
            Failure::Error(e) => write!(f, "{e}"),
        }
    }
}

/// RFC 4515 §3: in a filter's assertion value, `*`, `(`, `)`, `\` and NUL are written as `\XX`,
/// so an address can only ever be compared as a literal (`*)(mail=*` matches nobody but an
/// entry whose mail is exactly that).
pub fn escape(value: &str) -> String {
    ldap3::ldap_escape(value).into_owned()
}

/// The filter for `address`: the template with `{address}` replaced by its escaped form.
pub fn filter_for(template: &str, address: &str) -> String {
    template.replace("{address}", &escape(address))
}

/// Everything needed to ask one directory; built once per runtime.
pub struct Client {
    pub config: DirectoryConfig,
    /// rustls client config (aws-lc-rs; system roots + `ca_file`) for ldaps:// and StartTLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The bind password read from `password_file`.
    pub password: Option<zeroize::Zeroizing<String>>,
}

impl Client {
    /// Builds the TLS config and reads the password file; errors name the file.
    pub fn new(config: DirectoryConfig) -> Result<Client, (String, String)> {
        let tls = if config.tls() {
            Some(
                crate::relay::tls::client_config(config.ca_file.as_deref(), false)
                    .map_err(|e| ("ca_file".to_string(), e))?,
            )
        } else {
            None
        };
        let password = match &config.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    (
                        "password_file".to_string(),
                        format!("{}: {e}", path.display()),
                    )
                })?;
                let pw = text.trim_end_matches(['\r', '\n']).to_string();
                if pw.is_empty() {
                    return Err((
                        "password_file".into(),
                        format!("{}: the file is empty", path.display()),
                    ));
                }
                Some(zeroize::Zeroizing::new(pw))
            }
            None => None,
        };
        Ok(Client {
            config,
            tls,
            password,
        })
    }

    /// Ask for `address`; `Ok(entries)` (possibly none) or why there is no answer.
    pub async fn query(&self, address: &str) -> Result<Vec<RawEntry>, Failure> {
        match tokio::time::timeout(self.config.timeout, self.exchange(address)).await {
            Ok(r) => r.map_err(Failure::Error),
            Err(_) => Err(Failure::Timeout),
        }
    }

    async fn exchange(&self, address: &str) -> Result<Vec<RawEntry>, String> {
        let c = &self.config;
        // No separate connect timeout: `query` bounds the whole exchange, and reports it as one.
        let mut settings = LdapConnSettings::new().set_starttls(c.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &c.url)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // The connection task ends when `ldap` (every handle) is dropped.
        ldap3::drive!(conn);
        if let (Some(dn), Some(pw)) = (&c.bind_dn, &self.password) {
            ldap.simple_bind(dn, pw)
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("bind as {dn}: {e}"))?;
        }
        let filter = filter_for(&c.filter, address);
        let result = ldap
            .with_search_options(SearchOptions::new().sizelimit(MAX_ENTRIES))
            .search(&c.base, Scope::Subtree, &filter, requested(&c.attributes))
            .await
            .map_err(|e| format!("search: {e}"))?;
        let (entries, res) = (result.0, result.1);
        // 0 success; 4 sizeLimitExceeded still carries the first MAX_ENTRIES entries.
        if res.rc != 0 && res.rc != 4 {
            return Err(format!("search: result code {} {}", res.rc, res.text));
        }
        let _ = ldap.unbind().await;
        Ok(entries.iter().filter_map(|e| entry(&e.0)).collect())
    }
}

/// The attribute descriptions to ask for: the configured ones, and each `X;binary` also as
/// plain `X`. The `;binary` transfer option (RFC 4522) is what Active Directory and the RFC 4523
/// certificate syntaxes want, but OpenLDAP gives `userSMIMECertificate` the Binary syntax and
/// refuses the option on it, silently returning nothing for `userSMIMECertificate;binary`.
/// Values are recognised from their bytes ([`super::bag`]), so a value returned under both
/// names is the same certificate, counted once.
pub fn requested(attributes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in attributes {
        let plain = a
            .split(';')
            .filter(|o| !o.eq_ignore_ascii_case("binary"))
            .collect::<Vec<_>>()
            .join(";");
        for name in [a.clone(), plain] {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(&name)) {
                out.push(name);
            }
        }
    }
    out
}

/// SearchResultEntry (RFC 4511 §4.5.2): `[APPLICATION 4] SEQUENCE { objectName, attributes
/// SEQUENCE OF SEQUENCE { type, vals SET OF value } }`. Read without panicking on a malformed
/// entry (ldap3's `SearchEntry::construct` would): a bad entry is skipped.
fn entry(tag: &StructureTag) -> Option<RawEntry> {
    let PL::C(parts) = &tag.payload else {
        return None;
    };
    let mut parts = parts.iter();
    let dn = match &parts.next()?.payload {
        PL::P(b) => String::from_utf8_lossy(b).into_owned(),
        PL::C(_) => return None,
    };
    let PL::C(attrs) = &parts.next()?.payload else {
        return None;
    };
    let mut values = Vec::new();
    for attr in attrs {
        let PL::C(pair) = &attr.payload else { continue };
        let (Some(name), Some(vals)) = (pair.first(), pair.get(1)) else {
            continue;
        };
        let (PL::P(name), PL::C(vals)) = (&name.payload, &vals.payload) else {
            continue;
        };
        let attribute = String::from_utf8_lossy(name).into_owned();
        for v in vals {
            if let PL::P(bytes) = &v.payload
                && !values.iter().any(|seen: &RawValue| seen.bytes == *bytes)
            {
                values.push(RawValue {
                    attribute: attribute.clone(),
                    bytes: bytes.clone(),
                });
            }
        }
    }
    Some(RawEntry { dn, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_syntax_in_an_address_is_escaped() {
        for (address, filter) in [
            ("bob@x.test", "(mail=bob@x.test)"),
            ("*)(mail=*", "(mail=\\2a\\29\\28mail=\\2a)"),
            ("*@x.test", "(mail=\\2a@x.test)"),
            ("a\\2a@x.test", "(mail=a\\5c2a@x.test)"),
            ("a\0b@x.test", "(mail=a\\00b@x.test)"),
            ("(cn=*)", "(mail=\\28cn=\\2a\\29)"),
        ] {
            assert_eq!(
                filter_for("(mail={address})", address),
                filter,
                "{address:?}"
            );
            // Whatever the address, the filter stays one equality assertion.
            assert!(ldap3::parse_filter(filter_for("(mail={address})", address)).is_ok());
        }
        assert_eq!(
            filter_for("(|(mail={address})(otherMailbox={address}))", "*"),
            "(|(mail=\\2a)(otherMailbox=\\2a))"
        );
    }

    #[test]
    fn binary_attributes_are_also_asked_without_the_option() {
        let asked = requested(&[
            "userSMIMECertificate;binary".into(),
            "userCertificate;binary".into(),
            "userCertificate".into(),
            "cACertificate".into(),
        ]);
        assert_eq!(
            asked,
            [
                "userSMIMECertificate;binary",
                "userSMIMECertificate",
                "userCertificate;binary",
                "userCertificate",
                "cACertificate"
            ]
        );
    }

    #[test]
    fn a_malformed_entry_is_skipped_not_a_panic() {
        use ldap3::asn1::TagClass;
        let prim = |b: &[u8]| StructureTag {
            class: TagClass::Universal,
            id: 4,
            payload: PL::P(b.to_vec()),
        };
        let cons = |v: Vec<StructureTag>| StructureTag {
            class: TagClass::Universal,
            id: 16,
            payload: PL::C(v),
        };
        assert!(entry(&prim(b"x")).is_none());
        assert!(entry(&cons(vec![prim(b"cn=a")])).is_none());
        let good = cons(vec![
            prim(b"cn=a"),
            cons(vec![
                cons(vec![
                    prim(b"userCertificate;binary"),
                    cons(vec![prim(b"\x30\x00")]),
                ]),
                cons(vec![prim(b"broken")]),
            ]),
        ]);
        let e = entry(&good).unwrap();
        assert_eq!(e.dn, "cn=a");
        assert_eq!(e.values.len(), 1);
        assert_eq!(e.values[0].attribute, "userCertificate;binary");
    }
}
