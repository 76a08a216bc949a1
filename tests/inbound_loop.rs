//! The full loop of issue 13, with two real gateways: a partner organisation's cachet signs
//! Carol's mail (announcing AES-256-GCM and RSA-OAEP in its SMIMECapabilities); our cachet
//! receives it on its `[inbound]` listener, verifies it, tells the internal server so in
//! `Authentication-Results`, and harvests Carol's certificate; the next message our Alice sends
//! to Carol leaves encrypted to the harvested certificate with the algorithms Carol announced,
//! although our policy's defaults are AES-256-CBC and RSA PKCS#1 v1.5. Checked with
//! `openssl cms` (Carol's key decrypts it), `cachet certs` and `cachet explain`.

mod common;
mod smime_common;

use common::*;
use smime_common::{Alg, Leaf, openssl_decrypt, openssl_print, read, write};
use std::time::Duration;

const CAROL: &str = "carol@partner.test";
const ALICE: &str = "alice@example.org";

fn message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}.{}@test>\r\n\r\n{body}\r\n",
        std::process::id()
    )
    .into_bytes()
}

fn is_encrypted(data: &[u8]) -> bool {
    let t = String::from_utf8_lossy(data).to_ascii_lowercase();
    t.contains("enveloped-data") || t.contains("authenveloped-data")
}

#[tokio::test]
async fn a_partners_signed_mail_teaches_us_how_to_encrypt_to_them() {
    // Our gateway: outbound to `internet`, inbound relayed to `internal`; the RFC 9216 CA is a
    // trust anchor (it issued Carol's certificate); nothing in certificates.dir.
    let internet = Upstream::start(UpstreamOptions::plain()).await;
    let internal = Upstream::start(UpstreamOptions::plain()).await;
    let ours = Gateway::start(
        GatewayConfig::new()
            .upstream(&internet)
            .with_inbound()
            .with("inbound", "relay_networks", r#"["127.0.0.0/8"]"#)
            .with("inbound", "upstream", &toml_str(&internal.url()))
            .with("inbound", "tls", &toml_str("none"))
            .with("inbound", "decrypt", "false")
            .with("inbound", "verify", "true")
            .with("inbound", "harvest", "true")
            .with("policy", "sign", &toml_str("never"))
            .with("policy", "encrypt", &toml_str("opportunistic"))
            .with("policy", "encryption", &toml_str("aes256-cbc"))
            .with("policy", "key_transport", &toml_str("rsa-pkcs1"))
            .raw("[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n")
            .file("recipients/README", "certificates from files go here\n")
            .file("trust/ca.pem", read("ca.rsa.crt")),
    )
    .await;

    // Before Carol ever wrote to us: nothing to encrypt to, the message leaves in plaintext.
    ours.send_ok(
        ALICE,
        &[CAROL],
        &message(ALICE, CAROL, "before", "No certificate yet."),
    )
    .await;
    let got = ours.expect_upstream(&internet, 1).await;
    assert!(!is_encrypted(&got[0].data), "nothing known about Carol yet");

    // The partner's gateway: Carol's signing key, every message signed; its policy prefers
    // AES-256-GCM and RSA-OAEP, so its signatures announce them first.
    let (carol_crt, carol_key) = Leaf::new(CAROL, Alg::Rsa2048).issue();
    let partner = Gateway::start(
        GatewayConfig::new()
            .with("server", "local_domains", r#"["partner.test"]"#)
            .with(
                "upstream",
                "url",
                &toml_str(&format!("smtp://{}", ours.inbound_addr())),
            )
            .with("upstream", "tls", &toml_str("none"))
            .with("policy", "sign", &toml_str("required"))
            .with("policy", "encrypt", &toml_str("never"))
            .with("policy", "encryption", &toml_str("aes256-gcm"))
            .with("policy", "key_transport", &toml_str("rsa-oaep"))
            .raw("[keys]\ndir = \"keys\"\n[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n")
            .file(
                format!("keys/{CAROL}.pem"),
                format!("{carol_key}{carol_crt}"),
            )
            .file("recipients/README", "none\n")
            .file("trust/ca.pem", read("ca.rsa.crt")),
    )
    .await;
    partner
        .send_ok(
            CAROL,
            &[ALICE],
            &message(CAROL, ALICE, "hello", "Signed greetings from the partner."),
        )
        .await;

    // The internal server gets it with our verdict in Authentication-Results.
    let inside = internal.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(inside.len(), 1, "{}\n{}", ours.logs(), partner.logs());
    let text = String::from_utf8_lossy(&inside[0].data).into_owned();
    let header = &text[..text.find("\r\n\r\n").unwrap()];
    assert!(
        header.starts_with("Authentication-Results: cachet.test;"),
        "{header}"
    );
    assert!(header.contains("smime=pass"), "{header}");
    assert!(
        header.contains(&format!("body.smime-identifier={CAROL}")),
        "{header}"
    );
    assert!(
        ours.wait_log("certificate harvested", Duration::from_secs(30))
            .await
    );

    // cachet certs shows what was learnt: harvested, anchored, with Carol's capabilities.
    let (ok, list) = ours.cli(&["certs", "list"]);
    assert!(ok, "{list}");
    let line = list
        .lines()
        .find(|l| l.contains(CAROL))
        .unwrap_or_else(|| panic!("Carol not listed:\n{list}"));
    assert!(line.contains("harvested"), "{line}");
    assert!(line.contains("aes256-gcm"), "{line}");

    // cachet explain says the capability decided.
    let (ok, explained) = ours.cli(&["explain", "--from", ALICE, "--to", CAROL]);
    assert!(ok, "{explained}");
    assert!(
        explained.contains(&format!("capabilities of {CAROL}")),
        "{explained}"
    );
    assert!(
        explained.contains("aes256-gcm with rsa-oaep"),
        "{explained}"
    );

    // At once, without a reload: Alice's next message to Carol leaves encrypted as Carol asked.
    ours.send_ok(
        ALICE,
        &[CAROL],
        &message(ALICE, CAROL, "after", "Now only Carol can read this."),
    )
    .await;
    let got = ours.expect_upstream(&internet, 2).await;
    let sent = &got[1].data;
    assert!(is_encrypted(sent), "{}", String::from_utf8_lossy(sent));
    let printed = openssl_print(sent);
    assert!(
        printed.contains("id-smime-ct-authEnvelopedData"),
        "AuthEnvelopedData (AES-GCM) expected:\n{printed}"
    );
    assert!(printed.contains("aes-256-gcm"), "{printed}");
    assert!(
        printed.contains("rsaesOaep"),
        "RSA-OAEP expected:\n{printed}"
    );
    let dir = tempfile::tempdir().unwrap();
    let crt = write(dir.path(), "carol.crt", &carol_crt);
    let key = write(dir.path(), "carol.key", &carol_key);
    let plain = openssl_decrypt(sent, &crt, &key);
    assert!(
        String::from_utf8_lossy(&plain).contains("Now only Carol can read this."),
        "{}",
        String::from_utf8_lossy(&plain)
    );
}
