//! Who may submit mail as whom: `[[submitter]]` entries and the fail-closed defaults
//! (issue: a signature means something only if only the organisation signs as the organisation).
//!
//! A client is identified by what the session knows before `MAIL`: its IP address, the AUTH
//! user (RFC 4954) and the TLS client certificate it presented. [`Submitters::resolve`] turns
//! that into a [`Grant`] — the addresses it may use in `MAIL FROM` and `From:` — or `None`,
//! which means it may not relay at all (`550 5.7.1` at RCPT).
//!
//! Resolution, first match wins:
//! 1. the first `[[submitter]]` whose every given criterion (`networks`, `user`, `tls_client`)
//!    matches the client;
//! 2. an authenticated user with no entry: only the address equal to its user name;
//! 3. a client in `server.relay_networks` with no entry: any address in `server.local_domains`;
//! 4. anyone else: nothing.
//!
//! A pure function of the configuration and the client's identity: the session, `cachet
//! explain` and the tests call the same code.

use ipnet::IpNet;
use std::net::IpAddr;
use wildmatch::WildMatch;

/// What a TLS client certificate is matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsClientMatch {
    /// SHA-256 of the certificate's DER, lowercase hex without separators.
    Fingerprint(String),
    /// Issuer and subject DNs (RFC 4514 strings, compared case-insensitively after
    /// whitespace normalisation); the certificate must chain to `server.tls_client_ca`.
    Names { issuer: String, subject: String },
}

/// A header the message must carry (exact name, value compared after trimming, ASCII
/// case-insensitive): the tenant check for shared cloud platforms. Removed before relaying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredHeader {
    pub name: String,
    pub value: String,
}

/// One `[[submitter]]` entry.
#[derive(Debug, Clone)]
pub struct Submitter {
    pub name: String,
    pub networks: Vec<IpNet>,
    pub user: Option<String>,
    pub tls_client: Option<TlsClientMatch>,
    pub require_header: Option<RequiredHeader>,
    /// Address globs, lowercased.
    pub senders: Vec<(String, WildMatch)>,
}

/// What the session knows about a TLS client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// SHA-256 of the end-entity certificate's DER, lowercase hex.
    pub fingerprint: String,
    /// RFC 4514-style issuer and subject of the end-entity certificate.
    pub issuer: String,
    pub subject: String,
    /// The chain verified against `server.tls_client_ca` for TLS client authentication.
    pub chain_verified: bool,
}

/// Who the client is.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub ip: IpAddr,
    pub user: Option<&'a str>,
    pub cert: Option<&'a ClientCert>,
}

/// Which addresses a granted client may use.
#[derive(Debug, Clone)]
pub enum Senders {
    /// Globs of a `[[submitter]]` entry.
    Globs(Vec<(String, WildMatch)>),
    /// Any address in `server.local_domains` (a relay_networks client with no entry).
    LocalDomains,
    /// Exactly this address (an AUTH user with no entry).
    Exactly(String),
}

/// The outcome for one client: it may relay, with these addresses.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The entry's name, or `relay_networks` / `auth:USER` for the defaults.
    pub name: String,
    pub senders: Senders,
    pub require_header: Option<RequiredHeader>,
}

/// The loaded `[[submitter]]` list plus what the defaults need.
#[derive(Debug, Clone, Default)]
pub struct Submitters {
    pub entries: Vec<Submitter>,
    /// `server.local_domains`, lowercased.
    pub local_domains: Vec<String>,
    /// `server.relay_networks`.
    pub relay_networks: Vec<IpNet>,
}

/// Collapses whitespace and lowercases a DN string, so `CN=a, O=b` equals `cn=a,o=b`.
pub fn normalise_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| {
            rdn.split('=')
                .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("=")
        })
        .collect::<Vec<_>>()
        .join(",")
        .to_lowercase()
}

/// The domain of an address in one form (`None` without `@`): lower-cased U-labels, so
/// `xn--bcher-kva.example` and `bücher.example` are one domain.
pub fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, d)| crate::store::normalize_domain(d))
}

impl TlsClientMatch {
    fn matches(&self, cert: &ClientCert) -> bool {
        match self {
            TlsClientMatch::Fingerprint(fp) => cert.fingerprint.eq_ignore_ascii_case(fp),
            TlsClientMatch::Names { issuer, subject } => {
                cert.chain_verified
                    && normalise_dn(&cert.issuer) == normalise_dn(issuer)
                    && normalise_dn(&cert.subject) == normalise_dn(subject)
            }
        }
    }
}

impl Submitter {
    fn matches(&self, c: &Client) -> bool {
        let net = self.networks.is_empty()
            || self
                .networks
                .iter()
                .any(|n| n.contains(&c.ip.to_canonical()));
        let user = match &self.user {
            None => true,
            Some(u) => c.user.is_some_and(|cu| cu == u),
        };
        let tls = match &self.tls_client {
            None => true,
            Some(m) => c.cert.is_some_and(|cert| m.matches(cert)),
        };
        net && user && tls
    }
}

impl Submitters {
    /// True when `address` is in one of the organisation's own domains.
    pub fn is_local(&self, address: &str) -> bool {
        domain_of(address).is_some_and(|d| self.local_domains.contains(&d))
    }

    pub fn in_relay_networks(&self, ip: IpAddr) -> bool {
        self.relay_networks
            .iter()
            .any(|n| n.contains(&ip.to_canonical()))
    }

    /// The grant for this client, or `None`: it may not relay.
    pub fn resolve(&self, c: &Client) -> Option<Grant> {
        if let Some(s) = self.entries.iter().find(|s| s.matches(c)) {
            return Some(Grant {
                name: s.name.clone(),
                senders: Senders::Globs(s.senders.clone()),
                require_header: s.require_header.clone(),
            });
        }
        if let Some(user) = c.user {
            return Some(Grant {
                name: format!("auth:{user}"),
                senders: Senders::Exactly(crate::store::normalize_address(user)),
                require_header: None,
            });
        }
        if self.in_relay_networks(c.ip) {
            return Some(Grant {
                name: "relay_networks".into(),
                senders: Senders::LocalDomains,
                require_header: None,
            });
        }
        None
    }

    /// May a client with `grant` use `address` (MAIL FROM or a From: address)?
    /// The null sender `<>` is allowed in MAIL FROM by the caller, never here.
    pub fn allows(&self, grant: &Grant, address: &str) -> bool {
        let lower = crate::store::normalize_address(address);
        if lower.is_empty() || !lower.contains('@') {
            return false;
        }
        match &grant.senders {
            Senders::Globs(globs) => globs.iter().any(|(_, g)| g.matches(&lower)),
            Senders::LocalDomains => self.is_local(&lower),
            Senders::Exactly(a) => *a == lower,
        }
    }
}

impl Grant {
    /// In words, for `cachet explain` and refusals in the log.
    pub fn describe(&self) -> String {
        match &self.senders {
            Senders::Globs(g) => format!(
                "submitter {:?}: may use {}",
                self.name,
                g.iter()
                    .map(|(s, _)| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Senders::LocalDomains => format!(
                "{}: no [[submitter]] entry matches; may use any address in server.local_domains",
                self.name
            ),
            Senders::Exactly(a) => format!(
                "{}: no [[submitter]] entry matches; may use only {a}",
                self.name
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(s: &str) -> (String, WildMatch) {
        (s.to_string(), WildMatch::new(s))
    }

    fn table() -> Submitters {
        Submitters {
            entries: vec![
                Submitter {
                    name: "m365".into(),
                    networks: vec![],
                    user: None,
                    tls_client: Some(TlsClientMatch::Names {
                        issuer: "CN=Cloud CA, O=Example".into(),
                        subject: "CN=mail.protection.outlook.com".into(),
                    }),
                    require_header: Some(RequiredHeader {
                        name: "X-MS-Exchange-CrossTenant-Id".into(),
                        value: "abc".into(),
                    }),
                    senders: vec![glob("*@example.org")],
                },
                Submitter {
                    name: "scanner".into(),
                    networks: vec!["10.1.0.0/16".parse().unwrap()],
                    user: None,
                    tls_client: None,
                    require_header: None,
                    senders: vec![glob("scanner@example.org")],
                },
                Submitter {
                    name: "app".into(),
                    networks: vec![],
                    user: Some("app".into()),
                    tls_client: None,
                    require_header: None,
                    senders: vec![glob("noreply@example.org"), glob("*@app.example.org")],
                },
                Submitter {
                    name: "pinned".into(),
                    networks: vec![],
                    user: None,
                    tls_client: Some(TlsClientMatch::Fingerprint("ab01".into())),
                    require_header: None,
                    senders: vec![glob("*@example.org")],
                },
            ],
            local_domains: vec!["example.org".into()],
            relay_networks: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    fn cert(fp: &str, issuer: &str, subject: &str, verified: bool) -> ClientCert {
        ClientCert {
            fingerprint: fp.into(),
            issuer: issuer.into(),
            subject: subject.into(),
            chain_verified: verified,
        }
    }

    /// (ip, user, cert, expected grant name or None, address, allowed)
    #[test]
    fn resolution_table() {
        let s = table();
        let ms = cert(
            "ff",
            "cn=cloud ca,o=example",
            "CN=mail.protection.outlook.com",
            true,
        );
        let forged = cert(
            "ff",
            "CN=Cloud CA, O=Example",
            "CN=mail.protection.outlook.com",
            false,
        );
        let pinned = cert("AB01", "CN=x", "CN=y", false);
        /// (client ip, AUTH user, TLS certificate, expected grant, address, allowed)
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a ClientCert>,
            Option<&'a str>,
            &'a str,
            bool,
        );
        let cases: Vec<Case> = vec![
            // A relay_networks client with no entry: any local address, nothing else.
            (
                "10.2.3.4",
                None,
                None,
                Some("relay_networks"),
                "ceo@example.org",
                true,
            ),
            (
                "10.2.3.4",
                None,
                None,
                Some("relay_networks"),
                "ceo@EXAMPLE.ORG",
                true,
            ),
            (
                "10.2.3.4",
                None,
                None,
                Some("relay_networks"),
                "x@partner.example",
                false,
            ),
            (
                "10.2.3.4",
                None,
                None,
                Some("relay_networks"),
                "x@sub.example.org",
                false,
            ),
            // The scanner's network is narrowed to its own address.
            (
                "10.1.2.3",
                None,
                None,
                Some("scanner"),
                "scanner@example.org",
                true,
            ),
            (
                "10.1.2.3",
                None,
                None,
                Some("scanner"),
                "ceo@example.org",
                false,
            ),
            // An AUTH user with an entry, and one without: only its own name.
            (
                "192.0.2.1",
                Some("app"),
                None,
                Some("app"),
                "bot@app.example.org",
                true,
            ),
            (
                "192.0.2.1",
                Some("app"),
                None,
                Some("app"),
                "ceo@example.org",
                false,
            ),
            (
                "192.0.2.1",
                Some("alice@example.org"),
                None,
                Some("auth:alice@example.org"),
                "Alice@example.org",
                true,
            ),
            (
                "192.0.2.1",
                Some("alice@example.org"),
                None,
                Some("auth:alice@example.org"),
                "ceo@example.org",
                false,
            ),
            (
                "192.0.2.1",
                Some("relay"),
                None,
                Some("auth:relay"),
                "relay@example.org",
                false,
            ),
            // The cloud platform: verified chain with the right names.
            (
                "198.51.100.7",
                None,
                Some(&ms),
                Some("m365"),
                "ceo@example.org",
                true,
            ),
            // The same names on an unverified certificate match nothing.
            (
                "198.51.100.7",
                None,
                Some(&forged),
                None,
                "ceo@example.org",
                false,
            ),
            // A pinned fingerprint (case-insensitive hex).
            (
                "198.51.100.8",
                None,
                Some(&pinned),
                Some("pinned"),
                "a@example.org",
                true,
            ),
            // Anyone else may not relay at all.
            ("198.51.100.9", None, None, None, "ceo@example.org", false),
            (
                "::ffff:10.2.3.4",
                None,
                None,
                Some("relay_networks"),
                "a@example.org",
                true,
            ),
        ];
        for (ip, user, cert, name, addr, allowed) in cases {
            let c = Client {
                ip: ip.parse().unwrap(),
                user,
                cert,
            };
            let g = s.resolve(&c);
            assert_eq!(
                g.as_ref().map(|g| g.name.as_str()),
                name,
                "{ip} {user:?} {addr}"
            );
            assert_eq!(
                g.as_ref().is_some_and(|g| s.allows(g, addr)),
                allowed,
                "{ip} {user:?} {addr}"
            );
        }
    }

    #[test]
    fn the_header_requirement_travels_with_the_grant() {
        let s = table();
        let ms = cert(
            "ff",
            "CN=Cloud CA, O=Example",
            "CN=mail.protection.outlook.com",
            true,
        );
        let g = s
            .resolve(&Client {
                ip: "198.51.100.7".parse().unwrap(),
                user: None,
                cert: Some(&ms),
            })
            .unwrap();
        assert_eq!(
            g.require_header.unwrap().name,
            "X-MS-Exchange-CrossTenant-Id"
        );
    }

    #[test]
    fn a_labels_and_u_labels_are_one_domain() {
        let s = Submitters {
            local_domains: vec![crate::store::normalize_domain("xn--bcher-kva.example")],
            relay_networks: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        let g = s
            .resolve(&Client {
                ip: "10.0.0.1".parse().unwrap(),
                user: None,
                cert: None,
            })
            .unwrap();
        assert!(s.allows(&g, "ceo@Bücher.example"));
        assert!(s.allows(&g, "ceo@XN--BCHER-KVA.example"));
        assert!(!s.allows(&g, "ceo@buecher.example"));
    }

    #[test]
    fn dn_normalisation() {
        assert_eq!(normalise_dn("CN=a b,  O = Example "), "cn=a b,o=example");
    }
}
