//! Recipient certificates from an LDAP directory (issue 10), end to end: a real OpenLDAP
//! `slapd` started by the test (tests/common/slapd.rs) with users holding both attribute kinds
//! (a PKCS#7 bag in `userSMIMECertificate;binary`, DER in `userCertificate;binary`), the real
//! gateway binary asking it over StartTLS or ldaps:// with a bind DN, and `openssl cms
//! -decrypt` judging what leaves. Also: TLS verification (an untrusted server certificate),
//! a directory that is down (one timeout per address per negative_ttl, counted in /metrics),
//! expired / untrusted / foreign certificates refused, filter injection, cache_ttl.

mod common;
mod smime_common;

use common::slapd::{self, Slapd};
use common::*;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use smime_common::{Alg, Leaf, openssl_decrypt, read};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const CANARY: &str = "CANARY-directory-7c31";

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("PEM certificate")
        .to_vec()
}

/// A PKCS#7 certificate bag holding `pems`, made by OpenSSL (`crl2pkcs7 -nocrl`), the form
/// `userSMIMECertificate` holds.
fn bag(pems: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("openssl");
    cmd.args(["crl2pkcs7", "-nocrl", "-outform", "DER"]);
    for (i, pem) in pems.iter().enumerate() {
        let p = smime_common::write(dir.path(), &format!("c{i}.pem"), pem);
        cmd.arg("-certfile").arg(p);
    }
    smime_common::run_ok(&mut cmd).stdout
}

/// A gateway trusting the RFC 9216 CA, requiring encryption for `*@partner.example`, asking
/// the directory described by `directory` (the body of one `[[directory]]` table).
fn config(directory: &str) -> GatewayConfig {
    GatewayConfig::new()
        .raw(&format!(
            "[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n\
             [[rule]]\nname = \"partners\"\nto = [\"*@partner.example\"]\nencrypt = \"required\"\n\
             [[directory]]\n{directory}\n"
        ))
        .file("trust/ca.pem", read("ca.rsa.crt"))
        .file("recipients/README", "")
        .file("ldap.pw", format!("{}\n", slapd::BIND_PW))
}

/// `[[directory]]` keys binding as the service account.
fn bound(url: &str, extra: &str) -> String {
    format!(
        "url = \"{url}\"\nbind_dn = \"{}\"\npassword_file = \"ldap.pw\"\nbase = \"{}\"\n{extra}",
        slapd::BIND_DN,
        slapd::BASE
    )
}

fn message(to: &str) -> Vec<u8> {
    format!(
        "From: carol@example.org\r\nTo: {to}\r\nSubject: directory\r\nMessage-ID: <dir@example.org>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{CANARY}\r\n"
    )
    .into_bytes()
}

/// Sum of `cachet_directory_lookups_total{result=...}` over every directory.
async fn lookups(gw: &Gateway, result: &str) -> u64 {
    let (code, body) = gw.admin_get("/metrics").await;
    assert_eq!(code, 200);
    body.lines()
        .filter(|l| {
            l.starts_with("cachet_directory_lookups_total{")
                && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// RCPT TO on a fresh session after MAIL FROM; the reply.
async fn rcpt(gw: &Gateway, to: &str) -> (u16, String) {
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(c.cmd("MAIL FROM:<carol@example.org>").await.unwrap().0, 250);
    let r = c.cmd(&format!("RCPT TO:<{to}>")).await.unwrap();
    c.quit().await;
    r
}

/// Decrypt `msg` with the (cert, key) PEM pair; the plaintext.
fn decrypt(msg: &[u8], cert: &str, key: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let c = smime_common::write(dir.path(), "r.crt", cert);
    let k = smime_common::write(dir.path(), "r.key", key);
    String::from_utf8_lossy(&openssl_decrypt(msg, &c, &k)).into_owned()
}

/// The relayed messages (`.eml`; the `file://` upstream writes a `.env` sidecar beside each),
/// oldest first, once there are `n` of them (or WAIT passed).
async fn emls(gw: &Gateway, n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut got: Vec<(std::time::SystemTime, Vec<u8>)> = gw
            .outbox_messages()
            .into_iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "eml"))
            .map(|(p, b)| (std::fs::metadata(&p).and_then(|m| m.modified()).unwrap(), b))
            .collect();
        if got.len() >= n || Instant::now() >= deadline {
            got.sort_by_key(|(t, _)| *t);
            return got.into_iter().map(|(_, b)| b).collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `openssl cms -decrypt` succeeds on `msg` with the (cert, key) PEM pair.
fn decrypts(msg: &[u8], cert: &str, key: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let c = smime_common::write(dir.path(), "r.crt", cert);
    let k = smime_common::write(dir.path(), "r.key", key);
    let mut cmd = Command::new("openssl");
    cmd.args(["cms", "-decrypt", "-recip"])
        .arg(&c)
        .arg("-inkey")
        .arg(&k);
    smime_common::run_with_input(&mut cmd, msg).status.success()
}

#[tokio::test]
async fn a_directory_user_gets_mail_encrypted_to_the_certificate_from_either_attribute() {
    let ldap_pki = TestPki::new("directory TLS CA");
    // Bob: a bag with his certificate and the intermediate CA that issued it (the chain comes
    // from the directory, not from the gateway's files). Carol: one DER certificate.
    let inter = smime_common::intermediate_ca();
    let mut bob = Leaf::new("bob@partner.example", Alg::Rsa2048);
    bob.intermediate = Some(inter.clone());
    let (bob_cert, bob_key) = bob.issue();
    let (carl_cert, carl_key) = Leaf::new("carl@partner.example", Alg::EcP256).issue();
    let entries = format!(
        "{}{}",
        slapd::person(
            "bob",
            "bob@partner.example",
            &[("userSMIMECertificate", &bag(&[&bob_cert, &inter.0]))]
        ),
        slapd::person(
            "carl",
            "carl@partner.example",
            &[("userCertificate;binary", &der(&carl_cert))]
        ),
    );
    let ldap = Slapd::start(&entries, Some(&ldap_pki.server)).await;
    let gw = Gateway::start(
        config(&bound(
            &ldap.url(),
            "starttls = true\nca_file = \"ldap-ca.pem\"\n",
        ))
        .file("ldap-ca.pem", ldap_pki.ca_pem.clone()),
    )
    .await;

    let id = gw
        .send_ok(
            "carol@example.org",
            &["bob@partner.example", "carl@partner.example"],
            &message("bob@partner.example, carl@partner.example"),
        )
        .await;
    let out = emls(&gw, 1).await;
    assert_eq!(out.len(), 1, "{id}\n{}", gw.logs());
    let sent = &out[0];
    assert!(
        !String::from_utf8_lossy(sent).contains(CANARY),
        "sent in clear"
    );
    assert!(decrypt(sent, &bob_cert, &bob_key).contains(CANARY));
    assert!(decrypt(sent, &carl_cert, &carl_key).contains(CANARY));
    // Both were looked up once, at RCPT (their rule requires encryption); sealing used the cache.
    assert_eq!(lookups(&gw, "found").await, 2, "{}", gw.logs());
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("cachet_directory_lookup_seconds_count 2"),
        "{metrics}"
    );
    // The server saw StartTLS and a bind as the service account.
    let log = ldap.log();
    assert!(log.contains("EXT oid=1.3.6.1.4.1.1466.20037"), "{log}");
    assert!(
        log.contains(&format!("BIND dn=\"{}\"", slapd::BIND_DN)),
        "{log}"
    );

    // The operator's view: every source, and why.
    let (ok, text) = gw.cli(&["certs", "lookup", "Bob@Partner.Example"]);
    assert!(ok, "{text}");
    assert!(text.contains("files ("), "{text}");
    assert!(text.contains("no certificate for this address"), "{text}");
    assert!(text.contains("entry cn=bob,dc=example,dc=org"), "{text}");
    assert!(text.contains("[userSMIMECertificate]  accepted"), "{text}");
    assert!(
        text.contains("CA certificate (used as a chain element)"),
        "{text}"
    );
    assert!(text.contains("result: encrypts to"), "{text}");
}

#[tokio::test]
async fn tls_to_the_directory_is_verified_and_an_untrusted_server_is_never_asked() {
    let ldap_pki = TestPki::new("directory TLS CA");
    let other = TestPki::new("some other CA");
    let (bob_cert, _) = Leaf::new("bob@partner.example", Alg::EcP256).issue();
    let entries = slapd::person(
        "bob",
        "bob@partner.example",
        &[("userCertificate;binary", &der(&bob_cert))],
    );
    let ldap = Slapd::start(&entries, Some(&ldap_pki.server)).await;

    // ldaps:// with the right CA: found.
    let good = Gateway::start(
        config(&bound(&ldap.ldaps_url(), "ca_file = \"ldap-ca.pem\"\n"))
            .file("ldap-ca.pem", ldap_pki.ca_pem.clone()),
    )
    .await;
    let (ok, text) = good.cli(&["certs", "lookup", "bob@partner.example"]);
    assert!(ok, "{text}");
    assert!(text.contains("accepted"), "{text}");
    assert_eq!(rcpt(&good, "bob@partner.example").await.0, 250);

    // ldaps:// and StartTLS presenting a certificate the gateway does not trust: the lookup
    // fails (no bind, no password sent), and the required recipient is refused.
    for extra in ["", "starttls = true\n"] {
        let url = if extra.is_empty() {
            ldap.ldaps_url()
        } else {
            ldap.url()
        };
        let gw = Gateway::start(
            config(&bound(&url, &format!("{extra}ca_file = \"ldap-ca.pem\"\n")))
                .file("ldap-ca.pem", other.ca_pem.clone()),
        )
        .await;
        let r = rcpt(&gw, "bob@partner.example").await;
        assert_eq!(r.0, 550, "{r:?}\n{}", gw.logs());
        assert!(
            r.1.contains("5.7.1 no valid S/MIME certificate for bob@partner.example"),
            "{r:?}"
        );
        assert_eq!(lookups(&gw, "error").await, 1, "{}", gw.logs());
        assert!(
            gw.wait_log("directory lookup failed", WAIT).await,
            "{}",
            gw.logs()
        );
        let (ok, text) = gw.cli(&["certs", "lookup", "bob@partner.example"]);
        assert!(!ok, "{text}");
        assert!(text.contains("lookup failed"), "{text}");
        assert!(
            text.to_lowercase().contains("certificate"),
            "the reason names the certificate problem: {text}"
        );
    }
    // The untrusted connections never bound: slapd saw exactly the binds of the trusted gateway
    // (its RCPT lookup and its `certs lookup`).
    let binds = ldap
        .log()
        .matches(&format!("BIND dn=\"{}\" mech=SIMPLE", slapd::BIND_DN))
        .count();
    assert_eq!(binds, 2, "{}", ldap.log());
}

#[tokio::test]
async fn a_directory_that_is_down_costs_one_timeout_per_address_per_negative_ttl() {
    // First directory: a closed port (refused at once). Second: a listener that accepts into its
    // backlog and never answers (every question times out).
    let closed = free_port();
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = blackhole.local_addr().unwrap().port();
    let directory = format!(
        "url = \"ldap://127.0.0.1:{closed}\"\nbase = \"{b}\"\nnegative_ttl = \"8s\"\ntimeout = \"1s\"\n\
         [[directory]]\nurl = \"ldap://127.0.0.1:{hole}\"\nbase = \"{b}\"\nnegative_ttl = \"8s\"\ntimeout = \"1s\"\n",
        b = slapd::BASE
    );
    let gw = Gateway::start(config(&directory)).await;
    // Anonymous plain LDAP is allowed, with a warning.
    let (ok, text) = gw.cli(&["check"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "warning: [[directory]] ldap://127.0.0.1:{closed}: plain LDAP without StartTLS"
        )),
        "{text}"
    );

    // The required recipient is refused: soft behaviour is "no certificate".
    let r = rcpt(&gw, "bob@partner.example").await;
    // Both answers (the refusal and the timeout) are cached from no later than now.
    let answered = Instant::now();
    assert_eq!(r.0, 550, "{r:?}\n{}", gw.logs());
    assert_eq!(lookups(&gw, "error").await, 1);
    assert_eq!(lookups(&gw, "timeout").await, 1);
    // Again, on new sessions: the failure is cached, neither directory is asked.
    for _ in 0..3 {
        assert_eq!(rcpt(&gw, "bob@partner.example").await.0, 550);
    }
    assert_eq!(lookups(&gw, "error").await, 1, "{}", gw.logs());
    assert_eq!(lookups(&gw, "timeout").await, 1, "{}", gw.logs());

    // An opportunistic recipient (no rule) is looked up before sealing and goes out in clear.
    gw.send_ok(
        "carol@example.org",
        &["dave@other.example"],
        &message("dave@other.example"),
    )
    .await;
    let out = emls(&gw, 1).await;
    assert_eq!(out.len(), 1, "{}", gw.logs());
    assert!(String::from_utf8_lossy(&out[0]).contains(CANARY));
    assert_eq!(lookups(&gw, "error").await, 2, "{}", gw.logs());
    assert_eq!(lookups(&gw, "timeout").await, 2, "{}", gw.logs());

    // Two sessions asking about the same new address at once share one question.
    let (a, b) = tokio::join!(
        rcpt(&gw, "erin@partner.example"),
        rcpt(&gw, "erin@partner.example")
    );
    assert_eq!((a.0, b.0), (550, 550), "{a:?} {b:?}");
    assert_eq!(lookups(&gw, "error").await, 3, "{}", gw.logs());
    assert_eq!(lookups(&gw, "timeout").await, 3, "{}", gw.logs());

    // Once negative_ttl has passed, the next RCPT asks again (once).
    let wait =
        Duration::from_secs(8).saturating_sub(answered.elapsed()) + Duration::from_millis(500);
    tokio::time::sleep(wait).await;
    assert_eq!(rcpt(&gw, "bob@partner.example").await.0, 550);
    assert_eq!(lookups(&gw, "error").await, 4, "{}", gw.logs());
    assert_eq!(lookups(&gw, "timeout").await, 4, "{}", gw.logs());
    assert!(
        gw.logs().contains("directory lookup failed"),
        "{}",
        gw.logs()
    );
    drop(blackhole);
}

#[tokio::test]
async fn expired_untrusted_and_foreign_directory_certificates_are_refused() {
    let mut expired = Leaf::new("dave@partner.example", Alg::EcP256);
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let (expired, _) = expired.issue();
    let mut untrusted = Leaf::new("erin@partner.example", Alg::EcP256);
    untrusted.untrusted = true;
    let (untrusted, _) = untrusted.issue();
    // Frank's entry holds a valid certificate, but it is Mallory's.
    let (mallory, _) = Leaf::new("mallory@partner.example", Alg::EcP256).issue();
    let entries = format!(
        "{}{}{}",
        slapd::person(
            "dave",
            "dave@partner.example",
            &[("userCertificate;binary", &der(&expired))]
        ),
        slapd::person(
            "erin",
            "erin@partner.example",
            &[("userSMIMECertificate", &bag(&[&untrusted]))]
        ),
        slapd::person(
            "frank",
            "frank@partner.example",
            &[("userCertificate;binary", &der(&mallory))]
        ),
    );
    let (ldap, pki) = tls_slapd(&entries).await;
    let gw = Gateway::start(starttls_config(&ldap, &pki, "")).await;
    for (who, why) in [
        ("dave@partner.example", "expired"),
        ("erin@partner.example", "does not chain to a trusted root"),
        (
            "frank@partner.example",
            "issued to mallory@partner.example, not to frank@partner.example",
        ),
    ] {
        let r = rcpt(&gw, who).await;
        assert_eq!(r.0, 550, "{who}: {r:?}\n{}", gw.logs());
        let (ok, text) = gw.cli(&["certs", "lookup", who]);
        assert!(!ok, "{text}");
        assert!(text.contains(&format!("refused: {why}")), "{who}: {text}");
        assert!(text.contains("result: no usable certificate"), "{text}");
    }
    // Each was asked once: the refusals are decided from the cached answers.
    assert_eq!(lookups(&gw, "found").await, 3, "{}", gw.logs());
}

/// slapd with TLS (a fresh test CA), holding `entries`.
async fn tls_slapd(entries: &str) -> (Slapd, TestPki) {
    let pki = TestPki::new("directory TLS CA");
    let ldap = Slapd::start(entries, Some(&pki.server)).await;
    (ldap, pki)
}

/// A gateway asking `ldap` over StartTLS as the service account, plus `extra` keys.
fn starttls_config(ldap: &Slapd, pki: &TestPki, extra: &str) -> GatewayConfig {
    config(&bound(
        &ldap.url(),
        &format!("starttls = true\nca_file = \"ldap-ca.pem\"\n{extra}"),
    ))
    .file("ldap-ca.pem", pki.ca_pem.clone())
}

#[tokio::test]
async fn filter_syntax_in_an_address_never_matches_another_entry() {
    let (bob_cert, _) = Leaf::new("bob@partner.example", Alg::EcP256).issue();
    let entries = slapd::person(
        "bob",
        "bob@partner.example",
        &[("userCertificate;binary", &der(&bob_cert))],
    );
    let (ldap, pki) = tls_slapd(&entries).await;
    // What the addresses below would find if they were put into the filter unescaped.
    let bob_dn = format!("cn=bob,{}", slapd::BASE);
    assert_eq!(
        ldap.search_dns("(mail=*@partner.example)"),
        std::slice::from_ref(&bob_dn)
    );
    assert_eq!(ldap.search_dns("(mail=b*)"), std::slice::from_ref(&bob_dn));
    let proofs = ldap.log().len();
    let gw = Gateway::start(starttls_config(&ldap, &pki, "")).await;

    // Through SMTP: `*` is a legal local-part character.
    for who in ["*@partner.example", "b*@partner.example"] {
        let r = rcpt(&gw, who).await;
        assert_eq!(r.0, 550, "{who}: {r:?}\n{}", gw.logs());
    }
    // Through the operator's command, which takes any string.
    for who in [
        "*)(mail=*",
        "*",
        "bob@partner.example)(mail=*",
        "\\62ob@partner.example",
        "(|(mail=*))",
    ] {
        let (ok, text) = gw.cli(&["certs", "lookup", who]);
        assert!(!ok, "{who}: {text}");
        assert!(text.contains("no entry matched"), "{who}: {text}");
        assert!(!text.contains("accepted"), "{who}: {text}");
    }
    // slapd received the escaped assertion, one equality test per lookup, and never a `*`.
    let log = ldap.log()[proofs..].to_string();
    assert!(
        log.contains("filter=\"(mail=\\2A@partner.example)\"")
            || log.contains("filter=\"(mail=\\2a@partner.example)\""),
        "{log}"
    );
    assert!(!log.contains("filter=\"(mail=*"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("filter=") && l.contains('*')),
        "{log}"
    );
    assert_eq!(lookups(&gw, "found").await, 0, "{}", gw.logs());
}

#[tokio::test]
async fn answers_are_cached_for_cache_ttl_and_asked_again_after_it() {
    let (one_cert, one_key) = Leaf::new("bob@partner.example", Alg::EcP256).issue();
    let (two_cert, two_key) = Leaf::new("bob@partner.example", Alg::EcP256).issue();
    let entries = slapd::person(
        "bob",
        "bob@partner.example",
        &[("userCertificate;binary", &der(&one_cert))],
    );
    let (ldap, pki) = tls_slapd(&entries).await;
    let replace = |pem: &str| {
        use base64::Engine;
        ldap.modify(&format!(
            "dn: cn=bob,{}\nchangetype: modify\nreplace: userCertificate;binary\nuserCertificate;binary:: {}\n",
            slapd::BASE,
            base64::engine::general_purpose::STANDARD.encode(der(pem))
        ))
    };
    let long = Gateway::start(starttls_config(&ldap, &pki, "cache_ttl = \"1h\"\n")).await;
    let short = Gateway::start(starttls_config(&ldap, &pki, "cache_ttl = \"2s\"\n")).await;

    long.send_ok(
        "carol@example.org",
        &["bob@partner.example"],
        &message("bob@partner.example"),
    )
    .await;
    short
        .send_ok(
            "carol@example.org",
            &["bob@partner.example"],
            &message("bob@partner.example"),
        )
        .await;
    // The answer was cached at RCPT (the rule requires encryption), before this point.
    let first_short = Instant::now();
    let out = emls(&long, 1).await;
    assert!(decrypt(&out[0], &one_cert, &one_key).contains(CANARY));
    let out = emls(&short, 1).await;
    assert!(decrypt(&out[0], &one_cert, &one_key).contains(CANARY));

    // Bob's certificate changes in the directory.
    replace(&two_cert);

    // Within cache_ttl = 1h: the cached certificate, no new question.
    long.send_ok(
        "carol@example.org",
        &["bob@partner.example"],
        &message("bob@partner.example"),
    )
    .await;
    let out = emls(&long, 2).await;
    assert_eq!(out.len(), 2, "{}", long.logs());
    for m in &out {
        assert!(decrypt(m, &one_cert, &one_key).contains(CANARY));
    }
    assert_eq!(lookups(&long, "found").await, 1, "{}", long.logs());
    // A reload with the same [[directory]] keeps the answers: still no new question.
    long.sighup();
    assert!(
        long.wait_log("configuration reloaded", WAIT).await,
        "{}",
        long.logs()
    );
    assert_eq!(rcpt(&long, "bob@partner.example").await.0, 250);
    assert_eq!(lookups(&long, "found").await, 1, "{}", long.logs());
    // `cachet explain` runs the gateway's decision after asking the directory itself.
    let (ok, text) = long.cli(&[
        "explain",
        "--from",
        "carol@example.org",
        "--to",
        "bob@partner.example",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("encrypt:  yes"), "{text}");

    // After cache_ttl = 2s: asked again, and the new certificate is used.
    let wait =
        Duration::from_secs(2).saturating_sub(first_short.elapsed()) + Duration::from_millis(500);
    tokio::time::sleep(wait).await;
    let before = lookups(&short, "found").await;
    short
        .send_ok(
            "carol@example.org",
            &["bob@partner.example"],
            &message("bob@partner.example"),
        )
        .await;
    let out = emls(&short, 2).await;
    assert_eq!(out.len(), 2, "{}", short.logs());
    // Asked again (at least once: on a slow machine sealing may also come cache_ttl after RCPT).
    assert!(lookups(&short, "found").await > before, "{}", short.logs());
    // The first went to the old certificate, the one after cache_ttl to the new one.
    assert!(decrypts(&out[0], &one_cert, &one_key));
    assert!(!decrypts(&out[0], &two_cert, &two_key));
    assert!(decrypts(&out[1], &two_cert, &two_key), "{}", short.logs());
}
