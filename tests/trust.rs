//! A signature means something: only the organisation signs as the organisation, and what the
//! policy judged is exactly what leaves. Each test drives the real binary and guards one defect
//! of the trust review (docs/security.md lists them with these test names).

mod common;
mod smime_common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use smime_common::{openssl_verify, read};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Alice (RFC 9216) can sign; the RFC 9216 CA is trusted.
fn signing(c: GatewayConfig) -> GatewayConfig {
    c.raw("[keys]\ndir = \"keys\"\n[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n")
        .file(
            "keys/alice@smime.example.pem",
            format!("{}{}", read("alice.sign.key"), read("alice.sign.crt")),
        )
        .file("recipients/bob.crt", read("bob.encrypt.crt"))
        .file("trust/ca.pem", read("ca.rsa.crt"))
}

fn is_signed(data: &[u8]) -> bool {
    let t = String::from_utf8_lossy(data).to_ascii_lowercase();
    t.contains("application/pkcs7-signature") || t.contains("smime-type=signed-data")
}

async fn auth_client(gw: &Gateway, pki: &TestPki, user: &str, pass: &str) -> SmtpClient {
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    c.starttls(&pki.ca_path(), "localhost").await.unwrap();
    assert_eq!(c.cmd("EHLO client").await.unwrap().0, 250);
    let r = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            B64.encode(format!("\0{user}\0{pass}"))
        ))
        .await
        .unwrap();
    assert_eq!(r.0, 235, "{r:?}");
    c
}

/// Before: any AUTH user got mail signed with any key in the store.
#[tokio::test]
async fn an_auth_user_cannot_sign_as_someone_else() {
    let pki = TestPki::new("gateway");
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let users = format!(
        "{}{}",
        users_line("mallory@smime.example", "m-pass"),
        users_line("alice@smime.example", "a-pass")
    );
    let gw = Gateway::start(
        signing(GatewayConfig::new())
            .with_tls(&pki)
            .upstream(&up)
            .with("server", "relay_networks", "[\"192.0.2.0/24\"]")
            .with("server", "auth_users", "\"users\"")
            .file("users", users),
    )
    .await;
    let mut c = auth_client(&gw, &pki, "mallory@smime.example", "m-pass").await;
    // The envelope: only its own address.
    assert_eq!(
        c.cmd("MAIL FROM:<alice@smime.example>").await.unwrap(),
        (
            550,
            "550 5.7.1 Sender address not allowed for this client".to_string()
        )
    );
    assert_eq!(c.cmd("RSET").await.unwrap().0, 250);
    // The header: refused at the end of DATA, never signed.
    let forged = b"From: Alice <alice@smime.example>\r\nTo: bob@smime.example\r\nSubject: pay\r\n\r\npay mallory\r\n";
    let r = c
        .send_message("mallory@smime.example", &["bob@smime.example"], forged)
        .await
        .unwrap();
    assert_eq!(
        r,
        (
            550,
            "550 5.7.1 From: address not allowed for this client".to_string()
        )
    );
    c.quit().await;
    // Alice herself gets her signature.
    let mut c = auth_client(&gw, &pki, "alice@smime.example", "a-pass").await;
    let real = b"From: Alice <alice@smime.example>\r\nTo: x@y.example\r\nSubject: hi\r\n\r\nfrom alice\r\n";
    let r = c
        .send_message("alice@smime.example", &["x@y.example"], real)
        .await
        .unwrap();
    assert_eq!(r.0, 250, "{r:?}");
    let got = gw.expect_upstream(&up, 1).await;
    assert!(is_signed(&got[0].data));
    let content = openssl_verify(&got[0].data, None);
    assert!(String::from_utf8_lossy(&content).contains("from alice"));
    assert!(
        !up.received()
            .iter()
            .any(|m| String::from_utf8_lossy(&m.data).contains("pay mallory")),
        "the forged message never left"
    );
    assert!(
        gw.logs()
            .contains("From: address not allowed for this submitter"),
        "{}",
        gw.logs()
    );
}

/// A relay_networks client without a [[submitter]] entry may use the local domains only.
#[tokio::test]
async fn relay_networks_clients_are_limited_to_local_domains() {
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(
        c.cmd("MAIL FROM:<ceo@partner.example>").await.unwrap().1,
        "550 5.7.1 Sender address not allowed for this client"
    );
    assert_eq!(c.cmd("MAIL FROM:<>").await.unwrap().0, 250, "bounces pass");
    assert_eq!(c.cmd("RSET").await.unwrap().0, 250);
    let r = c
        .send_message(
            "a@example.org",
            &["b@partner.example"],
            b"From: ceo@partner.example\r\nSubject: x\r\n\r\nx\r\n",
        )
        .await
        .unwrap();
    assert_eq!(r.1, "550 5.7.1 From: address not allowed for this client");
    let id = gw
        .send_ok(
            "a@example.org",
            &["b@partner.example"],
            b"From: A <A@Example.ORG>\r\nSubject: ok\r\n\r\nok\r\n",
        )
        .await;
    let got = gw.expect_upstream(&up, 1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: ok"));
    assert!(!id.is_empty());
}

/// A From: with two addresses is never signed with either key; where a signature is required,
/// on_missing_key applies (reject: refused at the end of DATA).
#[tokio::test]
async fn several_authors_are_never_signed() {
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(signing(GatewayConfig::new()).upstream(&up)).await;
    let two = b"From: alice@smime.example, carol@smime.example\r\nTo: x@y.example\r\nSubject: two\r\n\r\nboth of us\r\n";
    gw.send_ok("alice@smime.example", &["x@y.example"], two)
        .await;
    let fields = b"From: carol@smime.example\r\nFrom: alice@smime.example\r\nTo: x@y.example\r\nSubject: fields\r\n\r\nfields\r\n";
    gw.send_ok("alice@smime.example", &["x@y.example"], fields)
        .await;
    let one = b"From: alice@smime.example\r\nTo: x@y.example\r\nSubject: one\r\n\r\njust me\r\n";
    gw.send_ok("alice@smime.example", &["x@y.example"], one)
        .await;
    let got = gw.expect_upstream(&up, 3).await;
    for m in &got {
        let text = String::from_utf8_lossy(&m.data);
        let signed = is_signed(&m.data);
        if text.contains("just me") {
            assert!(signed, "one author: signed");
            openssl_verify(&m.data, None);
        } else {
            assert!(!signed, "several authors: never signed\n{text}");
        }
    }
    drop(gw);

    let up = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(
        signing(GatewayConfig::new())
            .upstream(&up)
            .raw("[policy]\nsign = \"required\"\n"),
    )
    .await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let r = c
        .send_message("alice@smime.example", &["x@y.example"], two)
        .await
        .unwrap();
    assert_eq!(r.0, 550, "{r:?}");
    assert!(r.1.starts_with("550 5.7.1 "), "{r:?}");
}

/// Before: `RCPT TO:<"bob@partner.example> ORCPT=rfc822;x"@example.org>` was judged as an
/// example.org recipient (no encryption) and relayed as bob@partner.example in plaintext.
#[tokio::test]
async fn a_quoted_recipient_cannot_bypass_required_encryption() {
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(
        GatewayConfig::new().upstream(&up).raw(
            "[[rule]]\nname = \"partners\"\nto = [\"*@partner.example\"]\nencrypt = \"required\"\non_missing_key = \"bounce\"\n",
        ),
    )
    .await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.unwrap().0, 250);
    for rcpt in [
        "<\"bob@partner.example> ORCPT=rfc822;x\"@example.org>",
        "<\"john smith\"@example.org>",
        "<\"a@b\"@example.org>",
    ] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:{rcpt}")).await.unwrap(),
            (
                553,
                "553 5.1.3 Address not accepted: use a plain address without quotes, spaces or angle brackets"
                    .to_string()
            ),
            "{rcpt}"
        );
    }
    assert_eq!(
        c.cmd("DATA").await.unwrap().0,
        503,
        "no recipient was accepted"
    );
    assert_eq!(c.cmd("RSET").await.unwrap().0, 250);
    assert_eq!(
        c.cmd("MAIL FROM:<\"x y\"@example.org>").await.unwrap().0,
        553
    );
    // DATA's 503 proves nothing was queued: no recipient was accepted, so nothing can leave.
    c.quit().await;
}

/// Before: the second copy of a duplicate recipient stayed pending for ever, was re-sent on
/// every retry and bounced after max_age.
#[tokio::test]
async fn a_duplicate_recipient_is_delivered_once() {
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let r = c
        .send_message(
            "a@example.org",
            &["b@x.example", "b@x.example", "B@x.example", "c@x.example"],
            b"From: a@example.org\r\nSubject: dup\r\n\r\nonce\r\n",
        )
        .await
        .unwrap();
    assert_eq!(r.0, 250, "{r:?}");
    let id = r.1.rsplit(' ').next().unwrap().to_string();
    let got = gw.expect_upstream(&up, 1).await;
    assert_eq!(got[0].rcpt_to, ["b@x.example", "c@x.example"]);
    assert!(
        gw.wait_log("\"done\"", WAIT).await || gw.wait_log(" done", WAIT).await,
        "{}",
        gw.logs()
    );
    // Nothing stays queued: the message is complete.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (ok, list) = gw.cli(&["queue", "list"]);
        assert!(ok, "{list}");
        if !list.contains(&id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still queued: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(up.received().len(), 1, "no second delivery");
}

/// Before: smtp-proto wrapped the number and the MAIL was accepted.
#[tokio::test]
async fn an_absurd_declared_size_is_refused() {
    let gw = Gateway::start(GatewayConfig::new()).await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    for size in [
        "99999999999999999999999",
        "18446744073709551616",
        "20000000",
    ] {
        assert_eq!(
            c.cmd(&format!("MAIL FROM:<a@example.org> SIZE={size}"))
                .await
                .unwrap(),
            (
                552,
                "552 5.3.4 Declared SIZE exceeds fixed maximum message size".to_string()
            ),
            "SIZE={size}"
        );
    }
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org> SIZE=1000")
            .await
            .unwrap()
            .0,
        250
    );
}

const PY_CLIENT_CERT: &str = r#"
import smtplib, ssl, sys
host, port, ca, cert, key, sender, rcpt = sys.argv[1:8]
msg = sys.stdin.buffer.read()
ctx = ssl.create_default_context(cafile=ca)
if cert:
    ctx.load_cert_chain(cert, key)
s = smtplib.SMTP(host, int(port), timeout=30)
s.starttls(context=ctx)
try:
    s.sendmail(sender, [rcpt], msg)
    print("250")
except smtplib.SMTPRecipientsRefused as e:
    code, text = list(e.recipients.values())[0]
    print(code, text.decode())
except smtplib.SMTPResponseException as e:
    print(e.smtp_code, e.smtp_error.decode())
"#;

/// Sends with Python's smtplib over STARTTLS, presenting `cert` when given; returns the reply.
fn py_send(
    gw: &Gateway,
    pki: &TestPki,
    cert: Option<(&str, &str)>,
    from: &str,
    msg: &[u8],
) -> String {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c")
        .arg(PY_CLIENT_CERT)
        .arg("127.0.0.1")
        .arg(gw.addr().port().to_string())
        .arg(pki.ca_path())
        .arg(cert.map(|c| c.0).unwrap_or(""))
        .arg(cert.map(|c| c.1).unwrap_or(""))
        .arg(from)
        .arg("b@partner.example")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("python3");
    child.stdin.take().unwrap().write_all(msg).unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// A shared platform is authenticated by its TLS client certificate plus the tenant header,
/// never by IP ranges; the tenant header never leaves; the audit record names the submitter.
#[tokio::test]
async fn a_cloud_platform_is_recognised_by_certificate_and_tenant_header() {
    let pki = TestPki::new("gateway");
    let platform = pki.issue_server(&["platform.test"]);
    let cert_path = pki.dir().join("platform.crt");
    let key_path = pki.dir().join("platform.key");
    std::fs::write(&cert_path, &platform.cert_pem).unwrap();
    std::fs::write(&key_path, &platform.key_pem).unwrap();
    let fp: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &platform.cert_der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}:"))
        .collect();
    let fp = fp.trim_end_matches(':').to_string();
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(
        GatewayConfig::new()
            .with_tls(&pki)
            .upstream(&up)
            // Loopback is not trusted by address here: only the certificate counts.
            .with("server", "relay_networks", "[\"192.0.2.0/24\"]")
            .with("log", "audit_file", "\"audit.jsonl\"")
            .raw(&format!(
                "[[submitter]]\nname = \"cloud\"\ntls_client = \"{fp}\"\n\
                 require_header = {{ name = \"X-Tenant-Id\", value = \"tenant-42\" }}\n\
                 senders = [\"*@example.org\"]\n"
            )),
    )
    .await;
    let good = b"From: a@example.org\r\nTo: b@partner.example\r\nX-Tenant-Id:  Tenant-42 \r\nSubject: cloud\r\n\r\nfrom the tenant\r\n";
    let wrong_tenant =
        b"From: a@example.org\r\nX-Tenant-Id: tenant-43\r\nSubject: other\r\n\r\nother tenant\r\n";
    let cert = Some((cert_path.to_str().unwrap(), key_path.to_str().unwrap()));
    // Without the certificate: not a submitter, and loopback is not a relay network.
    let r = py_send(&gw, &pki, None, "a@example.org", good);
    assert!(r.starts_with("550 5.7.1 Relay access denied"), "{r}");
    // With it, but another tenant's header: refused at the end of DATA.
    let r = py_send(&gw, &pki, cert, "a@example.org", wrong_tenant);
    assert!(
        r.starts_with("550 5.7.1 Message not accepted from this client"),
        "{r}"
    );
    // With it, a sender outside its senders: refused at MAIL.
    let r = py_send(&gw, &pki, cert, "a@partner.example", good);
    assert!(r.starts_with("550 5.7.1 Sender address not allowed"), "{r}");
    // With it and the right tenant: relayed, without the tenant header.
    let r = py_send(&gw, &pki, cert, "a@example.org", good);
    assert_eq!(r, "250");
    let got = gw.expect_upstream(&up, 1).await;
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("from the tenant"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("x-tenant-id"), "{text}");
    assert!(gw.wait_log("done", WAIT).await);
    let deadline = std::time::Instant::now() + WAIT;
    let audit = loop {
        let a = std::fs::read_to_string(gw.dir().join("audit.jsonl")).unwrap_or_default();
        if !a.is_empty() || std::time::Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(audit.contains("\"submitter\":\"cloud\""), "{audit}");
}

fn check(dir: &std::path::Path, toml: &str) -> (bool, String) {
    let path = dir.join("cachet.toml");
    std::fs::write(&path, toml).unwrap();
    let out = cachet_command()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `cachet check` finds the unsafe settings before they are used.
#[test]
fn check_reports_unsafe_submission_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("keys")).unwrap();
    std::fs::create_dir_all(d.join("trust")).unwrap();
    let key = d.join("keys/alice@smime.example.pem");
    std::fs::write(
        &key,
        format!("{}{}", read("alice.sign.key"), read("alice.sign.crt")),
    )
    .unwrap();
    smime_common::chmod(&key, 0o600);
    std::fs::write(d.join("trust/ca.pem"), read("ca.rsa.crt")).unwrap();
    // No local_domains at all.
    let (ok, out) = check(d, "[server]\n[upstream]\nurl = \"file://out\"\n");
    assert!(!ok);
    assert!(
        out.contains("cachet.toml: server.local_domains: list the organisation's own domains"),
        "{out}"
    );
    // A signing key for a domain that is not the organisation's.
    let keys =
        "[keys]\ndir = \"keys\"\n[certificates]\ndir = \"trust\"\ntrust = [\"trust/ca.pem\"]\n";
    let (ok, out) = check(
        d,
        &format!(
            "[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"file://out\"\n{keys}"
        ),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("keys.dir: signing key for alice@smime.example"),
        "{out}"
    );
    assert!(out.contains("not in server.local_domains"), "{out}");
    // Public ranges in relay_networks with no [[submitter]] narrowing them: a warning.
    let (ok, out) = check(
        d,
        &format!(
            "[server]\nlocal_domains = [\"smime.example\"]\nrelay_networks = [\"10.0.0.0/8\", \"40.92.0.0/15\"]\n[upstream]\nurl = \"file://out\"\n{keys}"
        ),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: ") && out.contains("40.92.0.0/15 is a public range"),
        "{out}"
    );
    assert!(!out.contains("10.0.0.0/8 is a public range"), "{out}");
    // A [[submitter]] entry that names no client, and one with a bad fingerprint.
    let (ok, out) = check(
        d,
        "[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"file://out\"\n\
         [[submitter]]\nname = \"open\"\nsenders = [\"*@example.org\"]\n\
         [[submitter]]\nname = \"pin\"\ntls_client = \"abc\"\nsenders = [\"a b\"]\n",
    );
    assert!(!ok);
    assert!(
        out.contains(
            "cachet.toml:5: submitter \"open\": networks: give networks, user or tls_client"
        ),
        "{out}"
    );
    assert!(
        out.contains("submitter \"pin\": tls_client: a SHA-256 fingerprint"),
        "{out}"
    );
    assert!(
        out.contains("submitter \"pin\": senders: \"a b\" is not an address glob"),
        "{out}"
    );
}

/// `cachet explain` shows the submitter decision with the reply the client would get.
#[test]
fn explain_shows_the_submitter_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cachet.toml");
    std::fs::write(
        &path,
        "[server]\nlocal_domains = [\"example.org\"]\nrelay_networks = [\"10.0.0.0/8\"]\n[upstream]\nurl = \"file://out\"\n\
         [[submitter]]\nname = \"scanner\"\nnetworks = [\"10.9.0.0/16\"]\nsenders = [\"scanner@example.org\"]\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = cachet_command()
            .arg("explain")
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let out = run(&[
        "--client",
        "10.9.1.1",
        "--from",
        "ceo@example.org",
        "--to",
        "x@y.example",
    ]);
    assert!(
        out.contains("submitter scanner for client 10.9.1.1"),
        "{out}"
    );
    assert!(
        out.contains("refuse at MAIL: 550 5.7.1 Sender address not allowed"),
        "{out}"
    );
    let out = run(&[
        "--client",
        "10.1.1.1",
        "--from",
        "ceo@example.org",
        "--to",
        "x@y.example",
    ]);
    assert!(out.contains("submitter relay_networks"), "{out}");
    assert!(out.contains("action:   accept"), "{out}");
    let out = run(&[
        "--client",
        "192.0.2.1",
        "--from",
        "ceo@example.org",
        "--to",
        "x@y.example",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["submitter"]["action"], "refuse at RCPT");
}

/// A CA (cert PEM, issuer) named `cn`, and a client-auth leaf for `subject_cn` it issued
/// (cert PEM, key PEM).
fn client_ca_and_leaf(cn: &str, subject_cn: &str) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, cn);
    ca.distinguished_name
        .push(DnType::OrganizationName, "Cloud");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec![subject_cn.to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, subject_cn);
    leaf.distinguished_name
        .push(DnType::OrganizationName, "Cloud");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (issuer.pem(), cert.pem(), key.serialize_pem())
}

/// Issuer and subject as cachet prints and compares them (RFC 4514 via x509-cert).
fn names_of(cert_pem: &str) -> (String, String) {
    use der::DecodePem;
    let c = x509_cert::Certificate::from_pem(cert_pem.as_bytes()).unwrap();
    (
        c.tbs_certificate().issuer().to_string(),
        c.tbs_certificate().subject().to_string(),
    )
}

/// Matching by issuer and subject trusts only a chain to `server.tls_client_ca`: a certificate
/// with the same names from another CA (anyone can make one) grants nothing.
#[tokio::test]
async fn a_client_certificate_matched_by_names_must_chain_to_the_client_ca() {
    let pki = TestPki::new("gateway");
    let (ca_pem, cert_pem, key_pem) = client_ca_and_leaf("Cloud Client CA", "mail.cloud.test");
    let (_, forged_pem, forged_key) = client_ca_and_leaf("Cloud Client CA", "mail.cloud.test");
    let (issuer, subject) = names_of(&cert_pem);
    assert_eq!(names_of(&forged_pem), (issuer.clone(), subject.clone()));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (cert, key) = (write("c.crt", &cert_pem), write("c.key", &key_pem));
    let (fcert, fkey) = (write("f.crt", &forged_pem), write("f.key", &forged_key));
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(
        GatewayConfig::new()
            .with_tls(&pki)
            .upstream(&up)
            .with("server", "relay_networks", "[\"192.0.2.0/24\"]")
            .with("server", "tls_client_ca", "\"client-ca.pem\"")
            .file("client-ca.pem", ca_pem)
            .raw(&format!(
                "[[submitter]]\nname = \"cloud\"\ntls_client = {{ issuer = {}, subject = {} }}\nsenders = [\"*@example.org\"]\n",
                toml_str(&issuer.to_uppercase()),
                toml_str(&subject)
            )),
    )
    .await;
    let msg = b"From: a@example.org\r\nSubject: names\r\n\r\nnames\r\n";
    let r = py_send(&gw, &pki, Some((&fcert, &fkey)), "a@example.org", msg);
    assert!(r.starts_with("550 5.7.1 Relay access denied"), "{r}");
    let r = py_send(&gw, &pki, Some((&cert, &key)), "a@example.org", msg);
    assert_eq!(r, "250", "{}", gw.logs());
    gw.expect_upstream(&up, 1).await;
    // Operators copy issuer and subject from this line.
    assert!(gw.logs().contains("TLS client certificate"));
}
