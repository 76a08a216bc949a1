//! Upstream faults against the real binary (issue 14): a connection reset in the middle of DATA, a
//! TLS handshake failure, a certificate that turns untrusted mid-run, 421 at the greeting, an
//! upstream that sends one byte per second, an upstream that closes after MAIL.
//!
//! Every row runs the same scenario. One message goes to three recipients: `bob@smime.example`,
//! whose rule says `encrypt = "required"` (he has a certificate), and two plaintext recipients.
//! That makes two copies, delivered one after the other. The upstream takes one message per
//! connection, and the fault lets the first copy through and hits the second (`Fault::after(1)`),
//! twice, before the upstream is healthy again. So every row has a recipient that already got the
//! message while another is deferred, and the checks are the same for all:
//! - deferred: the gateway logged the fault's reason and the scripted faults were all used;
//! - retried and delivered once healthy: every recipient got the message;
//! - never twice: across every attempt, each recipient was accepted exactly once;
//! - never in plaintext: every DATA transfer (even the one cut off) went over TLS, no MAIL, RCPT
//!   or DATA went outside TLS, and no transfer to bob ever carried the plaintext body.
//!
//! Each test prints its figure (`FIGURE ...`, seen with `--nocapture`): the time from `250` to the
//! last delivery, the upstream connections and DATA transfers it took.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Long enough for retries (1 s, 2 s, 2 s, ...) plus 3 s timeouts on a loaded machine.
const WAIT: Duration = Duration::from_secs(60);
const SENDER: &str = "alice@example.org";
/// `encrypt = "required"`: must never receive the message in the clear.
const BOB: &str = "bob@smime.example";
const CAROL: &str = "carol@x.example";
const DAVE: &str = "dave@x.example";
/// How often the fault hits before the upstream is healthy again.
const FAULTS: u32 = 2;

fn rfc9216(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/interop/rfc9216")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Relays to `up` with a 3 s upstream timeout; bob's domain must be encrypted.
fn gateway(up: &Upstream) -> GatewayConfig {
    GatewayConfig::new()
        .upstream(up)
        .with("upstream", "timeout", &toml_str("3s"))
        .raw(
            r#"[certificates]
dir = "recipients"
trust = ["trust/ca.pem"]

[[rule]]
name = "partner: encrypted or not at all"
to = ["*@smime.example"]
encrypt = "required"
"#,
        )
        .file("recipients/bob.crt", rfc9216("bob.encrypt.crt"))
        .file("trust/ca.pem", rfc9216("ca.rsa.crt"))
}

/// The plaintext body carries `marker`; about 64 KiB, so a transfer can be cut in the middle.
fn message(marker: &str) -> Vec<u8> {
    // The marker is in the body only: the header stays outside the encryption (RFC 8551 §3.1).
    let mut m = format!(
        "From: {SENDER}\r\nTo: {BOB}, {CAROL}, {DAVE}\r\nSubject: an upstream fault\r\n\
         \r\n{marker}\r\n"
    )
    .into_bytes();
    while m.len() < 64 * 1024 {
        m.extend_from_slice(format!("{marker} line of the body, to make it long\r\n").as_bytes());
    }
    m
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The scenario of every row: `fault` at `stage` (after one clean pass, `FAULTS` times), then
/// healthy. `reason` is what the gateway must log for the deferral.
async fn survives(name: &str, stage: Stage, fault: Fault, reason: &str) {
    let stage_is_data = stage == Stage::Data;
    let mut opts = UpstreamOptions::starttls().fault(stage.clone(), fault.after(1));
    opts.close_after_message = true;
    let up = Upstream::start(opts).await;
    let gw = Gateway::start(gateway(&up)).await;
    let marker = format!("SECRET-BODY-{name}");
    let started = Instant::now();
    gw.send_ok(SENDER, &[BOB, CAROL, DAVE], &message(&marker))
        .await;

    // Delivered once healthy: every recipient, by the deadline.
    let deadline = Instant::now() + WAIT;
    let accepted = |up: &Upstream| -> Vec<String> {
        up.received()
            .iter()
            .flat_map(|r| r.rcpt_to.iter().map(|a| a.to_ascii_lowercase()))
            .collect()
    };
    while [BOB, CAROL, DAVE]
        .iter()
        .any(|r| !accepted(&up).iter().any(|a| a == r))
    {
        assert!(
            Instant::now() < deadline,
            "{name}: not everyone got the message within {WAIT:?}: {:?}\n{}",
            accepted(&up),
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();

    // Deferred: the fault hit as often as scripted, and the gateway said why.
    assert_eq!(
        up.faults().remaining(stage),
        Some(Some(0)),
        "{name}: the fault did not hit {FAULTS} times\n{}",
        gw.logs()
    );
    let logs = gw.logs();
    assert!(
        logs.contains(reason),
        "{name}: no deferral with {reason:?}\n{logs}"
    );

    // Never twice: each recipient accepted exactly once over all attempts. The scheduler
    // removes the message only after the last recipient; wait for that so a duplicate sent
    // after the last expected delivery would be seen too.
    assert!(
        gw.wait_log("done", WAIT).await,
        "{name}: the message was never finished\n{logs}"
    );
    let accepted = accepted(&up);
    for r in [BOB, CAROL, DAVE] {
        assert_eq!(
            accepted.iter().filter(|a| *a == r).count(),
            1,
            "{name}: {r} accepted {accepted:?}\n{logs}"
        );
    }

    // Never in plaintext: no transaction outside TLS, no transfer to bob with the plaintext.
    for line in up.plaintext_commands().concat() {
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        assert!(
            verb == "EHLO" || verb == "STARTTLS" || verb.starts_with('<'),
            "{name}: sent outside TLS: {line}"
        );
    }
    let attempts = up.data_attempts();
    for a in &attempts {
        assert!(a.tls, "{name}: a DATA transfer outside TLS");
        if a.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(BOB)) {
            assert!(
                !contains(&a.data, &marker),
                "{name}: bob's transfer carried the plaintext"
            );
            assert!(
                !a.complete || contains(&a.data, "application/pkcs7-mime"),
                "{name}: bob's copy is not S/MIME:\n{}",
                String::from_utf8_lossy(&a.data)
            );
            assert_eq!(a.rcpt_to.len(), 1, "{name}: bob shares a copy");
        }
    }
    let cut = attempts.iter().filter(|a| !a.complete).count();
    if stage_is_data {
        assert_eq!(cut as u32, FAULTS, "{name}: transfers cut off");
    }
    println!(
        "FIGURE fault_upstream::{name}: all delivered {:.1} s after 250; {} upstream connections, \
         {} DATA transfers ({cut} cut off); each recipient once; never in plaintext",
        took.as_secs_f64(),
        up.connections(),
        attempts.len(),
    );
}

#[tokio::test]
async fn connection_reset_in_the_middle_of_data() {
    survives(
        "reset_mid_data",
        Stage::Data,
        Fault::reset_after(Some(FAULTS), 16 * 1024),
        // "during DATA" when the reset stops our writes, "... (after the end of DATA)" when the
        // rest of the message still fitted in the socket buffers and only the final reply failed.
        "connection failure",
    )
    .await;
}

#[tokio::test]
async fn tls_handshake_failure() {
    survives(
        "tls_handshake_failure",
        Stage::Handshake,
        Fault::handshake_failure(Some(FAULTS)),
        "TLS failure",
    )
    .await;
}

#[tokio::test]
async fn certificate_turns_untrusted_mid_run() {
    survives(
        "untrusted_certificate_mid_run",
        Stage::Handshake,
        Fault::untrusted_certificate(Some(FAULTS)),
        "UnknownIssuer",
    )
    .await;
}

#[tokio::test]
async fn greeting_421() {
    survives(
        "greeting_421",
        Stage::Greeting,
        Fault::times(FAULTS, 421, "4.3.2 too busy, come back later"),
        "upstream greeting: 421 4.3.2 too busy",
    )
    .await;
}

#[tokio::test]
async fn upstream_sending_one_byte_per_second() {
    survives(
        "one_byte_per_second",
        Stage::Greeting,
        Fault::trickle(Some(FAULTS), Duration::from_secs(1)),
        "upstream sent no greeting (timed out)",
    )
    .await;
}

#[tokio::test]
async fn upstream_closing_after_mail() {
    survives(
        "close_after_mail",
        Stage::Mail,
        Fault::disconnect(Some(FAULTS)),
        // Not mail-send's bare "UnparseableReply": the queue and any DSN show this text.
        "upstream closed the connection or sent no valid reply (after MAIL FROM)",
    )
    .await;
}
