//! `[spool]`: where accepted mail waits (`dir`, relative to the config file's folder), the retry
//! timetable, the maximum age, the number of deliveries in flight and the arrival pacing.

use super::problems::{Problems, bounded, resolve};
use super::raw::RawSpool;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Delays between attempts; the last one repeats.
    pub retry: Vec<Duration>,
    /// After this long undelivered, the message bounces.
    pub max_age: Duration,
    /// Deliveries in flight at once.
    pub workers: usize,
    /// Longest pause before a session accepts a message while the scheduler is behind
    /// (`crate::spool::inflow`); zero: never.
    pub in_flow_delay: Duration,
}

pub(super) fn spool(sp: RawSpool, base: &Path, p: &mut Problems) -> SpoolConfig {
    if sp.retry.is_empty() {
        p.at(0..0, "spool.retry", "needs at least one interval");
    }
    bounded(p, "spool.workers", sp.workers as u64);
    bounded(p, "spool.max_age", sp.max_age.0.as_secs());
    bounded(p, "spool.in_flow_delay", sp.in_flow_delay.0.as_secs());
    SpoolConfig {
        dir: resolve(base, &sp.dir),
        retry: sp.retry.iter().map(|d| d.0).collect(),
        max_age: sp.max_age.0,
        workers: sp.workers,
        in_flow_delay: sp.in_flow_delay.0,
    }
}
