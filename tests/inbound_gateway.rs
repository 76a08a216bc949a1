//! The inbound half of issue 13 against the real binary ("Done means"): a gateway with
//! `[inbound]` (verify, decrypt, harvest on), the organisation's keys in `[keys] dir` (RFC 9216
//! Alice with a signing key and a separate decryption key, Bob with only a decryption key, Erin
//! with an EC P-256 decryption key, the Simple Java Mail user of the Thunderbird samples), trust
//! anchors the RFC 9216 CA and the samples' CAs, and a recording internal server. Messages go in
//! over SMTP on the inbound listener; what the internal server receives is checked:
//! - made at test time by `openssl cms` (sign; encrypt -aes256 / -aes-256-gcm / OAEP / to an EC
//!   recipient), by `gpgsm` and by a second cachet (the partner's gateway, sign + encrypt);
//! - the real-client messages in `../shared/interop` (Thunderbird, Outlook, Apple Mail, KMail,
//!   NSS, RFC 9788) each yield the right `Authentication-Results`, decrypt where the key is held;
//! - valid signers are harvested (`cachet certs list`), one without a path to a trust anchor is
//!   pending until `cachet certs approve`;
//! - two local recipients with different keys each get their own decrypted copy, one without a
//!   key gets the message as it arrived with `X-Cachet-Undecryptable`;
//! - `on_undecryptable = "reject"` answers `550 5.7.5` at the end of DATA and queues nothing;
//!   `"hold"` puts it in hold/ and `cachet queue release` delivers it.

mod common;
mod smime_common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use smime_common::{
    Alg, Gpgsm, Leaf, crlf, find, header_block, interop, openssl_cms, p7m_message, path_str,
    pem_fingerprint, read, text, write,
};

const WAIT: Duration = Duration::from_secs(30);
const HOST: &str = "cachet.test";
const ALICE: &str = "alice@smime.example";
const BOB: &str = "bob@smime.example";
const ERIN: &str = "erin@smime.example";
const DAVE: &str = "dave@smime.example";
const BENNY: &str = "benny@bennybottema.com";
const CAROL: &str = "carol@partner.test";

fn interop_text(rel: &str) -> String {
    std::fs::read_to_string(interop(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Erin's EC P-256 encryption certificate (keyAgreement only) and key, made once per test.
fn erin() -> (String, String) {
    let mut l = Leaf::new(ERIN, Alg::EcP256);
    l.key_usages = vec![rcgen::KeyUsagePurpose::KeyAgreement];
    l.issue()
}

/// The organisation's gateway: inbound to `internal`, keys and trust as in the module header.
fn org_config(internal: &Upstream, erin: &(String, String)) -> GatewayConfig {
    let sjm = |f: &str| interop_text(&format!("realworld/keys/{f}"));
    GatewayConfig::new()
        .with(
            "server",
            "local_domains",
            r#"["smime.example", "bennybottema.com", "example.com"]"#,
        )
        .with_inbound()
        .with("inbound", "relay_networks", r#"["127.0.0.0/8"]"#)
        .with("inbound", "upstream", &toml_str(&internal.url()))
        .with("inbound", "tls", &toml_str("none"))
        .with("inbound", "decrypt", "true")
        .with("inbound", "verify", "true")
        .with("inbound", "harvest", "true")
        .raw(
            "[keys]\ndir = \"keys\"\n[certificates]\ndir = \"recipients\"\n\
             trust = [\"trust/rfc9216.pem\", \"trust/sjm.pem\", \"trust/nss.pem\"]\n",
        )
        .file("recipients/README", "certificates from files go here\n")
        .file("trust/rfc9216.pem", read("ca.rsa.crt"))
        .file("trust/sjm.pem", sjm("sjm_ca.crt"))
        .file(
            "trust/nss.pem",
            interop_text("realworld/nss-thunderbird-testsuite/TestCA.pem"),
        )
        .file(
            format!("keys/{ALICE}.pem"),
            format!("{}{}", read("alice.sign.key"), read("alice.sign.crt")),
        )
        .file(
            format!("keys/{ALICE}+decrypt.pem"),
            format!("{}{}", read("alice.decrypt.key"), read("alice.encrypt.crt")),
        )
        .file(
            format!("keys/{BOB}.pem"),
            format!("{}{}", read("bob.decrypt.key"), read("bob.encrypt.crt")),
        )
        .file(format!("keys/{ERIN}.pem"), format!("{}{}", erin.1, erin.0))
        .file(
            format!("keys/{BENNY}.pem"),
            format!(
                "{}{}",
                sjm("sjm_smime_test_user.nopass.key"),
                sjm("sjm_smime_test_user.crt")
            ),
        )
}

/// One message over a fresh session on the inbound listener: the reply after the final dot.
async fn send_inbound(gw: &Gateway, from: &str, to: &[&str], m: &[u8]) -> (u16, String) {
    let (mut c, _) = SmtpClient::connect_ehlo(gw.inbound_addr()).await.unwrap();
    let r = c.send_message(from, to, &crlf(m)).await.unwrap();
    c.quit().await;
    r
}

/// Hands `m` in (250 asserted) and waits until the internal server holds `total` messages;
/// returns the new ones.
async fn deliver(
    gw: &Gateway,
    internal: &Upstream,
    to: &[&str],
    m: &[u8],
    total: usize,
) -> Vec<Received> {
    let before = internal.received().len();
    let r = send_inbound(gw, "partner-bounces@partner.test", to, m).await;
    assert_eq!(r.0, 250, "{r:?}\n{}", gw.logs());
    let got = internal.wait_for(total, WAIT).await;
    assert_eq!(
        got.len(),
        total,
        "internal server got {got:?}\n{}",
        gw.logs()
    );
    got[before..].to_vec()
}

/// The copy `rcpt` received among `got`.
fn copy_for<'a>(got: &'a [Received], rcpt: &str) -> &'a Received {
    got.iter()
        .find(|r| r.rcpt_to.iter().any(|t| t == rcpt))
        .unwrap_or_else(|| panic!("no copy for {rcpt} in {got:?}"))
}

/// The header of the copy: our fields lead it.
fn head(r: &Received) -> String {
    header_block(&r.data)
}

fn assert_authres(r: &Received, result: &str) {
    let h = head(r);
    assert!(
        h.starts_with(&format!("Authentication-Results: {HOST};")),
        "{h}"
    );
    assert!(h.contains(&format!("smime={result}")), "{h}");
}

/// Whether `r` ends with `m` exactly as it was handed in (CRLF line ends, a final CRLF): the
/// message as it arrived, below our header fields.
fn as_arrived(r: &Received, m: &[u8]) -> bool {
    let mut a = crlf(m);
    if !a.ends_with(b"\r\n") {
        a.extend_from_slice(b"\r\n");
    }
    r.data.len() > a.len() && r.data.ends_with(&a)
}

fn assert_decrypted(r: &Received, rcpt: &str, key_pem: &str, algorithm: &str) {
    let h = head(r);
    assert!(
        h.contains(&format!(
            "X-Cachet-Decrypted: for=<{rcpt}>;\r\n\tkey=sha256:{}; algorithm={algorithm}",
            pem_fingerprint(key_pem)
        )),
        "{h}"
    );
    assert!(!h.contains("X-Cachet-Undecryptable"), "{h}");
    let t = text(&r.data).to_ascii_lowercase();
    assert!(!t.contains("enveloped-data"), "{t}");
}

const ENTITY: &[u8] =
    b"Content-Type: text/plain; charset=us-ascii\r\n\r\nQuarterly figures, for our eyes only.\r\n";

/// `openssl cms -sign` by `cert`/`key`; a whole message (From: `from`) when `from` is given.
fn ossl_sign(cert: &Path, key: &Path, input: &[u8], from: Option<&str>) -> Vec<u8> {
    let mut args = vec![
        "-sign",
        "-binary",
        "-crlfeol",
        "-signer",
        path_str(cert),
        "-inkey",
        path_str(key),
    ];
    if let Some(f) = from {
        args.extend(["-from", f, "-to", ALICE, "-subject", "signed by openssl"]);
    }
    openssl_cms(&args, input)
}

/// `openssl cms -encrypt` with `cipher` to each certificate file with its `-keyopt`s.
fn ossl_encrypt(input: &[u8], cipher: &str, recips: &[(&Path, &[&str])]) -> Vec<u8> {
    let mut args = vec![
        "-encrypt",
        "-binary",
        "-crlfeol",
        cipher,
        "-from",
        "Carol <carol@partner.test>",
        "-to",
        ALICE,
        "-subject",
        "encrypted by openssl",
    ];
    for (cert, opts) in recips {
        args.extend(["-recip", path_str(cert)]);
        args.extend_from_slice(opts);
    }
    openssl_cms(&args, input)
}

/// `cachet certs list ADDRESS`: the one line for the address.
fn certs_line(gw: &Gateway, address: &str) -> String {
    let (ok, list) = gw.cli(&["certs", "list", address]);
    assert!(ok, "{list}");
    list.lines()
        .find(|l| l.starts_with(&format!("{address}\t")))
        .unwrap_or_else(|| panic!("{address} not listed:\n{list}"))
        .to_string()
}

/// Waits (30 s at most) until `cachet certs list ADDRESS` lists the address.
async fn wait_listed(gw: &Gateway, address: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, list) = gw.cli(&["certs", "list", address]);
        if ok && list.contains(&format!("{address}\t")) {
            return certs_line(gw, address);
        }
        assert!(
            Instant::now() < deadline,
            "{address} never listed:\n{list}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (recipient, certificate file, openssl cipher, -keyopt arguments, certificate PEM, the
/// algorithm `X-Cachet-Decrypted` names).
type EncryptCase<'a> = (&'a str, &'a Path, &'a str, Vec<String>, String, &'a str);

/// (what, message, recipient, expected `smime=` result (None: unsigned), the key that decrypts
/// it (certificate PEM) and the algorithm named).
type SampleCase = (
    &'static str,
    Vec<u8>,
    &'static str,
    Option<&'static str>,
    Option<(String, &'static str)>,
);

#[tokio::test]
async fn mail_made_by_openssl_gpgsm_and_cachet_is_verified_decrypted_and_learnt() {
    let internal = Upstream::start(UpstreamOptions::plain()).await;
    let erin = erin();
    let gw = Gateway::start(org_config(&internal, &erin)).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let (carol_crt, carol_key) = Leaf::new(CAROL, Alg::Rsa2048).issue();
    let carol_crt_f = write(dir, "carol.crt", &carol_crt);
    let carol_key_f = write(dir, "carol.key", &carol_key);
    let bob_enc = write(dir, "bob.crt", read("bob.encrypt.crt"));
    let alice_enc = write(dir, "alice.crt", read("alice.encrypt.crt"));
    let erin_enc = write(dir, "erin.crt", &erin.0);
    let mut total = 0;

    // openssl: signed by a partner whose certificate chains to our anchor -> pass, harvested.
    let m = ossl_sign(
        &carol_crt_f,
        &carol_key_f,
        ENTITY,
        Some("Carol <carol@partner.test>"),
    );
    total += 1;
    let got = deliver(&gw, &internal, &[ALICE], &m, total).await;
    assert_authres(&got[0], "pass");
    assert!(
        head(&got[0]).contains(&format!("body.smime-identifier={CAROL}")),
        "{}",
        head(&got[0])
    );
    let line = wait_listed(&gw, CAROL).await;
    assert!(line.contains("harvested"), "{line}");
    assert!(line.contains(&pem_fingerprint(&carol_crt)[..16]), "{line}");

    // openssl: encrypted with each cipher and key transport, to each kind of organisation key.
    let oaep = |md: &'static str| -> Vec<String> {
        vec![
            "-keyopt".into(),
            "rsa_padding_mode:oaep".into(),
            "-keyopt".into(),
            format!("rsa_oaep_md:{md}"),
            "-keyopt".into(),
            format!("rsa_mgf1_md:{md}"),
        ]
    };
    let cases: Vec<EncryptCase<'_>> = vec![
        (
            BOB,
            &bob_enc,
            "-aes256",
            vec![],
            read("bob.encrypt.crt"),
            "aes-256-cbc/rsa-pkcs1",
        ),
        (
            ALICE,
            &alice_enc,
            "-aes-256-gcm",
            oaep("sha256"),
            read("alice.encrypt.crt"),
            "aes-256-gcm/rsa-oaep-sha256",
        ),
        (
            BOB,
            &bob_enc,
            "-aes-128-gcm",
            oaep("sha384"),
            read("bob.encrypt.crt"),
            "aes-128-gcm/rsa-oaep-sha384",
        ),
        (
            BOB,
            &bob_enc,
            "-aes-192-cbc",
            oaep("sha512"),
            read("bob.encrypt.crt"),
            "aes-192-cbc/rsa-oaep-sha512",
        ),
        // ECDH: openssl wraps the content key with the KEK size of the content cipher, and
        // cachet unwraps with 128- and 256-bit KEKs (smime/decrypt.rs).
        (
            ERIN,
            &erin_enc,
            "-aes-128-cbc",
            vec!["-keyopt".into(), "ecdh_kdf_md:sha256".into()],
            erin.0.clone(),
            "aes-128-cbc/ecdh-p256-sha256kdf",
        ),
    ];
    for (rcpt, cert, cipher, opts, pem, algorithm) in cases {
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let m = ossl_encrypt(ENTITY, cipher, &[(cert, &opts)]);
        total += 1;
        let got = deliver(&gw, &internal, &[rcpt], &m, total).await;
        assert_decrypted(&got[0], rcpt, &pem, algorithm);
        assert!(
            text(&got[0].data).contains("Quarterly figures"),
            "{rcpt} {cipher}"
        );
        // Encrypted but not signed: the A-R says there was no signature.
        assert_authres(&got[0], "none");
    }

    // openssl: signed, then encrypted to Bob's decryption key: both layers reported.
    let signed = ossl_sign(&carol_crt_f, &carol_key_f, ENTITY, None);
    let m = ossl_encrypt(&signed, "-aes256", &[(&bob_enc, &[])]);
    total += 1;
    let got = deliver(&gw, &internal, &[BOB], &m, total).await;
    assert_decrypted(
        &got[0],
        BOB,
        &read("bob.encrypt.crt"),
        "aes-256-cbc/rsa-pkcs1",
    );
    assert_authres(&got[0], "pass");

    // gpgsm: encrypted (BER, AES-256-CBC, RSA PKCS#1 v1.5) to Bob's encryption certificate.
    let der = Gpgsm::new().encrypt_to(&bob_enc, BOB, ENTITY, dir);
    assert_eq!(&der[..2], &[0x30, 0x80], "gpgsm writes BER");
    total += 1;
    let got = deliver(
        &gw,
        &internal,
        &[BOB],
        &p7m_message(&der, "enveloped-data", CAROL),
        total,
    )
    .await;
    let h = head(&got[0]);
    assert!(
        h.contains(&format!(
            "key=sha256:{}",
            pem_fingerprint(&read("bob.encrypt.crt"))
        )),
        "{h}"
    );
    assert!(text(&got[0].data).contains("Quarterly figures"));

    // cachet itself: the partner's gateway signs Carol's mail and encrypts it to Bob's
    // encryption certificate (its certificates dir), relaying to our inbound listener.
    let partner = Gateway::start(
        GatewayConfig::new()
            .with("server", "local_domains", r#"["partner.test"]"#)
            .with(
                "upstream",
                "url",
                &toml_str(&format!("smtp://{}", gw.inbound_addr())),
            )
            .with("upstream", "tls", &toml_str("none"))
            .with("policy", "sign", &toml_str("required"))
            .with("policy", "encrypt", &toml_str("required"))
            .with("policy", "encryption", &toml_str("aes256-gcm"))
            .with("policy", "key_transport", &toml_str("rsa-oaep"))
            .raw("[keys]\ndir = \"keys\"\n[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n")
            .file(format!("keys/{CAROL}.pem"), format!("{carol_key}{carol_crt}"))
            .file("recipients/bob.pem", read("bob.encrypt.crt"))
            .file("trust/ca.pem", read("ca.rsa.crt")),
    )
    .await;
    partner
        .send_ok(
            CAROL,
            &[BOB],
            format!(
                "From: Carol <{CAROL}>\r\nTo: <{BOB}>\r\nSubject: sealed by cachet\r\nMessage-ID: <sealed.{}@partner.test>\r\n\r\nSealed by the partner's gateway.\r\n",
                std::process::id()
            )
            .as_bytes(),
        )
        .await;
    total += 1;
    let got = internal.wait_for(total, WAIT).await;
    assert_eq!(got.len(), total, "{}\n{}", gw.logs(), partner.logs());
    let c = got.last().unwrap();
    assert_eq!(c.rcpt_to, [BOB]);
    assert_decrypted(
        c,
        BOB,
        &read("bob.encrypt.crt"),
        "aes-256-gcm/rsa-oaep-sha256",
    );
    assert_authres(c, "pass");
    assert!(head(c).contains(&format!("body.smime-identifier={CAROL}")));
    assert!(text(&c.data).contains("Sealed by the partner's gateway."));

    // A signer whose certificate does not chain to our anchors: policy, kept pending until an
    // operator approves it; then it is usable for encryption.
    let mut stray = Leaf::new("dan@elsewhere.test", Alg::Rsa2048);
    stray.untrusted = true;
    let (dan_crt, dan_key) = stray.issue();
    let m = ossl_sign(
        &write(dir, "dan.crt", &dan_crt),
        &write(dir, "dan.key", &dan_key),
        ENTITY,
        Some("Dan <dan@elsewhere.test>"),
    );
    total += 1;
    let got = deliver(&gw, &internal, &[ALICE], &m, total).await;
    assert_authres(&got[0], "policy");
    let line = wait_listed(&gw, "dan@elsewhere.test").await;
    assert!(line.contains("pending"), "{line}");
    let (ok, out) = gw.cli(&["certs", "lookup", "dan@elsewhere.test"]);
    assert!(!ok, "a pending certificate is not used:\n{out}");
    let (ok, out) = gw.cli(&["certs", "approve", &pem_fingerprint(&dan_crt)]);
    assert!(ok, "{out}");
    assert!(certs_line(&gw, "dan@elsewhere.test").contains("approved"));
    let (ok, out) = gw.cli(&["certs", "lookup", "dan@elsewhere.test"]);
    assert!(ok, "approved, the certificate is used:\n{out}");
}

/// An examples-cms DER object as a message from RFC 9216 Alice.
fn cms_sample(name: &str, smime_type: &str) -> Vec<u8> {
    let der = std::fs::read(interop("samples/examples-cms").join(name)).unwrap();
    p7m_message(&der, smime_type, ALICE)
}

#[tokio::test]
async fn real_client_messages_get_the_right_results_and_decrypt_where_a_key_is_held() {
    let internal = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(org_config(&internal, &erin())).await;
    let rw = |name: &str| std::fs::read(interop("realworld").join(name)).unwrap();
    let nss = |name: &str| rw(&format!("nss-thunderbird-testsuite/{name}"));
    let benny_crt = interop_text("realworld/keys/sjm_smime_test_user.crt");
    let mut total = 0;
    // (message, recipient, expected smime= result or None for no signature, decrypted by key)
    let cases: Vec<SampleCase> = vec![
        // Thunderbird 52: signed (SHA-512), encrypted (3DES) and both, to the SJM user's key.
        (
            "tb52 signed",
            rw("thunderbird52-signed.eml"),
            BENNY,
            Some("pass"),
            None,
        ),
        (
            "tb52 encrypted",
            rw("thunderbird52-encrypted.eml"),
            BENNY,
            None,
            Some((benny_crt.clone(), "des-ede3-cbc/rsa-pkcs1")),
        ),
        (
            "tb52 signed+encrypted",
            rw("thunderbird52-signed-encrypted.eml"),
            BENNY,
            Some("pass"),
            Some((benny_crt.clone(), "des-ede3-cbc/rsa-pkcs1")),
        ),
        // Outlook: opaque SHA-1 signature, a root we do not hold: the signature is good, the
        // chain is not -> policy.
        (
            "outlook",
            rw("outlook-opaque-signed.eml"),
            ALICE,
            Some("policy"),
            None,
        ),
        // Apple Mail, body modified after signing -> fail.
        (
            "apple mail bad signature",
            rw("applemail93-signed-MODIFIED-badsig.eml"),
            ALICE,
            Some("fail"),
            None,
        ),
        // NSS: good signatures, but the certificates bind no rfc822Name -> policy; a modified
        // body -> fail.
        (
            "nss multipart",
            nss("alice.dsig.SHA256.multipart.eml"),
            ALICE,
            Some("policy"),
            None,
        ),
        (
            "nss opaque",
            nss("alice.sig.SHA256.opaque.eml"),
            ALICE,
            Some("policy"),
            None,
        ),
        (
            "nss bad",
            nss("alice.dsig.SHA256.multipart.bad.eml"),
            ALICE,
            Some("fail"),
            None,
        ),
        // RFC 4134: DSA signatures, an algorithm cachet does not verify.
        (
            "rfc4134 4.8 multipart/signed DSA",
            std::fs::read(interop("samples/rfc4134/4.8.eml")).unwrap(),
            ALICE,
            Some("permerror"),
            None,
        ),
        (
            "rfc4134 4.9 opaque DSA",
            std::fs::read(interop("samples/rfc4134/4.9.eml")).unwrap(),
            ALICE,
            Some("permerror"),
            None,
        ),
        // examples-cms: RFC 9216 Alice's RSA and RSA-PSS signatures, and EnvelopedData to Bob
        // (RSA-OAEP, AES-128-CBC) whose content is bare text, not a MIME entity: it must end up
        // below the header, not inside it (checked after the table).
        (
            "examples-cms encryptedForBobRSAOaep",
            cms_sample("encryptedForBobRSAOaep.p7m", "enveloped-data"),
            BOB,
            None,
            Some((read("bob.encrypt.crt"), "aes-128-cbc/rsa-oaep")),
        ),
        (
            "examples-cms signedByAliceRSA",
            cms_sample("signedByAliceRSA.p7m", "signed-data"),
            ALICE,
            Some("pass"),
            None,
        ),
        (
            "examples-cms signedByAliceRSAPSS",
            cms_sample("signedByAliceRSAPSS.p7m", "signed-data"),
            ALICE,
            Some("pass"),
            None,
        ),
        // RFC 9788: enveloped(signed) to RFC 9216 Alice and Bob: Bob's decryption key opens it.
        (
            "rfc9788 enc-signed",
            std::fs::read(interop("samples/rfc9788/lhp-draft-smime-enc-signed.eml")).unwrap(),
            BOB,
            Some("pass"),
            Some((read("bob.encrypt.crt"), "")),
        ),
    ];
    for (what, m, rcpt, result, decrypted) in cases {
        total += 1;
        let got = deliver(&gw, &internal, &[rcpt], &m, total).await;
        let c = &got[0];
        assert!(
            find(&c.data, b"\r\n\r\n").is_some(),
            "{what}: {}",
            text(&c.data)
        );
        let h = head(c);
        match result {
            Some(r) => assert!(h.contains(&format!("\tsmime={r}")), "{what}: {h}"),
            None => assert!(h.contains("; smime=none"), "{what}: {h}"),
        }
        match decrypted {
            Some((pem, alg)) => {
                assert!(
                    h.contains(&format!(
                        "X-Cachet-Decrypted: for=<{rcpt}>;\r\n\tkey=sha256:{}; algorithm={alg}",
                        pem_fingerprint(&pem)
                    )),
                    "{what}: {h}"
                );
                assert!(
                    !text(&c.data).contains("enveloped-data"),
                    "{what}: still encrypted"
                );
            }
            None => assert!(!h.contains("X-Cachet-Decrypted"), "{what}: {h}"),
        }
    }
    // Bare decrypted content is the body of the message, below one MIME-Version.
    total += 1;
    let got = deliver(
        &gw,
        &internal,
        &[BOB],
        &cms_sample("encryptedForBobRSAOaep.p7m", "enveloped-data"),
        total,
    )
    .await;
    let (h, body) = text(&got[0].data)
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap();
    assert_eq!(h.matches("MIME-Version:").count(), 1, "{h}");
    assert!(
        body.contains("This is some sample content."),
        "decrypted text belongs to the body:\n{h}\n\n{body}"
    );
    // The decryption keys' certificates are watched like the signing ones.
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "cachet_certificate_expiry_seconds{{kind=\"decryption\",address=\"{BOB}\",fingerprint=\"{}\"}} ",
            pem_fingerprint(&read("bob.encrypt.crt"))
        )),
        "{metrics}"
    );
    // The Thunderbird signer (valid chain, From: = SAN) was learnt.
    assert!(wait_listed(&gw, BENNY).await.contains("harvested"));

    // Encrypted to keys we do not hold (KMail's, NSS Bob's, OpenSSL's to Fran): delivered as
    // they arrived, with the reason.
    for (what, m, rcpt) in [
        (
            "kmail 4.6",
            rw("kmail46-signed-encrypted.eml"),
            "test@example.com",
        ),
        (
            "kmail 4.13",
            rw("kmail413-opaque-enc+sign.eml"),
            "test@example.com",
        ),
        ("nss env", nss("alice.env.eml"), "bob@example.com"),
        (
            "rfc4134 5.3 (3DES to RSA-1024)",
            std::fs::read(interop("samples/rfc4134/5.3.eml")).unwrap(),
            "user2@example.com",
        ),
        (
            "openssl oaep to fran",
            nss("fran-oaep_ossl.env"),
            "fran@example.com",
        ),
    ] {
        total += 1;
        let got = deliver(&gw, &internal, &[rcpt], &m, total).await;
        let c = &got[0];
        let h = head(c);
        assert!(
            h.contains("X-Cachet-Undecryptable: reason=no-key"),
            "{what}: {h}"
        );
        // Below our header fields, the message exactly as it arrived.
        assert!(as_arrived(c, &m), "{what}: not as it arrived");
        assert!(
            text(&c.data)
                .to_ascii_lowercase()
                .contains("enveloped-data"),
            "{what}"
        );
    }
}

#[tokio::test]
async fn each_local_recipient_gets_a_copy_opened_with_their_own_key() {
    let internal = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(org_config(&internal, &erin())).await;
    let work = tempfile::tempdir().unwrap();
    let bob_enc = write(work.path(), "bob.crt", read("bob.encrypt.crt"));
    let alice_enc = write(work.path(), "alice.crt", read("alice.encrypt.crt"));
    let m = ossl_encrypt(ENTITY, "-aes256", &[(&bob_enc, &[]), (&alice_enc, &[])]);
    let got = deliver(&gw, &internal, &[BOB, ALICE, DAVE], &m, 3).await;
    // Three copies, one recipient each.
    for r in &got {
        assert_eq!(r.rcpt_to.len(), 1, "{:?}", r.rcpt_to);
    }
    for (rcpt, pem) in [
        (BOB, read("bob.encrypt.crt")),
        (ALICE, read("alice.encrypt.crt")),
    ] {
        let c = copy_for(&got, rcpt);
        assert_decrypted(c, rcpt, &pem, "aes-256-cbc/rsa-pkcs1");
        assert!(text(&c.data).contains("Quarterly figures"), "{rcpt}");
        let other = if rcpt == BOB { ALICE } else { BOB };
        assert!(!head(c).contains(&format!("for=<{other}>")), "{}", head(c));
    }
    let d = copy_for(&got, DAVE);
    let h = head(d);
    assert!(h.contains("X-Cachet-Undecryptable: reason=no-key"), "{h}");
    assert!(!h.contains("X-Cachet-Decrypted"), "{h}");
    assert!(!text(&d.data).contains("Quarterly figures"));
    assert!(as_arrived(d, &m));
}

#[tokio::test]
async fn on_undecryptable_reject_answers_550_and_hold_waits_for_release() {
    let work = tempfile::tempdir().unwrap();
    let dave_crt = Leaf::new(DAVE, Alg::Rsa2048).issue().0;
    // Encrypted to a key of Dave's that the organisation does not hold.
    let m = ossl_encrypt(
        ENTITY,
        "-aes256",
        &[(&write(work.path(), "dave.crt", &dave_crt), &[])],
    );

    // reject: refused at the end of DATA, nothing queued, nothing delivered.
    let internal = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(org_config(&internal, &erin()).with(
        "inbound",
        "on_undecryptable",
        &toml_str("reject"),
    ))
    .await;
    let (code, reply) = send_inbound(&gw, "partner@partner.test", &[DAVE], &m).await;
    assert_eq!(code, 550, "{reply}");
    assert!(reply.starts_with("550 5.7.5 "), "{reply}");
    let (ok, list) = gw.cli(&["queue", "list"]);
    assert!(ok && list.contains("-- 0 message(s)"), "{list}");
    // A message the organisation can open still goes through on the same gateway.
    let bob_enc = write(work.path(), "bob.crt", read("bob.encrypt.crt"));
    let ok_m = ossl_encrypt(ENTITY, "-aes256", &[(&bob_enc, &[])]);
    let got = deliver(&gw, &internal, &[BOB], &ok_m, 1).await;
    assert_decrypted(
        &got[0],
        BOB,
        &read("bob.encrypt.crt"),
        "aes-256-cbc/rsa-pkcs1",
    );
    assert!(internal.received().iter().all(|r| r.rcpt_to != [DAVE]));

    // hold: accepted, kept in hold/, delivered as it arrived once an operator releases it.
    let internal = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(org_config(&internal, &erin()).with(
        "inbound",
        "on_undecryptable",
        &toml_str("hold"),
    ))
    .await;
    let (code, reply) = send_inbound(&gw, "partner@partner.test", &[DAVE], &m).await;
    assert_eq!(code, 250, "{reply}");
    let id = reply.rsplit(' ').next().unwrap().to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, list) = gw.cli(&["queue", "list"]);
        assert!(ok, "{list}");
        if common::faults::queue_ids(&gw.spool_dir(), "hold")
            .iter()
            .any(|f| f.starts_with(&id))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never held:\n{list}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(internal.received().is_empty());
    let (ok, out) = gw.cli(&["queue", "release", &id]);
    assert!(ok, "{out}");
    let got = internal.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    assert_eq!(got[0].rcpt_to, [DAVE]);
    let h = head(&got[0]);
    assert!(h.contains("X-Cachet-Undecryptable: reason=no-key"), "{h}");
    assert!(as_arrived(&got[0], &m));
}

/// The decryption keys are built once per loaded key store: a key added by a reload opens the
/// next message (the running store's keys are not kept past the reload), without a restart.
#[tokio::test]
async fn a_decryption_key_added_by_reload_opens_the_next_message() {
    let internal = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(org_config(&internal, &erin())).await;
    let work = tempfile::tempdir().unwrap();
    let mut leaf = Leaf::new(DAVE, Alg::Rsa2048);
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment];
    let (dave_crt, dave_key) = leaf.issue();
    let m = ossl_encrypt(
        ENTITY,
        "-aes256",
        &[(&write(work.path(), "dave.crt", &dave_crt), &[])],
    );
    // Before: encrypted mail for Dave is delivered as it arrived.
    let got = deliver(&gw, &internal, &[DAVE], &m, 1).await;
    assert!(head(&got[0]).contains("X-Cachet-Undecryptable: reason=no-key"));

    // Dave's decryption key appears beside the others; the gateway reloads.
    let key = gw.dir().join(format!("keys/{DAVE}+decrypt.pem"));
    write(
        &gw.dir().join("keys"),
        &format!("{DAVE}+decrypt.pem"),
        format!("{dave_key}{dave_crt}"),
    );
    smime_common::chmod(&key, 0o600);
    gw.sighup();
    assert!(
        gw.wait_log("configuration reloaded", WAIT).await,
        "{}",
        gw.logs()
    );
    let got = deliver(&gw, &internal, &[DAVE], &m, 2).await;
    assert_decrypted(&got[0], DAVE, &dave_crt, "aes-256-cbc/rsa-pkcs1");
    assert!(text(&got[0].data).contains("Quarterly figures"));
}

/// `cachet check` summarises the inbound route: listener, networks, domains, next hop and what
/// is done to the mail.
#[tokio::test]
async fn check_summarises_the_inbound_route() {
    let internal = Upstream::start(UpstreamOptions::plain()).await;
    let inbound_line = |mut cfg: GatewayConfig| {
        let dir = tempfile::tempdir().unwrap();
        let path = cfg.write_to(dir.path());
        let out = cachet_command()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("inbound: "))
            .unwrap_or_else(|| panic!("no inbound line in:\n{text}"))
            .to_string();
        let listen = cfg.get("inbound", "listen").unwrap();
        (line, listen.trim_matches(['[', ']', '"']).to_string())
    };
    let (line, listen) = inbound_line(org_config(&internal, &erin()));
    for part in [
        format!("listening on {listen} for 127.0.0.0/8;"),
        "mail for smime.example, bennybottema.com, example.com".to_string(),
        format!("to {} (tls none);", internal.url()),
        // Alice's two keys, Bob's, Erin's and Benny's.
        "decrypt on (5 key(s)), verify on, harvest on".to_string(),
        "on_undecryptable deliver, 0 rule(s)".to_string(),
    ] {
        assert!(line.contains(&part), "{part:?} not in {line:?}");
    }

    let other = GatewayConfig::new()
        .with_inbound()
        .with("inbound", "relay_networks", r#"["10.0.0.0/8", "127.0.0.1/32"]"#)
        .with("inbound", "upstream", &toml_str(&internal.url()))
        .with("inbound", "tls", &toml_str("none"))
        .with("inbound", "decrypt", "false")
        .with("inbound", "verify", "false")
        .with("inbound", "harvest", "false")
        .with("inbound", "on_undecryptable", &toml_str("hold"))
        .raw("[[inbound.rule]]\nsenders = [\"*@partner.test\"]\nrequire = \"signed\"\naction = \"hold\"\n");
    let (line, _) = inbound_line(other);
    for part in [
        "for 10.0.0.0/8, 127.0.0.1/32;",
        "decrypt off (0 key(s)), verify off, harvest off, on_undecryptable hold, 1 rule(s)",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
}
