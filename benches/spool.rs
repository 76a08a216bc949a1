//! The spool's share of a message (issue 12, "Make it fast"): the life of a message in the spool
//! as the gateway lives it, without SMTP, S/MIME or a network, so that a change to the on-disk
//! layout is measured on its own.
//!
//! Per message: a draft, the body written in one piece, the commit (durable before `250`), then
//! what the scheduler does: take the message lock, read the envelope, read and check the data,
//! remove the message after delivery. `CONCURRENCY` sessions (20, like `smtp-source -s 20`) run
//! at once on a two-thread tokio runtime, so commits overlap as they do under load.
//!
//! Prints the process's CPU time per message (user + system, from /proc/self/stat: what the
//! spool costs the gateway) and the rate. Run: `cargo bench --bench spool` (N = 4,000 messages
//! of 10 KB) or `SPOOL_BENCH_N=10000 SPOOL_BENCH_SIZE=102400 cargo bench --bench spool`.
//! `SPOOL_BENCH_DIR` puts the spool on another file system (default: a temp dir under
//! `$TMPDIR`, /tmp here, the same ext4 as `bench/run.sh` uses). One `SPOOL_SUMMARY {json}` line.

use std::sync::Arc;
use std::time::Instant;

use cachet::spool::{Envelope, Queue, Spool, TryLock};

const CONCURRENCY: usize = 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

async fn one(spool: &Spool, body: &[u8]) {
    let mut draft = spool.draft().await.unwrap();
    draft.write(body).await.unwrap();
    let env = Envelope::new(
        "snd@bench.test".into(),
        vec!["rcpt@bench.test".into()],
        "127.0.0.1".into(),
        "bench".into(),
    );
    let id = draft.commit(env).await.unwrap();
    // The scheduler's side: lock, envelope, checked data, removal after delivery.
    let s = spool.clone();
    let lock_id = id.clone();
    let lock = tokio::task::spawn_blocking(move || match s.try_lock(&lock_id).unwrap() {
        TryLock::Locked(l) => l,
        other => panic!("lock: {other:?}"),
    })
    .await
    .unwrap();
    let s = spool.clone();
    let load_id = id.clone();
    let env = tokio::task::spawn_blocking(move || s.load(Queue::Incoming, &load_id).unwrap())
        .await
        .unwrap()
        .expect("envelope");
    let data = spool
        .read_checked(Queue::Incoming, &env, None)
        .await
        .unwrap();
    assert_eq!(data.len(), body.len());
    spool.remove(Queue::Incoming, &id).await.unwrap();
    drop(lock);
}

fn main() {
    let n = env_usize("SPOOL_BENCH_N", 4000);
    let size = env_usize("SPOOL_BENCH_SIZE", 10 * 1024);
    let base = std::env::var_os("SPOOL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let body: Arc<Vec<u8>> = Arc::new(
        (0..size)
            .map(|i| {
                if i % 78 == 77 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    rt.block_on(async {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..CONCURRENCY {
            let (spool, body, next) = (spool.clone(), body.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    one(&spool, &body).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let left: usize = spool.counts().iter().map(|(_, c)| c).sum();
    assert_eq!(left, 0, "every message removed");
    let cpu_ms = cpu * 1000.0 / n as f64;
    let rate = n as f64 / wall;
    println!(
        "spool: {n} messages of {size} bytes, {CONCURRENCY} at once: {cpu_ms:.3} CPU-ms per message, {rate:.0} messages/s ({} on {})",
        dir.path().display(),
        base.display()
    );
    println!(
        "SPOOL_SUMMARY {{\"n\":{n},\"size\":{size},\"cpu_ms_per_msg\":{cpu_ms:.4},\"msgs_per_s\":{rate:.1}}}"
    );
}
