//! SMTP AUTH: clients outside relay_networks relay only after authenticating, and only over TLS.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

#[tokio::test]
async fn outsiders_relay_only_after_auth_over_tls() {
    let pki = TestPki::new("gateway");
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let line = users_line("relay", "correct horse");
    assert!(line.starts_with("relay:$pbkdf2-sha256$"), "{line}");
    let gw = Gateway::start(
        GatewayConfig::new()
            .with_tls(&pki)
            .upstream(&up)
            // Loopback is not a relay network here: this client is an outsider.
            .with("server", "relay_networks", "[\"192.0.2.0/24\"]")
            .with("server", "auth_users", "\"users\"")
            .file("users", line)
            // The account may send as any example.org address (without this entry only as
            // "relay", its user name).
            .raw("[[submitter]]\nname = \"relay-account\"\nuser = \"relay\"\nsenders = [\"*@example.org\"]\n"),
    )
    .await;
    let (mut c, ehlo) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert!(!ehlo.1.contains("AUTH"), "no AUTH before TLS: {ehlo:?}");
    assert_eq!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            B64.encode("\0relay\0correct horse")
        ))
        .await
        .unwrap()
        .0,
        538
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.unwrap().0, 250);
    assert_eq!(
        c.cmd("RCPT TO:<b@x.example>").await.unwrap(),
        (550, "550 5.7.1 Relay access denied".to_string())
    );
    assert_eq!(c.cmd("RSET").await.unwrap().0, 250);

    c.starttls(&pki.ca_path(), "localhost").await.unwrap();
    let ehlo = c.cmd("EHLO client").await.unwrap();
    assert!(ehlo.1.contains("AUTH PLAIN LOGIN"), "{ehlo:?}");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", B64.encode("\0relay\0wrong")))
            .await
            .unwrap()
            .0,
        535
    );
    assert_eq!(
        c.cmd("AUTH LOGIN").await.unwrap(),
        (334, "334 VXNlcm5hbWU6".to_string())
    );
    assert_eq!(
        c.cmd(&B64.encode("relay")).await.unwrap(),
        (334, "334 UGFzc3dvcmQ6".to_string())
    );
    assert_eq!(c.cmd(&B64.encode("correct horse")).await.unwrap().0, 235);
    let msg = b"From: a@example.org\r\nTo: b@x.example\r\nSubject: authed\r\n\r\nhi\r\n";
    assert_eq!(
        c.send_message("a@example.org", &["b@x.example"], msg)
            .await
            .unwrap()
            .0,
        250
    );
    let got = up.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.contains("with ESMTPSA id "),
        "RFC 3848 keyword: {text}"
    );
    assert!(got[0].data.ends_with(msg));
    assert!(
        !gw.logs().contains("correct horse"),
        "passwords never reach the log"
    );
}

/// Iterations of a `user:$pbkdf2-sha256$ITER$SALT$HASH` line.
fn iterations(line: &str) -> u32 {
    line.trim().split('$').nth(2).unwrap().parse().unwrap()
}

#[test]
fn passwd_writes_at_least_600000_iterations() {
    // OWASP 2023 for PBKDF2-HMAC-SHA256.
    let line = users_line("relay", "correct horse");
    assert!(iterations(&line) >= 600_000, "{line}");
}

#[test]
fn passwd_refuses_a_user_name_that_would_break_the_file() {
    for user in ["a:b", "ev\nil", ""] {
        let mut child = cachet_command()
            .args(["passwd", user])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "pw").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{user:?} accepted");
        assert!(out.stdout.is_empty(), "{user:?}: no line printed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("user name"), "{user:?}: {err}");
    }
}

#[test]
fn check_lists_every_users_line_below_the_iteration_floor() {
    let pki = TestPki::new("gateway");
    let good = users_line("fresh", "pw");
    // A line from before the floor (100,000 was cachet's old default); any base64 will do.
    let weak = |user: &str, iter: u32| {
        format!(
            "{user}:$pbkdf2-sha256${iter}${}${}\n",
            B64.encode(b"0123456789abcdef"),
            B64.encode([7u8; 32])
        )
    };
    let mut cfg = GatewayConfig::new()
        .with_tls(&pki)
        .with("server", "auth_users", "\"users\"")
        .file(
            "users",
            format!(
                "# relay users\n{}{good}{}",
                weak("legacy", 100_000),
                weak("older", 599_999)
            ),
        );
    let dir = tempfile::tempdir().unwrap();
    let config = cfg.write_to(dir.path());
    let out = cachet_command()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    let users = dir.path().join("users");
    for (line, user, iter) in [(2, "legacy", "100000"), (4, "older", "599999")] {
        let want = format!("{}:{line}:", users.display());
        assert!(
            text.lines().any(|l| l.starts_with(&want)
                && l.contains("server.auth_users")
                && l.contains(&format!("\"{user}\""))
                && l.contains(iter)
                && l.contains("600000")
                && l.contains("cachet passwd")),
            "{user}: {text}"
        );
    }
    assert!(!text.contains("fresh"), "{text}");
    assert!(text.contains("2 problem(s) found"), "{text}");
}

/// A gateway where loopback clients must authenticate, logging in `format`.
async fn auth_gateway(pki: &TestPki, format: &str) -> Gateway {
    Gateway::start(
        GatewayConfig::new()
            .with_tls(pki)
            .with("server", "relay_networks", "[\"192.0.2.0/24\"]")
            .with("server", "auth_users", "\"users\"")
            .with("log", "format", &toml_str(format))
            .file("users", users_line("relay", "correct horse")),
    )
    .await
}

/// `AUTH PLAIN` for `user`/`pass` over a fresh TLS session; returns the reply.
async fn auth_plain(gw: &Gateway, pki: &TestPki, user: &str, pass: &str) -> (u16, String) {
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    c.starttls(&pki.ca_path(), "localhost").await.unwrap();
    assert_eq!(c.cmd("EHLO client").await.unwrap().0, 250);
    c.cmd(&format!(
        "AUTH PLAIN {}",
        B64.encode(format!("\0{user}\0{pass}"))
    ))
    .await
    .unwrap()
}

const FORGED: &str = "eve\r\nERROR cachet: authenticated user=\"admin\"\x1b[2J";

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_reply() {
    let pki = TestPki::new("gateway");
    let gw = auth_gateway(&pki, "text").await;
    let refused = (
        535,
        "535 5.7.8 Authentication credentials invalid".to_string(),
    );
    assert_eq!(
        auth_plain(&gw, &pki, "relay", "wrong").await,
        refused,
        "{}",
        gw.logs()
    );
    assert_eq!(auth_plain(&gw, &pki, "nobody", "wrong").await, refused);
    assert_eq!(auth_plain(&gw, &pki, "relay", "correct horse").await.0, 235);
}

#[tokio::test]
async fn auth_user_names_are_logged_escaped_in_text_logs() {
    let pki = TestPki::new("gateway");
    let gw = auth_gateway(&pki, "text").await;
    assert_eq!(auth_plain(&gw, &pki, FORGED, "x").await.0, 535);
    let escaped = r#""eve\r\nERROR cachet: authenticated user=\"admin\"\u{1b}[2J""#;
    assert!(
        gw.wait_log(escaped, Duration::from_secs(20)).await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    assert!(
        !logs.contains("eve\r") && !logs.contains("eve\n") && !logs.contains("\x1b[2J"),
        "raw control characters reached the log: {logs}"
    );
    assert!(
        !logs.lines().any(|l| l.starts_with("ERROR cachet")),
        "forged log line: {logs}"
    );
}

#[tokio::test]
async fn auth_user_names_are_one_json_string_in_json_logs() {
    let pki = TestPki::new("gateway");
    let gw = auth_gateway(&pki, "json").await;
    assert_eq!(auth_plain(&gw, &pki, FORGED, "x").await.0, 535);
    assert!(
        gw.wait_log("authentication failed", Duration::from_secs(20))
            .await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    let failed: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.contains("authentication failed"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(failed.len(), 1, "{logs}");
    assert_eq!(failed[0]["user"], FORGED, "{logs}");
    assert!(
        !logs.contains("eve\r") && !logs.contains("\x1b[2J"),
        "{logs}"
    );
}
