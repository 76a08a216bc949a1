//! The spool and the scheduler under stress: a disk that fills up between two envelope rewrites, and
//! `cachet queue` acting on a message while a delivery attempt is in flight. In both, no recipient is
//! served twice and no operator action is lost.

mod common;

use common::faults::{Tmpfs, pad_lines};
use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: a@x.example, b@x.example\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n\r\nbody\r\n"
    )
    .into_bytes()
}

/// How many accepted messages went to `rcpt`.
fn deliveries_to(up: &Upstream, rcpt: &str) -> usize {
    up.received()
        .iter()
        .filter(|r| r.rcpt_to.iter().any(|t| t == rcpt))
        .count()
}

/// Body lines of 64 bytes that bring the queue file of `full_disk_...` near a page boundary.
const PADDING_LINES: usize = 50;

#[tokio::test]
async fn full_disk_keeps_delivery_state_in_memory_and_never_resends() {
    // Declared before the gateway, so the gateway is killed before the unmount.
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let up = Upstream::start(
        UpstreamOptions::starttls()
            // The first attempt waits at MAIL until the disk is full.
            .fault(Stage::Mail, Fault::delay(Some(1), Duration::from_secs(3)))
            .fault(
                Stage::Rcpt("b@x.example".into()),
                Fault::times(2, 451, "4.2.0 mailbox busy"),
            ),
    )
    .await;
    let spool = fs.path().join("spool");
    let gw = Gateway::start(GatewayConfig::new().upstream(&up).with(
        "spool",
        "dir",
        &toml_str(&spool.display().to_string()),
    ))
    .await;
    // Sized so that the queue file (header, message, first envelope record) ends a little
    // before a page boundary: the envelope record the first attempt appends needs a new page,
    // which the full tmpfs does not have. (A record that fits the file's last page is written
    // even on a full disk; that is not the case under test.)
    let mut full = message("full");
    pad_lines(&mut full, PADDING_LINES);
    let id = gw
        .send_ok("a@example.org", &["a@x.example", "b@x.example"], &full)
        .await;
    let size = std::fs::metadata(spool.join("incoming").join(&id))
        .expect("in incoming/ while the first attempt waits at MAIL")
        .len();
    let room = 4096 - size % 4096;
    eprintln!("queue file {size} bytes, {room} left in its last page");
    assert!(
        room < 400,
        "the queue file is {size} bytes: {room} bytes left in its last page, room for the next \
         envelope record; adjust PADDING_LINES"
    );
    fs.fill();
    // Attempt 1: a delivered, b deferred, the rewrite fails. Attempts 2 and 3 (1 s and 2 s later)
    // try b only, and the third delivers it.
    let deadline = Instant::now() + WAIT;
    while deliveries_to(&up, "b@x.example") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        deliveries_to(&up, "b@x.example"),
        1,
        "b was never delivered\n{}",
        gw.logs()
    );
    assert_eq!(
        deliveries_to(&up, "a@x.example"),
        1,
        "a was delivered again from the stale envelope: {:?}\n{}",
        up.received()
            .iter()
            .map(|r| r.rcpt_to.clone())
            .collect::<Vec<_>>(),
        gw.logs()
    );
    assert!(
        gw.logs().contains("delivery state kept in memory"),
        "{}",
        gw.logs()
    );
    // Done: the message left the spool even though the disk is still full.
    assert!(logged_done(&gw, &id).await, "{}", gw.logs());
    // Nothing holds its bytes: no file named by it, and tmp/ holds at most emptied queue files
    // kept for the next drafts.
    let left: Vec<PathBuf> = common::gateway::files_under(&spool)
        .into_iter()
        .filter(|p| {
            p.ends_with(&id)
                || (p.parent().is_some_and(|d| d.ends_with("tmp"))
                    && common::gateway::holds_bytes(p))
        })
        .collect();
    assert!(left.is_empty(), "left in the spool: {left:?}");
}

/// Waits until the scheduler logged that message `id` is done (left the spool).
async fn logged_done(gw: &Gateway, id: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if gw
            .logs()
            .lines()
            .any(|l| l.contains(id) && l.contains(" done "))
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway whose first attempt for a message to a and b takes 4 s at the end of DATA (a is
/// delivered, b deferred with 451), so `cachet queue` can act while the attempt is in flight.
async fn slow_first_attempt() -> (Upstream, Gateway, String) {
    let up = Upstream::start(
        UpstreamOptions::starttls()
            .fault(
                Stage::Rcpt("b@x.example".into()),
                Fault::times(1, 451, "4.2.0 mailbox busy"),
            )
            .fault(
                Stage::DataEnd,
                Fault::delay(Some(1), Duration::from_secs(4)),
            ),
    )
    .await;
    // The retry for b is far off: the operator's command, waiting for the lock, must win the
    // race against nothing but the attempt in flight (with a 1 s retry the scheduler's second
    // attempt could start, and finish the message, before the command's next lock poll).
    let gw = Gateway::start(GatewayConfig::new().upstream(&up).with(
        "spool",
        "retry",
        r#"["30s"]"#,
    ))
    .await;
    let id = gw
        .send_ok(
            "a@example.org",
            &["a@x.example", "b@x.example"],
            &message("race"),
        )
        .await;
    // In flight: the upstream has the whole message and is sitting on its reply.
    let deadline = Instant::now() + WAIT;
    while !up
        .commands()
        .iter()
        .flatten()
        .any(|s| s.line.contains("bytes of message data"))
    {
        assert!(Instant::now() < deadline, "no attempt\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (up, gw, id)
}

/// `cachet queue <action> <id>` off the async threads (it may wait for the attempt to end, and the
/// upstream that ends it runs on this runtime).
async fn queue_cli(gw: &Gateway, action: &str, id: &str) -> (bool, String) {
    let config = gw.config_path().to_path_buf();
    let (action, id) = (action.to_string(), id.to_string());
    tokio::task::spawn_blocking(move || {
        let out = cachet_command()
            .args(["queue", &action, &id, "--config"])
            .arg(&config)
            .output()
            .expect("run cachet queue");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

/// Envelope files for `id` in the live queues.
fn envelopes(gw: &Gateway, id: &str) -> Vec<String> {
    ["incoming", "deferred", "hold", "corrupt"]
        .into_iter()
        .filter(|q| gw.spool_dir().join(q).join(id).exists())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_hold_during_an_attempt_holds_the_state_that_attempt_wrote() {
    let (up, gw, id) = slow_first_attempt().await;
    let (ok, out) = queue_cli(&gw, "hold", &id).await;
    assert!(ok, "{out}");
    // The hold applied after the attempt, to what it wrote: a delivered, b pending, in hold/ only.
    assert_eq!(envelopes(&gw, &id), ["hold"], "{}", gw.logs());
    let (ok, show) = queue_cli(&gw, "show", &id).await;
    assert!(ok, "{show}");
    let env: serde_json::Value = serde_json::from_str(
        show.split_once('\n')
            .unwrap()
            .1
            .split("\n--- headers ---")
            .next()
            .unwrap(),
    )
    .unwrap();
    let status: Vec<(String, String)> = env["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        status,
        [
            ("a@x.example".to_string(), "delivered".to_string()),
            ("b@x.example".to_string(), "pending".to_string())
        ],
        "{show}"
    );
    // Released, only b goes out; a never again.
    let (ok, out) = queue_cli(&gw, "release", &id).await;
    assert!(ok, "{out}\n{}", gw.logs());
    let got = gw.expect_upstream(&up, 2).await;
    assert_eq!(got[0].rcpt_to, ["a@x.example"]);
    assert_eq!(got[1].rcpt_to, ["b@x.example"]);
    assert!(logged_done(&gw, &id).await, "{}", gw.logs());
    assert!(envelopes(&gw, &id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_delete_during_an_attempt_is_not_undone_by_it() {
    let (up, gw, id) = slow_first_attempt().await;
    let (ok, out) = queue_cli(&gw, "delete", &id).await;
    assert!(ok, "{out}");
    // The delete waited for the attempt (a was delivered) and then removed everything.
    assert_eq!(deliveries_to(&up, "a@x.example"), 1, "{}", gw.logs());
    assert!(envelopes(&gw, &id).is_empty(), "{:?}", envelopes(&gw, &id));
    // The retry the attempt had scheduled finds nothing to do.
    let (ok, out) = queue_cli(&gw, "show", &id).await;
    assert!(!ok && out.contains("no message"), "{out}");
}
