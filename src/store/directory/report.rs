//! `cachet certs lookup ADDRESS`: what every source of certificates says about one address,
//! and why each certificate is used or refused. Asks every directory afresh (each answer is
//! shown, even past the first usable one), then runs the same lookup the gateway runs.

use std::fmt::Write;
use std::time::SystemTime;

use super::{Directory, Outcome, best, candidates};
use crate::metrics::Metrics;
use crate::store::{CertStore, normalize_address};
use rustls_pki_types::CertificateDer;

/// A certificate's revocation status in words; `Err` when it must not be used (revoked).
pub type Revocation<'a> =
    dyn Fn(&CertificateDer<'static>, &[CertificateDer<'static>]) -> Result<String, String> + 'a;

/// The report text, and whether a usable certificate was found. `revocation` tells each
/// certificate's revocation status in words, `Err` when it must not be used (revoked); the
/// gateway's own lookup at the end applies it as `decide` does.
pub async fn certs_lookup(
    files_store: &CertStore,
    directory: &Directory,
    certs_dir: Option<&str>,
    address: &str,
    revocation: &Revocation<'_>,
) -> (String, bool) {
    let now = SystemTime::now();
    let key = normalize_address(address);
    let mut s = String::new();
    let _ = writeln!(s, "address: {address} (looked up as {key})");

    let files = files_store.lookup(address, now);
    let _ = writeln!(
        s,
        "\nfiles ({}):",
        certs_dir.unwrap_or("no [certificates] dir configured")
    );
    if files.cert.is_none() && files.rejected.is_empty() {
        let _ = writeln!(s, "  no certificate for this address");
    }
    if let Some(c) = &files.cert {
        let _ = writeln!(
            s,
            "  {}  accepted (valid until {})",
            c.fingerprint,
            crate::date::rfc3339(c.not_after)
        );
    }
    for (fp, reason) in &files.rejected {
        let _ = writeln!(s, "  {fp}  refused: {reason}");
    }

    let metrics = Metrics::default();
    let answers = directory.ask_all(address, &metrics).await;
    if directory.is_empty() {
        let _ = writeln!(s, "\ndirectories: none configured ([[directory]])");
    }
    for (source, answer) in directory.sources.iter().zip(&answers) {
        let c = &source.client.config;
        let _ = writeln!(
            s,
            "\ndirectory {} (base {:?}, filter {}):",
            c.url,
            c.base,
            super::ldap::filter_for(&c.filter, &key)
        );
        match &answer.outcome {
            Outcome::Failed(f) => {
                let _ = writeln!(
                    s,
                    "  lookup failed: {f} (treated as no certificate for {:?})",
                    c.negative_ttl
                );
            }
            Outcome::NotFound => {
                let _ = writeln!(s, "  no entry matched");
            }
            Outcome::Found(entries) => {
                let cands = candidates(&answer.outcome, &key, files_store, now);
                let chosen = best(&cands).map(|c| c.fingerprint.clone());
                for e in entries {
                    let _ = writeln!(
                        s,
                        "  entry {} ({} certificate value(s))",
                        e.dn,
                        e.values.len()
                    );
                    for c in cands.iter().filter(|c| c.dn == e.dn) {
                        let verdict = match &c.verdict {
                            Ok(_) if chosen.as_deref() == Some(c.fingerprint.as_str()) => {
                                "accepted (newest usable)".to_string()
                            }
                            Ok(_) => "usable (a newer one is preferred)".to_string(),
                            Err(reason) if c.is_ca => reason.clone(),
                            Err(reason) => format!("refused: {reason}"),
                        };
                        let _ = writeln!(s, "    {}  [{}]  {verdict}", c.fingerprint, c.attribute);
                    }
                }
            }
        }
    }

    // The gateway's own lookup: files first, then the directories in order, a revoked
    // certificate never used.
    let accept = |der: &CertificateDer<'static>, chain: &[CertificateDer<'static>]| {
        revocation(der, chain).map(|_| ())
    };
    let mut result = files_store.lookup_with(address, now, &accept);
    if result.cert.is_none() {
        directory.lookup_into(address, files_store, now, &accept, &mut result);
    }
    let _ = writeln!(s);
    for (fp, reason) in result
        .rejected
        .iter()
        .filter(|(_, r)| r.contains("revoked"))
    {
        let _ = writeln!(s, "{fp}  refused: {reason}");
    }
    let found = match &result.cert {
        Some(c) => {
            let status = match revocation(&c.der, files_store.intermediates()) {
                Ok(words) | Err(words) => words,
            };
            let _ = writeln!(
                s,
                "result: encrypts to {} (valid until {}; revocation: {status})",
                c.fingerprint,
                crate::date::rfc3339(c.not_after)
            );
            true
        }
        None => {
            let _ = writeln!(
                s,
                "result: no usable certificate (encrypt = \"required\" follows on_missing_key)"
            );
            false
        }
    };
    (s, found)
}
