//! The certificate store at scale (issue 13, "Scale"): generates N recipient certificates
//! (ECDSA P-256, one CA, one file each in `certificates.dir`), then measures with the real
//! binary:
//! - the first `cachet check` (imports every file into the database: a one-time cost),
//! - `cachet check` again (start-up with an unchanged directory: one stat per file),
//! - `cachet serve`: resident memory when idle, then during and after a SIGHUP reload, and how
//!   long the reload took (until "configuration reloaded" is logged),
//! - lookups per second through `CertStore` on the same database (hits and misses).
//!
//! Run: `cargo bench --bench certstore` (N = 2,000) or `CERTSTORE_N=1000000 cargo bench --bench
//! certstore` (or `-- 1000000`). `CERTSTORE_DIR` keeps the generated tree between runs (the
//! certificates are generated again only when N differs). Prints one table and a
//! `CERTSTORE_SUMMARY {json}` line. The figures of the last run are in docs/performance.md.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

fn address(i: usize) -> String {
    format!("user{i}@bench{}.example", i % 100)
}

/// One CA and `n` leaves under `dir/recipients`, `dir/trust/ca.pem`; skipped when done already.
fn generate(dir: &Path, n: usize) {
    let marker = dir.join(format!("generated-{n}"));
    if marker.exists() {
        eprintln!(
            "certstore bench: reusing {n} certificates in {}",
            dir.display()
        );
        return;
    }
    let _ = std::fs::remove_dir_all(dir.join("recipients"));
    std::fs::create_dir_all(dir.join("recipients")).unwrap();
    std::fs::create_dir_all(dir.join("trust")).unwrap();
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "Bench CA");
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("trust/ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    // One key for every leaf: the certificates differ (serial, SAN), generation stays fast.
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let started = Instant::now();
    for i in 0..n {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, format!("User {i}"));
        p.subject_alt_names = vec![SanType::Rfc822Name(address(i).try_into().unwrap())];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(730);
        p.serial_number = Some(rcgen::SerialNumber::from(
            (i as u64 + 1).to_be_bytes().to_vec(),
        ));
        p.is_ca = IsCa::ExplicitNoCa;
        let cert = p.signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(dir.join(format!("recipients/r{i}.pem")), cert.pem()).unwrap();
        if i > 0 && i % 100_000 == 0 {
            eprintln!(
                "certstore bench: {i} certificates generated ({:.0?})",
                started.elapsed()
            );
        }
    }
    std::fs::write(&marker, "").unwrap();
    eprintln!(
        "certstore bench: {n} certificates generated in {:.1?}",
        started.elapsed()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("cachet.toml");
    std::fs::create_dir_all(dir.join("outbox")).unwrap();
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nlocal_domains = [\"example.org\"]\n\
             [spool]\ndir = \"spool\"\n[upstream]\nurl = \"file://outbox\"\n\
             [certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n\
             [log]\nlevel = \"info\"\n"
        ),
    )
    .unwrap();
    path
}

fn cachet() -> &'static str {
    env!("CARGO_BIN_EXE_cachet")
}

/// Wall time of `cachet check`, and its first output line.
fn check(config: &Path) -> (Duration, String) {
    let t = Instant::now();
    let out = Command::new(cachet())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "cachet check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().nth(1).unwrap_or("").to_string();
    (took, summary)
}

/// (VmRSS, VmHWM) in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn count_in(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

struct Served {
    start: Duration,
    idle_kib: u64,
    reload: Duration,
    reload_peak_kib: u64,
    after_reload_kib: u64,
    hwm_kib: u64,
}

fn serve(dir: &Path, config: &Path, port: u16) -> Served {
    let log = dir.join("serve.log");
    let t = Instant::now();
    let mut child = Command::new(cachet())
        .args(["serve", "--config"])
        .arg(config)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(600);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway did not listen: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(child.try_wait().unwrap().is_none(), "gateway exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (idle_kib, _) = memory(pid);
    let reloads = count_in(&log, "configuration reloaded");
    let t = Instant::now();
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    let mut peak = 0;
    while count_in(&log, "configuration reloaded") == reloads {
        assert!(Instant::now() < deadline, "reload did not finish");
        peak = peak.max(memory(pid).0);
        std::thread::sleep(Duration::from_millis(10));
    }
    let reload = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (after, hwm) = memory(pid);
    let _ = child.kill();
    let _ = child.wait();
    Served {
        start,
        idle_kib,
        reload,
        reload_peak_kib: peak.max(after),
        after_reload_kib: after,
        hwm_kib: hwm,
    }
}

/// Lookups per second on one thread for `secs`, over addresses drawn across the store
/// (every fourth one unknown).
fn lookups(dir: &Path, n: usize, secs: u64) -> (f64, usize) {
    let (trust, problems) = cachet::store::TrustAnchors::load(&[dir.join("trust/ca.pem")]);
    assert!(problems.is_empty(), "{problems:?}");
    let store =
        cachet::store::CertStore::attach(&dir.join("spool/certificates/store.sqlite"), &trust)
            .unwrap();
    let now = SystemTime::now();
    let t = Instant::now();
    let (mut done, mut found) = (0usize, 0usize);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while t.elapsed() < Duration::from_secs(secs) {
        for _ in 0..100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % n as u64) as usize;
            let a = if done % 4 == 3 {
                format!("nobody{i}@bench.example")
            } else {
                address(i)
            };
            if store.lookup(&a, now).cert.is_some() {
                found += 1;
            }
            done += 1;
        }
    }
    (done as f64 / t.elapsed().as_secs_f64(), found)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .or_else(|| std::env::var("CERTSTORE_N").ok()?.parse().ok())
        .unwrap_or(2000);
    let (dir, _keep) = match std::env::var_os("CERTSTORE_DIR") {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let t = std::env::temp_dir().join(format!("cachet-certstore-{}", std::process::id()));
            (t.clone(), Some(Cleanup(t)))
        }
    };
    std::fs::create_dir_all(&dir).unwrap();
    generate(&dir, n);
    let port = free_port();
    let config = write_config(&dir, port);
    let (import, summary) = check(&config);
    eprintln!("certstore bench: first check {import:.2?}: {summary}");
    let (again, _) = check(&config);
    let served = serve(&dir, &config, port);
    let (rate, found) = lookups(&dir, n, 3);
    let db_bytes: u64 = ["", "-wal"]
        .iter()
        .filter_map(|s| {
            std::fs::metadata(dir.join(format!("spool/certificates/store.sqlite{s}"))).ok()
        })
        .map(|m| m.len())
        .sum();
    let mib = |k: u64| k as f64 / 1024.0;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "certificate store, N = {n} (one file each in certificates.dir)"
    );
    let _ = writeln!(
        out,
        "  first cachet check (imports the directory) {:>8.2} s",
        import.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  cachet check, directory unchanged           {:>8.2} s",
        again.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  cachet serve: listening after               {:>8.2} s",
        served.start.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  resident memory idle                        {:>8.1} MiB",
        mib(served.idle_kib)
    );
    let _ = writeln!(
        out,
        "  SIGHUP reload took                          {:>8.2} s",
        served.reload.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  resident memory peak during reload          {:>8.1} MiB",
        mib(served.reload_peak_kib)
    );
    let _ = writeln!(
        out,
        "  resident memory after reload                {:>8.1} MiB",
        mib(served.after_reload_kib)
    );
    let _ = writeln!(
        out,
        "  resident memory high-water mark (VmHWM)     {:>8.1} MiB",
        mib(served.hwm_kib)
    );
    let _ = writeln!(
        out,
        "  lookups per second (1 thread, 1/4 misses)   {rate:>8.0}"
    );
    let _ = writeln!(
        out,
        "  database size                               {:>8.1} MiB",
        db_bytes as f64 / 1048576.0
    );
    let _ = writeln!(
        out,
        "CERTSTORE_SUMMARY {{\"n\":{n},\"first_check_s\":{:.3},\"check_s\":{:.3},\"serve_start_s\":{:.3},\"idle_mib\":{:.1},\"reload_s\":{:.3},\"reload_peak_mib\":{:.1},\"after_reload_mib\":{:.1},\"hwm_mib\":{:.1},\"lookups_per_s\":{rate:.0},\"db_mib\":{:.1}}}",
        import.as_secs_f64(),
        again.as_secs_f64(),
        served.start.as_secs_f64(),
        mib(served.idle_kib),
        served.reload.as_secs_f64(),
        mib(served.reload_peak_kib),
        mib(served.after_reload_kib),
        mib(served.hwm_kib),
        db_bytes as f64 / 1048576.0
    );
    assert!(found > 0, "no lookup found a certificate");
}

/// Removes the generated tree unless CERTSTORE_DIR was given.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
