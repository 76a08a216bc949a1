//! `[[submitter]]`: who may send as whom, checked into `policy::submitter::Submitters` together
//! with `server.local_domains` and `server.relay_networks`. Key names in problems are
//! `submitter "<name>": <key>` (`submitter #N` when unnamed).

use super::problems::{Problems, networks, sender_globs};
use super::raw;
use super::server::ServerConfig;
use toml::Spanned;

/// `[[submitter]]` entries, checked: each names at least one way to recognise the client and
/// at least one sender glob; a names-based `tls_client` needs `server.tls_client_ca`.
pub(super) fn submitters(
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
        let senders = sender_globs(&r.senders, &key("senders"), "*@example.org", p);
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
