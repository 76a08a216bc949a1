//! Session conversations driven with in-memory bytes (no sockets): each test asserts the exact
//! replies and what reached the spool.

use super::*;
use crate::metrics::Metrics;
use crate::spool::Queue;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

struct Fixture {
    _dir: tempfile::TempDir,
    ctx: Arc<SessionCtx>,
    queued: mpsc::UnboundedReceiver<String>,
    _shutdown: watch::Sender<bool>,
}

fn fixture(extra_server: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cachet.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname = \"gw.test\"\nlocal_domains = [\"example.org\", \"x.example\"]\nmax_message_size = \"1KiB\"\nmax_recipients = 3\n{extra_server}\n\
             [spool]\ndir = \"spool\"\n[upstream]\nurl = \"file://out\"\n"
        ),
    )
    .unwrap();
    let rt = Runtime::load(&cfg).unwrap_or_else(|e| panic!("{e:?}"));
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let (qtx, qrx) = mpsc::unbounded_channel();
    let (stx, srx) = watch::channel(false);
    let ctx = Arc::new(SessionCtx {
        runtime: Arc::new(ArcSwap::from_pointee(rt)),
        spool,
        queued: qtx,
        shutdown: srx,
        metrics: Arc::new(Metrics::default()),
    });
    Fixture {
        _dir: dir,
        ctx,
        queued: qrx,
        _shutdown: stx,
    }
}

const LOCAL: &str = "127.0.0.1:40000";

/// Sends `input` in one write (pipelined), closes, and returns everything the server said.
async fn converse(f: &Fixture, peer: &str, input: &[u8]) -> String {
    let (mut client, server) = duplex(1 << 20);
    let session = Session::new(f.ctx.clone(), peer.parse().unwrap(), false);
    let task = tokio::spawn(async move {
        session
            .run(server, true)
            .await
            .map(|e| matches!(e, Ending::StartTls(_)))
    });
    client.write_all(input).await.unwrap();
    client.shutdown().await.unwrap();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    task.await.unwrap().unwrap();
    String::from_utf8(out).unwrap()
}

fn codes(replies: &str) -> Vec<String> {
    replies
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| l[..3].to_string())
        .collect()
}

#[tokio::test]
async fn pipelined_transaction_is_spooled_with_received_header() {
    let mut f = fixture("");
    let out = converse(
        &f,
        LOCAL,
        b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: t\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "250", "221"],
        "{out}"
    );
    assert!(out.contains("250-PIPELINING\r\n250-SIZE 1024\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"), "{out}");
    let id = f.queued.try_recv().expect("scheduler was told");
    assert!(out.contains(&format!("250 2.0.0 Ok: queued as {id}")));
    let data = f.ctx.spool.read_data(Queue::Incoming, &id).unwrap();
    let text = String::from_utf8(data).unwrap();
    assert!(
        text.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby gw.test (cachet) with ESMTP id "
        ),
        "{text}"
    );
    assert!(
        text.ends_with("\r\nSubject: t\r\n\r\n.dot\r\nbody\r\n"),
        "{text}"
    );
    let (q, env) = f.ctx.spool.find(&id).unwrap().unwrap();
    assert_eq!(
        (q, env.sender.as_str(), env.recipients[0].address.as_str()),
        (Queue::Incoming, "a@example.org", "b@example.net")
    );
}

#[tokio::test]
async fn outsiders_cannot_relay() {
    let f = fixture("");
    let out = converse(
        &f,
        "192.0.2.7:5000",
        b"EHLO x\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("550 5.7.1 Relay access denied"), "{out}");
    assert!(out.contains("503 5.5.1 Need RCPT command first"), "{out}");
}

/// A dual-stack listener ([::]) sees IPv4 clients as ::ffff:a.b.c.d; they must match IPv4 networks.
#[tokio::test]
async fn v4_mapped_clients_match_ipv4_relay_networks() {
    let f = fixture("");
    let out = converse(
        &f,
        "[::ffff:127.0.0.1]:5000",
        b"EHLO x\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(codes(&out), ["220", "250", "250", "250", "221"], "{out}");
    let out = converse(
        &f,
        "[::ffff:192.0.2.7]:5000",
        b"EHLO x\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("550 5.7.1 Relay access denied"), "{out}");
}

#[tokio::test]
async fn bare_lf_in_data_closes_without_queueing() {
    let mut f = fixture("");
    let out = converse(
        &f,
        LOCAL,
        b"EHLO x\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nhello\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nsmuggled\r\n.\r\n",
    )
    .await;
    assert!(
        out.ends_with("521 5.5.2 Bare <CR> or <LF> received; lines must end with <CR><LF>\r\n"),
        "{out}"
    );
    assert!(f.queued.try_recv().is_err(), "nothing may be queued");
    assert!(f.ctx.spool.ids(Queue::Incoming).unwrap().is_empty());
}

#[tokio::test]
async fn bare_lf_in_command_closes() {
    let f = fixture("");
    let out = converse(&f, LOCAL, b"EHLO x\nMAIL FROM:<a@x.example>\r\n").await;
    assert_eq!(codes(&out), ["220", "521"], "{out}");
}

#[tokio::test]
async fn size_limits_are_enforced() {
    let mut f = fixture("");
    let big = "x".repeat(2000);
    let input = format!(
        "EHLO x\r\nMAIL FROM:<a@x.example> SIZE=5000\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n{big}\r\n.\r\nQUIT\r\n"
    );
    let out = converse(&f, LOCAL, input.as_bytes()).await;
    assert_eq!(
        codes(&out),
        ["220", "250", "552", "250", "250", "354", "552", "221"],
        "{out}"
    );
    assert!(out.contains("552 5.3.4 Message size exceeds fixed maximum message size"));
    assert!(f.queued.try_recv().is_err());
}

#[tokio::test]
async fn sequence_and_recipient_limits() {
    let f = fixture("");
    let out = converse(
        &f,
        LOCAL,
        b"MAIL FROM:<a@x.example>\r\nEHLO x\r\nRCPT TO:<b@y.example>\r\nMAIL FROM:<a@x.example>\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<1@y.example>\r\nRCPT TO:<2@y.example>\r\nRCPT TO:<3@y.example>\r\nRCPT TO:<4@y.example>\r\nVRFY root\r\nSTARTTLS\r\nBDAT 3 LAST\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        [
            "220", "503", "250", "503", "250", "503", "250", "250", "250", "452", "252", "454",
            "502", "221"
        ],
        "{out}"
    );
}

#[tokio::test]
async fn long_line_is_refused() {
    let f = fixture("");
    let mut input = b"EHLO ".to_vec();
    input.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
    let out = converse(&f, LOCAL, &input).await;
    assert_eq!(codes(&out), ["220", "500"], "{out}");
    assert!(out.contains("500 5.5.6 Line too long"));
}

#[tokio::test]
async fn too_many_errors_closes() {
    let f = fixture("max_errors = 2");
    let out = converse(&f, LOCAL, b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n").await;
    assert_eq!(codes(&out), ["220", "500", "500", "500", "421"], "{out}");
}

#[tokio::test]
async fn starttls_discards_pipelined_commands() {
    // A server certificate so STARTTLS is offered.
    let f = {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::demo::new_ca("t").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &rcgen::Issuer::from_params(&ca.params, &ca.key))
            .unwrap();
        std::fs::write(dir.path().join("s.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("s.key"), key.serialize_pem()).unwrap();
        let extra = format!(
            "tls_cert = \"{0}/s.crt\"\ntls_key = \"{0}/s.key\"",
            dir.path().display()
        );
        let f = fixture(&extra);
        std::mem::forget(dir);
        f
    };
    let (mut client, server) = duplex(1 << 16);
    let session = Session::new(f.ctx.clone(), LOCAL.parse().unwrap(), false);
    let task = tokio::spawn(async move { session.run(server, true).await });
    client
        .write_all(b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<injected@x.example>\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("220 2.0.0 Ready to start TLS\r\n") {
        let mut buf = [0u8; 1024];
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {seen}");
        seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert!(
        seen.contains("250-STARTTLS\r\n") || seen.contains("250 STARTTLS\r\n"),
        "{seen}"
    );
    let ending = task.await.unwrap().unwrap();
    assert!(
        matches!(ending, Ending::StartTls(_)),
        "the caller must upgrade"
    );
    assert!(
        !seen.contains("2.1.0"),
        "the pipelined MAIL must not be answered: {seen}"
    );
}

/// Regression: the size limit counts each byte once, however the client's writes are split.
#[tokio::test]
async fn size_is_counted_once_across_many_reads() {
    let mut f = fixture("");
    let (client, server) = duplex(64);
    let session = Session::new(f.ctx.clone(), LOCAL.parse().unwrap(), false);
    let task = tokio::spawn(async move { session.run(server, true).await.map(|_| ()) });
    let body = format!("Subject: s\r\n\r\n{}\r\n", "y".repeat(900)); // under the 1 KiB limit
    let input = format!(
        "EHLO x\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n{body}.\r\nQUIT\r\n"
    );
    let (mut rd, mut wr) = tokio::io::split(client);
    let writer = tokio::spawn(async move {
        for piece in input.as_bytes().chunks(50) {
            wr.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        wr
    });
    let mut out = Vec::new();
    rd.read_to_end(&mut out).await.unwrap();
    let _ = writer.await.unwrap();
    task.await.unwrap().unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "250", "221"],
        "{out}"
    );
    assert!(f.queued.try_recv().is_ok());
}

/// One address, one form: what could be read two ways is refused.
#[test]
fn plain_addresses_only() {
    for ok in [
        "a@example.org",
        "first.last+tag@sub.example.org",
        "o'hara@example.org",
        "j\u{f6}rg@b\u{fc}cher.example",
        "a@[192.0.2.1]",
        "a@[IPv6:2001:db8::1]",
    ] {
        assert!(plain_address(ok), "{ok}");
    }
    for bad in [
        "bob@partner.example> ORCPT=rfc822;x@example.org",
        "john smith@example.org",
        "a@b@example.org",
        "<a@example.org>",
        "a\"b@example.org",
        "a\\b@example.org",
        "a\r@example.org",
        "a\u{7f}@example.org",
        ".a@example.org",
        "a..b@example.org",
        "a@",
        "@example.org",
        "a@exa mple.org",
        "a@example..org",
        "a@[1.2.3.4",
        "a@ex<ample.org",
        "a\u{a0}b@example.org",
        "a@b\u{2003}c.example",
        "a@-example.org",
        "a@example-.org",
    ] {
        assert!(!plain_address(bad), "{bad:?}");
    }
}

#[test]
fn declared_size_reads_any_number() {
    assert_eq!(declared_size(b"MAIL FROM:<a@b.c> SIZE=1000"), Some(1000));
    assert_eq!(
        declared_size(b"MAIL FROM:<a@b.c> BODY=8BITMIME size=7"),
        Some(7)
    );
    assert_eq!(
        declared_size(b"MAIL FROM:<a@b.c> SIZE=99999999999999999999999"),
        Some(99999999999999999999999)
    );
    assert_eq!(
        declared_size(format!("MAIL FROM:<a@b.c> SIZE={}", "9".repeat(50)).as_bytes()),
        Some(u128::MAX)
    );
    assert_eq!(
        declared_size(b"MAIL FROM:<a@b.c> SIZE=12x"),
        Some(u128::MAX)
    );
    assert_eq!(declared_size(b"MAIL FROM:<a@b.c>"), None);
    assert_eq!(declared_size(b"MAIL FROM:<size=5@b.c>"), None);
}

/// `[inbound]` for the fixture: the MTA at 10.0.0.5 (and loopback) may hand mail in.
const INBOUND: &str = "[inbound]\nlisten = [\"127.0.0.1:2526\"]\nrelay_networks = [\"10.0.0.5/32\"]\n\
                       upstream = \"file://in\"\ndecrypt = false\nverify = false\nharvest = false\n";

/// Like `converse`, on the inbound listener.
async fn converse_inbound(f: &Fixture, peer: &str, input: &[u8]) -> String {
    let (mut client, server) = duplex(1 << 20);
    let session = Session::new(f.ctx.clone(), peer.parse().unwrap(), false)
        .with_direction(Direction::Inbound);
    let task = tokio::spawn(async move { session.run(server, true).await.map(|_| ()) });
    client.write_all(input).await.unwrap();
    client.shutdown().await.unwrap();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    task.await.unwrap().unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn inbound_takes_any_sender_for_local_recipients_only_and_records_the_direction() {
    let mut f = fixture(INBOUND);
    let out = converse_inbound(
        &f,
        "10.0.0.5:40000",
        b"EHLO mx.example.org\r\nMAIL FROM:<stranger@partner.test>\r\nRCPT TO:<b@elsewhere.test>\r\n\
          RCPT TO:<Bob@Example.ORG>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nSubject: in\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        [
            "220", "250", "250", "550", "250", "250", "354", "250", "221"
        ],
        "{out}"
    );
    assert!(
        out.contains("550 5.7.1 Relay access denied: not a local recipient"),
        "{out}"
    );
    let id = f.queued.try_recv().expect("scheduler was told");
    let (q, env) = f.ctx.spool.find(&id).unwrap().unwrap();
    assert_eq!(q, Queue::Incoming);
    assert_eq!(env.direction, Direction::Inbound);
    assert_eq!(env.sender, "stranger@partner.test");
    // The same recipient twice is one recipient.
    let rcpts: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["Bob@Example.ORG"]);
    assert_eq!(env.submitter, None);
}

#[tokio::test]
async fn inbound_refuses_clients_outside_its_relay_networks_before_the_banner() {
    let f = fixture(INBOUND);
    // Loopback may relay outbound (server.relay_networks) but is not an inbound MTA here.
    let out = converse_inbound(&f, "127.0.0.1:40000", b"EHLO x\r\nQUIT\r\n").await;
    assert_eq!(
        out,
        "554 5.7.1 Access denied: not an MTA allowed to hand mail in here\r\n"
    );
    // A dual-stack listener sees the MTA as ::ffff:10.0.0.5: it matches the IPv4 network.
    let out = converse_inbound(&f, "[::ffff:10.0.0.5]:40000", b"EHLO x\r\nQUIT\r\n").await;
    assert_eq!(codes(&out), ["220", "250", "221"], "{out}");
}

#[tokio::test]
async fn inbound_offers_no_auth_and_outbound_envelopes_stay_outbound() {
    let mut f = fixture(INBOUND);
    let out = converse_inbound(
        &f,
        "10.0.0.5:40000",
        b"EHLO x\r\nAUTH PLAIN AHVzZXIAcGFzcw==\r\nQUIT\r\n",
    )
    .await;
    assert!(!out.contains("AUTH PLAIN"), "{out}");
    assert!(out.contains("502 5.5.1"), "{out}");
    let out = converse(
        &f,
        LOCAL,
        b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n\r\nx\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("queued as"), "{out}");
    let id = f.queued.try_recv().expect("scheduler was told");
    let (_, env) = f.ctx.spool.find(&id).unwrap().unwrap();
    assert_eq!(env.direction, Direction::Outbound);
}

#[test]
fn envelopes_without_a_direction_read_as_outbound() {
    let old = r#"{"id":"A1","seq":1,"sender":"a@x","recipients":[],"received":0,"client_ip":"127.0.0.1",
                 "helo":"h","size":0,"attempts":0,"next_attempt":0}"#;
    let env: Envelope = serde_json::from_str(old).unwrap();
    assert_eq!(env.direction, Direction::Outbound);
    let mut inbound = env.clone();
    inbound.direction = Direction::Inbound;
    let text = serde_json::to_string(&inbound).unwrap();
    assert!(text.contains("\"direction\":\"inbound\""), "{text}");
}
