//! Faults, against the real binary (issue 14): a damaged spool. With the gateway down, one queue
//! file is cut inside its message data, one gets garbage over its message data, one is emptied (what a disk can
//! give back after a crash), and one loses the end of its last envelope record (a crash during a
//! rewrite); a data file of the older layout that no envelope names is left in data/. After the
//! restart each damaged one goes to `corrupt/` with one log line naming it, the orphan is removed,
//! the torn record is skipped (its message is delivered from the record before it) and every
//! other message is delivered.

mod common;

use common::faults::{queue_ids, token_counts, token_message};
use common::*;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// Log lines of the second start (after the damage) that mention `id`, at level ERROR or WARN.
fn complaints(gw: &Gateway, id: &str) -> Vec<String> {
    let logs = gw.logs();
    let restarted = logs
        .split_once("(start 2)")
        .map(|x| x.1)
        .expect("a second start");
    restarted
        .lines()
        .filter(|l| l.contains(id) && (l.contains("ERROR") || l.contains("WARN")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn damaged_spool_entries_go_to_corrupt_and_the_rest_is_delivered() {
    // Everything is deferred at first, so all six messages sit in deferred/ when we damage them.
    let up = Upstream::start(
        UpstreamOptions::starttls().fault(Stage::Greeting, Fault::always(421, "4.3.2 not now")),
    )
    .await;
    let mut gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let names = [
        "truncated",
        "garbage",
        "emptied",
        "torn",
        "intact1",
        "intact2",
    ];
    let mut ids = Vec::new();
    for name in names {
        ids.push(
            gw.send_ok("a@example.org", &["b@x.example"], &token_message(name))
                .await,
        );
    }
    let spool = gw.spool_dir();
    let deadline = Instant::now() + WAIT;
    while queue_ids(&spool, "deferred").len() < names.len() {
        assert!(Instant::now() < deadline, "not all deferred\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.kill_9();

    let [truncated, garbage, emptied, torn, ..] = &ids[..] else {
        unreachable!()
    };
    let path = |id: &str| spool.join("deferred").join(id);
    // Cut inside the message data: what a disk gives back after losing the end of a file.
    let header = cachet::spool::file::HEADER_LEN as usize;
    let whole = std::fs::read(path(truncated)).unwrap();
    std::fs::write(path(truncated), &whole[..header + 40]).unwrap();
    // Garbage of exactly the same length over the message data: scrambled blocks.
    let mut file = std::fs::read(path(garbage)).unwrap();
    for (i, b) in file[header..header + 64].iter_mut().enumerate() {
        *b = (i * 7 + 13) as u8;
    }
    std::fs::write(path(garbage), file).unwrap();
    std::fs::write(path(emptied), b"").unwrap();
    // Half of one more envelope record: a crash while the next rewrite was being written.
    let mut file = std::fs::read(path(torn)).unwrap();
    file.extend_from_slice(b"E00000100\n{\"id\":\"");
    std::fs::write(path(torn), file).unwrap();
    // A data file of the older spool layout that no envelope names.
    let orphan = "00000000000000000000FF";
    std::fs::create_dir_all(spool.join("data")).unwrap();
    std::fs::write(spool.join("data").join(orphan), b"Subject: lost\r\n\r\n").unwrap();

    up.faults().clear();
    gw.restart().await;
    let got = gw.expect_upstream(&up, 3).await;
    let counts = token_counts(&got);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["intact1", "intact2", "torn"],
        "{}",
        gw.logs()
    );
    // The damaged ones are in corrupt/ once the scheduler has looked at each of them.
    let mut expect = vec![truncated.clone(), garbage.clone(), emptied.clone()];
    expect.sort();
    let deadline = Instant::now() + WAIT;
    while queue_ids(&spool, "corrupt") != expect {
        assert!(
            Instant::now() < deadline,
            "corrupt/ holds {:?}, expected {expect:?}\n{}",
            queue_ids(&spool, "corrupt"),
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !spool.join("data").join(orphan).exists(),
        "orphan data file left"
    );
    for q in ["incoming", "deferred", "hold"] {
        assert!(
            queue_ids(&spool, q).is_empty(),
            "{q}/ still holds {:?}\n{}",
            queue_ids(&spool, q),
            gw.logs()
        );
    }
    // One clear line each, naming the message and what is wrong with it.
    for (id, what) in [
        (truncated.as_str(), "cut short"),
        (garbage, "CRC-32"),
        (emptied, "shorter than its header"),
        (orphan, "without an envelope"),
    ] {
        let lines = complaints(&gw, id);
        assert_eq!(lines.len(), 1, "{id}: {lines:#?}\n{}", gw.logs());
        assert!(lines[0].contains(what), "{id}: {}", lines[0]);
    }
    assert!(complaints(&gw, torn).is_empty(), "{}", gw.logs());
    // Nothing was delivered twice, and nothing damaged was delivered at all.
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    println!(
        "damaged spool: 3 damaged queue files (cut short, garbage data, emptied) in corrupt/, 1 torn record skipped and its message delivered, 1 orphan data file removed, 2 of 2 intact delivered"
    );
}
