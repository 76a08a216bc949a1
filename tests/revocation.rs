//! Revocation checking (issue 10, revocation half), against real sources started by the test:
//! CRLs made by rcgen and served by a small HTTP server on 127.0.0.1, `openssl ocsp` as the
//! OCSP responder, and OpenSSL-made OCSP requests and responses for the codec. Gateway cases run
//! the real binary; what reaches the upstream is judged by `openssl cms`.
//!
//! The gateway fetches in the background; a test waits for the log line that says the answer
//! is in ("CRL loaded", "OCSP answer", "OCSP check failed") before it asks, never a sleep.

mod common;
mod smime_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use cachet::store::revocation::ocsp;
use common::http::HttpServer;
use common::*;
use der::{Decode, DecodePem};
use rcgen::{
    CertificateRevocationListParams, ExtendedKeyUsagePurpose, Issuer, KeyIdMethod, KeyPair,
    RevocationReason, RevokedCertParams,
};
use smime_common::{Alg, Leaf, openssl_decrypt, read, write};

const WAIT: Duration = Duration::from_secs(20);
const CANARY: &str = "CANARY-revocation-7f3a";

/// Serial numbers with a non-zero top byte below 0x40: positive, 16 hex digits in OpenSSL's
/// index.txt.
fn serial() -> u64 {
    0x1000_0000_0000_0000 + rand::random::<u64>() % 0x2000_0000_0000_0000
}

/// A recipient certificate from the RFC 9216 CA: (Leaf settings, cert PEM, key PEM).
fn issue(email: &str, serial: u64, crl: Option<&str>, ocsp: Option<&str>) -> (String, String) {
    let mut leaf = Leaf::new(email, Alg::Rsa2048);
    leaf.serial = Some(serial);
    leaf.crl_urls = crl.map(|u| vec![u.to_string()]).unwrap_or_default();
    leaf.ocsp_url = ocsp.map(str::to_string);
    leaf.issue()
}

/// A CRL from the RFC 9216 CA (or, with `other_key`, one claiming to be from it but signed by
/// another key) listing `revoked`, valid from `this` to `next` relative to now.
fn crl(revoked: &[u64], this: time::Duration, next: time::Duration, other_key: bool) -> Vec<u8> {
    let key = if other_key {
        KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap()
    } else {
        KeyPair::from_pem(&read("ca.rsa.key")).unwrap()
    };
    let issuer = Issuer::from_ca_cert_pem(&read("ca.rsa.crt"), key).unwrap();
    let now = time::OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now + this,
        next_update: now + next,
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(*s),
                revocation_time: now - time::Duration::hours(2),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .der()
    .to_vec()
}

fn fresh_crl(revoked: &[u64]) -> Vec<u8> {
    crl(
        revoked,
        -time::Duration::hours(1),
        time::Duration::days(1),
        false,
    )
}

/// A gateway trusting the RFC 9216 CA, refreshing revocation every second.
fn config(up: &Upstream, revocation: &str) -> GatewayConfig {
    GatewayConfig::new()
        .upstream(up)
        .with("keys", "dir", &toml_str("keys"))
        .with("certificates", "dir", &toml_str("recipients"))
        .with("certificates", "trust", r#"["trust/ca.pem"]"#)
        .with("certificates", "revocation_interval", &toml_str("1s"))
        .with("certificates", "fetch_timeout", &toml_str("5s"))
        .with("policy", "revocation", &toml_str(revocation))
        .raw(
            "[[rule]]\nname = \"partners\"\nto = [\"*@partner.example\"]\nencrypt = \"required\"\n",
        )
        .file("trust/ca.pem", read("ca.rsa.crt"))
        .file("keys/README", "")
        .file("recipients/README", "")
}

fn message(to: &str) -> Vec<u8> {
    format!(
        "From: carol@example.org\r\nTo: {to}\r\nSubject: revocation\r\nMessage-ID: <rev@example.org>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{CANARY}\r\n"
    )
    .into_bytes()
}

/// MAIL + RCPT on a fresh session: the RCPT reply.
async fn rcpt(gw: &Gateway, to: &str) -> (u16, String) {
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(c.cmd("MAIL FROM:<carol@example.org>").await.unwrap().0, 250);
    let r = c.cmd(&format!("RCPT TO:<{to}>")).await.unwrap();
    (r.0, r.1.to_string())
}

/// Delivered to the upstream encrypted to `cert`/`key`: the canary decrypts.
async fn delivered_encrypted(gw: &Gateway, up: &Upstream, to: &str, cert: &str, key: &str) {
    gw.send_ok("carol@example.org", &[to], &message(to)).await;
    let got = gw.expect_upstream(up, 1).await;
    let data = &got[0].data;
    assert!(
        !String::from_utf8_lossy(data).contains(CANARY),
        "sent in clear"
    );
    let dir = tempfile::tempdir().unwrap();
    let plain = openssl_decrypt(
        data,
        &write(dir.path(), "r.crt", cert),
        &write(dir.path(), "r.key", key),
    );
    assert!(String::from_utf8_lossy(&plain).contains(CANARY));
}

async fn wait_log(gw: &Gateway, needle: &str) {
    assert!(
        gw.wait_log(needle, WAIT).await,
        "no {needle:?} in the logs:\n{}",
        gw.logs()
    );
}

// ---------------------------------------------------------------- OpenSSL OCSP responder

/// `openssl ocsp` serving `index.txt` for the RFC 9216 CA on 127.0.0.1:PORT.
struct Responder {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// One index.txt line: `V` (valid) or `R` (revoked) for `serial`.
fn index_line(status: char, serial: u64) -> String {
    let revoked = if status == 'R' { "240101000000Z" } else { "" };
    format!("{status}\t351231235959Z\t{revoked}\t{serial:X}\tunknown\t/CN=test {serial:X}\n")
}

impl Responder {
    fn start(index: &str) -> Responder {
        let dir = tempfile::tempdir().unwrap();
        let idx = write(dir.path(), "index.txt", index);
        let ca = write(dir.path(), "ca.crt", read("ca.rsa.crt"));
        let rsigner = write(dir.path(), "rsigner.crt", read("ca.rsa.crt"));
        let rkey = write(dir.path(), "rsigner.key", read("ca.rsa.key"));
        let port = free_port();
        let mut child = Command::new("openssl")
            .args(["ocsp", "-index"])
            .arg(&idx)
            .args(["-port", &port.to_string(), "-rsigner"])
            .arg(&rsigner)
            .arg("-rkey")
            .arg(&rkey)
            .arg("-CA")
            .arg(&ca)
            .args(["-nmin", "60", "-rmd", "sha256", "-ignore_err"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl ocsp");
        // Ready when it prints "ACCEPT [::]:PORT"; a probe connection would block the
        // single-threaded responder until it closed.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("ACCEPT") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(WAIT).expect("openssl ocsp did not listen");
        Responder {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- gateway: CRLs

#[tokio::test]
async fn crl_good_delivers_encrypted_and_one_fetch_serves_every_certificate_sharing_the_url() {
    let http = HttpServer::start().await;
    let url = http.url("/ca.crl");
    let (bob_s, dave_s) = (serial(), serial());
    let (bob, bob_key) = issue("bob@partner.example", bob_s, Some(&url), None);
    let (dave, _) = issue("dave@partner.example", dave_s, Some(&url), None);
    http.set("/ca.crl", fresh_crl(&[serial()]));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(
        config(&up, "hard")
            .file("recipients/bob.pem", bob.clone())
            .file("recipients/dave.pem", dave),
    )
    .await;
    wait_log(&gw, "CRL loaded").await;
    delivered_encrypted(&gw, &up, "bob@partner.example", &bob, &bob_key).await;
    // Two certificates name the URL; it was fetched once (and is fresh for a day).
    assert_eq!(http.hits("/ca.crl"), 1, "{}", gw.logs());
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("cachet_revocation_checks_total{result=\"good\",source=\"crl\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("cachet_crl_age_seconds{{origin=\"{url}\"}}")),
        "{metrics}"
    );
    // The CRL sits in the spool's cache, written atomically (no .part left).
    let cache: Vec<PathBuf> = std::fs::read_dir(gw.spool_dir().join("revocation"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cache.len(), 1, "{cache:?}");
    assert!(cache[0].to_string_lossy().ends_with(".der"));
    // `cachet certs lookup` shows the status the gateway would use.
    let (ok, out) = gw.cli(&["certs", "lookup", "bob@partner.example"]);
    assert!(ok, "{out}");
    assert!(out.contains("revocation: good (crl)"), "{out}");
}

#[tokio::test]
async fn crl_revoked_certificate_is_never_used_even_in_soft_mode() {
    let http = HttpServer::start().await;
    let url = http.url("/ca.crl");
    let bob_s = serial();
    let (bob, _) = issue("bob@partner.example", bob_s, Some(&url), None);
    http.set("/ca.crl", fresh_crl(&[bob_s]));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(config(&up, "soft").file("recipients/bob.pem", bob)).await;
    wait_log(&gw, "CRL loaded").await;
    let (code, text) = rcpt(&gw, "bob@partner.example").await;
    assert_eq!(code, 550, "{text}\n{}", gw.logs());
    assert!(text.contains("5.7.1"), "{text}");
    assert!(gw.logs().contains("recipient certificate is revoked"));
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("cachet_revocation_checks_total{result=\"revoked\",source=\"crl\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn expired_crl_is_unknown_status_hard_refuses_soft_encrypts() {
    let http = HttpServer::start().await;
    let url = http.url("/ca.crl");
    let bob_s = serial();
    let (bob, bob_key) = issue("bob@partner.example", bob_s, Some(&url), None);
    // Does not list bob, but its nextUpdate has passed.
    http.set(
        "/ca.crl",
        crl(
            &[],
            -time::Duration::days(2),
            -time::Duration::days(1),
            false,
        ),
    );
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let hard = Gateway::start(config(&up, "hard").file("recipients/bob.pem", bob.clone())).await;
    wait_log(&hard, "CRL loaded").await;
    let (code, text) = rcpt(&hard, "bob@partner.example").await;
    assert_eq!(code, 550, "{text}\n{}", hard.logs());
    assert!(
        hard.logs().contains("past its nextUpdate"),
        "{}",
        hard.logs()
    );

    let soft = Gateway::start(config(&up, "soft").file("recipients/bob.pem", bob.clone())).await;
    wait_log(&soft, "CRL loaded").await;
    delivered_encrypted(&soft, &up, "bob@partner.example", &bob, &bob_key).await;
    assert!(
        soft.logs()
            .contains("revocation status unknown; used (revocation = soft)")
    );
}

#[tokio::test]
async fn crl_signed_by_another_key_is_not_trusted() {
    let http = HttpServer::start().await;
    let url = http.url("/ca.crl");
    let bob_s = serial();
    let (bob, _) = issue("bob@partner.example", bob_s, Some(&url), None);
    // Same issuer name, wrong key, and it does not list bob: believing it would say "good".
    http.set(
        "/ca.crl",
        crl(
            &[],
            -time::Duration::hours(1),
            time::Duration::days(1),
            true,
        ),
    );
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(config(&up, "hard").file("recipients/bob.pem", bob)).await;
    wait_log(&gw, "CRL loaded").await;
    let (code, text) = rcpt(&gw, "bob@partner.example").await;
    assert_eq!(code, 550, "{text}\n{}", gw.logs());
    assert!(
        gw.logs().contains("not signed by the issuer's key"),
        "{}",
        gw.logs()
    );
}

#[tokio::test]
async fn crl_dir_file_revokes_without_any_fetch() {
    let bob_s = serial();
    let (bob, _) = issue("bob@partner.example", bob_s, None, None);
    let pem = format!(
        "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            fresh_crl(&[bob_s])
        )
    );
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(
        config(&up, "soft")
            .with("certificates", "crl_dir", &toml_str("crls"))
            .file("crls/ca.crl", pem)
            .file("recipients/bob.pem", bob),
    )
    .await;
    // Loaded with the configuration: no wait.
    let (code, text) = rcpt(&gw, "bob@partner.example").await;
    assert_eq!(code, 550, "{text}\n{}", gw.logs());
    // `cachet explain` says why (it reads crl_dir too).
    let (ok, out) = gw.cli(&[
        "explain",
        "--from",
        "carol@example.org",
        "--to",
        "bob@partner.example",
        "--json",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("revoked (crl)"), "{out}");
    let (_, out) = gw.cli(&["check"]);
    assert!(
        out.contains("certificate for bob@partner.example") && out.contains("is revoked (crl)"),
        "{out}"
    );
    // `cachet certs lookup` refuses it too, saying why, and finds nothing usable.
    let (ok, out) = gw.cli(&["certs", "lookup", "bob@partner.example"]);
    assert!(!ok, "{out}");
    assert!(out.contains("refused: revoked (crl)"), "{out}");
    assert!(out.contains("result: no usable certificate"), "{out}");
}

#[tokio::test]
async fn check_warns_when_hard_mode_can_never_know_a_certificates_status() {
    // No distribution point, no responder, no crl_dir: under hard it would never be used.
    let (bob, _) = issue("bob@partner.example", serial(), None, None);
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(config(&up, "hard").file("recipients/bob.pem", bob)).await;
    let (_, out) = gw.cli(&["check"]);
    assert!(
        out.contains("certificate for bob@partner.example")
            && out.contains("its revocation status cannot be known"),
        "{out}"
    );
    // And indeed: refused at RCPT.
    assert_eq!(rcpt(&gw, "bob@partner.example").await.0, 550);
}

#[tokio::test]
async fn hard_mode_defers_while_the_first_answer_is_coming_then_delivers() {
    let http = HttpServer::start().await;
    let url = http.url("/ca.crl");
    let bob_s = serial();
    let (bob, bob_key) = issue("bob@partner.example", bob_s, Some(&url), None);
    http.set("/ca.crl", fresh_crl(&[serial()]));
    // A slow CRL server: the message is sealed long before the answer is in.
    http.delay("/ca.crl", Duration::from_secs(6));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(
        config(&up, "hard")
            .with("certificates", "fetch_timeout", &toml_str("20s"))
            .file("recipients/bob.pem", bob.clone()),
    )
    .await;
    // Accepted at RCPT although nothing is known yet (rule: required, on_missing_key: reject)...
    gw.send_ok(
        "carol@example.org",
        &["bob@partner.example"],
        &message("bob@partner.example"),
    )
    .await;
    // ...waits in the queue instead of being bounced...
    wait_log(&gw, "deferred: waiting for revocation status").await;
    assert!(!gw.logs().contains("CRL loaded"), "{}", gw.logs());
    // ...and goes out encrypted once the CRL says good.
    wait_log(&gw, "CRL loaded").await;
    let got = gw.expect_upstream(&up, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let plain = openssl_decrypt(
        &got[0].data,
        &write(dir.path(), "r.crt", &bob),
        &write(dir.path(), "r.key", &bob_key),
    );
    assert!(String::from_utf8_lossy(&plain).contains(CANARY));
}

#[tokio::test]
async fn oversized_crl_is_refused_and_check_suggests_hard_and_reports_bad_crl_files() {
    let http = HttpServer::start().await;
    let url = http.url("/big.crl");
    let bob_s = serial();
    let (bob, _) = issue("bob@partner.example", bob_s, Some(&url), None);
    // Two thousand entries: far beyond a 1 KiB cap.
    let many: Vec<u64> = (0..2000).map(|_| serial()).collect();
    http.set("/big.crl", fresh_crl(&many));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(
        config(&up, "soft")
            .with("certificates", "crl_max_size", &toml_str("1KiB"))
            .with("certificates", "crl_dir", &toml_str("crls"))
            .file("crls/notes.txt", "not a CRL")
            .file("recipients/bob.pem", bob),
    )
    .await;
    wait_log(&gw, "CRL fetch failed").await;
    assert!(
        gw.logs().contains("larger than 1024 bytes"),
        "{}",
        gw.logs()
    );
    assert!(!gw.logs().contains("CRL loaded"));
    // No half-written CRL is left behind.
    let cache = gw.spool_dir().join("revocation");
    let left: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    let (_, out) = gw.cli(&["check"]);
    assert!(
        out.contains(
            "rule \"partners\" has encrypt = \"required\": consider revocation = \"hard\""
        ),
        "{out}"
    );
    assert!(out.contains("notes.txt"), "{out}");
}

#[tokio::test]
async fn revoked_intermediate_revokes_the_certificates_under_it() {
    // An intermediate CA under the RFC 9216 root, with a serial we know.
    let int_s = serial();
    let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Revoked Intermediate CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p.serial_number = Some(rcgen::SerialNumber::from(int_s));
    let root = Issuer::from_ca_cert_pem(
        &read("ca.rsa.crt"),
        KeyPair::from_pem(&read("ca.rsa.key")).unwrap(),
    )
    .unwrap();
    let int_pem = p.signed_by(&int_key, &root).unwrap().pem();
    let mut leaf = Leaf::new("bob@partner.example", Alg::Rsa2048);
    leaf.intermediate = Some((int_pem.clone(), int_key.serialize_pem()));
    let (bob, bob_key) = leaf.issue();
    let up = Upstream::start(UpstreamOptions::starttls()).await;

    // The root's CRL does not list the intermediate: bob is usable (soft: the leaf has no CRL).
    let fine = Gateway::start(
        config(&up, "soft")
            .with("certificates", "crl_dir", &toml_str("crls"))
            .file("crls/root.crl", fresh_crl(&[serial()]))
            .file("recipients/int.pem", int_pem.clone())
            .file("recipients/bob.pem", bob.clone()),
    )
    .await;
    delivered_encrypted(&fine, &up, "bob@partner.example", &bob, &bob_key).await;

    // The root's CRL lists the intermediate: bob's certificate is never used, even in soft mode.
    let gw = Gateway::start(
        config(&up, "soft")
            .with("certificates", "crl_dir", &toml_str("crls"))
            .file("crls/root.crl", fresh_crl(&[int_s]))
            .file("recipients/int.pem", int_pem)
            .file("recipients/bob.pem", bob),
    )
    .await;
    let (code, text) = rcpt(&gw, "bob@partner.example").await;
    assert_eq!(code, 550, "{text}\n{}", gw.logs());
    assert!(
        gw.logs().contains("recipient certificate is revoked"),
        "{}",
        gw.logs()
    );
}

#[tokio::test]
async fn a_reload_looks_at_new_certificates_at_once() {
    let http = HttpServer::start().await;
    let url = http.url("/ca.crl");
    let bob_s = serial();
    let (bob, _) = issue("bob@partner.example", bob_s, Some(&url), None);
    http.set("/ca.crl", fresh_crl(&[bob_s]));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    // An hour between rounds: only the reload can make the refresher look now.
    let gw = Gateway::start(config(&up, "soft").with(
        "certificates",
        "revocation_interval",
        &toml_str("1h"),
    ))
    .await;
    std::fs::write(gw.dir().join("recipients/bob.pem"), bob).unwrap();
    gw.sighup();
    wait_log(&gw, "configuration reloaded").await;
    wait_log(&gw, "CRL loaded").await;
    let (code, text) = rcpt(&gw, "bob@partner.example").await;
    assert_eq!(code, 550, "{text}\n{}", gw.logs());
    assert_eq!(http.hits("/ca.crl"), 1);
}

#[tokio::test]
async fn redirects_are_followed_only_within_http() {
    let http = HttpServer::start().await;
    let (bob_s, dave_s) = (serial(), serial());
    let (bob, _) = issue(
        "bob@partner.example",
        bob_s,
        Some(&http.url("/moved.crl")),
        None,
    );
    let (dave, _) = issue(
        "dave@partner.example",
        dave_s,
        Some(&http.url("/tls.crl")),
        None,
    );
    http.redirect("/moved.crl", "/ca.crl");
    http.redirect(
        "/tls.crl",
        &http.url("/ca.crl").replace("http://", "https://"),
    );
    http.set("/ca.crl", fresh_crl(&[bob_s, dave_s]));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(
        config(&up, "soft")
            .file("recipients/bob.pem", bob)
            .file("recipients/dave.pem", dave),
    )
    .await;
    wait_log(&gw, "CRL loaded").await;
    wait_log(&gw, "changes the scheme; refused").await;
    // http -> http: followed, bob is revoked.
    assert_eq!(rcpt(&gw, "bob@partner.example").await.0, 550);
    assert_eq!(
        http.hits("/ca.crl"),
        1,
        "the https redirect was not followed"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_costs_one_fetch_timeout() {
    let http = HttpServer::start().await;
    let url = http.url("/slow.crl");
    let (bob, bob_key) = issue("bob@partner.example", serial(), Some(&url), None);
    http.set("/slow.crl", fresh_crl(&[]));
    http.delay("/slow.crl", Duration::from_secs(25));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let started = Instant::now();
    let gw = Gateway::start(
        config(&up, "soft")
            .with("certificates", "fetch_timeout", &toml_str("2s"))
            .file("recipients/bob.pem", bob.clone()),
    )
    .await;
    wait_log(&gw, "CRL fetch failed").await;
    assert!(started.elapsed() < Duration::from_secs(20), "{}", gw.logs());
    assert!(gw.logs().contains("timeout"), "{}", gw.logs());
    // Soft: the unknown status does not stop encryption.
    delivered_encrypted(&gw, &up, "bob@partner.example", &bob, &bob_key).await;
}

#[tokio::test]
async fn shutdown_is_not_held_by_a_fetch_in_flight() {
    let http = HttpServer::start().await;
    let url = http.url("/slow.crl");
    let (bob, _) = issue("bob@partner.example", serial(), Some(&url), None);
    http.set("/slow.crl", fresh_crl(&[]));
    http.delay("/slow.crl", Duration::from_secs(28));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let mut gw = Gateway::start(
        config(&up, "soft")
            .with("certificates", "fetch_timeout", &toml_str("60s"))
            .file("recipients/bob.pem", bob),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while http.hits("/slow.crl") == 0 {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The download hangs for 28 s; SIGTERM must not wait for it.
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(
        status.is_some(),
        "still running 15 s after SIGTERM\n{}",
        gw.logs()
    );
    assert!(status.unwrap().success(), "{status:?}\n{}", gw.logs());
    assert!(gw.logs().contains("stopped"), "{}", gw.logs());
}

// ---------------------------------------------------------------- gateway: OCSP

#[tokio::test]
async fn ocsp_good_encrypts_and_ocsp_revoked_is_refused() {
    let (bob_s, dave_s) = (serial(), serial());
    let responder = Responder::start(&format!(
        "{}{}",
        index_line('V', bob_s),
        index_line('R', dave_s)
    ));
    let (bob, bob_key) = issue("bob@partner.example", bob_s, None, Some(&responder.url()));
    let (dave, _) = issue("dave@partner.example", dave_s, None, Some(&responder.url()));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(
        config(&up, "hard")
            .file("recipients/bob.pem", bob.clone())
            .file("recipients/dave.pem", dave),
    )
    .await;
    // Both answers in (one per certificate).
    let deadline = Instant::now() + WAIT;
    while gw.logs().matches("OCSP answer").count() < 2 {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, text) = rcpt(&gw, "dave@partner.example").await;
    assert_eq!(code, 550, "{text}\n{}", gw.logs());
    delivered_encrypted(&gw, &up, "bob@partner.example", &bob, &bob_key).await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    for want in [
        "cachet_revocation_checks_total{result=\"good\",source=\"ocsp\"}",
        "cachet_revocation_checks_total{result=\"revoked\",source=\"ocsp\"}",
        "cachet_revocation_fetches_total{kind=\"ocsp\",result=\"ok\"}",
    ] {
        assert!(metrics.contains(want), "{want}\n{metrics}");
    }
}

#[tokio::test]
async fn ocsp_answers_survive_a_restart_without_the_responder() {
    let (bob_s, dave_s) = (serial(), serial());
    let responder = Responder::start(&format!(
        "{}{}",
        index_line('V', bob_s),
        index_line('R', dave_s)
    ));
    let (bob, _) = issue("bob@partner.example", bob_s, None, Some(&responder.url()));
    let (dave, _) = issue("dave@partner.example", dave_s, None, Some(&responder.url()));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let mut gw = Gateway::start(
        config(&up, "hard")
            .file("recipients/bob.pem", bob)
            .file("recipients/dave.pem", dave),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while gw.logs().matches("OCSP answer").count() < 2 {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(responder);
    gw.restart().await;
    let deadline = Instant::now() + WAIT;
    while gw.logs().matches("OCSP answer").count() < 4 {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both answers came back from the cache: dave stays revoked, bob stays usable under hard.
    assert!(!gw.logs().contains("OCSP check failed"), "{}", gw.logs());
    assert_eq!(rcpt(&gw, "dave@partner.example").await.0, 550);
    assert_eq!(rcpt(&gw, "bob@partner.example").await.0, 250);
}

#[tokio::test]
async fn responder_down_soft_delivers_encrypted_hard_applies_on_missing_key() {
    // A port nobody listens on.
    let down = format!("http://127.0.0.1:{}/", free_port());
    let bob_s = serial();
    let (bob, bob_key) = issue("bob@partner.example", bob_s, None, Some(&down));
    let up = Upstream::start(UpstreamOptions::starttls()).await;

    let soft = Gateway::start(config(&up, "soft").file("recipients/bob.pem", bob.clone())).await;
    wait_log(&soft, "OCSP check failed").await;
    delivered_encrypted(&soft, &up, "bob@partner.example", &bob, &bob_key).await;

    let hard = Gateway::start(config(&up, "hard").file("recipients/bob.pem", bob.clone())).await;
    wait_log(&hard, "OCSP check failed").await;
    let (code, text) = rcpt(&hard, "bob@partner.example").await;
    assert_eq!(code, 550, "{text}\n{}", hard.logs());
    // on_missing_key = hold instead: accepted and held, nothing relayed in clear.
    let held = Gateway::start(
        config(&up, "hard")
            .with("policy", "on_missing_key", &toml_str("hold"))
            .file("recipients/bob.pem", bob),
    )
    .await;
    wait_log(&held, "OCSP check failed").await;
    held.send_ok(
        "carol@example.org",
        &["bob@partner.example"],
        &message("bob@partner.example"),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, out) = held.cli(&["queue", "list"]);
        // `queue list` prints "<id>  hold      <size> ..." for a held message.
        if out.contains("  hold ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not held: {out}\n{}",
            held.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.received().len(), 1, "only the soft gateway's copy");
}

#[tokio::test]
async fn ocsp_response_about_another_certificate_is_refused() {
    let (bob_s, dave_s) = (serial(), serial());
    let dir = tempfile::tempdir().unwrap();
    let (dave, _) = issue("dave@partner.example", dave_s, None, None);
    // A genuine, CA-signed "good" answer -- about dave.
    let canned = openssl_response(dir.path(), &dave, &index_line('V', dave_s), None);
    let http = HttpServer::start().await;
    http.set("/ocsp", canned);
    let (bob, _) = issue("bob@partner.example", bob_s, None, Some(&http.url("/ocsp")));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(config(&up, "hard").file("recipients/bob.pem", bob)).await;
    wait_log(&gw, "not about this certificate").await;
    let (code, text) = rcpt(&gw, "bob@partner.example").await;
    assert_eq!(code, 550, "{text}\n{}", gw.logs());
}

// ---------------------------------------------------------------- gateway: our signing key

#[tokio::test]
async fn revoked_signing_certificate_is_not_used_and_raises_an_alert() {
    let http = HttpServer::start().await;
    let url = http.url("/ca.crl");
    let alice_s = serial();
    let mut leaf = Leaf::new("alice@example.org", Alg::Rsa2048);
    leaf.serial = Some(alice_s);
    leaf.crl_urls = vec![url.clone()];
    let (cert, key) = leaf.issue();
    http.set("/ca.crl", fresh_crl(&[alice_s]));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(
        config(&up, "soft")
            .with("policy", "sign", &toml_str("required"))
            .file("keys/alice@example.org.pem", format!("{key}{cert}")),
    )
    .await;
    wait_log(&gw, "CRL loaded").await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let r = c
        .send_message(
            "alice@example.org",
            &["someone@elsewhere.example"],
            b"From: alice@example.org\r\nTo: someone@elsewhere.example\r\nSubject: s\r\n\r\nhi\r\n",
        )
        .await
        .unwrap();
    assert_eq!(r.0, 550, "{r:?}\n{}", gw.logs());
    assert!(r.1.contains("no valid S/MIME signing key"), "{r:?}");
    assert!(
        gw.logs()
            .contains("ALERT: our signing certificate is revoked"),
        "{}",
        gw.logs()
    );
    assert!(up.received().is_empty());
}

/// encrypt_to_self: the sender's own encryption certificate is checked like a recipient's; a
/// revoked one is left out of the RecipientInfos, and the copy still reaches its recipient.
#[tokio::test]
async fn a_revoked_own_encryption_certificate_is_left_out_of_encrypt_to_self() {
    let http = HttpServer::start().await;
    let url = http.url("/ca.crl");
    let mut sign = Leaf::new("carol@example.org", Alg::Rsa2048);
    sign.serial = Some(serial());
    sign.crl_urls = vec![url.clone()];
    let (sign_cert, sign_key) = sign.issue();
    let own_s = serial();
    let mut own = Leaf::new("carol@example.org", Alg::Rsa2048);
    own.serial = Some(own_s);
    own.crl_urls = vec![url.clone()];
    own.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment];
    let (own_cert, _) = own.issue();
    let bob_s = serial();
    let (bob, bob_key) = issue("bob@partner.example", bob_s, Some(&url), None);
    http.set("/ca.crl", fresh_crl(&[own_s]));
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(
        config(&up, "soft")
            .with("policy", "encrypt_to_self", "true")
            .file(
                "keys/carol@example.org.pem",
                format!("{sign_key}{sign_cert}{own_cert}"),
            )
            .file("recipients/bob.pem", bob.clone()),
    )
    .await;
    wait_log(&gw, "CRL loaded").await;
    delivered_encrypted(&gw, &up, "bob@partner.example", &bob, &bob_key).await;
    let got = up.received();
    let dir = tempfile::tempdir().unwrap();
    let p7 = write_p7(dir.path(), &got[0].data);
    let out = std::process::Command::new("openssl")
        .args(["cms", "-cmsout", "-print", "-inform", "PEM", "-in"])
        .arg(&p7)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let recipients = text.matches("d.ktri:").count();
    assert_eq!(
        recipients, 1,
        "only bob, not the revoked own certificate:\n{text}"
    );
    assert!(
        gw.logs()
            .contains("own encryption certificate (encrypt_to_self) is revoked"),
        "{}",
        gw.logs()
    );
}

/// The pkcs7-mime body of a message as PEM, for `openssl cms -cmsout`.
fn write_p7(dir: &Path, message: &[u8]) -> PathBuf {
    let text = String::from_utf8_lossy(message);
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let b64: String = body.lines().map(str::trim).collect::<Vec<_>>().join("\n");
    write(
        dir,
        "m.pem",
        format!("-----BEGIN CMS-----\n{}\n-----END CMS-----\n", b64.trim()),
    )
}

// ---------------------------------------------------------------- OCSP codec vs OpenSSL

fn x509(pem: &str) -> x509_cert::Certificate {
    x509_cert::Certificate::from_pem(pem.as_bytes()).unwrap()
}

/// `openssl ocsp` without a server: answer `req` (DER, ours or OpenSSL's for `cert`) from
/// `index`, signed by `signer` (cert, key PEM) or the CA.
fn openssl_response(dir: &Path, cert: &str, index: &str, req: Option<&[u8]>) -> Vec<u8> {
    openssl_response_by(dir, cert, index, req, None)
}

fn openssl_response_by(
    dir: &Path,
    cert: &str,
    index: &str,
    req: Option<&[u8]>,
    signer: Option<(&str, &str)>,
) -> Vec<u8> {
    let ca = write(dir, "ca.crt", read("ca.rsa.crt"));
    let (scert, skey) = match signer {
        Some((c, k)) => (c.to_string(), k.to_string()),
        None => (read("ca.rsa.crt"), read("ca.rsa.key")),
    };
    let rsigner = write(dir, "rsigner.crt", scert);
    let rkey = write(dir, "rsigner.key", skey);
    let idx = write(dir, "index.txt", index);
    let reqfile = dir.join("req.der");
    match req {
        Some(r) => {
            std::fs::write(&reqfile, r).unwrap();
        }
        None => {
            let c = write(dir, "cert.crt", cert);
            let st = Command::new("openssl")
                .args(["ocsp", "-no_nonce", "-issuer"])
                .arg(&ca)
                .arg("-cert")
                .arg(&c)
                .arg("-reqout")
                .arg(&reqfile)
                .output()
                .unwrap();
            assert!(st.status.success(), "{st:?}");
        }
    }
    let resp = dir.join("resp.der");
    let out = Command::new("openssl")
        .args(["ocsp", "-index"])
        .arg(&idx)
        .arg("-rsigner")
        .arg(&rsigner)
        .arg("-rkey")
        .arg(&rkey)
        .arg("-CA")
        .arg(&ca)
        .arg("-reqin")
        .arg(&reqfile)
        .arg("-respout")
        .arg(&resp)
        .args(["-nmin", "5", "-rmd", "sha256"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::read(resp).unwrap()
}

#[test]
fn openssl_request_decodes_to_our_cert_id_and_ours_reads_in_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let s = serial();
    let (bob, _) = issue("bob@partner.example", s, None, None);
    let ca = write(dir.path(), "ca.crt", read("ca.rsa.crt"));
    let c = write(dir.path(), "bob.crt", &bob);
    let theirs = dir.path().join("theirs.der");
    let out = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(&ca)
        .arg("-cert")
        .arg(&c)
        .arg("-reqout")
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let req = ocsp::OcspRequest::from_der(&std::fs::read(&theirs).unwrap()).unwrap();
    let sha1 = const_oid::ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
    let ours = ocsp::cert_id(&x509(&bob), &x509(&read("ca.rsa.crt")), sha1).unwrap();
    assert_eq!(req.tbs_request.request_list.len(), 1);
    assert_eq!(req.tbs_request.request_list[0].req_cert, ours);

    let mine = ocsp::request(
        &x509(&bob),
        &x509(&read("ca.rsa.crt")),
        Some(b"0123456789abcdef"),
    )
    .unwrap();
    let p = write(dir.path(), "mine.der", &mine);
    let out = Command::new("openssl")
        .args(["ocsp", "-req_text", "-reqin"])
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains(&format!("Serial Number: {s:X}")), "{text}");
    assert!(text.contains("OCSP Nonce"), "{text}");
}

#[test]
fn openssl_responses_good_revoked_and_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let (bob_s, dave_s) = (serial(), serial());
    let (bob, _) = issue("bob@partner.example", bob_s, None, None);
    let (dave, _) = issue("dave@partner.example", dave_s, None, None);
    let ca = x509(&read("ca.rsa.crt"));
    let index = format!("{}{}", index_line('V', bob_s), index_line('R', dave_s));
    let now = SystemTime::now();

    let nonce = b"nonce-0123456789";
    let req = ocsp::request(&x509(&bob), &ca, Some(nonce)).unwrap();
    let resp = openssl_response(dir.path(), &bob, &index, Some(&req));
    let v = ocsp::verify_response(&resp, &x509(&bob), &ca, Some(nonce), now).unwrap();
    assert_eq!(v.answer, ocsp::Answer::Good);
    assert!(v.valid_until > now + Duration::from_secs(60));
    // Another request's nonce: refused.
    let e =
        ocsp::verify_response(&resp, &x509(&bob), &ca, Some(b"other-nonce-0000"), now).unwrap_err();
    assert!(e.contains("nonce"), "{e}");

    let req = ocsp::request(&x509(&dave), &ca, None).unwrap();
    let resp = openssl_response(dir.path(), &dave, &index, Some(&req));
    let v = ocsp::verify_response(&resp, &x509(&dave), &ca, None, now).unwrap();
    assert_eq!(v.answer, ocsp::Answer::Revoked);
}

#[test]
fn response_about_another_certificate_replayed_late_or_from_the_future_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (bob_s, dave_s) = (serial(), serial());
    let (bob, _) = issue("bob@partner.example", bob_s, None, None);
    let (dave, _) = issue("dave@partner.example", dave_s, None, None);
    let ca = x509(&read("ca.rsa.crt"));
    let index = format!("{}{}", index_line('V', bob_s), index_line('V', dave_s));
    let about_dave = openssl_response(dir.path(), &dave, &index, None);
    let now = SystemTime::now();
    let e = ocsp::verify_response(&about_dave, &x509(&bob), &ca, None, now).unwrap_err();
    assert!(e.contains("not about this certificate"), "{e}");

    // -nmin 5: the same genuine answer, replayed ten minutes later, is stale.
    assert!(ocsp::verify_response(&about_dave, &x509(&dave), &ca, None, now).is_ok());
    let e = ocsp::verify_response(
        &about_dave,
        &x509(&dave),
        &ca,
        None,
        now + Duration::from_secs(600),
    )
    .unwrap_err();
    assert!(e.contains("stale"), "{e}");
    // Seen by a clock an hour behind: thisUpdate is in the future beyond the skew.
    let e = ocsp::verify_response(
        &about_dave,
        &x509(&dave),
        &ca,
        None,
        now - Duration::from_secs(3600),
    )
    .unwrap_err();
    assert!(e.contains("in the future"), "{e}");
    // Garbage is an error, not a panic.
    assert!(ocsp::verify_response(b"\x30\x03\x0a\x01\x00", &x509(&dave), &ca, None, now).is_err());
    assert!(ocsp::verify_response(&[], &x509(&dave), &ca, None, now).is_err());
}

/// A responder certificate from the RFC 9216 CA, with or without id-kp-OCSPSigning.
fn responder_cert(ocsp_signing: bool, untrusted: bool) -> (String, String) {
    let mut leaf = Leaf::new("ocsp@ca.example", Alg::Rsa2048);
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf.ekus = if ocsp_signing {
        vec![ExtendedKeyUsagePurpose::OcspSigning]
    } else {
        vec![ExtendedKeyUsagePurpose::EmailProtection]
    };
    leaf.untrusted = untrusted;
    leaf.issue()
}

#[test]
fn delegated_responder_needs_the_issuers_certification_and_ocsp_signing() {
    let dir = tempfile::tempdir().unwrap();
    let s = serial();
    let (bob, _) = issue("bob@partner.example", s, None, None);
    let ca = x509(&read("ca.rsa.crt"));
    let index = index_line('V', s);
    let now = SystemTime::now();

    let (rc, rk) = responder_cert(true, false);
    let resp = openssl_response_by(dir.path(), &bob, &index, None, Some((&rc, &rk)));
    let v = ocsp::verify_response(&resp, &x509(&bob), &ca, None, now).unwrap();
    assert_eq!(v.answer, ocsp::Answer::Good);

    for (eku, untrusted, why) in [
        (
            false,
            false,
            "a CA-issued certificate without id-kp-OCSPSigning",
        ),
        (true, true, "an OCSP signer the issuer never certified"),
    ] {
        let (rc, rk) = responder_cert(eku, untrusted);
        let resp = openssl_response_by(dir.path(), &bob, &index, None, Some((&rc, &rk)));
        let e = ocsp::verify_response(&resp, &x509(&bob), &ca, None, now).unwrap_err();
        assert!(e.contains("not signed by the issuer"), "{why}: {e}");
    }
}

#[tokio::test]
async fn signing_certificate_of_unknown_status_signs_in_soft_mode_and_not_in_hard_mode() {
    let down = format!("http://127.0.0.1:{}/", free_port());
    let mut leaf = Leaf::new("alice@example.org", Alg::Rsa2048);
    leaf.ocsp_url = Some(down);
    let (cert, key) = leaf.issue();
    let msg = b"From: alice@example.org\r\nTo: someone@elsewhere.example\r\nSubject: s\r\n\r\nsigned?\r\n";
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    for mode in ["soft", "hard"] {
        let gw = Gateway::start(
            config(&up, mode)
                .with("policy", "sign", &toml_str("required"))
                .file("keys/alice@example.org.pem", format!("{key}{cert}")),
        )
        .await;
        wait_log(&gw, "OCSP check failed").await;
        let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
        let r = c
            .send_message("alice@example.org", &["someone@elsewhere.example"], msg)
            .await
            .unwrap();
        if mode == "soft" {
            assert_eq!(r.0, 250, "{r:?}\n{}", gw.logs());
            let got = gw.expect_upstream(&up, 1).await;
            // Signed: OpenSSL verifies it against the RFC 9216 root.
            smime_common::openssl_verify(&got[0].data, None);
        } else {
            assert_eq!(r.0, 550, "{r:?}\n{}", gw.logs());
            assert!(r.1.contains("no valid S/MIME signing key"), "{r:?}");
            assert_eq!(up.received().len(), 1, "nothing more relayed");
        }
    }
}

#[tokio::test]
async fn a_certificate_from_the_directory_is_checked_once_its_crl_is_fetched() {
    use common::slapd::{self, Slapd};
    use rustls_pki_types::pem::PemObject;
    let http = HttpServer::start().await;
    let url = http.url("/ca.crl");
    let bob_s = serial();
    let (bob, _) = issue("bob@partner.example", bob_s, Some(&url), None);
    http.set("/ca.crl", fresh_crl(&[bob_s]));
    let pki = TestPki::new("directory TLS CA");
    let bob_der = rustls_pki_types::CertificateDer::from_pem_slice(bob.as_bytes())
        .unwrap()
        .to_vec();
    let ldap = Slapd::start(
        &slapd::person(
            "bob",
            "bob@partner.example",
            &[("userCertificate;binary", &bob_der)],
        ),
        Some(&pki.server),
    )
    .await;
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(
        GatewayConfig::new()
            .upstream(&up)
            .with("policy", "revocation", &toml_str("soft"))
            .raw(&format!(
                "[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\nrevocation_interval = \"1s\"\n\
                 [[rule]]\nname = \"partners\"\nto = [\"*@partner.example\"]\nencrypt = \"required\"\n\
                 [[directory]]\nurl = \"{}\"\nstarttls = true\nca_file = \"ldap-ca.pem\"\nbind_dn = \"{}\"\npassword_file = \"ldap.pw\"\nbase = \"{}\"\n",
                ldap.url(),
                slapd::BIND_DN,
                slapd::BASE
            ))
            .file("trust/ca.pem", read("ca.rsa.crt"))
            .file("recipients/README", "")
            .file("ldap-ca.pem", pki.ca_pem.clone())
            .file("ldap.pw", format!("{}\n", slapd::BIND_PW)),
    )
    .await;
    // The stores do not list it: the first decision finds its status pending (soft: used)...
    let (code, text) = rcpt(&gw, "bob@partner.example").await;
    assert_eq!(code, 250, "{text}\n{}", gw.logs());
    // ...and hands it to the refresher, whose CRL says revoked.
    wait_log(&gw, "CRL loaded").await;
    let (code, text) = rcpt(&gw, "bob@partner.example").await;
    assert_eq!(code, 550, "{text}\n{}", gw.logs());
    assert!(gw.logs().contains("recipient certificate is revoked"));
}
