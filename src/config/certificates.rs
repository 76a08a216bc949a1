//! `[certificates]`: recipient certificates (`dir`), trust anchors, CRLs dropped by the operator,
//! the certificate database (`store`, by default under the spool) and the revocation refresher's
//! limits.

use super::problems::{Problems, bounded, existing_dir, existing_file, resolve};
use super::raw::RawCertificates;
use super::spool::SpoolConfig;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct CertificatesConfig {
    pub dir: PathBuf,
    pub trust: Vec<PathBuf>,
    /// Operator-dropped CRLs (DER or PEM).
    pub crl_dir: Option<PathBuf>,
    /// The certificate database (`store::certdb`): `certificates.store`, by default
    /// `<spool.dir>/certificates/store.sqlite`.
    pub store: PathBuf,
    /// One CRL download or OCSP exchange, connect included.
    pub fetch_timeout: std::time::Duration,
    /// Largest CRL or OCSP response accepted, bytes.
    pub crl_max_size: u64,
    /// Period of the revocation refresher.
    pub revocation_interval: std::time::Duration,
}

pub(super) fn certificates(
    c: RawCertificates,
    base: &Path,
    spool: &SpoolConfig,
    p: &mut Problems,
) -> CertificatesConfig {
    bounded(p, "certificates.fetch_timeout", c.fetch_timeout.0.as_secs());
    bounded(p, "certificates.crl_max_size", c.crl_max_size.0);
    bounded(
        p,
        "certificates.revocation_interval",
        c.revocation_interval.0.as_secs(),
    );
    CertificatesConfig {
        dir: existing_dir(base, &c.dir, "certificates.dir", p),
        trust: c
            .trust
            .iter()
            .map(|v| existing_file(base, v, "certificates.trust", p))
            .collect(),
        crl_dir: c
            .crl_dir
            .as_ref()
            .map(|v| existing_dir(base, v, "certificates.crl_dir", p)),
        store: match &c.store {
            Some(v) => resolve(base, v.get_ref()),
            None => spool.dir.join("certificates").join("store.sqlite"),
        },
        fetch_timeout: c.fetch_timeout.0,
        crl_max_size: c.crl_max_size.0,
        revocation_interval: c.revocation_interval.0,
    }
}
