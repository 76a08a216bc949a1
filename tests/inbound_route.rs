//! The inbound route (issue 13): the `[inbound]` listener, its session rules, the spool's
//! direction and the second relay to the internal mail server. Real binary, loopback sockets,
//! real TLS towards a recording "internal server" that stands for the mailstore. What the
//! processing does to a message (Authentication-Results, decryption) is tested elsewhere; these
//! tests are about where mail may come from and where it goes.

mod common;

use common::{
    Fault, Gateway, GatewayConfig, SmtpClient, Stage, TestPki, Upstream, UpstreamOptions, toml_str,
};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@partner.test>\r\n\r\nHello from outside.\r\n"
    )
    .into_bytes()
}

/// A gateway with outbound mail going to `outbound` and an `[inbound]` section relaying to
/// `internal` over verified TLS (`tls = "verify"`, `ca_file` = the internal server's test CA).
/// Processing switches are off: no keys or trust anchors are needed for the route.
fn config(outbound: &Upstream, internal_url: &str, internal_ca: &str) -> GatewayConfig {
    GatewayConfig::new()
        .upstream(outbound)
        .with_inbound()
        .with("inbound", "relay_networks", r#"["127.0.0.0/8"]"#)
        .with("inbound", "upstream", &toml_str(internal_url))
        .with("inbound", "tls", &toml_str("verify"))
        .with("inbound", "ca_file", &toml_str("internal-ca.pem"))
        .with("inbound", "decrypt", "false")
        .with("inbound", "verify", "false")
        .with("inbound", "harvest", "false")
        .file("internal-ca.pem", internal_ca)
}

/// Polls `cachet queue list` until `pred` holds (30 s at most); returns the last listing.
async fn queue_until(gw: &Gateway, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, list) = gw.cli(&["queue", "list"]);
        assert!(ok, "{list}");
        if pred(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "queue never showed {what}:\n{list}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_client_outside_inbound_relay_networks_is_refused_at_connect() {
    let outbound = Upstream::start(UpstreamOptions::starttls()).await;
    let internal = Upstream::start(UpstreamOptions::starttls()).await;
    let mut cfg = config(&outbound, &internal.url(), &internal.pki().ca_pem);
    // Loopback is not the MTA allowed to hand mail in here.
    cfg.set("inbound", "relay_networks", r#"["192.0.2.25/32"]"#);
    let gw = Gateway::start(cfg).await;

    let mut c = SmtpClient::connect(gw.inbound_addr()).await.unwrap();
    let (code, text) = c.read_reply().await.unwrap();
    assert_eq!(code, 554, "{text}");
    assert!(text.starts_with("554 5.7.1 "), "{text}");
    // No banner, no conversation: the connection is closed after the refusal.
    assert!(c.read_reply().await.is_err(), "the connection stays open");

    // The outbound listener still greets the same client (its own rules apply there).
    let (c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    c.quit().await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("cachet_refused_total{reason=\"inbound_client\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_inbound_recipient_outside_local_domains_gets_550_and_nothing_is_queued() {
    let outbound = Upstream::start(UpstreamOptions::starttls()).await;
    let internal = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(config(&outbound, &internal.url(), &internal.pki().ca_pem)).await;

    let (mut c, ehlo) = SmtpClient::connect_ehlo(gw.inbound_addr()).await.unwrap();
    assert_eq!(ehlo.0, 250, "{}", ehlo.1);
    assert!(!ehlo.1.contains("AUTH"), "no AUTH inbound: {}", ehlo.1);
    assert_eq!(
        c.cmd("MAIL FROM:<someone@partner.test>").await.unwrap().0,
        250
    );
    // Never a relay: not even for a sender in local_domains.
    for rcpt in ["victim@elsewhere.test", "postmaster@example.org.evil.test"] {
        let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>")).await.unwrap();
        assert_eq!(code, 550, "{rcpt}: {text}");
        assert!(text.starts_with("550 5.7.1 "), "{text}");
    }
    let (code, text) = c.cmd("DATA").await.unwrap();
    assert_eq!(code, 503, "no recipient, no DATA: {text}");
    let (code, text) = c.cmd("AUTH PLAIN AHVzZXIAcGFzcw==").await.unwrap();
    assert_eq!(code, 502, "AUTH is not offered inbound: {text}");
    c.quit().await;

    let (ok, list) = gw.cli(&["queue", "list"]);
    assert!(ok && list.contains("-- 0 message(s)"), "{list}");
    assert!(gw.spool_files().is_empty(), "{:?}", gw.spool_files());
    assert!(internal.received().is_empty() && outbound.received().is_empty());
}

#[tokio::test]
async fn inbound_mail_for_a_local_recipient_reaches_the_internal_server_over_verified_tls() {
    let outbound = Upstream::start(UpstreamOptions::starttls()).await;
    let internal = Upstream::start(UpstreamOptions::starttls()).await;
    let pki = TestPki::new("cachet inbound listener CA");
    // STARTTLS is offered on the inbound listener too when server.tls_cert is set.
    let gw =
        Gateway::start(config(&outbound, &internal.url(), &internal.pki().ca_pem).with_tls(&pki))
            .await;

    let (mut c, ehlo) = SmtpClient::connect_ehlo(gw.inbound_addr()).await.unwrap();
    assert!(ehlo.1.contains("STARTTLS"), "{}", ehlo.1);
    c.starttls(&pki.ca_path(), "localhost").await.unwrap();
    assert_eq!(c.cmd("EHLO mx.example.org").await.unwrap().0, 250);
    let msg = message("alice@partner.test", "bob@example.org", "inbound-1");
    let (code, text) = c
        .send_message("alice@partner.test", &["Bob@Example.org"], &msg)
        .await
        .unwrap();
    assert_eq!(code, 250, "{text}");
    assert!(text.contains("queued as"), "{text}");
    c.quit().await;

    let got = internal.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    assert_eq!(got[0].mail_from, "alice@partner.test");
    assert_eq!(got[0].rcpt_to, ["Bob@Example.org"]);
    assert!(got[0].tls, "relayed to the internal server over TLS");
    assert_eq!(got[0].data_without_first_received(), msg);
    let trace = String::from_utf8_lossy(&got[0].data);
    assert!(
        trace.starts_with("Received: from mx.example.org ([127.0.0.1])")
            && trace.contains("with ESMTPS id"),
        "{trace}"
    );
    queue_until(&gw, "an empty queue", |l| l.contains("-- 0 message(s)")).await;
    assert!(
        outbound.received().is_empty(),
        "inbound mail never goes to [upstream]"
    );
    // Nothing in this config can reject: the session answered without opening the message.
    assert!(!gw.logs().contains("judged before 250"), "{}", gw.logs());
    let (_, metrics) = gw.admin_get("/metrics").await;
    for line in [
        "cachet_inbound_messages_accepted_total 1",
        "cachet_inbound_recipients_relayed_total 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

#[tokio::test]
async fn inbound_tls_verify_refuses_an_internal_server_outside_ca_file() {
    let outbound = Upstream::start(UpstreamOptions::starttls()).await;
    let internal = Upstream::start(UpstreamOptions::starttls().untrusted()).await;
    let gw = Gateway::start(config(&outbound, &internal.url(), &internal.pki().ca_pem)).await;
    let msg = message("carol@partner.test", "bob@example.org", "inbound-untrusted");
    let (mut c, _) = SmtpClient::connect_ehlo(gw.inbound_addr()).await.unwrap();
    let (code, text) = c
        .send_message("carol@partner.test", &["bob@example.org"], &msg)
        .await
        .unwrap();
    assert_eq!(code, 250, "{text}");
    c.quit().await;
    // Deferred (never sent in clear, never to anyone else), the reason recorded.
    let list = queue_until(&gw, "a deferred inbound message", |l| {
        l.contains("deferred") && l.contains("inbound")
    })
    .await;
    assert!(list.contains("TLS"), "{list}");
    assert!(internal.received().is_empty() && outbound.received().is_empty());
}

#[tokio::test]
async fn the_direction_survives_a_restart_and_inbound_mail_goes_to_the_internal_server() {
    let outbound = Upstream::start(UpstreamOptions::starttls()).await;
    // The internal server's address, then down: the message waits in the queue.
    let first = Upstream::start(UpstreamOptions::starttls()).await;
    let (internal_addr, internal_pki) = (first.addr(), first.pki().clone());
    let url = first.url();
    first.stop();
    drop(first);
    let mut gw = Gateway::start(config(&outbound, &url, &internal_pki.ca_pem)).await;

    let msg = message("dave@partner.test", "bob@example.org", "inbound-restart");
    let (mut c, _) = SmtpClient::connect_ehlo(gw.inbound_addr()).await.unwrap();
    let (code, text) = c
        .send_message("dave@partner.test", &["bob@example.org"], &msg)
        .await
        .unwrap();
    assert_eq!(code, 250, "{text}");
    c.quit().await;
    let id = text.rsplit(' ').next().unwrap().to_string();
    queue_until(&gw, "the message deferred", |l| {
        l.contains(&format!("{id}  deferred")) && l.contains("inbound")
    })
    .await;
    let (ok, show) = gw.cli(&["queue", "show", &id]);
    assert!(ok && show.contains("\"direction\": \"inbound\""), "{show}");

    // Crash with the message queued; the internal server comes back; recovery delivers it there.
    gw.kill_9();
    let internal = Upstream::start(UpstreamOptions {
        bind: Some(internal_addr),
        pki: Some(internal_pki),
        ..UpstreamOptions::starttls()
    })
    .await;
    gw.restart().await;
    let got = internal.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    assert_eq!(got[0].rcpt_to, ["bob@example.org"]);
    assert_eq!(got[0].data_without_first_received(), msg);
    queue_until(&gw, "an empty queue", |l| l.contains("-- 0 message(s)")).await;
    assert!(
        outbound.received().is_empty(),
        "the recovered inbound message went to [upstream]"
    );
}

#[tokio::test]
async fn each_direction_has_its_own_connection_slots() {
    let outbound = Upstream::start(UpstreamOptions::starttls()).await;
    let internal = Upstream::start(UpstreamOptions::starttls()).await;
    let cfg = config(&outbound, &internal.url(), &internal.pki().ca_pem).with(
        "server",
        "max_connections",
        "1",
    );
    let gw = Gateway::start(cfg).await;
    // One submission client holds the only outbound slot...
    let (busy, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let mut second = SmtpClient::connect(gw.addr()).await.unwrap();
    let (code, text) = second.read_reply().await.unwrap();
    assert_eq!(code, 421, "{text}");
    // ...and the MTA still hands mail in.
    let msg = message("hank@partner.test", "bob@example.org", "inbound-slots");
    let (mut c, _) = SmtpClient::connect_ehlo(gw.inbound_addr()).await.unwrap();
    let (code, text) = c
        .send_message("hank@partner.test", &["bob@example.org"], &msg)
        .await
        .unwrap();
    assert_eq!(code, 250, "{text}");
    c.quit().await;
    assert_eq!(internal.wait_for(1, WAIT).await.len(), 1, "{}", gw.logs());
    busy.quit().await;
}

#[tokio::test]
async fn the_outbound_side_is_unchanged_beside_an_inbound_listener() {
    let outbound = Upstream::start(UpstreamOptions::starttls()).await;
    let internal = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(config(&outbound, &internal.url(), &internal.pki().ca_pem)).await;

    // Submitted on the outbound port: to [upstream], for any recipient, as before.
    let msg = message("alice@example.org", "partner@partner.test", "outbound-1");
    gw.send_ok("alice@example.org", &["partner@partner.test"], &msg)
        .await;
    let got = gw.expect_upstream(&outbound, 1).await;
    assert_eq!(got[0].rcpt_to, ["partner@partner.test"]);
    assert_eq!(got[0].data_without_first_received(), msg);
    // And inbound mail meanwhile goes to the internal server only.
    let msg_in = message("partner@partner.test", "alice@example.org", "inbound-2");
    let (mut c, _) = SmtpClient::connect_ehlo(gw.inbound_addr()).await.unwrap();
    let (code, text) = c
        .send_message("partner@partner.test", &["alice@example.org"], &msg_in)
        .await
        .unwrap();
    assert_eq!(code, 250, "{text}");
    c.quit().await;
    let got_in = internal.wait_for(1, WAIT).await;
    assert_eq!(got_in.len(), 1, "{}", gw.logs());
    assert_eq!(got_in[0].data_without_first_received(), msg_in);
    queue_until(&gw, "an empty queue", |l| l.contains("-- 0 message(s)")).await;
    assert_eq!(outbound.received().len(), 1, "only the outbound message");
}

#[tokio::test]
async fn a_recipient_the_internal_server_refuses_gets_a_dsn_through_the_outbound_side() {
    let outbound = Upstream::start(UpstreamOptions::starttls()).await;
    let internal = Upstream::start(UpstreamOptions::starttls().fault(
        Stage::Rcpt("nobody@example.org".into()),
        Fault::always(550, "5.1.1 no such user"),
    ))
    .await;
    let gw = Gateway::start(config(&outbound, &internal.url(), &internal.pki().ca_pem)).await;
    let msg = message("frank@partner.test", "bob@example.org", "inbound-dsn");
    let (mut c, _) = SmtpClient::connect_ehlo(gw.inbound_addr()).await.unwrap();
    let (code, text) = c
        .send_message(
            "frank@partner.test",
            &["bob@example.org", "nobody@example.org"],
            &msg,
        )
        .await
        .unwrap();
    assert_eq!(code, 250, "{text}");
    c.quit().await;
    let got = internal.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    assert_eq!(got[0].rcpt_to, ["bob@example.org"]);
    // The bounce is ordinary outbound mail: to [upstream], from <>, to the envelope sender.
    let dsn = gw.expect_upstream(&outbound, 1).await;
    assert_eq!(dsn[0].mail_from, "");
    assert_eq!(dsn[0].rcpt_to, ["frank@partner.test"]);
    let text = String::from_utf8_lossy(&dsn[0].data);
    assert!(
        text.contains("Final-Recipient: rfc822; nobody@example.org")
            && text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"),
        "{text}"
    );
    queue_until(&gw, "an empty queue", |l| l.contains("-- 0 message(s)")).await;
    assert_eq!(internal.received().len(), 1, "the bounce never goes inside");
}

#[tokio::test]
async fn a_reload_swaps_the_inbound_relay_with_the_rest() {
    let outbound = Upstream::start(UpstreamOptions::starttls()).await;
    let old = Upstream::start(UpstreamOptions::starttls()).await;
    let new = Upstream::start(UpstreamOptions::starttls()).await;
    let mut gw = Gateway::start(config(&outbound, &old.url(), &old.pki().ca_pem)).await;
    let addr = gw.inbound_addr();
    let send = |subject: &'static str| async move {
        let msg = message("gina@partner.test", "bob@example.org", subject);
        let (mut c, _) = SmtpClient::connect_ehlo(addr).await.unwrap();
        let (code, text) = c
            .send_message("gina@partner.test", &["bob@example.org"], &msg)
            .await
            .unwrap();
        assert_eq!(code, 250, "{text}");
        c.quit().await;
    };
    send("before-reload").await;
    assert_eq!(old.wait_for(1, WAIT).await.len(), 1, "{}", gw.logs());

    // The new server has a CA of its own (written after the config: rewriting it rewrites the
    // files the config started with).
    gw.rewrite_config(|c| {
        c.set("inbound", "upstream", &toml_str(&new.url()));
        c.set("inbound", "ca_file", &toml_str("internal-ca-2.pem"));
    });
    std::fs::write(gw.dir().join("internal-ca-2.pem"), &new.pki().ca_pem).unwrap();
    gw.sighup();
    assert!(
        gw.wait_log("configuration reloaded", WAIT).await,
        "{}",
        gw.logs()
    );
    send("after-reload").await;
    let got = new.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: after-reload"));
    assert_eq!(old.received().len(), 1);
    assert!(outbound.received().is_empty());
}

#[tokio::test]
async fn with_rules_that_may_reject_a_message_is_judged_before_250_and_then_relayed() {
    // A rule that can reject makes the session process the message before answering; mail
    // from senders the rule does not name is accepted and relayed as usual.
    let outbound = Upstream::start(UpstreamOptions::starttls()).await;
    let internal = Upstream::start(UpstreamOptions::starttls()).await;
    let cfg = config(&outbound, &internal.url(), &internal.pki().ca_pem).raw(
        "[[inbound.rule]]\nsenders = [\"*@strict.test\"]\nrequire = \"signed\"\naction = \"reject\"\n",
    );
    let gw = Gateway::start(cfg).await;
    let msg = message("erin@relaxed.test", "bob@example.org", "inbound-judged");
    let (mut c, _) = SmtpClient::connect_ehlo(gw.inbound_addr()).await.unwrap();
    let (code, text) = c
        .send_message("erin@relaxed.test", &["bob@example.org"], &msg)
        .await
        .unwrap();
    assert_eq!(code, 250, "{text}");
    c.quit().await;
    assert!(
        gw.wait_log("inbound message judged before 250: deliver", WAIT)
            .await,
        "{}",
        gw.logs()
    );
    let got = internal.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    assert_eq!(got[0].data_without_first_received(), msg);
    assert!(outbound.received().is_empty());
}

#[tokio::test]
async fn inbound_configuration_problems_are_reported_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:2525\"]\nlocal_domains = [\"example.org\"]\n\
         [upstream]\nurl = \"file://out\"\n\
         [inbound]\nlisten = [\"0.0.0.0:2525\"]\nupstream = \"ftp://mailstore\"\ntls = \"maybe\"\n\
         on_undecryptable = \"shred\"\n\
         [[inbound.rule]]\nsenders = [\"nobody\"]\nrequire = \"signed\"\naction = \"drop\"\n",
    )
    .unwrap();
    let out = common::cachet_command()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = path.display().to_string();
    for expected in [
        format!("{f}:7: inbound.listen: 0.0.0.0:2525 overlaps server.listen 127.0.0.1:2525"),
        "inbound.relay_networks: list the MTAs that hand mail in".to_string(),
        format!("{f}:8: inbound.upstream: \"ftp://mailstore\": scheme must be"),
        format!("{f}:9: inbound.tls: \"maybe\" is not one of verify, insecure, none"),
        format!("{f}:10: inbound.on_undecryptable: \"shred\" is not one of deliver, hold, reject"),
        format!("{f}: inbound.decrypt: decrypting needs the organisation's keys: configure [keys]"),
        format!("{f}: inbound.verify: verifying needs trust anchors"),
        format!("{f}:12: inbound.rule #1: senders: \"nobody\" is not an address glob"),
        format!("{f}:14: inbound.rule #1: action: \"drop\" is not one of tag, hold, reject"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
}
