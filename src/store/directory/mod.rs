//! Recipient certificates from LDAP directories (`[[directory]]`, issue 10), behind a cache.
//!
//! The seam: I/O happens in [`Directory::prefetch`] (async, bounded by each directory's
//! `timeout`), called where the answer is about to be needed — at RCPT for recipients whose
//! rule requires encryption (the session), and before sealing for the rest (the scheduler, on
//! the async side, before the blocking sealing job). The policy decision stays a pure
//! function: [`Directory::lookup`] only reads the cache, never waits, never touches the
//! network, so `decide` runs the same at RCPT, in the sealing job and in `cachet explain`.
//!
//! Cache, per directory and normalised address ([`crate::store::normalize_address`]):
//! - an answer with entries is kept `cache_ttl`; no entry, or a failed question (refused
//!   connection, TLS, bind, timeout), `negative_ttl`. A directory that is down thus costs one
//!   `timeout` per address per `negative_ttl`, not one per message;
//! - one question per address at a time: concurrent sessions and deliveries wait for the same
//!   answer (a `OnceCell` per slot);
//! - an expired answer is still what [`Directory::lookup`] reads until the refresh lands, so a
//!   TTL ending between prefetch and seal never turns into "no certificate".
//!
//! The cache lives with the runtime; a reload (SIGHUP) hands the answers of directories
//! configured the same way to the new one ([`Directory::adopt_cache`]).
//!
//! What counts: every certificate found is validated exactly like a file in
//! `[certificates] dir`, through [`CertStore::validate_found`] (usage, expiry, key, path to
//! `certificates.trust` with the bag's CA certificates and the directory's intermediates), and
//! must name the address in its subjectAltName. Files win: a directory is asked only for an
//! address without a usable file certificate. Directories are asked in order; the first that
//! yields a usable certificate answers (its newest one).
//!
//! A directory that cannot be asked is treated like one without a certificate (logged at
//! `warn`, counted as `cachet_directory_lookups_total{result="error"|"timeout"}`): opportunistic
//! encryption sends in clear, `encrypt = "required"` follows `on_missing_key`.

pub mod bag;
pub mod ldap;
pub mod report;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use rustls_pki_types::CertificateDer;

use super::certs::{CertLookup, CertStore, RecipientCert};
use super::normalize_address;
use super::validate;
use crate::config::DirectoryConfig;
use crate::metrics::Metrics;
use ldap::{Client, Failure, RawEntry};

/// Beyond this many cached addresses per directory, answers older than both TTLs are dropped.
const CACHE_SWEEP_AT: usize = 10_000;

/// What one directory said about one address.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Entries matched (their certificate attributes may still be empty or unusable).
    Found(Vec<RawEntry>),
    /// No entry matched.
    NotFound,
    /// The directory could not be asked.
    Failed(Failure),
}

/// An answer and when it was fetched.
#[derive(Debug, Clone)]
pub struct Answer {
    pub at: Instant,
    pub outcome: Outcome,
}

/// One cache slot: the answer being fetched (or fetched), and the one before it.
#[derive(Default)]
struct Slot {
    cell: tokio::sync::OnceCell<Answer>,
    /// The expired answer this slot replaces, read until `cell` is filled.
    previous: Option<Answer>,
}

impl Slot {
    fn current(&self) -> Option<&Answer> {
        self.cell.get().or(self.previous.as_ref())
    }
}

/// One `[[directory]]`: how to ask it and what it said.
pub struct Source {
    pub client: Client,
    cache: Mutex<HashMap<String, Arc<Slot>>>,
}

/// One certificate a directory returned, and whether it can be used.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The entry and attribute it came from.
    pub dn: String,
    pub attribute: String,
    pub fingerprint: String,
    /// CA certificates are never recipients; they only help build paths.
    pub is_ca: bool,
    /// The certificate to encrypt to, or why not.
    pub verdict: Result<Arc<RecipientCert>, String>,
    /// The CA certificates of the same entry, which chain it.
    pub chain: Vec<CertificateDer<'static>>,
}

/// An extra test for a certificate about to be used (the certificate, the intermediates that
/// chain it): `Err(reason)` passes it over. The same shape as the file store's, for revocation.
pub use crate::store::certs::Accept;

/// All `[[directory]]` entries, in order. Empty (no directory) by default.
#[derive(Default)]
pub struct Directory {
    pub sources: Vec<Source>,
}

impl Directory {
    /// Builds one client per entry (TLS config, password); errors are (entry index, key, message).
    pub fn new(configs: &[DirectoryConfig]) -> Result<Directory, Vec<(usize, String, String)>> {
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            match Client::new(c.clone()) {
                Ok(client) => sources.push(Source {
                    client,
                    cache: Mutex::new(HashMap::new()),
                }),
                Err((key, msg)) => errors.push((i, key, msg)),
            }
        }
        if errors.is_empty() {
            Ok(Directory { sources })
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Make sure every address in `addresses` without a usable file certificate has a fresh
    /// answer from the directories, asking them in order until one yields a usable
    /// certificate. Bounded by the sum of the directories' timeouts per address (the
    /// addresses are asked concurrently).
    pub async fn prefetch(&self, addresses: &[String], files: &CertStore, metrics: &Metrics) {
        if self.sources.is_empty() {
            return;
        }
        let jobs = addresses
            .iter()
            .map(|a| self.prefetch_one(a, files, metrics));
        futures::future::join_all(jobs).await;
    }

    async fn prefetch_one(&self, address: &str, files: &CertStore, metrics: &Metrics) {
        let now = SystemTime::now();
        if files.lookup(address, now).cert.is_some() {
            return;
        }
        let key = normalize_address(address);
        for source in &self.sources {
            let answer = source.answer(&key, metrics).await;
            if best(&candidates(&answer.outcome, &key, files, now)).is_some() {
                return;
            }
        }
    }

    /// Ask every directory about `address` now (no cache reads, answers cached): for
    /// `cachet certs lookup`, which shows what each one says.
    pub async fn ask_all(&self, address: &str, metrics: &Metrics) -> Vec<Answer> {
        let key = normalize_address(address);
        let mut out = Vec::new();
        for source in &self.sources {
            out.push(source.answer(&key, metrics).await);
        }
        out
    }

    /// Adds the directories' view of `address` to a file-store lookup that found nothing
    /// usable: the first directory with a usable certificate answers. Reads the cache only.
    /// `accept` is one more test for each otherwise valid certificate, given it and the
    /// intermediates that chain it (the files' CA certificates, then the entry's): the seam for
    /// revocation, shaped like the file store's.
    pub fn lookup_into(
        &self,
        address: &str,
        files: &CertStore,
        now: SystemTime,
        accept: &Accept<'_>,
        out: &mut CertLookup,
    ) {
        let key = normalize_address(address);
        for source in &self.sources {
            let Some(answer) = source.cached(&key) else {
                continue;
            };
            let mut cands = candidates(&answer.outcome, &key, files, now);
            for c in cands.iter_mut().filter(|c| c.verdict.is_ok()) {
                let mut chain = files.intermediates().to_vec();
                chain.extend(c.chain.iter().cloned());
                if let Ok(cert) = &c.verdict
                    && let Err(reason) = accept(&cert.der, &chain)
                {
                    c.verdict = Err(reason);
                }
            }
            for c in cands.iter().filter(|c| !c.is_ca) {
                if let Err(reason) = &c.verdict {
                    out.rejected.push((
                        c.fingerprint.clone(),
                        format!(
                            "from directory {} ({}): {reason}",
                            source.client.config.url, c.dn
                        ),
                    ));
                }
            }
            if let Some(cert) = best(&cands) {
                out.cert = Some(cert);
                return;
            }
        }
    }

    /// Carry the cached answers of directories configured identically over from the runtime
    /// being replaced (a reload), so a SIGHUP does not send every address to the directory again.
    pub fn adopt_cache(&self, old: &Directory) {
        for source in &self.sources {
            if let Some(prev) = old
                .sources
                .iter()
                .find(|o| o.client.config == source.client.config)
            {
                let copied = prev.cache.lock().map(|m| m.clone()).unwrap_or_default();
                if let Ok(mut mine) = source.cache.lock() {
                    *mine = copied;
                }
            }
        }
    }
}

impl Source {
    /// The answer for `key` if one was ever fetched (fresh or expired), without waiting.
    pub fn cached(&self, key: &str) -> Option<Answer> {
        let map = self.cache.lock().ok()?;
        map.get(key).and_then(|s| s.current().cloned())
    }

    fn fresh(&self, a: &Answer) -> bool {
        let ttl = match a.outcome {
            Outcome::Found(_) => self.client.config.cache_ttl,
            Outcome::NotFound | Outcome::Failed(_) => self.client.config.negative_ttl,
        };
        a.at.elapsed() < ttl
    }

    /// A fresh answer for `key`: from the cache, from a question already in flight, or by
    /// asking now (and caching what comes back).
    async fn answer(&self, key: &str, metrics: &Metrics) -> Answer {
        let Some(slot) = self.slot(key) else {
            // A poisoned lock (a panic elsewhere): ask without caching.
            return self.ask(key, metrics).await;
        };
        slot.cell
            .get_or_init(|| self.ask(key, metrics))
            .await
            .clone()
    }

    /// The slot to wait on for `key`: the one in flight or still fresh, else a new one that
    /// remembers the expired answer. `None` when the cache lock is poisoned.
    fn slot(&self, key: &str) -> Option<Arc<Slot>> {
        let mut map = self.cache.lock().ok()?;
        match map.get(key) {
            // In flight, or answered and still fresh: share it.
            Some(s) if s.cell.get().is_none_or(|a| self.fresh(a)) => Some(s.clone()),
            existing => {
                let previous = existing.and_then(|s| s.current().cloned());
                let s = Arc::new(Slot {
                    cell: Default::default(),
                    previous,
                });
                if map.len() >= CACHE_SWEEP_AT {
                    self.sweep(&mut map);
                }
                map.insert(key.to_string(), s.clone());
                Some(s)
            }
        }
    }

    /// Drop answers older than both TTLs (addresses nobody asked about since).
    fn sweep(&self, map: &mut HashMap<String, Arc<Slot>>) {
        let keep = self
            .client
            .config
            .cache_ttl
            .max(self.client.config.negative_ttl);
        map.retain(|_, s| s.current().is_none_or(|a| a.at.elapsed() < keep));
    }

    /// One question to the directory, logged and counted.
    async fn ask(&self, key: &str, metrics: &Metrics) -> Answer {
        let url = &self.client.config.url;
        let started = Instant::now();
        let result = self.client.query(key).await;
        let elapsed = started.elapsed();
        let outcome = match result {
            Ok(entries) if entries.is_empty() => {
                metrics.directory_lookup(url, "not_found", elapsed);
                tracing::debug!(directory = %url, address = %key, "directory: no entry");
                Outcome::NotFound
            }
            Ok(entries) => {
                metrics.directory_lookup(url, "found", elapsed);
                tracing::debug!(directory = %url, address = %key, entries = entries.len(), "directory: entries found");
                Outcome::Found(entries)
            }
            Err(failure) => {
                let label = match failure {
                    Failure::Timeout => "timeout",
                    Failure::Error(_) => "error",
                };
                metrics.directory_lookup(url, label, elapsed);
                tracing::warn!(directory = %url, address = %key, error = %failure, negative_ttl = ?self.client.config.negative_ttl,
                    "directory lookup failed; treated as no certificate from this directory until negative_ttl passes");
                Outcome::Failed(failure)
            }
        };
        Answer {
            at: Instant::now(),
            outcome,
        }
    }
}

/// Every certificate in an answer, judged for `address` (normalised) at `now`.
pub fn candidates(
    outcome: &Outcome,
    address: &str,
    files: &CertStore,
    now: SystemTime,
) -> Vec<Candidate> {
    let Outcome::Found(entries) = outcome else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries {
        // The entry's CA certificates (a bag's chain) help build paths for its own certificates.
        let mut parsed: Vec<(String, CertificateDer<'static>)> = Vec::new();
        for v in &entry.values {
            match bag::certificates(&v.bytes) {
                Ok(certs) => parsed.extend(certs.into_iter().map(|c| (v.attribute.clone(), c))),
                Err(reason) => out.push(Candidate {
                    dn: entry.dn.clone(),
                    attribute: v.attribute.clone(),
                    fingerprint: "-".into(),
                    is_ca: false,
                    verdict: Err(reason),
                    chain: Vec::new(),
                }),
            }
        }
        let infos: Vec<_> = parsed
            .iter()
            .map(|(_, der)| validate::inspect(der))
            .collect();
        let chain: Vec<CertificateDer<'static>> = parsed
            .iter()
            .zip(&infos)
            .filter(|(_, i)| i.as_ref().is_ok_and(|i| i.is_ca))
            .map(|((_, der), _)| der.clone())
            .collect();
        for ((attribute, der), info) in parsed.iter().zip(infos) {
            let (fingerprint, is_ca, verdict) = match info {
                Err(reason) => ("-".to_string(), false, Err(reason)),
                Ok(info) if info.is_ca => (
                    info.fingerprint.clone(),
                    true,
                    Err("CA certificate (used as a chain element)".into()),
                ),
                Ok(info) => {
                    let verdict = if !info.emails.iter().any(|e| e == address) {
                        Err(if info.emails.is_empty() {
                            validate::NO_RFC822_NAME.to_string()
                        } else {
                            format!("issued to {}, not to {address}", info.emails.join(", "))
                        })
                    } else {
                        files
                            .validate_found(der, &info, &chain, now)
                            .and_then(|_| RecipientCert::from_info(der.clone(), &info))
                            .map(Arc::new)
                    };
                    (info.fingerprint.clone(), false, verdict)
                }
            };
            out.push(Candidate {
                dn: entry.dn.clone(),
                attribute: attribute.clone(),
                fingerprint,
                is_ca,
                verdict,
                chain: chain.clone(),
            });
        }
    }
    out
}

/// The newest usable certificate among `cands` (latest notBefore, then notAfter), as the file
/// store chooses.
pub fn best(cands: &[Candidate]) -> Option<Arc<RecipientCert>> {
    cands
        .iter()
        .filter_map(|c| c.verdict.as_ref().ok())
        .max_by_key(|c| (c.not_before, c.not_after))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TrustAnchors;
    use ldap::{RawEntry, RawValue};
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};
    use std::time::Duration;

    /// An EC P-256 S/MIME encryption certificate for `email` from `ca`.
    fn leaf(ca: &crate::demo::DemoCa, email: &str) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::Rfc822Name(email.try_into().unwrap())];
        p.key_usages = vec![KeyUsagePurpose::KeyAgreement];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
        p.signed_by(&key, &issuer).unwrap().der().to_vec()
    }

    /// A directory whose cache already holds `outcome` for bob@x.test.
    fn directory_with(outcome: Outcome) -> Directory {
        let config = DirectoryConfig {
            url: "ldap://127.0.0.1:1".into(),
            starttls: false,
            ca_file: None,
            bind_dn: None,
            password_file: None,
            base: "o=x".into(),
            filter: "(mail={address})".into(),
            attributes: vec!["userCertificate;binary".into()],
            cache_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(600),
            timeout: Duration::from_secs(1),
        };
        let d = Directory::new(&[config]).unwrap();
        let slot = Slot {
            cell: tokio::sync::OnceCell::new_with(Some(Answer {
                at: Instant::now(),
                outcome,
            })),
            previous: None,
        };
        d.sources[0]
            .cache
            .lock()
            .unwrap()
            .insert("bob@x.test".into(), Arc::new(slot));
        d
    }

    #[test]
    fn cached_certificates_are_validated_for_the_address_and_offered_to_accept() {
        let ca = crate::demo::new_ca("directory unit CA").unwrap();
        let (trust, bad) = TrustAnchors::from_certs(vec![ca.cert.der().clone()]);
        assert!(bad.is_empty());
        let empty = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let (files, _) = CertStore::load(empty.path(), &trust, now);
        let value = |bytes: Vec<u8>| RawValue {
            attribute: "userCertificate;binary".into(),
            bytes,
        };
        let d = directory_with(Outcome::Found(vec![RawEntry {
            dn: "cn=bob".into(),
            values: vec![
                value(leaf(&ca, "bob@x.test")),
                value(leaf(&ca, "mallory@x.test")),
            ],
        }]));

        let mut out = CertLookup::default();
        d.lookup_into("Bob@X.test", &files, now, &|_, _| Ok(()), &mut out);
        assert!(out.cert.is_some(), "{:?}", out.rejected);
        assert_eq!(out.rejected.len(), 1);
        assert!(
            out.rejected[0]
                .1
                .contains("issued to mallory@x.test, not to bob@x.test"),
            "{:?}",
            out.rejected
        );

        // The revocation seam: a refusal there means no certificate, with its reason.
        let mut out = CertLookup::default();
        let asked = std::cell::Cell::new(0);
        d.lookup_into(
            "bob@x.test",
            &files,
            now,
            &|_, _| {
                asked.set(asked.get() + 1);
                Err("revoked (test)".into())
            },
            &mut out,
        );
        assert!(out.cert.is_none());
        assert_eq!(
            asked.get(),
            1,
            "only the otherwise valid certificate is asked about"
        );
        assert!(
            out.rejected
                .iter()
                .any(|(_, r)| r.contains("revoked (test)"))
        );

        // An address nobody prefetched: nothing, and no I/O.
        let mut out = CertLookup::default();
        d.lookup_into("carol@x.test", &files, now, &|_, _| Ok(()), &mut out);
        assert!(out.cert.is_none() && out.rejected.is_empty());
    }

    #[test]
    fn answers_expire_by_their_own_ttl_and_stale_ones_are_still_read() {
        let d = directory_with(Outcome::NotFound);
        let s = &d.sources[0];
        let fresh = Answer {
            at: Instant::now(),
            outcome: Outcome::NotFound,
        };
        assert!(s.fresh(&fresh));
        let old = Instant::now().checked_sub(Duration::from_secs(601));
        if let Some(at) = old {
            assert!(!s.fresh(&Answer {
                at,
                outcome: Outcome::NotFound
            }));
            // The same age is still fresh for an answer with entries (cache_ttl 1h).
            assert!(s.fresh(&Answer {
                at,
                outcome: Outcome::Found(Vec::new())
            }));
            // Expired: a new slot is made, and the old answer stays readable meanwhile.
            s.cache.lock().unwrap().insert(
                "bob@x.test".into(),
                Arc::new(Slot {
                    cell: tokio::sync::OnceCell::new_with(Some(Answer {
                        at,
                        outcome: Outcome::NotFound,
                    })),
                    previous: None,
                }),
            );
            let slot = s.slot("bob@x.test").unwrap();
            assert!(slot.cell.get().is_none());
            assert!(s.cached("bob@x.test").is_some());
        }
    }
}
