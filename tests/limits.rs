//! Limits a hostile or broken client meets over a real socket: the connection cap, the idle
//! timeout, and JSON logs that name every event with its queue ID and never the content.

mod common;

use common::*;
use std::time::Duration;

const TOO_MANY: &str = "421 4.7.0 Too many connections, try again later";

/// Connects until the gateway greets with 220 rather than `421 4.7.0 Too many connections` (a
/// slot frees when the server side of a connection has ended, which on a loaded machine may take a
/// moment after the client saw the close); panics after `deadline` with the last refusal.
async fn connect_when_a_slot_is_free(
    gw: &Gateway,
    deadline: Duration,
) -> (SmtpClient, common::client::Reply) {
    let until = std::time::Instant::now() + deadline;
    loop {
        let mut c = SmtpClient::connect(gw.addr()).await.unwrap();
        let greeting = c.read_reply().await.unwrap();
        if greeting.0 == 220 {
            let ehlo = c.cmd("EHLO client.test").await.unwrap();
            return (c, ehlo);
        }
        assert_eq!(greeting, (421, TOO_MANY.to_string()));
        assert!(
            std::time::Instant::now() < until,
            "no connection slot freed within {deadline:?}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn connection_cap_and_idle_timeout() {
    // The idle timeout is well above any stall between the three connects below: the first two
    // must still hold their slots when the third arrives.
    let gw = Gateway::start(
        GatewayConfig::new()
            .with("server", "max_connections", "2")
            .with("server", "idle_timeout", "\"5s\""),
    )
    .await;
    let (_a, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let (mut b, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let mut third = SmtpClient::connect(gw.addr()).await.unwrap();
    assert_eq!(
        third.read_reply().await.unwrap(),
        (421, TOO_MANY.to_string())
    );
    // A silent client is told why and disconnected; its slot frees up.
    b.timeout = Duration::from_secs(30);
    let r = b.read_reply().await.expect("idle timeout fired");
    assert_eq!(
        r,
        (
            421,
            "421 4.4.2 Idle timeout, closing connection".to_string()
        )
    );
    assert!(b.read_reply().await.is_err(), "closed after the 421");
    let (mut again, ehlo) = connect_when_a_slot_is_free(&gw, Duration::from_secs(10)).await;
    assert_eq!(ehlo.0, 250);
    assert_eq!(again.cmd("NOOP").await.unwrap().0, 250);
}

/// Regression (issue 9): `Gateway::start` decided readiness by connecting to the SMTP port, and
/// that probe held a slot until the server noticed the close. With one slot, the first client a
/// test makes must be served, after a restart too.
#[tokio::test]
async fn a_started_gateway_has_every_connection_slot_free() {
    let mut gw = Gateway::start(GatewayConfig::new().with("server", "max_connections", "1")).await;
    for start in 1..=2 {
        let mut c = SmtpClient::connect(gw.addr()).await.unwrap();
        let greeting = c.read_reply().await.unwrap();
        assert_eq!(
            greeting.0,
            220,
            "start {start}: {greeting:?}\n{}",
            gw.logs()
        );
        c.quit().await;
        if start == 1 {
            gw.restart().await;
        }
    }
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
