//! Revocation status of the certificates cachet uses: recipients' encryption certificates and
//! the organisation's own signing certificates (docs/certificates.md, "Revocation").
//!
//! Sources, all held in memory by [`Revocation`] and never fetched on the hot path:
//! - CRLs named by each certificate's CRL distribution points (`http://`, `https://`),
//!   downloaded by the background [`refresh`] task, cached on disk as
//!   `<spool>/revocation/crl-<sha256(url)>.der` (streamed, fsynced, renamed into place) and
//!   refreshed when three quarters of their thisUpdate..nextUpdate window have passed;
//! - CRL files the operator drops into `certificates.crl_dir` (DER or PEM);
//! - OCSP answers (RFC 6960, [`ocsp`]) from the responder in the certificate's AIA, kept in
//!   memory until their nextUpdate and saved as `<spool>/revocation/ocsp-<sha256>.der`.
//!
//! [`Revocation::status`] combines them: revoked if any current source says so; good if a
//! current CRL signed by the issuer covers the certificate (webpki, whole chain, see
//! [`crate::store::validate::crl_status`]) or a verified OCSP answer says good; otherwise
//! unknown, with `pending` set while a source named by the certificate has not been asked yet
//! (so a hard policy defers instead of failing). What a policy does with each status is
//! `pipeline::decide`'s business.

pub mod ocsp;
pub mod refresh;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use der::Decode;
use rustls_pki_types::CertificateDer;
use x509_cert::Certificate;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{AuthorityInfoAccessSyntax, CrlDistributionPoints};

use super::{Problem, TrustAnchors, hex};
use crate::store::validate::{self, CrlVerdict};

/// id-ad-ocsp (RFC 5280 §4.2.2.1).
const ID_AD_OCSP: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1");

/// Where a known status came from (the `source` label of the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Crl,
    Ocsp,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Crl => "crl",
            Source::Ocsp => "ocsp",
        }
    }
}

/// The revocation status of one certificate at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Good(Source),
    Revoked(Source),
    Unknown {
        /// Why, for logs and `cachet explain`.
        reason: String,
        /// A source the certificate names has not answered or failed yet: the first fetch is
        /// still to come (or in flight).
        pending: bool,
    },
}

impl Status {
    /// (result, source) labels for `cachet_revocation_checks_total`.
    pub fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Status::Good(s) => ("good", s.name()),
            Status::Revoked(s) => ("revoked", s.name()),
            Status::Unknown { pending: true, .. } => ("pending", "none"),
            Status::Unknown { .. } => ("unknown", "none"),
        }
    }
}

/// A parsed CRL and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedCrl {
    /// The distribution point URL or the file in `crl_dir`.
    pub origin: String,
    pub crl: Arc<webpki::CertRevocationList<'static>>,
    pub this_update: SystemTime,
    pub next_update: SystemTime,
}

/// Parse a CRL (DER, or PEM `X509 CRL`). Its signature is checked later, against the issuer of
/// each certificate it is used for.
pub fn parse_crl(bytes: &[u8], origin: &str) -> Result<LoadedCrl, String> {
    let der: Vec<u8> = if bytes.first() == Some(&0x30) {
        bytes.to_vec()
    } else {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateRevocationListDer::from_pem_slice(bytes)
            .map_err(|e| format!("{origin}: not a DER or PEM CRL: {e}"))?
            .as_ref()
            .to_vec()
    };
    let parsed = x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&der)
        .map_err(|e| format!("{origin}: not a CRL: {e}"))?;
    let tbs = &parsed.tbs_cert_list;
    let next_update = tbs
        .next_update
        .ok_or_else(|| format!("{origin}: CRL without nextUpdate"))?
        .to_system_time();
    let owned = webpki::OwnedCertRevocationList::from_der(&der)
        .map_err(|e| format!("{origin}: CRL refused: {e}"))?;
    Ok(LoadedCrl {
        origin: origin.to_string(),
        crl: Arc::new(owned.into()),
        this_update: tbs.this_update.to_system_time(),
        next_update,
    })
}

/// The revocation sources a certificate names: CRL distribution point URLs (`http`/`https`
/// full names only) and the first OCSP responder URL of its AIA.
pub fn sources(der: &[u8]) -> (Vec<String>, Option<String>) {
    let Ok(cert) = Certificate::from_der(der) else {
        return (Vec::new(), None);
    };
    let tbs = cert.tbs_certificate();
    let mut crls = Vec::new();
    if let Ok(Some((_, dps))) = tbs.get_extension::<CrlDistributionPoints>() {
        for dp in dps.0 {
            if dp.crl_issuer.is_some() || dp.reasons.is_some() {
                continue; // indirect or partitioned CRLs: webpki cannot use them
            }
            if let Some(DistributionPointName::FullName(names)) = dp.distribution_point {
                for name in names {
                    if let GeneralName::UniformResourceIdentifier(uri) = name {
                        let u = uri.as_str();
                        if u.starts_with("http://") || u.starts_with("https://") {
                            crls.push(u.to_string());
                        }
                    }
                }
            }
        }
    }
    let mut ocsp = None;
    if let Ok(Some((_, aia))) = tbs.get_extension::<AuthorityInfoAccessSyntax>() {
        for ad in aia.0 {
            if ad.access_method == ID_AD_OCSP
                && let GeneralName::UniformResourceIdentifier(uri) = ad.access_location
            {
                let u = uri.as_str();
                if u.starts_with("http://") || u.starts_with("https://") {
                    ocsp = Some(u.to_string());
                    break;
                }
            }
        }
    }
    (crls, ocsp)
}

/// One CRL distribution point: the CRL we have (kept after a failed refresh, until it expires)
/// and the last attempt.
#[derive(Debug, Default)]
pub(crate) struct UrlState {
    pub(crate) crl: Option<LoadedCrl>,
    pub(crate) error: Option<String>,
    /// When the refresher may try again.
    pub(crate) next_try: Option<SystemTime>,
}

/// One certificate's OCSP state.
#[derive(Debug, Default)]
pub(crate) struct OcspState {
    pub(crate) answer: Option<ocsp::Verified>,
    pub(crate) error: Option<String>,
    pub(crate) next_try: Option<SystemTime>,
}

/// Everything known about revocation, shared by every runtime (a reload keeps it) and by the
/// background refresher.
#[derive(Debug, Default)]
pub struct Revocation {
    /// CRLs from `certificates.crl_dir`, reloaded each refresh round.
    pub(crate) dir: RwLock<Vec<LoadedCrl>>,
    /// By distribution point URL.
    pub(crate) urls: RwLock<HashMap<String, UrlState>>,
    /// By certificate fingerprint (SHA-256 hex).
    pub(crate) ocsp: RwLock<HashMap<String, OcspState>>,
    /// Poked on reload so new certificates are looked at without waiting a full interval.
    pub wake: tokio::sync::Notify,
    /// Certificates asked about that no source has answered for yet and that the loaded stores
    /// may not list (a directory's answer): (certificate, chain) by fingerprint. The refresher
    /// adds them to its targets.
    wanted: Mutex<HashMap<String, (CertificateDer<'static>, Vec<CertificateDer<'static>>)>>,
    /// (result, source) -> checks, for `/metrics`.
    checks: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// (kind, result) -> fetches.
    fetches: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// What [`Revocation::status`] needs from a certificate besides the CRLs and answers held:
    /// its fingerprint and [`sources`], by DER. A function of the bytes, kept so a busy
    /// recipient's certificate is not parsed again for every message (issue 12: 3% of the
    /// gateway's CPU); at most [`FACTS_MAX`] entries, then it starts again.
    facts: Mutex<HashMap<Vec<u8>, Arc<Facts>>>,
}

/// A certificate's fingerprint and revocation sources.
#[derive(Debug)]
struct Facts {
    fingerprint: String,
    crl_urls: Vec<String>,
    ocsp_url: Option<String>,
}

const FACTS_MAX: usize = 4096;

impl Revocation {
    /// Read every CRL file in `dir`; the problems are reported by `cachet check` and logged.
    pub fn load_dir(&self, dir: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut crls = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                paths.sort();
                for path in paths.into_iter().filter(|p| p.is_file()) {
                    let origin = path.display().to_string();
                    match std::fs::read(&path)
                        .map_err(|e| format!("cannot read: {e}"))
                        .and_then(|b| parse_crl(&b, &origin))
                    {
                        Ok(c) => crls.push(c),
                        Err(reason) => problems.push(Problem::new(&path, reason)),
                    }
                }
            }
            Err(e) => problems.push(Problem::new(dir, format!("cannot read CRL directory: {e}"))),
        }
        *self.dir.write().unwrap_or_else(|e| e.into_inner()) = crls;
        problems
    }

    /// The fingerprint and sources of `der`, parsed once ([`Revocation::facts`]).
    fn facts(&self, der: &[u8]) -> Arc<Facts> {
        if let Some(f) = self
            .facts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(der)
        {
            return f.clone();
        }
        let (crl_urls, ocsp_url) = sources(der);
        let f = Arc::new(Facts {
            fingerprint: hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref()),
            crl_urls,
            ocsp_url,
        });
        let mut facts = self.facts.lock().unwrap_or_else(|e| e.into_inner());
        if facts.len() >= FACTS_MAX {
            facts.clear();
        }
        facts.insert(der.to_vec(), f.clone());
        f
    }

    /// The status of `der` (chaining through `intermediates` to `trust`) at `now`, from what is
    /// in memory. Never blocks on the network.
    pub fn status(
        &self,
        der: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        trust: &TrustAnchors,
        now: SystemTime,
    ) -> Status {
        let facts = self.facts(der);
        let Facts {
            fingerprint,
            crl_urls,
            ocsp_url,
        } = &*facts;
        let verdict = {
            let dir = self.dir.read().unwrap_or_else(|e| e.into_inner());
            let urls = self.urls.read().unwrap_or_else(|e| e.into_inner());
            let mut held: Vec<&LoadedCrl> = dir
                .iter()
                .chain(urls.values().filter_map(|u| u.crl.as_ref()))
                .collect();
            // webpki uses the first CRL that is authoritative for a certificate: newest first.
            held.sort_by_key(|c| std::cmp::Reverse(c.this_update));
            let list: Vec<&webpki::CertRevocationList<'_>> = held.iter().map(|c| &*c.crl).collect();
            if list.is_empty() {
                CrlVerdict::Unknown("no CRL".into())
            } else {
                validate::crl_status(der, intermediates, trust, &list, now)
            }
        };
        let ocsp = self.ocsp.read().unwrap_or_else(|e| e.into_inner());
        let entry = ocsp.get(fingerprint);
        let answer = entry
            .and_then(|s| s.answer.as_ref())
            .filter(|a| now < a.valid_until)
            .map(|a| a.answer);
        match (&verdict, answer) {
            (CrlVerdict::Revoked, _) => return Status::Revoked(Source::Crl),
            (_, Some(ocsp::Answer::Revoked)) => return Status::Revoked(Source::Ocsp),
            (CrlVerdict::Good, _) => return Status::Good(Source::Crl),
            (_, Some(ocsp::Answer::Good)) => return Status::Good(Source::Ocsp),
            _ => {}
        }
        let urls = self.urls.read().unwrap_or_else(|e| e.into_inner());
        let crl_pending = crl_urls.iter().any(|u| {
            urls.get(u)
                .is_none_or(|s| s.crl.is_none() && s.error.is_none())
        });
        let ocsp_pending =
            ocsp_url.is_some() && entry.is_none_or(|s| s.answer.is_none() && s.error.is_none());
        let mut reasons = Vec::new();
        if let CrlVerdict::Unknown(r) = &verdict {
            reasons.push(format!("CRL: {r}"));
        }
        for u in crl_urls {
            if let Some(e) = urls.get(u).and_then(|s| s.error.as_ref()) {
                reasons.push(format!("CRL fetch: {e}"));
            }
        }
        match (&ocsp_url, entry) {
            (None, _) => reasons.push("no OCSP responder".into()),
            (
                Some(_),
                Some(OcspState {
                    answer: Some(a), ..
                }),
            ) if a.answer == ocsp::Answer::Unknown => {
                reasons.push("OCSP: the responder does not know the certificate".into())
            }
            (Some(_), Some(OcspState { error: Some(e), .. })) => reasons.push(format!("OCSP: {e}")),
            _ => {}
        }
        let pending = crl_pending || ocsp_pending;
        if pending {
            let fresh = self
                .wanted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    fingerprint.clone(),
                    (
                        der.clone().into_owned(),
                        intermediates
                            .iter()
                            .map(|c| c.clone().into_owned())
                            .collect(),
                    ),
                )
                .is_none();
            if fresh {
                self.wake.notify_one();
            }
        }
        Status::Unknown {
            reason: reasons.join("; "),
            pending,
        }
    }

    /// The certificates [`Revocation::status`] found pending, for the refresher's targets.
    pub fn wanted(&self) -> Vec<(CertificateDer<'static>, Vec<CertificateDer<'static>>)> {
        self.wanted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Count one check (`cachet_revocation_checks_total`).
    pub fn count(&self, status: &Status) {
        *self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status.labels())
            .or_default() += 1;
    }

    pub(crate) fn count_fetch(&self, kind: &'static str, result: &'static str) {
        *self
            .fetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((kind, result))
            .or_default() += 1;
    }

    /// Prometheus text: checks by result and source, fetches by kind and result, and the age of
    /// every CRL held (seconds since its thisUpdate) with its nextUpdate.
    pub fn render_metrics(&self, now: SystemTime) -> String {
        use std::fmt::Write;
        let mut s = String::from(
            "# HELP cachet_revocation_checks_total Revocation checks of certificates about to be used, by result (good, revoked, unknown, pending) and source.\n# TYPE cachet_revocation_checks_total counter\n",
        );
        for ((result, source), n) in self.checks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                s,
                "cachet_revocation_checks_total{{result=\"{result}\",source=\"{source}\"}} {n}"
            );
        }
        s.push_str("# HELP cachet_revocation_fetches_total CRL downloads and OCSP exchanges, by kind and result.\n# TYPE cachet_revocation_fetches_total counter\n");
        for ((kind, result), n) in self
            .fetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                s,
                "cachet_revocation_fetches_total{{kind=\"{kind}\",result=\"{result}\"}} {n}"
            );
        }
        s.push_str("# HELP cachet_crl_age_seconds Seconds since the thisUpdate of each CRL held.\n# TYPE cachet_crl_age_seconds gauge\n");
        let mut ages = String::new();
        let mut next = String::from(
            "# HELP cachet_crl_next_update_seconds Unix time of each CRL's nextUpdate.\n# TYPE cachet_crl_next_update_seconds gauge\n",
        );
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        };
        let dir = self.dir.read().unwrap_or_else(|e| e.into_inner());
        let urls = self.urls.read().unwrap_or_else(|e| e.into_inner());
        for c in dir
            .iter()
            .chain(urls.values().filter_map(|u| u.crl.as_ref()))
        {
            let origin = c.origin.replace(['"', '\\', '\n'], "_");
            let age = now
                .duration_since(c.this_update)
                .unwrap_or_default()
                .as_secs();
            let _ = writeln!(ages, "cachet_crl_age_seconds{{origin=\"{origin}\"}} {age}");
            let _ = writeln!(
                next,
                "cachet_crl_next_update_seconds{{origin=\"{origin}\"}} {}",
                unix(c.next_update)
            );
        }
        s.push_str(&ages);
        s.push_str(&next);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's fingerprint and sources are parsed once and the verdict is the same
    /// from the kept facts as from a fresh parse.
    #[test]
    fn the_facts_of_a_certificate_are_parsed_once() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["leaf.example".to_string()]).unwrap();
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec!["http://127.0.0.1:9/ca.crl".into()],
        }];
        let der = p.self_signed(&key).unwrap().der().clone();
        let r = Revocation::default();
        let trust = TrustAnchors::default();
        let now = SystemTime::now();
        let first = r.status(&der, &[], &trust, now);
        let second = r.status(&der, &[], &trust, now);
        assert_eq!(first, second);
        assert!(
            matches!(&first, Status::Unknown { pending: true, .. }),
            "{first:?}"
        );
        let facts = r.facts.lock().unwrap();
        assert_eq!(facts.len(), 1);
        let kept = &facts[der.as_ref()];
        let (crl_urls, ocsp_url) = sources(&der);
        assert_eq!(kept.crl_urls, crl_urls);
        assert_eq!(kept.crl_urls, vec!["http://127.0.0.1:9/ca.crl".to_string()]);
        assert_eq!(kept.ocsp_url, ocsp_url);
        assert_eq!(
            kept.fingerprint,
            hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der).as_ref())
        );
        // The pending certificate is handed to the refresher once, under its fingerprint.
        assert_eq!(r.wanted().len(), 1);
    }
}
