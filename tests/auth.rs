//! SMTP AUTH: clients outside relay_networks relay only after authenticating, and only over TLS.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

fn users_line(user: &str, password: &str) -> String {
    let mut child = cachet_command()
        .args(["passwd", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

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
