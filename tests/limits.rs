//! Limits a hostile or broken client meets over a real socket: the connection cap, the idle
//! timeout, and JSON logs that name every event with its queue ID and never the content.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn connection_cap_and_idle_timeout() {
    let gw = Gateway::start(
        GatewayConfig::new()
            .with("server", "max_connections", "2")
            .with("server", "idle_timeout", "\"1s\""),
    )
    .await;
    let (_a, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let (mut b, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let mut third = SmtpClient::connect(gw.addr()).await.unwrap();
    assert_eq!(
        third.read_reply().await.unwrap(),
        (
            421,
            "421 4.7.0 Too many connections, try again later".to_string()
        )
    );
    // A silent client is told why and disconnected; its slot frees up.
    let r = tokio::time::timeout(Duration::from_secs(5), b.read_reply())
        .await
        .expect("idle timeout fired")
        .unwrap();
    assert_eq!(
        r,
        (
            421,
            "421 4.4.2 Idle timeout, closing connection".to_string()
        )
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut again, ehlo) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(ehlo.0, 250);
    assert_eq!(again.cmd("NOOP").await.unwrap().0, 250);
}

#[tokio::test]
async fn json_logs_carry_the_queue_id_and_no_content() {
    let gw = Gateway::start(
        GatewayConfig::new()
            .with("log", "format", "\"json\"")
            .env("RUST_LOG", "info"),
    )
    .await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let r = c
        .send_message(
            "a@example.org",
            &["b@x.example"],
            b"Subject: secret-subject\r\n\r\nsecret-body\r\n",
        )
        .await
        .unwrap();
    assert_eq!(r.0, 250);
    let id = r.1.rsplit(' ').next().unwrap().to_string();
    assert!(
        gw.wait_log("\"done\"", Duration::from_secs(20)).await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    let events: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    for msg in ["accepted", "relayed", "done"] {
        let e = events
            .iter()
            .find(|e| e["message"] == msg)
            .unwrap_or_else(|| panic!("no {msg} event: {logs}"));
        assert_eq!(
            e["queue_id"].as_str().map(|q| q.trim_matches('"')),
            Some(id.as_str()),
            "{e}"
        );
    }
    assert!(
        !logs.contains("secret-body") && !logs.contains("secret-subject"),
        "content in the logs"
    );
}
