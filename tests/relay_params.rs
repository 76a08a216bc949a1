//! What the relay asks of the upstream in MAIL FROM: a sealed (signed or encrypted) copy is 7-bit and
//! never asks for `BODY=8BITMIME`, so an upstream without 8BITMIME takes it; a DSN to a sender who used
//! SMTPUTF8 goes out with `SMTPUTF8`.

mod common;

use common::*;

fn rfc9216(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/interop/rfc9216/");
    std::fs::read_to_string(format!("{path}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// MAIL with the given parameters, the recipients, DATA and `data` dot-stuffed; the final reply.
async fn send_with_params(
    c: &mut SmtpClient,
    mail: &str,
    rcpts: &[&str],
    data: &[u8],
) -> (u16, String) {
    let r = c.cmd(mail).await.unwrap();
    assert_eq!(r.0, 250, "{mail}: {r:?}");
    for rcpt in rcpts {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await.unwrap();
        assert_eq!(r.0, 250, "{rcpt}: {r:?}");
    }
    assert_eq!(c.cmd("DATA").await.unwrap().0, 354);
    let mut body = common::client::dot_stuff(data);
    body.extend_from_slice(b".\r\n");
    c.send_raw(&body).await.unwrap();
    c.read_reply().await.unwrap()
}

#[tokio::test]
async fn signed_8bit_message_goes_to_an_upstream_without_8bitmime() {
    let up = Upstream::start(UpstreamOptions::starttls().without_8bitmime()).await;
    let gw = Gateway::start(
        GatewayConfig::new()
            .upstream(&up)
            .raw("[keys]\ndir = \"keys\"\n[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n")
            .file(
                "keys/alice@smime.example.pem",
                format!("{}{}", rfc9216("alice.sign.key"), rfc9216("alice.sign.crt")),
            )
            .file("trust/ca.pem", rfc9216("ca.rsa.crt"))
            .file("recipients/bob.crt", rfc9216("bob.encrypt.crt"))
            .with("policy", "sign", &toml_str("required")),
    )
    .await;
    let msg = "From: Alice <alice@smime.example>\r\nTo: bob@x.example\r\nSubject: 8bit\r\n\
               MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
               Content-Transfer-Encoding: 8bit\r\n\r\nGr\u{fc}\u{df}e aus K\u{f6}ln\r\n";
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let r = send_with_params(
        &mut c,
        "MAIL FROM:<alice@smime.example> BODY=8BITMIME",
        &["bob@x.example"],
        msg.as_bytes(),
    )
    .await;
    assert_eq!(r.0, 250, "{r:?}");
    let got = gw.expect_upstream(&up, 1).await;
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(data.contains("multipart/signed"), "{data}");
    assert!(data.is_ascii(), "a sealed copy is 7-bit:\n{data}");
    let mails = up.mail_commands();
    assert!(
        mails
            .iter()
            .all(|m| !m.to_ascii_uppercase().contains("BODY=")),
        "{mails:?}"
    );
}

#[tokio::test]
async fn dsn_to_an_smtputf8_sender_is_sent_with_smtputf8() {
    let up = Upstream::start(UpstreamOptions::starttls().fault(
        Stage::Rcpt("nobody@x.example".into()),
        Fault::always(550, "5.1.1 no such user"),
    ))
    .await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let sender = "j\u{f6}rg@example.org";
    let msg = format!(
        "From: {sender}\r\nTo: nobody@x.example\r\nSubject: f\u{fc}r dich\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nhallo\r\n"
    );
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let r = send_with_params(
        &mut c,
        &format!("MAIL FROM:<{sender}> SMTPUTF8 BODY=8BITMIME"),
        &["nobody@x.example"],
        msg.as_bytes(),
    )
    .await;
    assert_eq!(r.0, 250, "{r:?}");
    // The original is refused (550); the DSN goes back to the sender through the same upstream.
    let got = gw.expect_upstream(&up, 1).await;
    assert_eq!(got[0].mail_from, "");
    assert_eq!(got[0].rcpt_to, [sender]);
    let dsn_mail: Vec<String> = up
        .mail_commands()
        .into_iter()
        .filter(|m| m.starts_with("MAIL FROM:<>"))
        .collect();
    assert!(
        !dsn_mail.is_empty() && dsn_mail.iter().all(|m| m.contains("SMTPUTF8")),
        "{dsn_mail:?}"
    );
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(data.contains("message/global-delivery-status"), "{data}");
}
