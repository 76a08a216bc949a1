//! Recipient certificates, indexed by email address, in the certificate database
//! ([`super::certdb`]): the files of `[certificates] dir` (synced into it at load and reload),
//! certificates imported with `cachet certs import`, and signers' certificates harvested from
//! inbound mail ([`CertStore::harvest`]).
//!
//! Every `*.pem`, `*.crt`, `*.cer` and `*.der` file in the directory is an import source (any
//! file name, any number of certificates per PEM file). CA certificates (basicConstraints cA)
//! from the directory serve as intermediates for the others and are held in memory (a handful).
//! End-entity certificates are indexed by each rfc822Name of their subjectAltName,
//! case-insensitively ([`normalize_address`]). The subject emailAddress is never used (see
//! [`validate::inspect`]): a certificate without an rfc822Name is reported, not indexed.
//!
//! A certificate is used only when [`validate::check`] accepts it for encryption at lookup time
//! (an operator-approved one: [`validate::check_local`], no path to an anchor needed); of
//! several usable ones the newest (latest notBefore) wins. A lookup is one indexed query plus
//! the validation of that address's few candidates: memory does not grow with the store (past
//! a bounded cache of parses and passed path checks, [`Checked`]), and a change written by
//! another process (`cachet certs`, a harvest) is seen by the next lookup.

use super::capability::Capability;
use super::certdb::watch::Watch;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

use super::validate::{self, CertInfo, Purpose};
use super::{KeyKind, Problem, TrustAnchors, normalize_address};

/// An extra test for a lookup candidate (the certificate, the intermediates to chain it):
/// `Err(reason)` passes it over. Used for revocation ([`CertStore::lookup_with`]).
pub type Accept<'a> =
    dyn Fn(&CertificateDer<'static>, &[CertificateDer<'static>]) -> Result<(), String> + 'a;

/// A certificate we may encrypt to (or one that was considered and rejected).
#[derive(Debug, Clone)]
pub struct RecipientCert {
    /// All rfc822Names of the certificate's subjectAltName, lower-cased.
    pub emails: Vec<String>,
    /// SHA-256 over the DER certificate, lower-case hex: what logs and `check` show.
    pub fingerprint: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Decides the key management: RSA key transport or ECDH P-256 key agreement.
    pub key: KeyKind,
    /// The certificate itself; RecipientInfos name it by issuer and serial number.
    pub der: CertificateDer<'static>,
    /// DER SubjectPublicKeyInfo, fed to aws-lc-rs when encrypting.
    pub spki_der: Vec<u8>,
    /// An RSA key parsed once, when the certificate was: every message encrypted to it shares
    /// it (and the Montgomery context aws-lc keeps in it). `None` for other keys, or when the
    /// parse failed (encrypting then parses `spki_der` and reports why).
    pub rsa_key: Option<aws_lc_rs::rsa::PublicEncryptingKey>,
    /// What the holder announced in their last signed message (SMIMECapabilities), most
    /// preferred first; empty when unknown (certificates from files and directories).
    pub capabilities: Vec<Capability>,
}

impl RecipientCert {
    /// Parse a certificate for use as an encryption target. Does NOT validate it: callers go
    /// through [`CertStore::lookup`] (or validate themselves) before encrypting.
    pub fn from_der(der: CertificateDer<'static>) -> Result<RecipientCert, String> {
        let info = validate::inspect(&der)?;
        Self::from_info(der, &info)
    }

    pub(crate) fn from_info(
        der: CertificateDer<'static>,
        info: &CertInfo,
    ) -> Result<RecipientCert, String> {
        let key = info.key_kind()?;
        Ok(RecipientCert {
            emails: info.emails.clone(),
            fingerprint: info.fingerprint.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            key,
            der,
            rsa_key: match key {
                KeyKind::Rsa { .. } => {
                    aws_lc_rs::rsa::PublicEncryptingKey::from_der(&info.spki_der).ok()
                }
                KeyKind::EcP256 => None,
            },
            spki_der: info.spki_der.clone(),
            capabilities: Vec::new(),
        })
    }
}

/// Result of a lookup: the certificate to use, if any, and every candidate that was refused.
#[derive(Debug, Clone, Default)]
pub struct CertLookup {
    pub cert: Option<Arc<RecipientCert>>,
    /// (fingerprint, reason) of each certificate for this address that cannot be used.
    pub rejected: Vec<(String, String)>,
}

/// Recipient certificates by address, in the certificate database; shared by `Arc`. Lookups
/// read the database, so what `cachet certs` or a harvest writes is seen at the next lookup.
#[derive(Debug, Default)]
pub struct CertStore {
    /// `None`: an empty store (no `[certificates]` configured).
    pub(crate) db: Option<super::certdb::Pool>,
    /// CA certificates from the directory (and imported ones), offered to path building; read
    /// at load.
    pub(crate) intermediates: Vec<CertificateDer<'static>>,
    /// Copied anchors so lookups need no other reference (reload swaps the whole store).
    pub(crate) trust: TrustAnchors,
    /// Certificates lookups parsed and path-checked before ([`Checked`]).
    checked: Checked,
    /// What the last lookups of each address read from the database ([`Recent`]).
    recent: Recent,
}

/// The candidate rows of the addresses looked up lately, kept until the database is written
/// (by anyone: [`Watch`]), so a busy address costs no SQLite read transaction per message
/// (three lookups per message: RCPT, end of DATA, sealing; each an `fcntl` lock and unlock on
/// the `-shm` file, an `fstat` and the query: 5% of the gateway's CPU at 10 KB). Only the rows are kept: every lookup
/// still judges them at its own `now` (validity, path, revocation), as [`Checked`] describes.
/// Without a watch (inotify unavailable) nothing is kept.
#[derive(Default)]
struct Recent {
    inner: Mutex<RecentInner>,
}

#[derive(Default)]
struct RecentInner {
    watch: Option<Watch>,
    rows: HashMap<String, Vec<Row>>,
    /// Bumped whenever `rows` is cleared for a change: a query that began before the change
    /// must not store what it read ([`Recent::put`]).
    generation: u64,
    /// Lookups answered from the database: for tests.
    queries: u64,
}

/// Addresses kept at most (then all are forgotten and the cache fills again): about 2 KB each.
const RECENT_MAX: usize = 1024;

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recent")
    }
}

impl Recent {
    fn watching(db: &Path) -> Recent {
        let watch = Watch::new(db);
        if watch.is_none() {
            tracing::info!(
                store = %db.display(),
                "no inotify watch on the certificate store's directory: every lookup reads the database (fs.inotify.max_user_instances?)"
            );
        }
        Recent {
            inner: Mutex::new(RecentInner {
                watch,
                ..Default::default()
            }),
        }
    }

    /// The rows kept for `address`, or the generation a query must quote to [`Recent::put`]
    /// (`None`: nothing is kept). Events queued since the last call are read first, so a change
    /// committed before this call is never answered from memory.
    fn get(&self, address: &str) -> Result<Vec<Row>, Option<u64>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        let Some(watch) = &mut inner.watch else {
            inner.queries += 1;
            return Err(None);
        };
        if watch.changed() {
            inner.rows.clear();
            inner.generation += 1;
        }
        match inner.rows.get(address) {
            Some(rows) => Ok(rows.clone()),
            None => {
                inner.queries += 1;
                Err(Some(inner.generation))
            }
        }
    }

    /// Keeps what a query read, unless another lookup saw a change since the query's
    /// [`Recent::get`]. A change that nobody has read yet needs no check here: the next `get`
    /// reads it and forgets these rows before answering.
    fn put(&self, address: &str, generation: Option<u64>, rows: &[Row]) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if generation != Some(g.generation) {
            return;
        }
        if g.rows.len() >= RECENT_MAX {
            g.rows.clear();
        }
        g.rows.insert(address.to_string(), rows.to_vec());
    }
}

/// What lookups learned about the certificates they met, so that a busy address is not parsed
/// and path-checked again for every message (issue 12: with one signature verification per
/// chain link, that was a tenth of the gateway's CPU at 10 KB). Keyed by the DER, so a row that
/// changes (another certificate, another chain) is a different entry.
///
/// * The parse ([`CertInfo`]) is a function of the bytes: kept as long as the entry.
/// * A **passed** path check is reused while `now` lies in `[checked, until)`: `until` is the
///   earliest notAfter of every intermediate the check could have used (the store's and the
///   row's chain), and at most [`PATH_REUSE`] after the check. Everything else the verdict
///   depends on is checked at every lookup as before: the certificate's own validity, key usage
///   and size ([`validate::check_local`]), approval state and revocation. A refused path is
///   never kept, so a fixed problem is seen at the next lookup.
/// * The trust anchors never change within one store (a reload builds a new one); re-reading
///   the intermediates ([`CertStore::reload_intermediates`]) forgets every entry.
#[derive(Debug, Default)]
struct Checked {
    seen: Mutex<HashMap<Vec<u8>, Seen>>,
    /// Path checks actually run (not reused): for tests.
    path_checks: AtomicU64,
}

#[derive(Debug)]
struct Seen {
    info: Arc<CertInfo>,
    path: Option<PathPassed>,
}

#[derive(Debug)]
struct PathPassed {
    /// The row's own chain the check used (`None`: the store's intermediates only).
    chain: Option<Vec<u8>>,
    checked: SystemTime,
    until: SystemTime,
}

/// Longest reuse of a passed path check.
const PATH_REUSE: Duration = Duration::from_secs(300);
/// Entries kept; past it the map starts again (a store of many addresses costs a parse and a
/// path check per certificate every so often, as before this cache).
const CHECKED_MAX: usize = 4096;

impl Checked {
    /// The parse of `der`, from an earlier lookup or now; and whether a path check that passed
    /// with this `chain` still stands at `now`.
    fn info(
        &self,
        der: &[u8],
        chain: Option<&[u8]>,
        now: SystemTime,
    ) -> Result<(Arc<CertInfo>, bool), String> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = seen.get(der) {
            let passed = s
                .path
                .as_ref()
                .is_some_and(|p| p.chain.as_deref() == chain && p.checked <= now && now < p.until);
            return Ok((s.info.clone(), passed));
        }
        drop(seen);
        let info = Arc::new(validate::inspect(der)?);
        seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= CHECKED_MAX {
            seen.clear();
        }
        seen.insert(
            der.to_vec(),
            Seen {
                info: info.clone(),
                path: None,
            },
        );
        Ok((info, false))
    }

    /// Record a path check that passed at `now` for `der` with `chain`, the intermediates it
    /// could use being `intermediates`.
    fn passed(
        &self,
        der: &[u8],
        chain: Option<&[u8]>,
        intermediates: &[CertificateDer<'static>],
        now: SystemTime,
    ) {
        let mut until = now + PATH_REUSE;
        for ca in intermediates {
            match validate::not_after(ca) {
                Some(t) => until = until.min(t),
                // Cannot tell when it expires: do not reuse the verdict.
                None => return,
            }
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = seen.get_mut(der) {
            s.path = Some(PathPassed {
                chain: chain.map(<[u8]>::to_vec),
                checked: now,
                until,
            });
        }
    }
}

/// One candidate row of a lookup.
#[derive(Clone, Debug)]
struct Row {
    der: Vec<u8>,
    chain: Option<Vec<u8>>,
    capabilities: Option<String>,
    approved: bool,
    pending: bool,
}

impl CertStore {
    /// Open the database at `db` (created when missing), sync `dir` into it (files changed
    /// since the last sync are read, removed ones dropped; [`super::certdb::sync`]) and report
    /// unreadable files and every directory certificate that does not validate for encryption
    /// at `now`. `Err` when the database cannot be opened.
    pub fn open(
        db: &Path,
        dir: Option<&Path>,
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> Result<(CertStore, Vec<Problem>), Problem> {
        let pool = super::certdb::Pool::open(db).map_err(|e| Problem::new(db, e))?;
        Ok(Self::start(pool, dir, trust, now))
    }

    /// Read the directory into a private temporary database (tools and tests); as
    /// [`CertStore::open`].
    pub fn load(dir: &Path, trust: &TrustAnchors, now: SystemTime) -> (CertStore, Vec<Problem>) {
        match super::certdb::Pool::temporary() {
            Ok(pool) => Self::start(pool, Some(dir), trust, now),
            Err(e) => (
                CertStore {
                    trust: clone_trust(trust),
                    ..Default::default()
                },
                vec![Problem::new(dir, e)],
            ),
        }
    }

    /// A store over `pool` trusting `trust`, before any sync or intermediates.
    pub(crate) fn with_pool(pool: super::certdb::Pool, trust: &TrustAnchors) -> CertStore {
        CertStore {
            recent: Recent::watching(pool.path()),
            db: Some(pool),
            intermediates: Vec::new(),
            trust: clone_trust(trust),
            checked: Checked::default(),
        }
    }

    fn start(
        pool: super::certdb::Pool,
        dir: Option<&Path>,
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> (CertStore, Vec<Problem>) {
        let mut store = Self::with_pool(pool, trust);
        let problems = store.sync(dir, now);
        (store, problems)
    }

    /// A store from certificates already in memory (tools and tests); problems name `<memory>`.
    pub fn from_certs(
        certs: Vec<CertificateDer<'static>>,
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> (CertStore, Vec<Problem>) {
        let here = std::path::PathBuf::from("<memory>");
        let (mut store, mut problems) = match super::certdb::Pool::temporary() {
            Ok(pool) => Self::start(pool, None, trust, now),
            Err(e) => return (CertStore::default(), vec![Problem::new(&here, e)]),
        };
        for der in certs {
            match validate::inspect(&der) {
                Ok(info) if info.emails.is_empty() && !info.is_ca => problems.push(Problem::new(
                    &here,
                    format!(
                        "certificate {}: {}",
                        info.fingerprint,
                        validate::NO_RFC822_NAME
                    ),
                )),
                Ok(_) => {
                    if let Err(e) = store.import(&der, now) {
                        problems.push(Problem::new(&here, e));
                    }
                }
                Err(reason) => problems.push(Problem::new(&here, reason)),
            }
        }
        store.reload_intermediates();
        // Report what does not validate, as the directory sync does.
        if let Some(pool) = &store.db
            && let Ok(c) = pool.get()
            && let Ok(mut q) = c.prepare("SELECT der FROM certs WHERE is_ca = 0 ORDER BY id")
            && let Ok(rows) = q.query_map([], |r| r.get::<_, Vec<u8>>(0))
        {
            for der in rows.flatten() {
                let der = CertificateDer::from(der);
                if let Ok(info) = validate::inspect(&der)
                    && let Err(reason) = store.validate_found(&der, &info, &[], now)
                {
                    problems.push(Problem::new(
                        &here,
                        format!(
                            "certificate {} for {}: {reason}",
                            info.fingerprint,
                            info.emails.join(", ")
                        ),
                    ));
                }
            }
        }
        (store, problems)
    }

    /// Re-read the CA certificates the store offers to path building (directory files and
    /// imported ones).
    pub(crate) fn reload_intermediates(&mut self) {
        let Some(pool) = &self.db else { return };
        let read = || -> Result<Vec<CertificateDer<'static>>, String> {
            let c = pool.get()?;
            let mut q = c
                .prepare(
                    "SELECT der FROM certs WHERE is_ca = 1 AND (imported = 1
                     OR EXISTS (SELECT 1 FROM file_certs WHERE cert = certs.id)) ORDER BY id",
                )
                .map_err(|e| pool.error(e))?;
            let rows = q
                .query_map([], |r| r.get::<_, Vec<u8>>(0))
                .map_err(|e| pool.error(e))?;
            Ok(rows.flatten().map(CertificateDer::from).collect())
        };
        match read() {
            Ok(v) => self.intermediates = v,
            Err(e) => tracing::warn!(error = %e, "cannot read CA certificates from the store"),
        }
        self.checked = Checked::default();
    }

    /// The database file, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.db.as_ref().map(|p| p.path())
    }

    /// The one check for every recipient certificate, wherever it was found: this store, or a
    /// directory (`store::directory`), whose bag may bring CA certificates of its own
    /// (`extra_intermediates`, tried after this store's).
    pub fn validate_found(
        &self,
        der: &CertificateDer<'_>,
        info: &CertInfo,
        extra_intermediates: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> Result<KeyKind, String> {
        let intermediates = self.intermediates_and(extra_intermediates);
        validate::check(
            der,
            info,
            &intermediates,
            &self.trust,
            now,
            Purpose::Encrypt,
        )
    }

    /// The store's intermediates followed by `extra` (a row's or a directory's own chain).
    fn intermediates_and(
        &self,
        extra: &[CertificateDer<'static>],
    ) -> std::borrow::Cow<'_, [CertificateDer<'static>]> {
        if extra.is_empty() {
            std::borrow::Cow::Borrowed(&self.intermediates)
        } else {
            std::borrow::Cow::Owned(self.intermediates.iter().chain(extra).cloned().collect())
        }
    }

    /// The verdict for a stored certificate: an approved one needs no path to an anchor; a
    /// pending one that still has none says how to approve it.
    pub(crate) fn judge(
        &self,
        der: &CertificateDer<'_>,
        info: &CertInfo,
        chain: &[CertificateDer<'static>],
        approved: bool,
        pending: bool,
        now: SystemTime,
    ) -> Result<KeyKind, String> {
        if approved {
            return validate::check_local(info, now, Purpose::Encrypt);
        }
        self.validate_found(der, info, chain, now).map_err(|reason| {
            if pending {
                format!(
                    "pending: {reason}; an operator who vouches for it runs `cachet certs approve {}`",
                    info.fingerprint
                )
            } else {
                reason
            }
        })
    }

    /// The newest certificate for `address` that validates for encryption at `now`, and the
    /// reasons every other candidate was refused.
    pub fn lookup(&self, address: &str, now: SystemTime) -> CertLookup {
        self.lookup_with(address, now, &|_, _| Ok(()))
    }

    /// [`CertStore::lookup`] with one more test for each otherwise valid candidate (given the
    /// certificate and the intermediates to chain it): revocation. A refusal's reason lands in
    /// `rejected` and the next candidate may win.
    pub fn lookup_with(&self, address: &str, now: SystemTime, accept: &Accept<'_>) -> CertLookup {
        let mut out = CertLookup::default();
        let rows = match self.candidates(&normalize_address(address)) {
            Ok(rows) => rows,
            Err(e) => {
                // Counts as "no certificate" (opportunistic: clear; required: on_missing_key).
                tracing::warn!(error = %e, address, "certificate store lookup failed");
                out.rejected.push(("-".into(), e));
                return out;
            }
        };
        for row in rows {
            let (info, path_passed) = match self.checked.info(&row.der, row.chain.as_deref(), now) {
                Ok(i) => i,
                Err(e) => {
                    out.rejected.push(("-".into(), e));
                    continue;
                }
            };
            let der = CertificateDer::from(row.der);
            let chain = row
                .chain
                .as_deref()
                .map(super::certdb::decode_chain)
                .unwrap_or_default();
            let usable = self.intermediates_and(&chain);
            let judged = if path_passed && !row.approved {
                validate::check_local(&info, now, Purpose::Encrypt)
            } else {
                let v = self.judge(&der, &info, &chain, row.approved, row.pending, now);
                if !row.approved {
                    self.checked.path_checks.fetch_add(1, Ordering::Relaxed);
                    if v.is_ok() {
                        self.checked
                            .passed(&der, row.chain.as_deref(), &usable, now);
                    }
                }
                v
            };
            let verdict = judged.and_then(|k| accept(&der, &usable).map(|_| k));
            match verdict {
                Ok(_) => match RecipientCert::from_info(der, &info) {
                    Ok(mut cert) => {
                        cert.capabilities = row
                            .capabilities
                            .as_deref()
                            .map(super::certdb::decode_capabilities)
                            .unwrap_or_default();
                        // Several valid certificates: the newest wins (issue 3).
                        let newer = out.cert.as_ref().is_none_or(|best| {
                            (cert.not_before, cert.not_after) > (best.not_before, best.not_after)
                        });
                        if newer {
                            out.cert = Some(Arc::new(cert));
                        }
                    }
                    Err(_) => out
                        .rejected
                        .push((info.fingerprint.clone(), "unsupported key".into())),
                },
                Err(reason) => out.rejected.push((info.fingerprint.clone(), reason)),
            }
        }
        out
    }

    /// The end-entity rows filed under `address` (already normalised): one indexed query
    /// ([`CANDIDATES`]), prepared once per connection.
    fn candidates(&self, address: &str) -> Result<Vec<Row>, String> {
        let Some(pool) = &self.db else {
            return Ok(Vec::new());
        };
        let generation = match self.recent.get(address) {
            Ok(rows) => return Ok(rows),
            Err(generation) => generation,
        };
        let c = pool.get()?;
        let mut q = c.prepare_cached(CANDIDATES).map_err(|e| pool.error(e))?;
        let rows = q
            .query_map([address], |r| {
                Ok(Row {
                    der: r.get(0)?,
                    chain: r.get(1)?,
                    capabilities: r.get(2)?,
                    approved: r.get(3)?,
                    pending: r.get(4)?,
                })
            })
            .map_err(|e| pool.error(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pool.error(e))?;
        self.recent.put(address, generation, &rows);
        Ok(rows)
    }

    /// Lookups that read the database rather than [`Recent`] (tests).
    #[cfg(test)]
    fn queries(&self) -> u64 {
        self.recent.inner.lock().unwrap().queries
    }

    /// Every certificate filed under `address`, valid or not (the `known` certificates an
    /// inbound verification may use for a signer whose message does not carry its own).
    pub fn certificates_for(&self, address: &str) -> Vec<CertificateDer<'static>> {
        self.candidates(&normalize_address(address))
            .unwrap_or_default()
            .into_iter()
            .map(|r| CertificateDer::from(r.der))
            .collect()
    }

    /// Up to `limit` end-entity certificates, most recently seen first: the revocation
    /// refresher's start-up targets (a certificate looked up later is added by
    /// `Revocation::status` itself, so a store of a million needs no million targets).
    pub fn recent_certificates(&self, limit: usize) -> Vec<CertificateDer<'static>> {
        self.query_column::<Vec<u8>>(
            "SELECT der FROM certs WHERE is_ca = 0 ORDER BY last_seen DESC, id DESC LIMIT ?1",
            limit as i64,
        )
        .into_iter()
        .map(CertificateDer::from)
        .collect()
    }

    fn query_column<T: rusqlite::types::FromSql>(&self, sql: &str, arg: i64) -> Vec<T> {
        let Some(pool) = &self.db else {
            return Vec::new();
        };
        let run = || -> Result<Vec<T>, String> {
            let c = pool.get()?;
            let mut q = c.prepare_cached(sql).map_err(|e| pool.error(e))?;
            let rows = q
                .query_map([arg], |r| r.get::<_, T>(0))
                .map_err(|e| pool.error(e))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| pool.error(e))
        };
        run().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "certificate store query failed");
            Vec::new()
        })
    }

    /// The CA certificates of the directory, offered to path building.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// Addresses with at least one certificate (valid or not), sorted. Reads the whole index:
    /// for tools and tests; the gateway uses [`CertStore::address_count`] and
    /// [`CertStore::expiring_addresses`].
    pub fn addresses(&self) -> Vec<String> {
        self.query_column(
            "SELECT DISTINCT address FROM addresses WHERE ?1 = ?1 ORDER BY address",
            0,
        )
    }

    /// How many addresses have at least one certificate, counting no further than `limit`
    /// (cheap whatever the size of the store).
    pub fn address_count_up_to(&self, limit: usize) -> usize {
        self.query_column::<i64>(
            "SELECT COUNT(*) FROM (SELECT DISTINCT address FROM addresses LIMIT ?1)",
            limit as i64,
        )
        .first()
        .copied()
        .unwrap_or(0) as usize
    }

    /// How many addresses have at least one certificate (reads the whole address index).
    pub fn address_count(&self) -> usize {
        self.address_count_up_to(i64::MAX as usize)
    }

    /// Up to `limit` addresses with an end-entity certificate without a stored problem whose
    /// notAfter lies before `before` and not before `now` (from the notAfter index), sorted.
    pub fn expiring_addresses(
        &self,
        now: SystemTime,
        before: SystemTime,
        limit: usize,
    ) -> Vec<String> {
        let Some(pool) = &self.db else {
            return Vec::new();
        };
        let run = || -> Result<Vec<String>, String> {
            let c = pool.get()?;
            let mut q = c
                .prepare_cached(
                    "SELECT DISTINCT a.address FROM certs c JOIN addresses a ON a.cert = c.id
                     WHERE c.problem IS NULL AND c.not_after >= ?1 AND c.not_after < ?2 AND c.is_ca = 0
                     ORDER BY a.address LIMIT ?3",
                )
                .map_err(|e| pool.error(e))?;
            let rows = q
                .query_map(
                    rusqlite::params![
                        super::certdb::secs(now),
                        super::certdb::secs(before),
                        limit as i64
                    ],
                    |r| r.get::<_, String>(0),
                )
                .map_err(|e| pool.error(e))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| pool.error(e))
        };
        run().unwrap_or_default()
    }
}

/// The certificates filed under an address. An `IN` subquery, not a join: SQLite recompiles
/// the join form whenever the bound address changes (its planner looks at the value), which
/// cost a statement parse per recipient lookup, ~4% of the gateway's CPU per message.
const CANDIDATES: &str = "SELECT c.der, c.chain, c.capabilities, c.approved, c.pending
     FROM certs c WHERE c.id IN (SELECT cert FROM addresses WHERE address = ?1)
     AND c.is_ca = 0 ORDER BY c.id";

fn clone_trust(t: &TrustAnchors) -> TrustAnchors {
    TrustAnchors {
        anchors: t.anchors.clone(),
        certs: t.certs.clone(),
    }
}

#[cfg(test)]
mod tests {
    /// The lookup statement stays compiled across addresses (see [`super::CANDIDATES`]).
    #[test]
    fn the_lookup_is_not_recompiled_per_address() {
        let pool = crate::store::certdb::Pool::temporary().unwrap();
        let c = pool.get().unwrap();
        for i in 0..20u8 {
            c.execute(
                "INSERT INTO certs(fingerprint, der, is_ca, not_after, first_seen, last_seen)
                 VALUES(?1, x'00', 0, 0, 0, 0)",
                [vec![i]],
            )
            .unwrap();
            c.execute(
                "INSERT INTO addresses(address, cert) VALUES(?1, ?2)",
                rusqlite::params![format!("u{i}@x.example"), i64::from(i) + 1],
            )
            .unwrap();
        }
        for i in 0..20 {
            let mut q = c.prepare_cached(super::CANDIDATES).unwrap();
            let rows = q
                .query_map([format!("u{i}@x.example")], |r| r.get::<_, Vec<u8>>(0))
                .unwrap()
                .count();
            assert_eq!(rows, 1);
            assert_eq!(q.get_status(rusqlite::StatementStatus::RePrepare), 0);
        }
    }

    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };

    fn params(cn: &str, ca: bool, until: SystemTime) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        p.not_after = time::OffsetDateTime::from(until);
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        } else {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::KeyAgreement];
            p.subject_alt_names = vec![SanType::Rfc822Name(cn.try_into().unwrap())];
        }
        p
    }

    fn key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    /// A root, and under it: `direct@x.example` (no intermediate), and, when
    /// `intermediate_until` is given, `chained@x.example` through an intermediate CA that
    /// expires then. The store holds the leaves and the intermediate; the root is the anchor.
    fn store(now: SystemTime, intermediate_until: Option<SystemTime>) -> CertStore {
        let year = now + Duration::from_secs(365 * 86_400);
        let root_key = key();
        let root = params("Root", true, year).self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(params("Root", true, year), root_key);
        let direct_key = key();
        let mut certs = vec![
            params("direct@x.example", false, year)
                .signed_by(&direct_key, &root_issuer)
                .unwrap()
                .der()
                .clone(),
        ];
        if let Some(until) = intermediate_until {
            let int_key = key();
            let int = params("Intermediate", true, until)
                .signed_by(&int_key, &root_issuer)
                .unwrap();
            let int_issuer = Issuer::new(params("Intermediate", true, until), int_key);
            let leaf_key = key();
            certs.push(int.der().clone());
            certs.push(
                params("chained@x.example", false, year)
                    .signed_by(&leaf_key, &int_issuer)
                    .unwrap()
                    .der()
                    .clone(),
            );
        }
        let (trust, problems) = TrustAnchors::from_certs(vec![root.der().clone()]);
        assert!(problems.is_empty(), "{problems:?}");
        let (store, problems) = CertStore::from_certs(certs, &trust, now);
        assert!(problems.is_empty(), "{problems:?}");
        store
    }

    fn checks(store: &CertStore) -> u64 {
        store.checked.path_checks.load(Ordering::Relaxed)
    }

    /// A query that began before a change another lookup has already seen does not store what
    /// it read: the next lookup of that address reads the database again.
    #[test]
    fn a_query_that_raced_a_change_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("store.sqlite");
        std::fs::write(&db, b"").unwrap();
        let recent = Recent::watching(&db);
        let row = Row {
            der: vec![1, 2, 3],
            chain: None,
            capabilities: None,
            approved: false,
            pending: false,
        };
        // Kept when nothing changed meanwhile.
        let g = recent.get("a@x.example").unwrap_err();
        recent.put("a@x.example", g, std::slice::from_ref(&row));
        assert_eq!(recent.get("a@x.example").unwrap()[0].der, row.der);
        // A query for b starts; a commit lands; a lookup of a sees it (and forgets a).
        let g = recent.get("b@x.example").unwrap_err();
        std::fs::write(&db, b"x").unwrap();
        assert!(
            recent.get("a@x.example").is_err(),
            "a forgotten after the change"
        );
        recent.put("b@x.example", g, std::slice::from_ref(&row));
        assert!(
            recent.get("b@x.example").is_err(),
            "what b's query read before the change is not kept"
        );
    }

    /// What a lookup read is kept per address until the database is written, by this store
    /// or by another process (here a second pool on the same file, as `cachet certs` is): the
    /// lookup after a commit reads the database again.
    #[test]
    fn lookups_are_answered_from_memory_until_the_database_is_written() {
        let now = SystemTime::now();
        let store = store(now, None);
        let found = store.lookup("direct@x.example", now).cert.unwrap();
        let first = store.queries();
        for _ in 0..5 {
            assert!(store.lookup("direct@x.example", now).cert.is_some());
        }
        assert!(store.lookup("none@x.example", now).cert.is_none());
        assert!(store.lookup("none@x.example", now).cert.is_none());
        assert_eq!(
            store.queries(),
            first + 1,
            "one read for the new address only"
        );

        let path = store.db.as_ref().unwrap().path().to_path_buf();
        let other = CertStore::with_pool(
            crate::store::certdb::Pool::open(&path).unwrap(),
            &store.trust,
        );
        let der = found.der.clone();
        other.remove(&found.fingerprint).unwrap();
        assert!(
            store.lookup("direct@x.example", now).cert.is_none(),
            "another process's removal is seen at the next lookup"
        );
        assert_eq!(store.queries(), first + 2);
        other.import(&der, now).unwrap();
        assert!(store.lookup("direct@x.example", now).cert.is_some());
        assert!(store.lookup("direct@x.example", now).cert.is_some());
        assert_eq!(
            store.queries(),
            first + 3,
            "read again once after the import"
        );
        // This store's own write counts too.
        store.remove(&found.fingerprint).unwrap();
        assert!(store.lookup("direct@x.example", now).cert.is_none());
    }

    /// A passed path check serves later lookups, for at most PATH_REUSE.
    #[test]
    fn a_passed_path_check_is_reused_for_a_while() {
        let now = SystemTime::now();
        let store = store(now, None);
        assert!(store.lookup("direct@x.example", now).cert.is_some());
        assert_eq!(checks(&store), 1);
        let later = now + PATH_REUSE - Duration::from_secs(1);
        assert!(store.lookup("Direct@X.example", later).cert.is_some());
        assert_eq!(checks(&store), 1, "reused within PATH_REUSE");
        let after = now + PATH_REUSE + Duration::from_secs(1);
        assert!(store.lookup("direct@x.example", after).cert.is_some());
        assert_eq!(checks(&store), 2, "checked again after PATH_REUSE");
        // A clock that went back does not reuse a check made "in the future".
        assert!(store.lookup("direct@x.example", now).cert.is_some());
        assert_eq!(checks(&store), 3);
    }

    /// The reuse ends when an intermediate the check could have used expires: the lookup
    /// after that refuses the certificate, as one without the cache would.
    #[test]
    fn reuse_ends_when_an_intermediate_expires() {
        let now = SystemTime::now();
        let store = store(now, Some(now + Duration::from_secs(60)));
        assert!(store.lookup("chained@x.example", now).cert.is_some());
        assert!(
            store
                .lookup("chained@x.example", now + Duration::from_secs(30))
                .cert
                .is_some()
        );
        assert_eq!(checks(&store), 1);
        let expired = store.lookup("chained@x.example", now + Duration::from_secs(120));
        assert!(expired.cert.is_none(), "{expired:?}");
        assert!(
            expired.rejected[0].1.contains("expired"),
            "{:?}",
            expired.rejected
        );
        // The directly issued certificate's reuse is bounded by the same intermediate (any
        // intermediate could have been on its path).
        assert!(store.lookup("direct@x.example", now).cert.is_some());
        assert_eq!(checks(&store), 3);
        assert!(
            store
                .lookup("direct@x.example", now + Duration::from_secs(30))
                .cert
                .is_some()
        );
        assert_eq!(checks(&store), 3, "reused before the intermediate expires");
        assert!(
            store
                .lookup("direct@x.example", now + Duration::from_secs(120))
                .cert
                .is_some()
        );
        assert_eq!(checks(&store), 4, "checked again after it expired");
    }
}
