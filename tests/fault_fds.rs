//! Faults, against the real binary (issue 14): file descriptors run out. The gateway runs under
//! `prlimit --nofile=64:64`; the test takes descriptors away from it by holding idle SMTP
//! connections open (each costs the gateway exactly one), counting what it has in `/proc/PID/fd`.
//! With none left, new clients get `421` instead of hanging in the accept queue, a delivery in
//! flight finishes, and no envelope goes to `corrupt/` because a file could not be opened
//! (`EMFILE` is temporary: the attempt is retried). When descriptors come back, mail flows again.

mod common;

use common::faults::{open_fds, queue_ids, token_counts, token_message};
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

/// The gateway's descriptor limit (soft and hard).
const NOFILE: usize = 64;
const WAIT: Duration = Duration::from_secs(30);

/// The gateway, run through `prlimit` (which execs it: same pid).
async fn limited_gateway(up: &Upstream) -> Gateway {
    let nofile = format!("--nofile={NOFILE}:{NOFILE}");
    Gateway::start(GatewayConfig::new().upstream(up).program(&[
        "prlimit",
        &nofile,
        "--",
        env!("CARGO_BIN_EXE_cachet"),
    ]))
    .await
}

/// Connects and reads the first reply line (the banner, or a refusal); `None` when none comes
/// within 10 s (the client hangs in the gateway's accept queue).
async fn connect(gw: &Gateway) -> (BufReader<TcpStream>, Option<String>) {
    let s = TcpStream::connect(gw.addr()).await.expect("connect");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line)).await;
    let first = match got {
        Ok(Ok(n)) if n > 0 => Some(line.trim_end().to_string()),
        Ok(_) => Some("(closed without a reply)".to_string()),
        Err(_) => None,
    };
    (r, first)
}

/// The fewest descriptors the gateway holds over a few readings (a delivery attempt holds a few
/// for a moment; between attempts it holds only its own).
async fn baseline_fds(pid: u32) -> usize {
    let mut min = usize::MAX;
    for _ in 0..20 {
        min = min.min(open_fds(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    min
}

/// Waits until the gateway holds at most `n` descriptors.
async fn wait_fds_at_most(gw: &Gateway, n: usize) {
    let pid = gw.pid().unwrap();
    let deadline = Instant::now() + WAIT;
    while open_fds(pid) > n {
        assert!(
            Instant::now() < deadline,
            "gateway still holds {} descriptors, expected at most {n}\n{}",
            open_fds(pid),
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_descriptors_new_clients_get_421_and_deliveries_in_flight_finish() {
    // The first delivery sits 6 s at the end of DATA: in flight while descriptors run out.
    let up = Upstream::start(UpstreamOptions::starttls().fault(
        Stage::DataEnd,
        Fault::delay(Some(1), Duration::from_secs(6)),
    ))
    .await;
    let gw = limited_gateway(&up).await;
    let pid = gw.pid().unwrap();
    let id = gw
        .send_ok(
            "a@example.org",
            &["b@x.example"],
            &token_message("inflight"),
        )
        .await;
    let deadline = Instant::now() + WAIT;
    while !up
        .commands()
        .iter()
        .flatten()
        .any(|s| s.line.contains("bytes of message data"))
    {
        assert!(Instant::now() < deadline, "no delivery\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Take every descriptor: idle clients until the next one is refused.
    let mut held = Vec::new();
    let refusal = loop {
        assert!(
            held.len() < NOFILE,
            "{NOFILE} clients and no refusal\n{}",
            gw.logs()
        );
        let (conn, first) = connect(&gw).await;
        match first {
            Some(l) if l.starts_with("220") => held.push(conn),
            Some(l) => break l,
            None => panic!(
                "with {} descriptors open (limit {NOFILE}) a new client got no reply within 10 s\n{}",
                open_fds(pid),
                gw.logs()
            ),
        }
    };
    assert!(refusal.starts_with("421 4.3.2"), "{refusal}\n{}", gw.logs());
    assert!(
        up.received().is_empty(),
        "the delivery was no longer in flight when descriptors ran out"
    );
    // More clients are refused the same way while it lasts. (The first refusal may have come
    // while a queue scan held a descriptor for a moment: a client that still gets in is held too.)
    let mut refused = 1;
    while refused < 4 {
        assert!(held.len() < NOFILE, "{NOFILE} clients held\n{}", gw.logs());
        let (conn, first) = connect(&gw).await;
        let first = first.unwrap_or_else(|| panic!("no reply\n{}", gw.logs()));
        if first.starts_with("220") {
            held.push(conn);
            continue;
        }
        assert!(first.starts_with("421 4.3.2"), "{first}\n{}", gw.logs());
        refused += 1;
    }
    // The delivery in flight finishes, and the message leaves the spool.
    let got = gw.expect_upstream(&up, 1).await;
    assert_eq!(token_counts(&got).keys().collect::<Vec<_>>(), ["inflight"]);
    let deadline = Instant::now() + WAIT;
    while !gw
        .logs()
        .lines()
        .any(|l| l.contains(&id) && l.contains(" done"))
    {
        assert!(Instant::now() < deadline, "{id} not done\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let clients = held.len();
    // Descriptors come back: mail flows again.
    drop(held);
    wait_fds_at_most(&gw, NOFILE - 8).await;
    gw.send_ok(
        "a@example.org",
        &["b@x.example"],
        &token_message("afterwards"),
    )
    .await;
    let got = gw.expect_upstream(&up, 2).await;
    assert_eq!(
        token_counts(&got).keys().collect::<Vec<_>>(),
        ["afterwards", "inflight"]
    );
    assert!(queue_ids(&gw.spool_dir(), "corrupt").is_empty());
    println!(
        "descriptors exhausted: limit {NOFILE}, {clients} idle clients held, {refused} of {refused} new clients refused with 421 4.3.2 (none hung), 1 of 1 delivery in flight finished, 0 in corrupt/, mail flows after"
    );
}

#[tokio::test]
async fn running_out_of_descriptors_never_sends_an_envelope_to_corrupt() {
    // Every attempt is deferred, so the scheduler keeps retrying (1 s, then every 2 s) while the
    // test squeezes the descriptors it has left from 5 down to 0.
    let up = Upstream::start(
        UpstreamOptions::starttls().fault(Stage::Greeting, Fault::always(421, "4.3.2 not now")),
    )
    .await;
    let gw = limited_gateway(&up).await;
    let pid = gw.pid().unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            gw.send_ok(
                "a@example.org",
                &["b@x.example"],
                &token_message(&format!("squeezed{i}")),
            )
            .await,
        );
    }
    ids.sort();
    let spool = gw.spool_dir();
    let deadline = Instant::now() + WAIT;
    while queue_ids(&spool, "deferred") != ids {
        assert!(Instant::now() < deadline, "not deferred\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = baseline_fds(pid).await;
    assert!(
        base + 5 < NOFILE,
        "the gateway holds {base} descriptors at rest"
    );
    let attempts = |gw: &Gateway| {
        gw.logs()
            .lines()
            .filter(|l| l.contains("delivery attempt"))
            .count()
    };
    let mut held = Vec::new();
    let mut levels = Vec::new();
    for free in (0..=5).rev() {
        // Each held client costs the gateway one descriptor. Near the end, a client can meet an
        // attempt holding the last descriptors for a moment and be refused (421): it tries again.
        let deadline = Instant::now() + WAIT;
        while held.len() < NOFILE - base - free {
            let (conn, first) = connect(&gw).await;
            let first = first.unwrap_or_else(|| panic!("no reply\n{}", gw.logs()));
            if first.starts_with("421 4.3.2") && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            assert!(first.starts_with("220"), "{first}\n{}", gw.logs());
            held.push(conn);
        }
        // Three attempts (one per message) at this level, or an envelope in corrupt/.
        let before = attempts(&gw);
        let deadline = Instant::now() + WAIT;
        while attempts(&gw) < before + 3 && queue_ids(&spool, "corrupt").is_empty() {
            assert!(Instant::now() < deadline, "no attempts\n{}", gw.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            queue_ids(&spool, "corrupt").is_empty(),
            "moved to corrupt/ with {free} descriptors left: {:?}\n{}",
            queue_ids(&spool, "corrupt"),
            gw.logs()
        );
        levels.push(free);
    }
    drop(held);
    up.faults().clear();
    let got = gw.expect_upstream(&up, 3).await;
    assert_eq!(
        token_counts(&got).keys().collect::<Vec<_>>(),
        ["squeezed0", "squeezed1", "squeezed2"],
        "{}",
        gw.logs()
    );
    assert!(queue_ids(&spool, "corrupt").is_empty());
    // The squeeze did bite: attempts met EMFILE and were retried, not quarantined.
    let emfile = gw
        .logs()
        .lines()
        .filter(|l| l.contains("scheduler") && l.contains("os error 24"))
        .count();
    assert!(
        emfile > 0,
        "no attempt ran out of descriptors\n{}",
        gw.logs()
    );
    println!(
        "descriptors squeezed: limit {NOFILE}, {base} at rest, 3 attempts each with {levels:?} left, {emfile} EMFILE failures retried, 0 envelopes in corrupt/, 3 of 3 delivered after"
    );
}
