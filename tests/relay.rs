//! End to end over loopback: a real client -> the real gateway binary -> a recording STARTTLS
//! upstream with a test CA, and the upstream's faults: retries, bounces, TLS failures.

mod common;

use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: alice@example.org\r\nTo: bob@partner.example\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n\r\n\
         line one\r\n.line starting with a dot\r\n..two dots\r\n\r\n8bit caf\u{e9}\r\n"
    )
    .into_bytes()
}

/// The gateway prepends exactly one Received: header and changes nothing else.
fn assert_relayed_verbatim(got: &[u8], sent: &[u8]) {
    let text = String::from_utf8_lossy(got);
    assert!(text.starts_with("Received: from "), "{text}");
    assert!(
        got.ends_with(sent),
        "upstream bytes must end with the original message verbatim:\n{text}"
    );
    let prefix = &text[..text.len() - sent.len()];
    assert_eq!(prefix.matches("\r\nReceived:").count() + 1, 1, "{prefix}");
    assert!(
        prefix.contains("by cachet.test (cachet) with ESMTPS id "),
        "{prefix}"
    );
}

#[tokio::test]
async fn python_client_to_starttls_upstream_byte_for_byte() {
    let pki = TestPki::new("gateway");
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(GatewayConfig::new().with_tls(&pki).upstream(&up)).await;
    let msg = message("e2e");
    python_send(
        gw.addr(),
        "alice@example.org",
        &["bob@partner.example", "carol@other.example"],
        &msg,
        Some(&pki.ca_path()),
    )
    .await
    .expect("smtplib send");
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    assert_eq!(got[0].mail_from, "alice@example.org");
    assert_eq!(
        got[0].rcpt_to,
        ["bob@partner.example", "carol@other.example"]
    );
    assert!(got[0].tls, "the upstream hop must be TLS");
    assert_relayed_verbatim(&got[0].data, &msg);
    // Nothing was sent before STARTTLS except EHLO.
    for conn in up.commands() {
        for seen in conn.iter().filter(|s| !s.tls) {
            assert!(
                seen.line.starts_with("EHLO") || seen.line.starts_with("STARTTLS"),
                "plaintext command: {}",
                seen.line
            );
        }
    }
}

#[tokio::test]
async fn several_messages_reuse_one_upstream_connection() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up).with(
        "upstream",
        "max_connections",
        "1",
    ))
    .await;
    let mut c = SmtpClient::connect_ehlo(gw.addr()).await.unwrap().0;
    for i in 0..5 {
        let r = c
            .send_message(
                "a@example.org",
                &["b@x.example"],
                &message(&format!("m{i}")),
            )
            .await
            .unwrap();
        assert_eq!(r.0, 250, "{r:?}");
    }
    let got = up.wait_for(5, WAIT).await;
    assert_eq!(got.len(), 5);
    assert!(
        up.connections() < 5,
        "expected connection reuse, saw {} connections",
        up.connections()
    );
}

#[tokio::test]
async fn temporary_failures_are_retried_until_delivered() {
    let up = Upstream::start(
        UpstreamOptions::starttls()
            .fault(Stage::Greeting, Fault::times(1, 421, "4.3.2 busy"))
            .fault(Stage::DataEnd, Fault::times(1, 451, "4.3.0 try again")),
    )
    .await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let msg = message("retry");
    gw.send_ok("a@example.org", &["b@x.example"], &msg).await;
    let got = gw.expect_upstream(&up, 1).await;
    assert!(got[0].data.ends_with(&msg));
    let logs = gw.logs();
    assert!(logs.contains("upstream greeting: 421 4.3.2 busy"), "{logs}");
    assert!(logs.contains("451 4.3.0 try again"), "{logs}");
    assert_eq!(logs.matches("deferred").count(), 2, "{logs}");
}

#[tokio::test]
async fn permanent_failure_bounces_to_sender_and_spares_other_recipients() {
    let up = Upstream::start(UpstreamOptions::starttls().fault(
        Stage::Rcpt("nobody@x.example".into()),
        Fault::always(550, "5.1.1 no such user"),
    ))
    .await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let mut c = SmtpClient::connect_ehlo(gw.addr()).await.unwrap().0;
    let msg = message("bounce");
    assert_eq!(
        c.send_message(
            "alice@example.org",
            &["nobody@x.example", "bob@x.example"],
            &msg
        )
        .await
        .unwrap()
        .0,
        250
    );
    let got = up.wait_for(2, WAIT).await;
    assert_eq!(
        got.len(),
        2,
        "the message for bob and the DSN for alice: {}",
        gw.logs()
    );
    let delivered = got
        .iter()
        .find(|r| r.mail_from == "alice@example.org")
        .expect("original");
    assert_eq!(delivered.rcpt_to, ["bob@x.example"]);
    let dsn = got
        .iter()
        .find(|r| r.mail_from.is_empty())
        .expect("a DSN from <>");
    assert_eq!(dsn.rcpt_to, ["alice@example.org"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{text}"
    );
    assert!(
        text.contains(
            "Final-Recipient: rfc822; nobody@x.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"),
        "{text}"
    );
    assert!(
        text.contains("Message-ID: <bounce@example.org>"),
        "the original's headers are returned: {text}"
    );
    assert!(!text.contains("line one"), "but not its body");
}

#[tokio::test]
async fn untrusted_upstream_certificate_defers_and_sends_nothing() {
    let up = Upstream::start(UpstreamOptions::starttls().untrusted()).await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let mut c = SmtpClient::connect_ehlo(gw.addr()).await.unwrap().0;
    assert_eq!(
        c.send_message("a@example.org", &["b@x.example"], &message("tls"))
            .await
            .unwrap()
            .0,
        250
    );
    // A second connection is the retry after the first attempt was deferred.
    assert!(
        up.wait_for_connections(2, WAIT).await >= 2,
        "no retry\n{}",
        gw.logs()
    );
    assert!(up.received().is_empty());
    for conn in up.commands() {
        for seen in conn {
            assert!(
                !seen.line.starts_with("MAIL")
                    && !seen.line.starts_with("RCPT")
                    && !seen.line.starts_with("DATA"),
                "sent {:?} over a failed TLS session",
                seen.line
            );
        }
    }
    let (ok, queue) = gw.cli(&["queue", "list"]);
    assert!(ok, "{queue}");
    assert!(queue.contains("deferred"), "{queue}");
    assert!(
        queue.contains("TLS failure"),
        "the reason is recorded: {queue}"
    );
    // One failure, two faces: the public reply a bounce would show, the private reason beside.
    assert!(
        queue.contains("451 4.7.5 TLS with the next hop failed"),
        "the public reply is recorded: {queue}"
    );
}

#[tokio::test]
async fn upstream_without_starttls_is_never_used_in_plaintext() {
    let up = Upstream::start(UpstreamOptions::plain()).await;
    // The gateway insists on TLS (the default) although this upstream has none.
    let gw = Gateway::start(
        GatewayConfig::new()
            .with("upstream", "url", &toml_str(&up.url()))
            .with("upstream", "tls", "\"verify\""),
    )
    .await;
    let mut c = SmtpClient::connect_ehlo(gw.addr()).await.unwrap().0;
    assert_eq!(
        c.send_message("a@example.org", &["b@x.example"], &message("plain"))
            .await
            .unwrap()
            .0,
        250
    );
    // The gateway says when it gives up on the connection; anything it sent in plaintext would
    // have been sent by then.
    assert!(
        gw.wait_log("does not offer STARTTLS; not sending in plaintext", WAIT)
            .await,
        "{}",
        gw.logs()
    );
    assert!(up.received().is_empty());
    for line in up.plaintext_commands().concat() {
        assert!(
            !line.starts_with("MAIL") && !line.starts_with("RCPT"),
            "sent in plaintext: {line}"
        );
    }
}

#[tokio::test]
async fn implicit_tls_upstream_and_smtps_listener() {
    let pki = TestPki::new("gateway");
    let up = Upstream::start(UpstreamOptions::implicit_tls()).await;
    let gw = Gateway::start(
        GatewayConfig::new()
            .with_tls(&pki)
            .with_smtps()
            .upstream(&up),
    )
    .await;
    let mut c = SmtpClient::connect_tls(gw.smtps_addr().unwrap(), &pki.ca_path(), "localhost")
        .await
        .unwrap();
    let banner = c.read_reply().await.unwrap();
    assert_eq!(banner.0, 220);
    assert_eq!(c.cmd("EHLO client").await.unwrap().0, 250);
    let msg = message("smtps");
    assert_eq!(
        c.send_message("a@example.org", &["b@x.example"], &msg)
            .await
            .unwrap()
            .0,
        250
    );
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    assert!(got[0].tls && got[0].data.ends_with(&msg));
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_upstream_is_replaced_without_deferring() {
    // The upstream drops a connection idle for 3 s: long enough that a slow gateway never
    // trips it during a transaction, short enough to wait for.
    let mut opts = UpstreamOptions::starttls();
    opts.idle_timeout = Duration::from_secs(3);
    let up = Upstream::start(opts).await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(
        c.send_message("a@example.org", &["b@x.example"], &message("first"))
            .await
            .unwrap()
            .0,
        250
    );
    assert_eq!(up.wait_for(1, WAIT).await.len(), 1);
    // The upstream drops the idle pooled connection; the next message must not be deferred.
    assert_eq!(
        up.wait_for_closed(1, WAIT).await,
        1,
        "the upstream did not drop the idle connection\n{}",
        gw.logs()
    );
    assert_eq!(
        c.send_message("a@example.org", &["b@x.example"], &message("second"))
            .await
            .unwrap()
            .0,
        250
    );
    let got = up.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2, "{}", gw.logs());
    assert!(
        !gw.logs().contains("deferred"),
        "the stale connection cost a deferral: {}",
        gw.logs()
    );
}

/// The transaction's command lines on the upstream's last connection, from MAIL on.
fn transaction_lines(up: &Upstream) -> Vec<Seen> {
    let conns = up.commands();
    let last = conns.last().expect("a connection");
    let start = last
        .iter()
        .position(|s| s.line.starts_with("MAIL FROM:"))
        .expect("a MAIL FROM");
    last[start..].to_vec()
}

/// Relays one message to two recipients through an upstream started with `opts` and returns
/// the first four command lines of its transaction, each with whether more bytes were already
/// waiting behind it, and the gateway's logs.
async fn relay_two_recipients(
    opts: UpstreamOptions,
    pipelining: bool,
    text: &str,
) -> (Vec<(String, bool)>, String) {
    let up = Upstream::start(opts).await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up).with(
        "upstream",
        "pipelining",
        &pipelining.to_string(),
    ))
    .await;
    let msg = message(text);
    let rcpts = ["bob@x.example", "carol@x.example"];
    gw.send_ok("alice@example.org", &rcpts, &msg).await;
    let got = gw.expect_upstream(&up, 1).await;
    assert_eq!(got[0].rcpt_to, rcpts);
    assert!(
        got[0].data.ends_with(&msg),
        "the message verbatim after Received:"
    );
    let lines = transaction_lines(&up)
        .into_iter()
        .take(4)
        .map(|s| (s.line, s.more))
        .collect();
    (lines, gw.logs())
}

#[tokio::test]
async fn a_pipelining_upstream_gets_mail_rcpts_and_data_in_one_write() {
    let (shown, logs) = relay_two_recipients(UpstreamOptions::starttls(), true, "pipelined").await;
    let want = [
        ("MAIL FROM:<alice@example.org>", true),
        ("RCPT TO:<bob@x.example>", true),
        ("RCPT TO:<carol@x.example>", true),
        ("DATA", false),
    ]
    .map(|(l, more)| (l.to_string(), more));
    // MAIL, both RCPTs and DATA came in one write (each line had the next behind it); the
    // message itself only after the 354.
    assert_eq!(shown, want, "{logs}");
}

/// One command at a time: an upstream that does not offer PIPELINING, and one that offers it
/// to a gateway told `upstream.pipelining = false`.
#[tokio::test]
async fn without_pipelining_each_command_waits_for_its_reply() {
    let (shown, logs) = relay_two_recipients(
        UpstreamOptions::starttls().without_pipelining(),
        true,
        "lockstep",
    )
    .await;
    assert_lockstep(&shown, &logs);
    let (shown, logs) =
        relay_two_recipients(UpstreamOptions::starttls(), false, "switched off").await;
    assert_lockstep(&shown, &logs);
}

fn assert_lockstep(shown: &[(String, bool)], logs: &str) {
    assert_eq!(
        shown.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        [
            "MAIL FROM:<alice@example.org>",
            "RCPT TO:<bob@x.example>",
            "RCPT TO:<carol@x.example>",
            "DATA"
        ],
        "{logs}"
    );
    assert!(
        shown.iter().all(|s| !s.1),
        "a command was sent before the previous reply: {shown:?}"
    );
}

#[tokio::test]
async fn a_pipelined_data_accepted_without_recipients_gets_a_lone_dot() {
    // RFC 2920 §3.1: the client cannot assume DATA is refused when no RCPT was accepted. This
    // upstream answers 354 anyway; the gateway must send an empty message (a lone dot), never
    // the real one, and the connection must stay in step (the DSN then reuses it).
    let mut opts = UpstreamOptions::starttls().fault(
        Stage::Rcpt("nobody@x.example".into()),
        Fault::always(550, "5.1.1 no such user"),
    );
    opts.data_without_recipients = true;
    let up = Upstream::start(opts).await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    gw.send_ok(
        "alice@example.org",
        &["nobody@x.example"],
        &message("nobody"),
    )
    .await;
    // Only the DSN.
    let got = gw.expect_upstream(&up, 1).await;
    assert!(got[0].mail_from.is_empty(), "a DSN from <>");
    assert_eq!(got[0].rcpt_to, ["alice@example.org"]);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"),
        "{text}"
    );
    assert_eq!(
        up.connections(),
        1,
        "the dot left the connection in step, so the DSN went over it"
    );
    let lines: Vec<String> = up.commands()[0].iter().map(|s| s.line.clone()).collect();
    let data = lines
        .iter()
        .position(|l| l == "DATA")
        .expect("a pipelined DATA");
    assert_eq!(
        lines[data + 1],
        "<0 bytes of message data>",
        "the refused transaction's DATA got an empty message: {lines:?}"
    );
}

#[tokio::test]
async fn many_recipients_go_in_several_pipelined_groups() {
    // More recipients than one pipelined group holds: the later groups follow once the
    // earlier replies are read, and one refusal in a later group spares the others.
    let refused = "rcpt37@x.example";
    let up = Upstream::start(UpstreamOptions::starttls().fault(
        Stage::Rcpt(refused.into()),
        Fault::always(550, "5.1.1 no such user"),
    ))
    .await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let rcpts: Vec<String> = (0..70).map(|i| format!("rcpt{i}@x.example")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    gw.send_ok("alice@example.org", &refs, &message("many"))
        .await;
    // The message and the DSN.
    let got = gw.expect_upstream(&up, 2).await;
    let delivered = got
        .iter()
        .find(|r| r.mail_from == "alice@example.org")
        .expect("original");
    let expected: Vec<&str> = refs.iter().copied().filter(|r| *r != refused).collect();
    assert_eq!(delivered.rcpt_to, expected);
    let dsn = got.iter().find(|r| r.mail_from.is_empty()).expect("a DSN");
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains(&format!(
            "Final-Recipient: rfc822; {refused}\r\nAction: failed\r\n"
        )),
        "{text}"
    );
    let lines = transaction_lines(&up);
    let rcpt_lines: Vec<&Seen> = lines[..72]
        .iter()
        .filter(|s| s.line.starts_with("RCPT"))
        .collect();
    assert_eq!(rcpt_lines.len(), 70);
    assert!(
        rcpt_lines.iter().any(|s| !s.more) && rcpt_lines.iter().filter(|s| s.more).count() > 60,
        "pipelined in groups, with a pause for replies between them"
    );
}
