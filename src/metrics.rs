//! Counters and gauges for `/metrics` (Prometheus text format). Plain atomics behind one struct:
//! every stage bumps its counters; the admin listener renders them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upstream latency histogram bounds, seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Metrics {
    accepted: AtomicU64,
    relayed: AtomicU64,
    deferred: AtomicU64,
    bounced: AtomicU64,
    held: AtomicU64,
    signed: AtomicU64,
    /// The inbound subset (`[inbound]` listener): accepted, relayed to the internal server,
    /// held, refused at end of DATA by the inbound rules.
    inbound_accepted: AtomicU64,
    inbound_relayed: AtomicU64,
    inbound_held: AtomicU64,
    inbound_rejected: AtomicU64,
    /// Arrivals that waited for the scheduler (spool::inflow), and those of them that went in
    /// after the whole `in_flow_delay`.
    paced: AtomicU64,
    paced_full: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    encrypted: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// LDAP questions by (directory URL, result): found, not_found, error, timeout.
    directory: Mutex<BTreeMap<(String, &'static str), u64>>,
    directory_buckets: [AtomicU64; BUCKETS.len()],
    directory_count: AtomicU64,
    directory_sum_micros: AtomicU64,
}

impl Metrics {
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }
    /// One recipient delivered upstream.
    pub fn relayed(&self, n: u64) {
        self.relayed.fetch_add(n, Relaxed);
    }
    pub fn deferred(&self, n: u64) {
        self.deferred.fetch_add(n, Relaxed);
    }
    pub fn bounced(&self, n: u64) {
        self.bounced.fetch_add(n, Relaxed);
    }
    pub fn held(&self) {
        self.held.fetch_add(1, Relaxed);
    }
    pub fn signed(&self) {
        self.signed.fetch_add(1, Relaxed);
    }
    pub fn inbound_accepted(&self) {
        self.inbound_accepted.fetch_add(1, Relaxed);
    }
    /// Inbound recipients delivered to the internal mail server.
    pub fn inbound_relayed(&self, n: u64) {
        self.inbound_relayed.fetch_add(n, Relaxed);
    }
    pub fn inbound_held(&self) {
        self.inbound_held.fetch_add(1, Relaxed);
    }
    pub fn inbound_rejected(&self) {
        self.inbound_rejected.fetch_add(1, Relaxed);
    }
    /// An arrival waited for the scheduler; `full`: for the whole delay, in without a token.
    pub fn arrival_paced(&self, full: bool) {
        self.paced.fetch_add(1, Relaxed);
        if full {
            self.paced_full.fetch_add(1, Relaxed);
        }
    }
    pub fn refused(&self, reason: &'static str) {
        *self.refused.lock().unwrap().entry(reason).or_default() += 1;
    }
    pub fn encrypted(&self, algorithm: &'static str) {
        *self.encrypted.lock().unwrap().entry(algorithm).or_default() += 1;
    }
    pub fn upstream_latency(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros
            .fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// One question to a directory (cache hits are not questions) and how long it took.
    pub fn directory_lookup(&self, url: &str, result: &'static str, d: std::time::Duration) {
        if let Ok(mut m) = self.directory.lock() {
            *m.entry((url.to_string(), result)).or_default() += 1;
        }
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.directory_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.directory_count.fetch_add(1, Relaxed);
        self.directory_sum_micros
            .fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// Renders everything; `extra` adds gauges computed at scrape time (queue sizes, expiry).
    pub fn render(&self, extra: &str) -> String {
        let mut s = String::new();
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut s,
            "cachet_messages_accepted_total",
            "Messages accepted (250 after spooling).",
            self.accepted.load(Relaxed),
        );
        counter(
            &mut s,
            "cachet_arrivals_paced_total",
            "Messages whose DATA waited for the deliveries to catch up (spool.in_flow_delay).",
            self.paced.load(Relaxed),
        );
        counter(
            &mut s,
            "cachet_arrivals_paced_full_delay_total",
            "Of those, messages that waited the whole spool.in_flow_delay and went in anyway.",
            self.paced_full.load(Relaxed),
        );
        counter(
            &mut s,
            "cachet_recipients_relayed_total",
            "Recipients accepted by the upstream.",
            self.relayed.load(Relaxed),
        );
        counter(
            &mut s,
            "cachet_recipients_deferred_total",
            "Recipient delivery attempts that failed temporarily.",
            self.deferred.load(Relaxed),
        );
        counter(
            &mut s,
            "cachet_recipients_bounced_total",
            "Recipients failed permanently (DSN sent unless sender is <>).",
            self.bounced.load(Relaxed),
        );
        counter(
            &mut s,
            "cachet_messages_held_total",
            "Messages moved to the hold queue by policy.",
            self.held.load(Relaxed),
        );
        counter(
            &mut s,
            "cachet_copies_signed_total",
            "Outgoing copies signed.",
            self.signed.load(Relaxed),
        );
        counter(
            &mut s,
            "cachet_inbound_messages_accepted_total",
            "Messages accepted on the [inbound] listener (also counted in cachet_messages_accepted_total).",
            self.inbound_accepted.load(Relaxed),
        );
        counter(
            &mut s,
            "cachet_inbound_recipients_relayed_total",
            "Inbound recipients accepted by the internal mail server (also counted in cachet_recipients_relayed_total).",
            self.inbound_relayed.load(Relaxed),
        );
        counter(
            &mut s,
            "cachet_inbound_messages_held_total",
            "Inbound messages moved to the hold queue (also counted in cachet_messages_held_total).",
            self.inbound_held.load(Relaxed),
        );
        counter(
            &mut s,
            "cachet_inbound_messages_rejected_total",
            "Inbound messages refused at the end of DATA by the inbound rules (removed from the spool).",
            self.inbound_rejected.load(Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP cachet_refused_total SMTP commands refused, by reason.\n# TYPE cachet_refused_total counter"
        );
        for (k, v) in self.refused.lock().unwrap().iter() {
            let _ = writeln!(s, "cachet_refused_total{{reason=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP cachet_copies_encrypted_total Outgoing copies encrypted, by algorithm.\n# TYPE cachet_copies_encrypted_total counter"
        );
        for (k, v) in self.encrypted.lock().unwrap().iter() {
            let _ = writeln!(s, "cachet_copies_encrypted_total{{algorithm=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP cachet_upstream_latency_seconds Time to hand one copy to the upstream.\n# TYPE cachet_upstream_latency_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "cachet_upstream_latency_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            s,
            "cachet_upstream_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "cachet_upstream_latency_seconds_sum {}",
            self.latency_sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "cachet_upstream_latency_seconds_count {count}");
        let _ = writeln!(
            s,
            "# HELP cachet_directory_lookups_total Questions to [[directory]] servers, by directory and result (found, not_found, error, timeout).\n# TYPE cachet_directory_lookups_total counter"
        );
        if let Ok(m) = self.directory.lock() {
            for ((url, result), v) in m.iter() {
                let url = url.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(
                    s,
                    "cachet_directory_lookups_total{{directory=\"{url}\",result=\"{result}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP cachet_directory_lookup_seconds Time one directory question took (connect, TLS, bind, search).\n# TYPE cachet_directory_lookup_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "cachet_directory_lookup_seconds_bucket{{le=\"{b}\"}} {}",
                self.directory_buckets[i].load(Relaxed)
            );
        }
        let count = self.directory_count.load(Relaxed);
        let _ = writeln!(
            s,
            "cachet_directory_lookup_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "cachet_directory_lookup_seconds_sum {}",
            self.directory_sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "cachet_directory_lookup_seconds_count {count}");
        s.push_str(extra);
        s
    }
}
