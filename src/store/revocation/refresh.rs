//! One refresh round of the background revocation task (the loop is `app::revocation_task`).
//!
//! Given the certificates in use, it fetches what is due: every CRL distribution point they name
//! (deduplicated, so one fetch per URL however many certificates share it) and every OCSP
//! answer. Fetches run on the blocking pool, at most [`PARALLEL`] at once; a round ends when all
//! have finished, and the next round starts only then, so no URL is ever fetched twice at once.
//!
//! Due means: never fetched; or three quarters of the thisUpdate..nextUpdate window passed (but
//! not more often than the interval); or the last attempt failed at least an interval ago. A CRL
//! or answer that fails to refresh stays in use until its own nextUpdate.
//!
//! On disk: `<cache>/crl-<sha256(url)>.der`, written by [`crate::http::get_to_file`] (temp
//! file, fsync, rename), and `<cache>/ocsp-<certificate sha256>.der`, the last verified OCSP
//! response; both are read back at start (an OCSP answer verified again) so a restart does not
//! refetch what is still fresh.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use der::Decode;
use rustls_pki_types::CertificateDer;
use x509_cert::Certificate;

use super::{LoadedCrl, Revocation, ocsp, parse_crl, sources};
use crate::http;
use crate::store::hex;

/// Fetches in flight at once.
pub const PARALLEL: usize = 4;

/// A certificate whose status is wanted, with its issuer when we have it (OCSP needs it).
#[derive(Debug, Clone)]
pub struct Target {
    pub der: CertificateDer<'static>,
    pub issuer: Option<CertificateDer<'static>>,
    /// End-entity certificates are also asked about by OCSP; intermediates only by CRL
    /// (webpki checks the chain against CRLs).
    pub end_entity: bool,
}

/// What a round needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `<spool>/revocation`.
    pub cache_dir: PathBuf,
    pub crl_dir: Option<PathBuf>,
    pub limits: http::Limits,
    pub interval: Duration,
}

/// When to look again at something valid from `this_update` to `next_update`.
fn next_look(
    this_update: SystemTime,
    next_update: SystemTime,
    now: SystemTime,
    interval: Duration,
) -> SystemTime {
    if next_update <= now {
        return now + interval;
    }
    let window = next_update.duration_since(this_update).unwrap_or_default();
    let at = this_update + window * 3 / 4;
    at.max(now + interval).min(next_update)
}

fn cache_file(dir: &Path, url: &str) -> PathBuf {
    let h = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_bytes()).as_ref());
    dir.join(format!("crl-{h}.der"))
}

fn due(next_try: Option<SystemTime>, now: SystemTime) -> bool {
    next_try.is_none_or(|t| now >= t)
}

/// Run one round: reload `crl_dir`, then fetch every CRL and OCSP answer due for `targets`.
pub async fn round(rev: &Arc<Revocation>, settings: &Settings, targets: Vec<Target>) {
    let now = SystemTime::now();
    if let Some(dir) = settings.crl_dir.clone() {
        let r = rev.clone();
        if let Ok(problems) = tokio::task::spawn_blocking(move || r.load_dir(&dir)).await {
            for p in problems {
                tracing::warn!(problem = %p, "CRL file in certificates.crl_dir not used");
            }
        }
    }
    // Inside the spool, so made like its other directories (0700), though CRLs are public.
    if let Err(e) = crate::spool::modes::private_dir(&settings.cache_dir) {
        tracing::warn!(dir = %settings.cache_dir.display(), error = %e, "cannot create the revocation cache directory");
    }

    let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut jobs = tokio::task::JoinSet::new();

    // CRLs: one job per distinct URL that is due.
    let urls: BTreeSet<String> = targets.iter().flat_map(|t| sources(&t.der).0).collect();
    for url in urls {
        let (is_due, first) = {
            let map = rev.urls.read().unwrap_or_else(|e| e.into_inner());
            match map.get(&url) {
                None => (true, true),
                Some(s) => (due(s.next_try, now), false),
            }
        };
        if !is_due {
            continue;
        }
        let file = cache_file(&settings.cache_dir, &url);
        let (limits, interval) = (settings.limits, settings.interval);
        let sem = sem.clone();
        let rev = rev.clone();
        jobs.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let u = url.clone();
            let got =
                tokio::task::spawn_blocking(move || fetch_crl(&u, &file, limits, first, interval))
                    .await
                    .unwrap_or_else(|e| Err(format!("fetch task failed: {e}")));
            store_crl(&rev, url, got, interval);
        });
    }

    // OCSP: one job per certificate with a responder that is due.
    let mut seen = BTreeSet::new();
    for t in targets.into_iter().filter(|t| t.end_entity) {
        let (_, Some(url)) = sources(&t.der) else {
            continue;
        };
        let fp = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &t.der).as_ref());
        if !seen.insert(fp.clone()) {
            continue;
        }
        let (is_due, first) = {
            let map = rev.ocsp.read().unwrap_or_else(|e| e.into_inner());
            match map.get(&fp) {
                None => (true, true),
                Some(s) => (due(s.next_try, now), false),
            }
        };
        if !is_due {
            continue;
        }
        let (limits, interval) = (settings.limits, settings.interval);
        let file = settings.cache_dir.join(format!("ocsp-{fp}.der"));
        let sem = sem.clone();
        let rev = rev.clone();
        jobs.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let u = url.clone();
            let got = tokio::task::spawn_blocking(move || {
                fetch_ocsp(&u, &t, limits, &file, first, interval)
            })
            .await
            .unwrap_or_else(|e| Err(format!("fetch task failed: {e}")));
            store_ocsp(&rev, &url, fp, got, interval);
        });
    }
    while jobs.join_next().await.is_some() {}
}

/// Download (or, on the first look after a start, read back from the cache) one CRL.
fn fetch_crl(
    url: &str,
    file: &Path,
    limits: http::Limits,
    first: bool,
    interval: Duration,
) -> Result<(LoadedCrl, bool), String> {
    if first
        && let Ok(bytes) = std::fs::read(file)
        && let Ok(crl) = parse_crl(&bytes, url)
    {
        let now = SystemTime::now();
        if next_look(crl.this_update, crl.next_update, now, interval) > now + interval / 2
            && crl.next_update > now
        {
            return Ok((crl, false));
        }
    }
    http::get_to_file(url, file, limits)?;
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    parse_crl(&bytes, url).map(|c| (c, true))
}

fn store_crl(
    rev: &Revocation,
    url: String,
    got: Result<(LoadedCrl, bool), String>,
    interval: Duration,
) {
    let now = SystemTime::now();
    let mut map = rev.urls.write().unwrap_or_else(|e| e.into_inner());
    let state = map.entry(url.clone()).or_default();
    match got {
        Ok((crl, fetched)) => {
            if fetched {
                rev.count_fetch("crl", "ok");
            }
            tracing::info!(url = %url, this_update = %crate::date::rfc3339(crl.this_update), next_update = %crate::date::rfc3339(crl.next_update), from_cache = !fetched, "CRL loaded");
            state.next_try = Some(next_look(crl.this_update, crl.next_update, now, interval));
            state.crl = Some(crl);
            state.error = None;
        }
        Err(e) => {
            rev.count_fetch("crl", "error");
            tracing::warn!(url = %url, error = %e, keeps_previous = state.crl.is_some(), "CRL fetch failed");
            state.error = Some(e);
            state.next_try = Some(now + interval);
        }
    }
}

/// One OCSP exchange for `t`, with a fresh nonce; the answer is verified before it is kept,
/// and saved to `file` for the next start. On the first look after a start, a saved answer
/// that still verifies and is not due is used instead. `.1`: fetched (not from the cache).
fn fetch_ocsp(
    url: &str,
    t: &Target,
    limits: http::Limits,
    file: &Path,
    first: bool,
    interval: Duration,
) -> Result<(ocsp::Verified, bool), String> {
    let issuer = t
        .issuer
        .as_ref()
        .ok_or("issuer certificate not available (needed for OCSP)")?;
    let cert = Certificate::from_der(&t.der).map_err(|e| e.to_string())?;
    let issuer = Certificate::from_der(issuer).map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    if first
        && let Ok(saved) = std::fs::read(file)
        && let Ok(v) = ocsp::verify_response(&saved, &cert, &issuer, None, now)
        && next_look(v.this_update, v.valid_until, now, interval) > now + interval / 2
    {
        return Ok((v, false));
    }
    let nonce: [u8; 16] = rand::random();
    let req = ocsp::request(&cert, &issuer, Some(&nonce))?;
    let resp = http::post(url, "application/ocsp-request", &req, limits)?;
    let v = ocsp::verify_response(&resp, &cert, &issuer, Some(&nonce), SystemTime::now())?;
    if let Err(e) = write_atomic(file, &resp) {
        tracing::warn!(file = %file.display(), error = %e, "cannot cache the OCSP answer");
    }
    Ok((v, true))
}

/// `<path>.part`, fsync, rename, fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let part = path.with_extension("part");
    let mut f = std::fs::File::create(&part)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&part, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn store_ocsp(
    rev: &Revocation,
    url: &str,
    fingerprint: String,
    got: Result<(ocsp::Verified, bool), String>,
    interval: Duration,
) {
    let now = SystemTime::now();
    let mut map = rev.ocsp.write().unwrap_or_else(|e| e.into_inner());
    let state = map.entry(fingerprint.clone()).or_default();
    match got {
        Ok((v, fetched)) => {
            if fetched {
                rev.count_fetch("ocsp", "ok");
            }
            tracing::info!(url, certificate = %fingerprint, answer = ?v.answer, valid_until = %crate::date::rfc3339(v.valid_until), from_cache = !fetched, "OCSP answer");
            state.next_try = Some(next_look(v.this_update, v.valid_until, now, interval));
            state.answer = Some(v);
            state.error = None;
        }
        Err(e) => {
            rev.count_fetch("ocsp", "error");
            tracing::warn!(url, certificate = %fingerprint, error = %e, "OCSP check failed");
            state.error = Some(e);
            state.next_try = Some(now + interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_three_quarters_never_past_next_update() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86400);
        let i = Duration::from_secs(60);
        assert_eq!(next_look(t0, t0 + day, t0, i), t0 + day * 3 / 4);
        // Late in the window: not before the interval, never after nextUpdate.
        assert_eq!(next_look(t0, t0 + day, t0 + day - i / 2, i), t0 + day);
        // Expired: look again after an interval.
        assert_eq!(next_look(t0, t0 + day, t0 + day * 2, i), t0 + day * 2 + i);
    }
}
