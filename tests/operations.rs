//! Operating a live gateway: the queue CLI, /metrics counting exactly, /healthz, SIGHUP reload.

mod common;

use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn queue_ids(list: &str) -> Vec<String> {
    list.lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("--"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn msg(subject: &str) -> Vec<u8> {
    format!("From: a@example.org\r\nTo: b@x.example\r\nSubject: {subject}\r\n\r\nbody\r\n")
        .into_bytes()
}

#[tokio::test]
async fn hold_then_release_delivers_and_delete_never_does() {
    let up = Upstream::start(
        UpstreamOptions::starttls().fault(Stage::Greeting, Fault::always(421, "4.3.2 closed")),
    )
    .await;
    let gw = Gateway::start(
        GatewayConfig::new()
            .upstream(&up)
            .with("spool", "retry", "[\"1h\"]"),
    )
    .await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let a = c
        .send_message("a@example.org", &["b@x.example"], &msg("keep"))
        .await
        .unwrap();
    let b = c
        .send_message("a@example.org", &["b@x.example"], &msg("drop"))
        .await
        .unwrap();
    let id_a = a.1.rsplit(' ').next().unwrap().to_string();
    let id_b = b.1.rsplit(' ').next().unwrap().to_string();
    // Wait until both have been tried once and deferred (retry in an hour).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, list) = gw.cli(&["queue", "list"]);
        if list.matches("deferred").count() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{list}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out) = gw.cli(&["queue", "hold", &id_a]);
    assert!(ok, "{out}");
    let (ok, out) = gw.cli(&["queue", "delete", &id_b]);
    assert!(ok, "{out}");
    let (_, list) = gw.cli(&["queue", "list"]);
    assert_eq!(queue_ids(&list), std::slice::from_ref(&id_a), "{list}");
    assert!(list.contains("hold"), "{list}");
    let (ok, show) = gw.cli(&["queue", "show", &id_a]);
    assert!(
        ok && show.contains("\"hold_reason\": \"held by operator\"")
            && show.contains("Subject: keep"),
        "{show}"
    );

    up.faults().clear();
    let (ok, out) = gw.cli(&["queue", "release", &id_a]);
    assert!(ok, "{out}");
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: keep"));
    // A sentinel sent after the release; when it arrives, a resurrected "drop" would have too.
    assert_eq!(
        c.send_message("a@example.org", &["b@x.example"], &msg("sentinel"))
            .await
            .unwrap()
            .0,
        250
    );
    let got = up.wait_for(2, WAIT).await;
    let subjects: Vec<String> = got
        .iter()
        .map(|r| {
            String::from_utf8_lossy(&r.data)
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(subjects, ["Subject: keep", "Subject: sentinel"]);
    let (ok, out) = gw.cli(&["queue", "show", &id_b]);
    assert!(!ok && out.contains("no message"), "{out}");
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[tokio::test]
async fn metrics_count_exactly_and_health_follows_the_spool() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let (code, before) = gw.admin_get("/metrics").await;
    assert_eq!(code, 200);
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    for i in 0..3 {
        assert_eq!(
            c.send_message(
                "a@example.org",
                &["b@x.example", "c@x.example"],
                &msg(&format!("m{i}"))
            )
            .await
            .unwrap()
            .0,
            250
        );
    }
    assert_eq!(c.cmd("RCPT TO:<x@y.example>").await.unwrap().0, 503);
    up.wait_for(3, WAIT).await;
    // Delivery is recorded just after the upstream's 250: poll for the counters.
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let after = gw.admin_get("/metrics").await.1;
        if counter(&after, "cachet_recipients_relayed_total")
            >= counter(&before, "cachet_recipients_relayed_total") + 6
            || tokio::time::Instant::now() >= deadline
        {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        counter(&after, "cachet_messages_accepted_total")
            - counter(&before, "cachet_messages_accepted_total"),
        3
    );
    assert_eq!(
        counter(&after, "cachet_recipients_relayed_total")
            - counter(&before, "cachet_recipients_relayed_total"),
        6
    );
    assert!(
        after.contains("cachet_queue_messages{queue=\"deferred\"} 0"),
        "{after}"
    );
    assert!(
        after.contains("cachet_upstream_latency_seconds_count 3"),
        "{after}"
    );

    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    // Make the spool unwritable in a way that binds root too: tmp/ becomes a file.
    let tmp = gw.spool_dir().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let (code, body) = gw.admin_get("/healthz").await;
    assert_eq!((code, body.as_str()), (503, "spool not writable\n"));
    // And SMTP answers 451, accepting nothing it cannot store.
    let r = c
        .send_message("a@example.org", &["b@x.example"], &msg("nospool"))
        .await
        .unwrap();
    assert_eq!(r.0, 451, "{r:?}");
}

#[tokio::test]
async fn sighup_applies_a_valid_config_and_keeps_the_old_one_on_errors() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let mut gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    // A broken edit: refused, the gateway keeps working on the old config.
    gw.rewrite_config(|cfg| {
        cfg.set("server", "max_message_size", "\"lots\"");
    });
    gw.sighup();
    assert!(
        gw.wait_log("reload refused", Duration::from_secs(20)).await,
        "{}",
        gw.logs()
    );
    assert!(gw.logs().contains("invalid size"), "{}", gw.logs());
    assert_eq!(
        c.send_message("a@example.org", &["b@x.example"], &msg("still-old"))
            .await
            .unwrap()
            .0,
        250
    );
    // A valid edit: a 100-byte limit applies to new sessions; this connection survived both reloads.
    gw.rewrite_config(|cfg| {
        cfg.set("server", "max_message_size", "\"100B\"");
    });
    gw.sighup();
    assert!(
        gw.wait_log("configuration reloaded", Duration::from_secs(20))
            .await,
        "{}",
        gw.logs()
    );
    assert_eq!(
        c.cmd("NOOP").await.unwrap().0,
        250,
        "the old session is not dropped"
    );
    let (mut fresh, ehlo) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert!(ehlo.1.contains("SIZE 100"), "{ehlo:?}");
    let big = msg(&"x".repeat(200));
    assert_eq!(
        fresh
            .send_message("a@example.org", &["b@x.example"], &big)
            .await
            .unwrap()
            .0,
        552
    );
    assert_eq!(up.wait_for(1, WAIT).await.len(), 1);
}

/// Arrival pacing (`spool.in_flow_delay`, as Postfix's `in_flow_delay`): with the only delivery
/// worker stuck on an upstream that does not greet, the first messages go in at once (the
/// credit of 64 ahead of the scheduler); past it a DATA waits for the scheduler (at most the
/// delay) and still gets `354` and `250`. Nothing is refused or lost: once the stuck attempt
/// times out, every message is delivered.
#[tokio::test]
async fn arrivals_are_paced_when_deliveries_lag() {
    const MESSAGES: usize = 70;
    let up = Upstream::start(UpstreamOptions::starttls().fault(
        Stage::Greeting,
        Fault::stall(Some(1), Duration::from_secs(600)),
    ))
    .await;
    let gw = Gateway::start(
        GatewayConfig::new()
            .upstream(&up)
            .with("spool", "workers", "1")
            // Long enough to outlast the 64 quick arrivals on a loaded machine, short enough
            // that every message is delivered within expect_upstream's wait after the sends.
            .with("upstream", "timeout", &toml_str("15s")),
    )
    .await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    for i in 0..MESSAGES {
        let r = c
            .send_message("a@example.org", &["b@x.example"], &msg(&format!("p{i}")))
            .await
            .unwrap();
        assert_eq!(r.0, 250, "message {i}: {r:?}\n{}", gw.logs());
    }
    c.quit().await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        counter(&metrics, "cachet_arrivals_paced_total") >= 1,
        "{MESSAGES} messages against one stuck worker and a credit of 64, none paced:\n{metrics}"
    );
    assert!(
        counter(&metrics, "cachet_arrivals_paced_total")
            >= counter(&metrics, "cachet_arrivals_paced_full_delay_total")
    );
    let got = gw.expect_upstream(&up, MESSAGES).await;
    let mut subjects: Vec<String> = got
        .iter()
        .map(|r| {
            let text = String::from_utf8_lossy(&r.data).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), MESSAGES, "each message once");
}
