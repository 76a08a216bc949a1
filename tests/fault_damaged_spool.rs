//! Faults, against the real binary (issue 14): a damaged spool. With the gateway down, one message
//! gets a truncated envelope, one a data file of garbage, one loses its data file and one loses its
//! envelope. After the restart each damaged one goes to `corrupt/` (the orphan data file is
//! removed: it was never acknowledged, or already delivered) with one log line naming it, and every
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
        "nodata",
        "noenvelope",
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

    let [truncated, garbage, nodata, noenvelope, ..] = &ids[..] else {
        unreachable!()
    };
    let env_path = |id: &str| spool.join("deferred").join(id);
    let data_path = |id: &str| spool.join("data").join(id);
    // Half an envelope: what a disk gives back after losing the end of a file.
    let env = std::fs::read(env_path(truncated)).unwrap();
    std::fs::write(env_path(truncated), &env[..env.len() / 2]).unwrap();
    // Garbage of exactly the same length: zeroed or scrambled blocks after a crash.
    let len = std::fs::metadata(data_path(garbage)).unwrap().len() as usize;
    let junk: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(data_path(garbage), junk).unwrap();
    std::fs::remove_file(data_path(nodata)).unwrap();
    std::fs::remove_file(env_path(noenvelope)).unwrap();

    up.faults().clear();
    gw.restart().await;
    let got = gw.expect_upstream(&up, 2).await;
    let counts = token_counts(&got);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["intact1", "intact2"],
        "{}",
        gw.logs()
    );
    // The damaged ones are in corrupt/ (the orphan data file is gone) once the scheduler has looked
    // at each of them.
    let mut expect = vec![truncated.clone(), garbage.clone(), nodata.clone()];
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
    assert!(!data_path(noenvelope).exists(), "orphan data file left");
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
        (truncated, "envelope"),
        (garbage, "data"),
        (nodata, "data"),
        (noenvelope, "without an envelope"),
    ] {
        let lines = complaints(&gw, id);
        assert_eq!(lines.len(), 1, "{id}: {lines:#?}\n{}", gw.logs());
        assert!(lines[0].contains(what), "{id}: {}", lines[0]);
    }
    // Nothing was delivered twice, and nothing damaged was delivered at all.
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    println!(
        "damaged spool: 4 damaged entries (truncated envelope, garbage data, missing data, missing envelope), 3 in corrupt/, 1 orphan removed, 2 of 2 intact delivered"
    );
}
