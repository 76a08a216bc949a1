//! Faults, against the real binary (issue 14): a `kill -9` storm. Ten clients send 2,000 small
//! messages while the gateway is SIGKILLed 20 times at random moments (a seeded RNG: the seed is
//! printed; `CACHET_KILL_SEED=N` replays a run) and restarted each time. A client whose
//! conversation dies sends the same message again, as a real MTA does. Afterwards every message
//! that got `250` must reach the upstream: duplicates are allowed (and counted), losses are not.

mod common;

use common::faults::{queue_ids, token_counts, token_message};
use common::*;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MESSAGES: usize = 2_000;
const CLIENTS: usize = 10;
const KILLS: usize = 20;

/// What the clients saw: tokens acknowledged with `250`, and conversations that died.
#[derive(Default)]
struct Tally {
    accepted: Mutex<BTreeSet<String>>,
    count: AtomicUsize,
    retried: AtomicUsize,
}

/// One client: sends its tokens in order over one session, reconnecting (and sending the same
/// token again) whenever the conversation fails, until all are acknowledged or `deadline`.
async fn client(addr: std::net::SocketAddr, t: usize, tally: Arc<Tally>, deadline: Instant) {
    let tokens: Vec<String> = (0..MESSAGES / CLIENTS)
        .map(|i| format!("storm-{t}-{i}"))
        .collect();
    let mut next = 0;
    while next < tokens.len() {
        assert!(Instant::now() < deadline, "client {t} stuck at {next}");
        let Ok((mut c, _)) = SmtpClient::connect_ehlo(addr).await else {
            // The gateway is down or starting: try again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        while next < tokens.len() {
            let msg = token_message(&tokens[next]);
            match c
                .send_message("a@example.org", &["b@x.example"], &msg)
                .await
            {
                Ok((250, _)) => {
                    tally.accepted.lock().unwrap().insert(tokens[next].clone());
                    tally.count.fetch_add(1, Ordering::Relaxed);
                    next += 1;
                }
                _ => {
                    tally.retried.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_a_kill_9_storm() {
    let seed: u64 = std::env::var("CACHET_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("kill storm seed: {seed} (CACHET_KILL_SEED={seed} replays the kill points)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Kill points: after this many acknowledgements, plus a few milliseconds, so kills land in
    // every phase of a conversation and of a delivery.
    let mut points: Vec<(usize, u64)> = (0..KILLS)
        .map(|_| (rng.random_range(20..MESSAGES - 20), rng.random_range(0..30)))
        .collect();
    points.sort();

    let started = Instant::now();
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let mut gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(240);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| tokio::spawn(client(gw.addr(), t, tally.clone(), deadline)))
        .collect();
    let mut kills = 0;
    for (after, extra_ms) in points {
        while tally.count.load(Ordering::Relaxed) < after {
            assert!(Instant::now() < deadline, "load stalled\n{}", gw.logs());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(extra_ms)).await;
        gw.restart().await; // SIGKILL, reap, start again on the same spool and ports
        kills += 1;
    }
    for c in clients {
        c.await.expect("client task");
    }
    let accepted = tally.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), MESSAGES);
    let load_secs = started.elapsed().as_secs_f32();

    // Everything acknowledged reaches the upstream.
    let wait_until = Instant::now() + Duration::from_secs(120);
    let delivered = loop {
        let counts = token_counts(&up.received());
        let delivered: BTreeSet<String> = counts.keys().cloned().collect();
        if accepted.is_subset(&delivered) || Instant::now() >= wait_until {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // And nothing is left behind: no queue file, nothing in corrupt/ (a kill during a rewrite
    // leaves at most an incomplete last record, which readers skip), no data/ (the older layout).
    let spool = gw.spool_dir();
    let left = || -> Vec<String> {
        ["incoming", "deferred", "hold", "corrupt", "data"]
            .iter()
            .flat_map(|q| {
                queue_ids(&spool, q)
                    .into_iter()
                    .map(move |id| format!("{q}/{id}"))
            })
            .collect()
    };
    if accepted.is_subset(&delivered) {
        let wait_until = Instant::now() + Duration::from_secs(60);
        while !left().is_empty() && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let got = up.received();
    let duplicates = got.len() - token_counts(&got).len();
    let lost: Vec<&String> = accepted.difference(&delivered).collect();
    let line = format!(
        "kill storm: {kills} kills, {} accepted, {} delivered, {duplicates} duplicates, {} lost ({} conversations retried, load {load_secs:.0} s, all delivered after {:.0} s, seed {seed})",
        accepted.len(),
        delivered.intersection(&accepted).count(),
        lost.len(),
        tally.retried.load(Ordering::Relaxed),
        started.elapsed().as_secs_f32(),
    );
    println!("{line}");
    assert!(
        lost.is_empty(),
        "{line}\nacknowledged but lost: {:?}\n{}",
        &lost[..lost.len().min(20)],
        gw.logs()
    );
    assert!(left().is_empty(), "left in the spool: {:?}", left());
}
