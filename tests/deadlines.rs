//! Every network wait has a deadline. Inbound: a client that opens a TLS connection (implicit, or
//! after STARTTLS) and then says nothing loses its connection slot. Outbound: an upstream that never
//! greets, stops answering after MAIL or stops reading during DATA leads to a deferral within
//! `upstream.timeout`, and the message is delivered once the upstream is healthy again.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);
/// Far longer than any deadline under test: a peer that is "gone".
const FOREVER: Duration = Duration::from_secs(600);

/// One connection slot, and a silent client loses its handshake after 2 s.
fn one_slot(pki: &TestPki) -> GatewayConfig {
    GatewayConfig::new()
        .with_tls(pki)
        .with_smtps()
        .with("server", "max_connections", "1")
        .with("server", "idle_timeout", &toml_str("2s"))
}

/// The first reply line's code from a fresh plaintext connection (421 when no slot is free).
async fn banner_code(addr: SocketAddr) -> u16 {
    let Ok(Ok(mut c)) =
        tokio::time::timeout(Duration::from_secs(5), SmtpClient::connect(addr)).await
    else {
        return 0;
    };
    match tokio::time::timeout(Duration::from_secs(5), c.read_reply()).await {
        Ok(Ok(r)) => r.0,
        _ => 0,
    }
}

/// Polls fresh connections until one gets `want` as its banner code, or `WAIT` passed.
async fn wait_banner(addr: SocketAddr, want: u16) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if banner_code(addr).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Connects to the implicit-TLS port and says nothing. Returns once the gateway closed the
/// connection without a byte (its handshake deadline), or `Err` with why not. A connection refused
/// with `421` (the slot was still taken, e.g. by the harness's readiness probe) is tried again.
async fn silent_tls_client_is_dropped(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut buf = [0u8; 512];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return Err("still connected: the handshake has no deadline".into()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(n)) if buf[..n].starts_with(b"421") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Ok(n)) => {
                return Err(format!(
                    "unexpected bytes: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ));
            }
        }
    }
}

#[tokio::test]
async fn silent_implicit_tls_client_loses_its_slot() {
    let pki = TestPki::new("gateway");
    let gw = Gateway::start(one_slot(&pki)).await;
    if let Err(e) = silent_tls_client_is_dropped(gw.smtps_addr().unwrap()).await {
        panic!("{e}\n{}", gw.logs());
    }
    assert!(
        gw.wait_log("TLS handshake timed out", WAIT).await,
        "{}",
        gw.logs()
    );
    // The slot is free again.
    assert!(wait_banner(gw.addr(), 220).await, "{}", gw.logs());
}

#[tokio::test]
async fn silent_client_after_starttls_loses_its_slot() {
    let pki = TestPki::new("gateway");
    let gw = Gateway::start(one_slot(&pki)).await;
    // The harness's readiness probe may still hold the only slot for a moment.
    let deadline = Instant::now() + WAIT;
    let mut c = loop {
        let mut c = SmtpClient::connect(gw.addr()).await.unwrap();
        if c.read_reply().await.unwrap().0 == 220 {
            break c;
        }
        assert!(Instant::now() < deadline, "no free slot\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(c.cmd("EHLO silent.test").await.unwrap().0, 250);
    assert_eq!(c.cmd("STARTTLS").await.unwrap().0, 220);
    // Now say nothing: no ClientHello.
    assert!(
        wait_banner(gw.addr(), 220).await,
        "a client that never finishes STARTTLS kept the only slot\n{}",
        gw.logs()
    );
    assert!(
        gw.wait_log("TLS handshake timed out", WAIT).await,
        "{}",
        gw.logs()
    );
}

/// A gateway relaying to `up` with a 3 s upstream timeout.
fn impatient(up: &Upstream) -> GatewayConfig {
    GatewayConfig::new()
        .upstream(up)
        .with("upstream", "timeout", &toml_str("3s"))
        .with("server", "max_message_size", &toml_str("64MiB"))
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: b@x.example\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n\r\nbody\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn upstream_that_never_greets_is_deferred_then_delivered() {
    let up = Upstream::start(
        UpstreamOptions::starttls().fault(Stage::Greeting, Fault::stall(Some(1), FOREVER)),
    )
    .await;
    let gw = Gateway::start(impatient(&up)).await;
    let msg = message("silent-greeting");
    gw.send_ok("a@example.org", &["b@x.example"], &msg).await;
    assert!(
        gw.wait_log("upstream sent no greeting (timed out)", WAIT)
            .await,
        "{}",
        gw.logs()
    );
    let got = gw.expect_upstream(&up, 1).await;
    assert!(got[0].data.ends_with(&msg));
    assert_eq!(up.connections(), 2, "one silent connection, one delivery");
}

#[tokio::test]
async fn upstream_that_stops_answering_after_mail_is_deferred_then_delivered() {
    let up = Upstream::start(
        UpstreamOptions::starttls().fault(Stage::Mail, Fault::stall(Some(1), FOREVER)),
    )
    .await;
    let gw = Gateway::start(impatient(&up)).await;
    let msg = message("silent-mail");
    gw.send_ok("a@example.org", &["b@x.example"], &msg).await;
    assert!(
        gw.wait_log("upstream timed out", WAIT).await,
        "{}",
        gw.logs()
    );
    let got = gw.expect_upstream(&up, 1).await;
    assert!(got[0].data.ends_with(&msg));
}

#[tokio::test]
async fn upstream_that_stops_reading_during_data_is_deferred_then_delivered() {
    let up = Upstream::start(
        UpstreamOptions::starttls().fault(Stage::Data, Fault::stall(Some(1), FOREVER)),
    )
    .await;
    let gw = Gateway::start(impatient(&up)).await;
    // Far more than the socket buffers on both sides hold, so the gateway's writes must block.
    let mut msg = message("stalled-data");
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    while msg.len() < 24 << 20 {
        msg.extend_from_slice(line);
    }
    gw.send_ok("a@example.org", &["b@x.example"], &msg).await;
    assert!(
        gw.wait_log("upstream timed out during DATA", WAIT).await,
        "{}",
        gw.logs()
    );
    let got = gw.expect_upstream(&up, 1).await;
    assert!(got[0].data.ends_with(&msg));
}

/// A client that pipelines commands but never reads the replies fills its own receive window;
/// the gateway's writes then block. They have a deadline too (`server.idle_timeout`): the slot
/// comes free and the next client is greeted.
#[tokio::test]
async fn client_that_never_reads_replies_loses_its_slot() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start(
        GatewayConfig::new()
            .with("server", "max_connections", "1")
            .with("server", "idle_timeout", &toml_str("2s")),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    // Write NOOPs (never reading) until our own writes stall: both socket buffers are full.
    let chunk = b"NOOP\r\n".repeat(10_000);
    let started = Instant::now();
    let mut sent = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            // Stalled (or closed by the gateway): the gateway is stuck writing or gave up.
            Err(_) | Ok(Err(_)) => break,
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{sent} bytes and the writes never stalled"
        );
    }
    // The stalled client must not keep the only slot.
    assert!(
        wait_banner(gw.addr(), 220).await,
        "the slot never came free after {sent} bytes of unread pipelining\n{}",
        gw.logs()
    );
    drop(s);
}
