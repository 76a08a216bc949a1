//! S/MIME through the running gateway, checked by OpenSSL on the bytes the upstream received:
//! sign + encrypt with the RFC 9216 identities, Bcc isolation, required encryption refused at
//! RCPT, hold and release, and the algorithm rules.

mod common;
mod smime_common;

use common::*;
use smime_common::{Gpgsm, openssl_decrypt, openssl_print, openssl_verify, read, rfc9216};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const CANARY: &str = "CANARY-7f3a9b-do-not-leak";

/// Alice can sign; Bob (and optionally Alice) have encryption certificates; the RFC 9216 CA is trusted.
fn smime_config(up: &Upstream, alice_can_receive: bool) -> GatewayConfig {
    let mut c = GatewayConfig::new()
        .upstream(up)
        .raw("[keys]\ndir = \"keys\"\n[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n")
        .file("keys/alice@smime.example.pem", format!("{}{}", read("alice.sign.key"), read("alice.sign.crt")))
        .file("recipients/bob.crt", read("bob.encrypt.crt"))
        .file("trust/ca.pem", read("ca.rsa.crt"));
    if alice_can_receive {
        c = c.file("recipients/alice.crt", read("alice.encrypt.crt"));
    }
    c
}

fn message(to: &str, cc: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@smime.example>\r\nTo: {to}\r\nCc: {cc}\r\nSubject: quarterly\r\nMessage-ID: <q1@smime.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         {CANARY}\r\nGr\u{fc}\u{df}e aus K\u{f6}ln\r\n"
    )
    .into_bytes()
}

fn bob_decrypt(data: &[u8]) -> Vec<u8> {
    let d = rfc9216();
    openssl_decrypt(data, &d.join("bob.encrypt.crt"), &d.join("bob.decrypt.key"))
}

fn header_value(data: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(data);
    let head = &text[..text.find("\r\n\r\n").unwrap_or(text.len())];
    head.split("\r\n")
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn signed_then_encrypted_message_decrypts_and_verifies_with_openssl() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw =
        Gateway::start(smime_config(&up, false).with("log", "audit_file", "\"audit.jsonl\"")).await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let msg = message("Bob <bob@smime.example>", "nobody-else@smime.example");
    let r = c
        .send_message("alice@smime.example", &["bob@smime.example"], &msg)
        .await
        .unwrap();
    assert_eq!(r.0, 250, "{r:?}");
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    let data = &got[0].data;
    assert!(
        !String::from_utf8_lossy(data).contains(CANARY),
        "plaintext left the gateway"
    );
    assert!(
        header_value(data, "Content-Type")
            .contains("application/pkcs7-mime; smime-type=enveloped-data"),
        "{}",
        String::from_utf8_lossy(data)
    );
    assert_eq!(
        header_value(data, "Subject"),
        "Subject: quarterly",
        "outer headers stay outside"
    );
    assert!(
        openssl_print(data).contains("aes-256-cbc"),
        "default cipher"
    );
    let inner = bob_decrypt(data);
    let inner_text = String::from_utf8_lossy(&inner);
    assert!(
        inner_text
            .contains("multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256"),
        "{inner_text}"
    );
    let content = openssl_verify(&inner, None);
    let content = String::from_utf8_lossy(&content);
    assert!(content.contains(CANARY), "{content}");
    assert!(
        content.contains("Content-Transfer-Encoding: quoted-printable")
            || content.contains("base64"),
        "8bit re-encoded before signing: {content}"
    );
    // The audit trail names the decision, never the content.
    let audit = std::fs::read_to_string(gw.dir().join("audit.jsonl")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(rec["recipients"][0], "bob@smime.example");
    assert_eq!(rec["message_id"], "q1@smime.example");
    assert_eq!(rec["algorithm"], "aes256-cbc");
    assert!(
        rec["signer"].as_str().unwrap().len() == 64
            && rec["encrypted_to"][0].as_str().unwrap().len() == 64,
        "{rec}"
    );
    assert!(
        rec["replies"][0].as_str().unwrap().starts_with("250"),
        "{rec}"
    );
    assert!(!audit.contains(CANARY));
}

#[tokio::test]
async fn a_bcc_recipient_gets_a_copy_of_their_own() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(smime_config(&up, true)).await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    // Alice Bcc's herself: she is in the envelope but not in To/Cc.
    let msg = message("bob@smime.example", "carol@plain.example");
    let r = c
        .send_message(
            "alice@smime.example",
            &[
                "bob@smime.example",
                "carol@plain.example",
                "alice@smime.example",
            ],
            &msg,
        )
        .await
        .unwrap();
    assert_eq!(r.0, 250);
    let got = up.wait_for(3, WAIT).await;
    assert_eq!(
        got.len(),
        3,
        "bob's encrypted copy, carol's signed copy, alice's own: {}",
        gw.logs()
    );
    let bob = got
        .iter()
        .find(|r| r.rcpt_to == ["bob@smime.example"])
        .expect("bob alone");
    let alice = got
        .iter()
        .find(|r| r.rcpt_to == ["alice@smime.example"])
        .expect("alice alone");
    let carol = got
        .iter()
        .find(|r| r.rcpt_to == ["carol@plain.example"])
        .expect("carol, no certificate");
    let serial = |name: &str| -> String {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(rfc9216().join(name))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("serial=")
            .to_ascii_lowercase()
    };
    let bob_print = openssl_print(&bob.data)
        .to_ascii_lowercase()
        .replace(':', "");
    assert_eq!(
        bob_print.matches("d.ktri").count(),
        1,
        "one RecipientInfo in Bob's copy: {bob_print}"
    );
    assert!(
        bob_print.contains(&serial("bob.encrypt.crt")),
        "{bob_print}"
    );
    assert!(
        !bob_print.contains(&serial("alice.encrypt.crt")),
        "Bcc recipient's certificate leaked into Bob's copy"
    );
    let d = rfc9216();
    let alice_plain = openssl_decrypt(
        &alice.data,
        &d.join("alice.encrypt.crt"),
        &d.join("alice.decrypt.key"),
    );
    assert!(String::from_utf8_lossy(&openssl_verify(&alice_plain, None)).contains(CANARY));
    // Carol has no certificate and the policy is opportunistic: signed, not encrypted.
    assert!(header_value(&carol.data, "Content-Type").contains("multipart/signed"));
    assert!(String::from_utf8_lossy(&openssl_verify(&carol.data, None)).contains(CANARY));
}

#[tokio::test]
async fn required_encryption_refuses_at_rcpt_and_relays_the_others() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(smime_config(&up, false).raw(
        "[[rule]]\nname = \"partners\"\nto = [\"*@partner.example\", \"bob@smime.example\"]\nencrypt = \"required\"\nencryption = \"aes256-gcm\"\nkey_transport = \"rsa-oaep\"\n",
    ))
    .await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(
        c.cmd("MAIL FROM:<alice@smime.example>").await.unwrap().0,
        250
    );
    let refused = c.cmd("RCPT TO:<carol@partner.example>").await.unwrap();
    assert_eq!(
        refused,
        (
            550,
            "550 5.7.1 no valid S/MIME certificate for carol@partner.example".to_string()
        )
    );
    assert_eq!(c.cmd("RCPT TO:<bob@smime.example>").await.unwrap().0, 250);
    assert_eq!(c.cmd("RCPT TO:<dave@plain.example>").await.unwrap().0, 250);
    assert_eq!(c.cmd("DATA").await.unwrap().0, 354);
    let mut body = message(
        "bob@smime.example, carol@partner.example",
        "dave@plain.example",
    );
    body.extend_from_slice(b".\r\n");
    c.send_raw(&body).await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 250);
    let got = up.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2, "{}", gw.logs());
    let bob = got
        .iter()
        .find(|r| r.rcpt_to == ["bob@smime.example"])
        .unwrap();
    assert!(!String::from_utf8_lossy(&bob.data).contains(CANARY));
    assert!(
        header_value(&bob.data, "Content-Type").contains("smime-type=authEnveloped-data"),
        "{}",
        header_value(&bob.data, "Content-Type")
    );
    let printed = openssl_print(&bob.data);
    assert!(
        printed.contains("aes-256-gcm") && printed.contains("rsaesOaep"),
        "{printed}"
    );
    assert!(
        String::from_utf8_lossy(&openssl_verify(&bob_decrypt(&bob.data), None)).contains(CANARY)
    );
    assert!(
        got.iter()
            .all(|r| !r.rcpt_to.contains(&"carol@partner.example".to_string()))
    );
}

#[tokio::test]
async fn hold_keeps_the_message_until_a_certificate_exists_and_it_is_released() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(smime_config(&up, false).raw(
        "[[rule]]\nname = \"alice must be encrypted\"\nto = [\"alice@smime.example\"]\nencrypt = \"required\"\non_missing_key = \"hold\"\n",
    ))
    .await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let r = c
        .send_message(
            "bob@smime.example",
            &["alice@smime.example"],
            &message("alice@smime.example", "x@y.example"),
        )
        .await
        .unwrap();
    assert_eq!(r.0, 250);
    let id = r.1.rsplit(' ').next().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, list) = gw.cli(&["queue", "list"]);
        if list.contains(&format!("{id}  hold")) {
            assert!(
                list.contains("no valid S/MIME certificate for alice@smime.example"),
                "{list}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{list}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up.received().is_empty(), "nothing leaves in plaintext");
    // The operator adds Alice's certificate, reloads and releases.
    std::fs::write(
        gw.dir().join("recipients/alice.crt"),
        read("alice.encrypt.crt"),
    )
    .unwrap();
    gw.sighup();
    assert!(
        gw.wait_log("configuration reloaded", Duration::from_secs(20))
            .await,
        "{}",
        gw.logs()
    );
    let (ok, out) = gw.cli(&["queue", "release", &id]);
    assert!(ok, "{out}");
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    let d = rfc9216();
    let plain = openssl_decrypt(
        &got[0].data,
        &d.join("alice.encrypt.crt"),
        &d.join("alice.decrypt.key"),
    );
    assert!(String::from_utf8_lossy(&plain).contains(CANARY));
}

#[tokio::test]
async fn subject_tag_raises_encryption_and_is_stripped() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(smime_config(&up, false).raw(
        "[policy]\nencrypt = \"never\"\nsubject_tag = \"[secure]\"\non_missing_key = \"bounce\"\n",
    ))
    .await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let tagged = String::from_utf8(message("bob@smime.example", "x@y.example"))
        .unwrap()
        .replace("Subject: quarterly", "Subject: [secure] quarterly");
    assert_eq!(
        c.send_message(
            "alice@smime.example",
            &["bob@smime.example"],
            tagged.as_bytes()
        )
        .await
        .unwrap()
        .0,
        250
    );
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    assert_eq!(
        header_value(&got[0].data, "Subject"),
        "Subject: quarterly",
        "tag stripped"
    );
    assert!(
        !String::from_utf8_lossy(&got[0].data).contains(CANARY),
        "encrypted although the policy says never"
    );
    assert!(String::from_utf8_lossy(&bob_decrypt(&got[0].data)).contains(CANARY));
}

#[tokio::test]
async fn gpgsm_decrypts_and_verifies_what_the_gateway_relayed() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(smime_config(&up, false)).await;
    let msg = message("bob@smime.example", "x@y.example");
    gw.send_ok("alice@smime.example", &["bob@smime.example"], &msg)
        .await;
    let got = gw.expect_upstream(&up, 1).await;
    let g = Gpgsm::new();
    let dir = tempfile::tempdir().unwrap();
    g.import_key(
        &rfc9216().join("bob.decrypt.key"),
        &rfc9216().join("bob.encrypt.crt"),
        dir.path(),
    );
    let inner = g.decrypt(&got[0].data, dir.path());
    assert!(String::from_utf8_lossy(&inner).contains("multipart/signed"));
    g.verify_detached(&inner, dir.path());
}

#[tokio::test]
async fn encrypt_to_self_lets_the_sender_read_the_sent_copy() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    // Alice's key file also carries her encryption certificate (her own, RFC 8551 §3.3).
    let gw = Gateway::start(
        smime_config(&up, false)
            .file(
                "keys/alice@smime.example.pem",
                format!(
                    "{}{}{}",
                    read("alice.sign.key"),
                    read("alice.sign.crt"),
                    read("alice.encrypt.crt")
                ),
            )
            .raw("[policy]\nencrypt_to_self = true\n"),
    )
    .await;
    let msg = message("bob@smime.example", "x@y.example");
    gw.send_ok("alice@smime.example", &["bob@smime.example"], &msg)
        .await;
    let got = gw.expect_upstream(&up, 1).await;
    let printed = openssl_print(&got[0].data);
    assert_eq!(
        printed.matches("d.ktri").count(),
        2,
        "bob and alice: {printed}"
    );
    let d = rfc9216();
    let by_alice = openssl_decrypt(
        &got[0].data,
        &d.join("alice.encrypt.crt"),
        &d.join("alice.decrypt.key"),
    );
    let by_bob = bob_decrypt(&got[0].data);
    assert_eq!(by_alice, by_bob);
    assert!(String::from_utf8_lossy(&openssl_verify(&by_bob, None)).contains(CANARY));
}

#[tokio::test]
async fn encrypt_header_raises_encryption_and_is_removed() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(
        smime_config(&up, false)
            .raw("[policy]\nencrypt = \"never\"\nencrypt_header = \"X-Cachet-Encrypt\"\n"),
    )
    .await;
    let msg = String::from_utf8(message("bob@smime.example", "x@y.example"))
        .unwrap()
        .replace(
            "Subject: quarterly\r\n",
            "Subject: quarterly\r\nX-Cachet-Encrypt: yes\r\n",
        );
    gw.send_ok(
        "alice@smime.example",
        &["bob@smime.example"],
        msg.as_bytes(),
    )
    .await;
    let got = gw.expect_upstream(&up, 1).await;
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        !text.contains(CANARY),
        "encrypted although the policy says never"
    );
    assert!(
        !text.to_ascii_lowercase().contains("x-cachet-encrypt"),
        "trigger header removed: {text}"
    );
    let inner = String::from_utf8_lossy(&bob_decrypt(&got[0].data)).to_string();
    assert!(
        !inner.to_ascii_lowercase().contains("x-cachet-encrypt"),
        "not inside either: {inner}"
    );
}

#[tokio::test]
async fn subject_tag_is_stripped_in_the_form_it_was_detected_encoded_or_folded() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(smime_config(&up, false).raw(
        "[policy]\nencrypt = \"never\"\nsubject_tag = \"[secure]\"\non_missing_key = \"bounce\"\n",
    ))
    .await;
    // (raw Subject field, what the recipient's client shows afterwards)
    let cases: &[(&str, &str)] = &[
        // "[secure] quarterly" as one base64 encoded-word
        ("Subject: =?UTF-8?B?W3NlY3VyZV0gcXVhcnRlcmx5?=", "quarterly"),
        // "[SECURE] Grüße aus Köln": the rest is not ASCII and is re-encoded
        (
            "Subject: =?UTF-8?B?W1NFQ1VSRV0gR3LDvMOfZSBhdXMgS8O2bG4=?=",
            "Gr\u{fc}\u{df}e aus K\u{f6}ln",
        ),
        // folded, the tag in the second of two Q encoded-words
        (
            "Subject: =?UTF-8?Q?quarterly?=\r\n =?UTF-8?Q?_numbers_=5BSecure=5D?=",
            "quarterly numbers",
        ),
        // folded plain text
        (
            "Subject: [secure]\r\n quarterly\r\n numbers",
            "quarterly numbers",
        ),
    ];
    for (i, (subject, _)) in cases.iter().enumerate() {
        let msg = String::from_utf8(message("bob@smime.example", "x@y.example"))
            .unwrap()
            .replace("Subject: quarterly", subject)
            .replace("<q1@smime.example>", &format!("<tag{i}@smime.example>"));
        gw.send_ok(
            "alice@smime.example",
            &["bob@smime.example"],
            msg.as_bytes(),
        )
        .await;
    }
    let got = gw.expect_upstream(&up, cases.len()).await;
    for (i, (subject, shown)) in cases.iter().enumerate() {
        let id = format!("tag{i}@smime.example");
        let copy = got
            .iter()
            .find(|r| {
                let h = mail_parser::MessageParser::default().parse_headers(&r.data);
                h.and_then(|m| m.message_id().map(|x| x == id))
                    .unwrap_or(false)
            })
            .unwrap_or_else(|| panic!("no copy of {id}"));
        let text = String::from_utf8_lossy(&copy.data);
        assert!(
            !text.contains(CANARY),
            "{subject:?} did not raise encryption"
        );
        let head = &text[..text.find("\r\n\r\n").unwrap()];
        let relayed = mail_parser::MessageParser::default()
            .parse_headers(head.as_bytes())
            .and_then(|m| m.subject().map(str::to_string));
        assert_eq!(
            relayed.as_deref(),
            Some(*shown),
            "{subject:?} relayed as:\n{head}"
        );
        let field = &head[head.find("\nSubject:").expect("Subject kept") + 1..];
        let field_lines = 1 + field
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with([' ', '\t']))
            .count();
        assert!(
            field.lines().take(field_lines).all(|l| l.len() <= 78),
            "Subject within the line limit:\n{head}"
        );
        let inner = String::from_utf8_lossy(&bob_decrypt(&copy.data)).to_string();
        assert!(inner.contains(CANARY));
        assert!(
            !inner.to_ascii_lowercase().contains("[secure]"),
            "no tag inside either: {inner}"
        );
    }
}
