//! Proves the integration-test harness against itself: raw client and Python smtplib against the recording
//! upstream in every TLS mode, fault scripts, strict framing and dot-unstuffing, untrusted-CA refusal, and the
//! gateway config writer and process handle.

mod common;

use std::time::Duration;

use common::client::dot_stuff;
use common::gateway::toml_str;
use common::upstream::Seen;
use common::{
    Fault, Gateway, GatewayConfig, SmtpClient, Stage, Upstream, UpstreamOptions, python_send,
};

/// Every wait is bounded by this; it only runs out when something is broken (or the machine very busy).
const WAIT: Duration = Duration::from_secs(20);

fn lines(seen: &[Seen]) -> Vec<(&str, bool)> {
    seen.iter().map(|s| (s.line.as_str(), s.tls)).collect()
}

#[tokio::test]
async fn starttls_upstream_records_message_and_plaintext_commands() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let (mut c, ehlo) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    assert_eq!(ehlo.0, 250);
    for cap in ["PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS"] {
        assert!(ehlo.1.contains(cap), "{cap} missing in {}", ehlo.1);
    }
    c.starttls(&up.ca_path(), "localhost").await.unwrap();
    let ehlo = c.cmd("EHLO client.test").await.unwrap();
    assert!(
        !ehlo.1.contains("STARTTLS"),
        "STARTTLS offered twice: {}",
        ehlo.1
    );
    let msg = b"Subject: hi\r\n\r\nline one\r\nline two\r\n";
    let reply = c
        .send_message("a@example.org", &["b@example.net", "c@example.net"], msg)
        .await
        .unwrap();
    assert_eq!(reply.0, 250, "{}", reply.1);
    c.quit().await;

    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "a@example.org");
    assert_eq!(got[0].rcpt_to, vec!["b@example.net", "c@example.net"]);
    assert_eq!(got[0].data, msg.to_vec());
    assert!(got[0].tls);
    assert_eq!(up.connections(), 1);
    let seen = up.commands();
    let plaintext: Vec<&str> = seen[0]
        .iter()
        .filter(|s| !s.tls)
        .map(|s| s.line.as_str())
        .collect();
    assert_eq!(plaintext, vec!["EHLO client.test", "STARTTLS"]);
    assert_eq!(up.pipelined_after_starttls(), 0);
}

#[tokio::test]
async fn starttls_verifies_against_127_0_0_1_too() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    c.starttls(&up.ca_path(), "127.0.0.1").await.unwrap();
    assert_eq!(c.cmd("EHLO client.test").await.unwrap().0, 250);
}

#[tokio::test]
async fn implicit_tls_upstream() {
    let up = Upstream::start(UpstreamOptions::implicit_tls()).await;
    assert!(up.url().starts_with("smtps://127.0.0.1:"));
    let mut c = SmtpClient::connect_tls(up.addr(), &up.ca_path(), "localhost")
        .await
        .unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 220);
    let ehlo = c.cmd("EHLO client.test").await.unwrap();
    assert!(!ehlo.1.contains("STARTTLS"));
    let reply = c
        .send_message("", &["b@example.net"], b"x\r\n")
        .await
        .unwrap();
    assert_eq!(reply.0, 250);
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got[0].mail_from, "", "null sender recorded as empty");
    assert_eq!(got[0].data, b"x\r\n");
    assert!(got[0].tls);
    assert!(up.commands()[0].iter().all(|s| s.tls));
}

#[tokio::test]
async fn plaintext_upstream() {
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let (mut c, ehlo) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    assert!(!ehlo.1.contains("STARTTLS"));
    assert_eq!(c.cmd("STARTTLS").await.unwrap().0, 502);
    let reply = c
        .send_message("a@x.test", &["b@y.test"], b"no newline at end")
        .await
        .unwrap();
    assert_eq!(reply.0, 250);
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(
        got[0].data, b"no newline at end\r\n",
        "send_message appends the missing CRLF"
    );
    assert!(!got[0].tls);
}

#[tokio::test]
async fn require_tls_refuses_plaintext_mail() {
    let mut opts = UpstreamOptions::starttls();
    opts.require_tls = true;
    let up = Upstream::start(opts).await;
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    let r = c.cmd("MAIL FROM:<a@x.test>").await.unwrap();
    assert_eq!(r.0, 530);
    assert!(r.1.contains("5.7.0"));
}

#[tokio::test]
async fn auth_plain_and_login_after_starttls() {
    let mut opts = UpstreamOptions::starttls();
    opts.auth = Some(("relay".into(), "s3cret".into()));
    let up = Upstream::start(opts).await;
    let (mut c, ehlo) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    assert!(
        !ehlo.1.contains("AUTH"),
        "no AUTH offered in the clear: {}",
        ehlo.1
    );
    c.starttls(&up.ca_path(), "localhost").await.unwrap();
    let ehlo = c.cmd("EHLO client.test").await.unwrap();
    assert!(ehlo.1.contains("AUTH PLAIN LOGIN"), "{}", ehlo.1);
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await.unwrap().0, 530);
    // "\0relay\0wrong" then "\0relay\0s3cret"
    assert_eq!(c.cmd("AUTH PLAIN AHJlbGF5AHdyb25n").await.unwrap().0, 535);
    let r = c.cmd("AUTH PLAIN AHJlbGF5AHMzY3JldA==").await.unwrap();
    assert_eq!(r.0, 235, "{}", r.1);
    assert_eq!(
        c.send_message("a@x.test", &["b@y.test"], b"x\r\n")
            .await
            .unwrap()
            .0,
        250
    );

    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    c.starttls(&up.ca_path(), "localhost").await.unwrap();
    c.cmd("EHLO client.test").await.unwrap();
    assert_eq!(
        c.cmd("AUTH LOGIN").await.unwrap(),
        (334, "334 VXNlcm5hbWU6".to_string())
    );
    assert_eq!(c.cmd("cmVsYXk=").await.unwrap().0, 334);
    assert_eq!(c.cmd("czNjcmV0").await.unwrap().0, 235);
    assert_eq!(up.authenticated(), vec!["relay", "relay"]);
    assert_eq!(
        up.plaintext_commands()[1],
        vec!["EHLO client.test", "STARTTLS"]
    );
}

#[tokio::test]
async fn greeting_421_twice_then_220() {
    let up = Upstream::start(
        UpstreamOptions::plain().fault(Stage::Greeting, Fault::times(2, 421, "4.3.2 not now")),
    )
    .await;
    for _ in 0..2 {
        let mut c = SmtpClient::connect(up.addr()).await.unwrap();
        let r = c.read_reply().await.unwrap();
        assert_eq!(r, (421, "421 4.3.2 not now".to_string()));
        // The server closes after 421.
        assert!(c.read_reply().await.is_err());
    }
    let mut c = SmtpClient::connect(up.addr()).await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 220);
    assert_eq!(up.connections(), 3);
}

#[tokio::test]
async fn data_end_451_once_then_accepted() {
    let up = Upstream::start(
        UpstreamOptions::plain().fault(Stage::DataEnd, Fault::times(1, 451, "4.3.0 busy")),
    )
    .await;
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    let r = c
        .send_message("a@x.test", &["b@y.test"], b"first\r\n")
        .await
        .unwrap();
    assert_eq!(r, (451, "451 4.3.0 busy".to_string()));
    assert!(
        up.received().is_empty(),
        "a faulted message is not recorded"
    );
    // Same connection, next transaction: accepted.
    let r = c
        .send_message("a@x.test", &["b@y.test"], b"second\r\n")
        .await
        .unwrap();
    assert_eq!(r.0, 250);
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"second\r\n");
}

#[tokio::test]
async fn rcpt_550_always_for_one_address_and_script_changes_while_running() {
    let up = Upstream::start(UpstreamOptions::plain().fault(
        Stage::Rcpt("<Bad@Y.test>".into()),
        Fault::always(550, "5.1.1 no such user"),
    ))
    .await;
    let faults = up.faults();
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    c.cmd("MAIL FROM:<a@x.test>").await.unwrap();
    assert_eq!(c.cmd("RCPT TO:<good@y.test>").await.unwrap().0, 250);
    let r = c.cmd("RCPT TO:<bad@y.test>").await.unwrap();
    assert_eq!(r, (550, "550 5.1.1 no such user".to_string()));
    assert_eq!(
        c.cmd("RCPT TO:<bad@y.test>").await.unwrap().0,
        550,
        "always"
    );
    assert_eq!(c.cmd("DATA").await.unwrap().0, 354);
    c.send_raw(b"body\r\n.\r\n").await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 250);
    assert_eq!(up.wait_for(1, WAIT).await[0].rcpt_to, vec!["good@y.test"]);

    // Change the script while the server runs.
    faults.remove(Stage::Rcpt("bad@y.test".into()));
    faults.set(Stage::Mail, Fault::times(1, 421, "4.3.2 shutting down"));
    let r = c.cmd("MAIL FROM:<a@x.test>").await.unwrap();
    assert_eq!(r.0, 421);
    assert!(c.read_reply().await.is_err(), "421 closes the connection");
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    let r = c
        .send_message("a@x.test", &["bad@y.test"], b"ok now\r\n")
        .await
        .unwrap();
    assert_eq!(r.0, 250);
    assert_eq!(up.wait_for(2, WAIT).await[1].rcpt_to, vec!["bad@y.test"]);
    faults.set(Stage::AnyRcpt, Fault::always(452, "4.5.3 too many"));
    let r = c
        .send_message("a@x.test", &["z@y.test"], b"x\r\n")
        .await
        .unwrap();
    assert_eq!(
        r.0, 452,
        "no recipient accepted: send_message returns the RCPT reply"
    );
    faults.clear();
    assert_eq!(
        c.send_message("a@x.test", &["z@y.test"], b"x\r\n")
            .await
            .unwrap()
            .0,
        250
    );
}

#[tokio::test]
async fn disconnect_and_delay_faults() {
    let up =
        Upstream::start(UpstreamOptions::plain().fault(Stage::DataEnd, Fault::disconnect(Some(1))))
            .await;
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    let err = c.send_message("a@x.test", &["b@y.test"], b"lost\r\n").await;
    assert!(err.is_err(), "no reply after the dot: {err:?}");
    assert!(up.received().is_empty());
    assert_eq!(up.faults().remaining(Stage::DataEnd), Some(Some(0)));
    assert!(
        up.commands()[0]
            .iter()
            .any(|s| s.line == "<fault: disconnect>")
    );

    up.faults().set(
        Stage::Greeting,
        Fault::delay(Some(1), Duration::from_millis(300)),
    );
    let started = std::time::Instant::now();
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        c.send_message("a@x.test", &["b@y.test"], b"kept\r\n")
            .await
            .unwrap()
            .0,
        250
    );
    assert_eq!(up.wait_for(1, WAIT).await[0].data, b"kept\r\n");
}

#[tokio::test]
async fn dot_unstuffing_and_strict_end_of_data() {
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    c.cmd("MAIL FROM:<a@x.test>").await.unwrap();
    c.cmd("RCPT TO:<b@y.test>").await.unwrap();
    assert_eq!(c.cmd("DATA").await.unwrap().0, 354);
    // `..` -> `.`, `...x` -> `..x`, a dot not at line start stays, a bare LF followed by `.` CRLF does not
    // end the data (nor is that dot unstuffed), and neither does `\r.\r\n` after a bare CR.
    c.send_raw(b"..\r\n...x\r\na.b\r\nbare\n.\r\nmore\r.\r\n.end\r\n.\r\n")
        .await
        .unwrap();
    let r = c.read_reply().await.unwrap();
    assert_eq!(r.0, 250, "{}", r.1);
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "exactly one message");
    assert_eq!(
        got[0].data,
        b".\r\n..x\r\na.b\r\nbare\n.\r\nmore\r.\r\nend\r\n".to_vec()
    );

    // And through send_message (which stuffs): the bytes come back exactly.
    let msg = b".hidden\r\n.\r\n..\r\nend\r\n";
    assert_eq!(dot_stuff(msg), b"..hidden\r\n..\r\n...\r\nend\r\n".to_vec());
    assert_eq!(
        c.send_message("a@x.test", &["b@y.test"], msg)
            .await
            .unwrap()
            .0,
        250
    );
    assert_eq!(up.wait_for(2, WAIT).await[1].data, msg.to_vec());
}

#[tokio::test]
async fn pipelined_transactions_and_rset() {
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    c.send_raw(
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<1@y.test>\r\nRSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<2@y.test>\r\nDATA\r\n",
    )
    .await
    .unwrap();
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(c.read_reply().await.unwrap().0);
        }
        v
    };
    assert_eq!(codes, vec![250, 250, 250, 250, 250, 354]);
    c.send_raw(b"one\r\n.\r\nMAIL FROM:<b@x.test>\r\nRCPT TO:<3@y.test>\r\nDATA\r\n")
        .await
        .unwrap();
    for want in [250, 250, 250, 354] {
        assert_eq!(c.read_reply().await.unwrap().0, want);
    }
    c.send_raw(b"two\r\n.\r\n").await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 250);
    let got = up.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].rcpt_to.clone(), got[0].data.clone()),
        (vec!["2@y.test".to_string()], b"one\r\n".to_vec())
    );
    assert_eq!(
        (got[1].mail_from.as_str(), got[1].data.as_slice()),
        ("b@x.test", &b"two\r\n"[..])
    );
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn bytes_pipelined_after_starttls_are_discarded_and_recorded() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    c.send_raw(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n")
        .await
        .unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 220);
    c.upgrade(&up.ca_path(), "localhost").await.unwrap();
    // The injected MAIL was not executed: MAIL before EHLO is refused after the upgrade reset.
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await.unwrap().0, 503);
    assert_eq!(up.pipelined_after_starttls(), 1);
    let seen = up.commands();
    assert!(
        !lines(&seen[0]).contains(&("MAIL FROM:<evil@x.test>", false)),
        "{:?}",
        seen[0]
    );
}

#[tokio::test]
async fn command_without_crlf_is_refused() {
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    c.send_raw(b"NOOP\n").await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 500);
}

#[tokio::test]
async fn python_smtplib_with_starttls() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let msg = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: py\r\n\r\n.dot line\r\nbody\r\n";
    python_send(
        up.addr(),
        "a@x.test",
        &["b@y.test", "c@y.test"],
        msg,
        Some(&up.ca_path()),
    )
    .await
    .unwrap();
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "a@x.test");
    assert_eq!(got[0].rcpt_to, vec!["b@y.test", "c@y.test"]);
    assert_eq!(got[0].data, msg.to_vec());
    assert!(got[0].tls);
    let plaintext: Vec<String> = up.commands()[0]
        .iter()
        .filter(|s| !s.tls)
        .map(|s| s.line.clone())
        .collect();
    assert_eq!(plaintext, vec!["ehlo python.test", "STARTTLS"]);
}

#[tokio::test]
async fn python_smtplib_reports_upstream_failures() {
    let up = Upstream::start(
        UpstreamOptions::plain().fault(Stage::DataEnd, Fault::always(451, "4.3.0 busy")),
    )
    .await;
    let err = python_send(up.addr(), "a@x.test", &["b@y.test"], b"x\r\n", None)
        .await
        .unwrap_err();
    assert!(err.contains("451") && err.contains("4.3.0 busy"), "{err}");
    assert!(up.received().is_empty());
}

#[tokio::test]
async fn untrusted_ca_fails_verification() {
    let up = Upstream::start(UpstreamOptions::starttls().untrusted()).await;
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    let err = c
        .starttls(&up.ca_path(), "localhost")
        .await
        .expect_err("handshake must fail");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    let err = python_send(
        up.addr(),
        "a@x.test",
        &["b@y.test"],
        b"x\r\n",
        Some(&up.ca_path()),
    )
    .await
    .unwrap_err();
    assert!(err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");
    assert!(up.received().is_empty());

    let up = Upstream::start(UpstreamOptions::implicit_tls().untrusted()).await;
    assert!(
        SmtpClient::connect_tls(up.addr(), &up.ca_path(), "localhost")
            .await
            .is_err()
    );
    // Trusting the wrong name fails too, with the right CA.
    let up = Upstream::start(UpstreamOptions::implicit_tls()).await;
    assert!(
        SmtpClient::connect_tls(up.addr(), &up.ca_path(), "other.test")
            .await
            .is_err()
    );
}

#[test]
fn strip_first_received_removes_only_the_top_trace_field() {
    use common::upstream::strip_first_received;
    let msg = b"Received: from a\r\n\tby b; date\r\nReceived: from c\r\nSubject: s\r\n\r\nbody\r\n";
    assert_eq!(
        strip_first_received(msg),
        b"Received: from c\r\nSubject: s\r\n\r\nbody\r\n".to_vec()
    );
    let plain = b"Subject: s\r\n\r\nReceived: not a header\r\n";
    assert_eq!(strip_first_received(plain), plain.to_vec());
}

#[tokio::test]
async fn wait_for_returns_what_it_has_at_timeout() {
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let start = std::time::Instant::now();
    let got = up.wait_for(1, Duration::from_millis(200)).await;
    assert!(got.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(200) && start.elapsed() < Duration::from_secs(3)
    );
}

#[tokio::test]
async fn stopped_upstream_refuses_and_can_come_back_on_the_same_port() {
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let addr = up.addr();
    drop(up);
    // The aborted accept task drops its listener the next time the runtime runs it.
    let deadline = std::time::Instant::now() + WAIT;
    while SmtpClient::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "a stopped upstream still accepts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut opts = UpstreamOptions::plain();
    opts.bind = Some(addr);
    let up = Upstream::start(opts).await;
    let (mut c, _) = SmtpClient::connect_ehlo(up.addr()).await.unwrap();
    assert_eq!(
        c.send_message("a@x.test", &["b@y.test"], b"back\r\n")
            .await
            .unwrap()
            .0,
        250
    );
}

#[tokio::test]
async fn gateway_config_renders_defaults_overrides_and_raw_toml() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let pki = common::TestPki::new("gateway test CA");
    let mut cfg = GatewayConfig::new()
        .upstream(&up)
        .with_tls(&pki)
        .with("spool", "retry", r#"["1s"]"#)
        .raw("[policy]\nrules = []\n");
    cfg.set("server", "max_message_size", &toml_str("1MiB"));
    let dir = tempfile::tempdir().unwrap();
    let path = cfg.write_to(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let server = t["server"].as_table().unwrap();
    let listen = server["listen"].as_array().unwrap()[0].as_str().unwrap();
    assert!(
        listen.starts_with("127.0.0.1:") && !listen.ends_with(":0"),
        "{listen}"
    );
    assert_eq!(server["hostname"].as_str(), Some("cachet.test"));
    assert_eq!(server["max_message_size"].as_str(), Some("1MiB"));
    assert_eq!(server["tls_cert"].as_str(), Some("server.crt"));
    assert_eq!(t["spool"]["retry"].as_array().unwrap().len(), 1);
    assert_eq!(t["spool"]["max_age"].as_str(), Some("1h"));
    assert_eq!(t["upstream"]["url"].as_str(), Some(up.url().as_str()));
    assert_eq!(t["upstream"]["tls"].as_str(), Some("verify"));
    assert_eq!(t["upstream"]["ca_file"].as_str(), Some("upstream-ca.pem"));
    assert!(t["policy"]["rules"].as_array().unwrap().is_empty());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("upstream-ca.pem")).unwrap(),
        up.pki().ca_pem
    );
    assert_eq!(
        std::fs::read(dir.path().join("server.key")).unwrap(),
        pki.server.key_pem.as_bytes()
    );

    // The default upstream is a file:// outbox inside the temp dir.
    let mut plain = GatewayConfig::new();
    let text = std::fs::read_to_string(plain.write_to(dir.path())).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(
        t["upstream"]["url"].as_str().unwrap(),
        format!("file://{}/outbox", dir.path().display())
    );
    assert!(t["upstream"].get("tls").is_none());
    assert!(dir.path().join("outbox").is_dir());
}

#[tokio::test]
async fn gateway_that_exits_early_is_reported_with_its_logs() {
    // A config the real binary must refuse; a binary that is not finished yet exits too.
    let cfg = GatewayConfig::new().raw("[server]\nthis is not toml\n");
    let started = std::time::Instant::now();
    let err = match Gateway::try_start(cfg).await {
        Ok(_) => panic!("a broken config must not start"),
        Err(e) => e,
    };
    assert!(err.contains("exited before listening"), "{err}");
    assert!(err.contains("----- cachet stderr (start 1) -----"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Regression (issue 9): a port the harness picked can be taken by another process before the gateway
/// binds it. The gateway then exits with `cannot listen on`; the harness picks new ports rather than fail
/// the test.
#[tokio::test]
async fn a_picked_port_taken_before_the_start_is_replaced() {
    let cfg = GatewayConfig::new();
    let picked: std::net::SocketAddr = cfg
        .get("admin", "listen")
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    let _squatter = std::net::TcpListener::bind(picked).expect("take the picked admin port");
    let gw = Gateway::start(cfg).await;
    assert_ne!(gw.admin_addr(), picked);
    assert_eq!(gw.admin_get("/healthz").await, (200, "ok\n".to_string()));
    let (_c, ehlo) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(ehlo.0, 250);
    // A port the test chose itself is the test's business: that failure is reported.
    let cfg = GatewayConfig::new().with("admin", "listen", &toml_str(&picked.to_string()));
    let err = match Gateway::try_start(cfg).await {
        Ok(_) => panic!("started on a port another process holds"),
        Err(e) => e,
    };
    assert!(err.contains("cannot listen on"), "{err}");
}

/// A stand-in gateway: reads the config with tomllib, answers `GET /healthz` on `[admin] listen`, listens on
/// `[server] listen`, greets with the number of the SMTP connection it accepted (from 1), logs SIGHUP.
const FAKE_GATEWAY: &str = r#"
import signal, socket, sys, threading, tomllib
cfg = tomllib.load(open(sys.argv[sys.argv.index("--config") + 1], "rb"))
def bind(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen()
    return s, port
def health(s):
    while True:
        c, _ = s.accept()
        c.recv(2048)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        c.close()
signal.signal(signal.SIGHUP, lambda *a: print("reloaded config", file=sys.stderr, flush=True))
smtp, port = bind(cfg["server"]["listen"][0])
admin, _ = bind(cfg["admin"]["listen"])
threading.Thread(target=health, args=(admin,), daemon=True).start()
print("fake gateway listening on", port, flush=True)
n = 0
while True:
    c, _ = smtp.accept()
    n += 1
    c.sendall(b"220 fake ESMTP connection %d\r\n" % n)
    c.close()
"#;

/// Regression (issue 9): readiness was a connect to the SMTP port, and that probe held one of
/// `max_connections` until the gateway noticed it had closed, so a test counting slots saw one too
/// few. The first SMTP connection a test makes must be the gateway's first, after a restart too.
#[tokio::test]
async fn readiness_does_not_use_an_smtp_connection() {
    let cfg = GatewayConfig::new().program(&["python3", "-c", FAKE_GATEWAY]);
    let mut gw = Gateway::start(cfg).await;
    for start in 1..=2 {
        let mut c = SmtpClient::connect(gw.addr()).await.unwrap();
        assert_eq!(
            c.read_reply().await.unwrap(),
            (220, "220 fake ESMTP connection 1".to_string()),
            "start {start}: the harness used the SMTP port\n{}",
            gw.logs()
        );
        if start == 1 {
            gw.restart().await;
        }
    }
}

#[tokio::test]
async fn gateway_handle_starts_kills_restarts_and_signals() {
    let cfg = GatewayConfig::new().program(&["python3", "-c", FAKE_GATEWAY]);
    let mut gw = Gateway::start(cfg).await;
    let pid = gw.pid().unwrap();
    let mut c = SmtpClient::connect(gw.addr()).await.unwrap();
    assert_eq!(
        c.read_reply().await.unwrap(),
        (220, "220 fake ESMTP connection 1".to_string())
    );
    assert!(
        gw.wait_log("fake gateway listening on", WAIT).await,
        "{}",
        gw.logs()
    );

    gw.sighup();
    assert!(gw.wait_log("reloaded config", WAIT).await, "{}", gw.logs());
    assert!(gw.is_running());

    gw.kill_9();
    assert!(!gw.is_running());
    assert!(
        SmtpClient::connect(gw.addr()).await.is_err(),
        "killed gateway still accepts"
    );

    gw.restart().await;
    assert_ne!(gw.pid().unwrap(), pid);
    let mut c = SmtpClient::connect(gw.addr()).await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 220);
    let logs = gw.logs();
    assert!(
        logs.contains("----- cachet stdout (start 2) -----"),
        "{logs}"
    );
    assert_eq!(
        logs.matches("fake gateway listening on").count(),
        2,
        "{logs}"
    );
    assert!(gw.spool_files().is_empty());
    assert!(gw.outbox_messages().is_empty());
    std::fs::write(gw.outbox_dir().join("1.eml"), b"x").unwrap();
    assert_eq!(gw.wait_outbox(1, WAIT).await[0].1, b"x");

    let status = gw.terminate(WAIT).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "SIGTERM ends the fake: {status:?}"
    );
}
