//! Inputs the fuzz targets (fuzz/, docs/reliability.md) found crashing or misbehaving, fed to the
//! same library function again, or to the real binary where the defect lives in a task. Each test
//! is named after what it guards; the fuzz target that found it is named in its comment.

mod common;

use cachet::spool::file::compose;
use cachet::spool::{Envelope, Queue, Spool};
use common::*;
use std::time::Duration;

/// An envelope as the spool writes it, for message `id`.
fn envelope_json(id: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut env = Envelope::new(
        "a@example.org".into(),
        vec!["b@x.example".into()],
        "127.0.0.1".into(),
        "client.test".into(),
    );
    env.id = id.into();
    let mut v = serde_json::to_value(&env).unwrap();
    edit(&mut v);
    serde_json::to_vec_pretty(&v).unwrap()
}

/// fuzz target dsn_build: an envelope whose arrival time is past what a date can say (a damaged
/// or hand-edited spool file) made `dsn::build` panic formatting Arrival-Date.
#[test]
fn dsn_for_an_envelope_arriving_at_the_end_of_time_is_built() {
    for received in [u64::MAX, 1 << 40, 253_402_300_800] {
        let mut env = Envelope::new(
            "a@example.org".into(),
            vec!["b@x.example".into()],
            "127.0.0.1".into(),
            "h".into(),
        );
        env.id = "ABC".into();
        env.received = received;
        let dsn = cachet::dsn::build(
            "gw.test",
            &env,
            b"Subject: x\r\n\r\nbody\r\n",
            &[cachet::dsn::Failure {
                recipient: "b@x.example",
                reply: &cachet::reply::Reply::remote(
                    550,
                    Some("5.1.1".into()),
                    "no such user".into(),
                ),
            }],
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("\r\nArrival-Date: "), "{text}");
        assert!(text.contains("Status: 5.1.1"), "{text}");
    }
}

/// fuzz target spool_recover: recovery trusted the `id` inside an envelope file over the file's
/// name, so a damaged envelope naming another message (or a path) was scheduled under that
/// name. It is unreadable as this message: it goes to corrupt/, kept for a human.
#[test]
fn recovery_moves_an_envelope_naming_another_message_to_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = "00000000000000000000A1";
    let queue_file = |json: Vec<u8>| compose(b"Subject: x\r\n\r\nbody\r\n", &json);
    for claimed in ["00000000000000000000B2", "../../../etc/passwd", ""] {
        let file = dir.path().join("incoming").join(id);
        std::fs::write(
            &file,
            queue_file(envelope_json(id, |v| v["id"] = serde_json::json!(claimed))),
        )
        .unwrap();
        let found = spool
            .scan(&[Queue::Incoming, Queue::Deferred])
            .unwrap()
            .found;
        assert!(
            found.is_empty(),
            "recovered {:?} from the file of {id}",
            found.iter().map(|(_, e)| &e.id).collect::<Vec<_>>()
        );
        assert!(!file.exists());
        assert!(
            dir.path().join("corrupt").join(id).exists(),
            "kept in corrupt/"
        );
        std::fs::remove_file(dir.path().join("corrupt").join(id)).unwrap();
    }
    // The real thing still recovers.
    std::fs::write(
        dir.path().join("incoming").join(id),
        queue_file(envelope_json(id, |_| {})),
    )
    .unwrap();
    let found = spool.scan(&[Queue::Incoming]).unwrap().found;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1.id, id);
}

/// fuzz target spool_recover: an envelope due at the end of time (`next_attempt` near
/// u64::MAX, a damaged file) overflowed the scheduler's due-time arithmetic at start-up; the
/// scheduler task died and no message was delivered after the restart. And a message with
/// `attempts` at u32::MAX overflowed its attempt counter after delivery, so its envelope was
/// never removed (delivered again at every restart). Now both go their way.
#[tokio::test]
async fn recovery_delivers_past_an_envelope_due_at_the_end_of_time() {
    let damaged = "00000000000000000000A1";
    let good = "00000000000000000000B2";
    let data = |subject: &str| {
        format!("From: a@example.org\r\nTo: b@x.example\r\nSubject: {subject}\r\n\r\nbody\r\n")
    };
    let gw = Gateway::start(
        GatewayConfig::new()
            .file(
                format!("spool/incoming/{damaged}"),
                compose(
                    data("damaged").as_bytes(),
                    &envelope_json(damaged, |v| {
                        v["next_attempt"] = serde_json::json!(u64::MAX / 10);
                    }),
                ),
            )
            .file(
                format!("spool/incoming/{good}"),
                compose(
                    data("good").as_bytes(),
                    &envelope_json(good, |v| v["attempts"] = serde_json::json!(u32::MAX)),
                ),
            ),
    )
    .await;
    let outbox = gw.outbox_dir();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let delivered: Vec<String> = std::fs::read_dir(&outbox)
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect();
        let done = !gw.spool_dir().join("incoming").join(good).exists();
        if done && delivered.iter().any(|m| m.contains("Subject: good")) {
            assert!(
                !delivered.iter().any(|m| m.contains("Subject: damaged")),
                "the damaged envelope is not due yet"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the recovered message was never delivered and removed; log:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!gw.logs().contains("panicked"), "{}", gw.logs());
}

/// fuzz target spool_recover: rewriting an envelope whose `seq` is already u64::MAX (a damaged
/// file) overflowed the counter.
#[tokio::test]
async fn rewriting_an_envelope_at_the_last_sequence_number_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = "00000000000000000000C3";
    let json = envelope_json(id, |v| v["seq"] = serde_json::json!(u64::MAX));
    let mut env: Envelope = serde_json::from_slice(&json).unwrap();
    std::fs::write(
        spool.queue_path(Queue::Incoming, id),
        compose(b"x\r\n", &json),
    )
    .unwrap();
    spool
        .save(&mut env, Queue::Deferred, Queue::Incoming)
        .await
        .unwrap();
    let (q, back) = spool.find(id).unwrap().expect("saved");
    assert_eq!((q, back.seq), (Queue::Deferred, u64::MAX));
}
