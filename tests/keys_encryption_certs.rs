//! Decryption keys in the key store (issue 13): a key file whose certificate is an encryption
//! certificate (RFC 9216 `*.encrypt.crt` with `*.decrypt.key`: keyUsage keyEncipherment, or
//! keyAgreement for EC) loads as a decryption key. It opens inbound mail encrypted to it, never
//! signs, is never refused for "cannot sign", and `cachet keys list` / `cachet check` show it and
//! its problems. RSA-OAEP with SHA-1/256/384/512 goes through the store's seam, checked against
//! `openssl pkeyutl` and `openssl cms`.

mod common;
mod smime_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cachet::config::{InboundConfig, OnUndecryptable, UpstreamConfig, UpstreamTarget, UpstreamTls};
use cachet::pipeline::inbound::{OrgKeys, Verdict, process};
use cachet::runtime::Stores;
use cachet::store::keys::{Decrypt, KeyStore, KeyUse, OaepHash, SignatureScheme};
use common::{GatewayConfig, cachet_command};
use smime_common::{
    Alg, Leaf, chmod, crlf, header_block, pem_fingerprint, read, run_ok, run_with_input, trust,
    write,
};

const ALICE: &str = "alice@smime.example";
const BOB: &str = "bob@smime.example";
const ERIN: &str = "erin@smime.example";

/// An EC P-256 encryption certificate (keyAgreement only) from the RFC 9216 CA: (cert, key).
fn ec_encryption_leaf(email: &str) -> (String, String) {
    let mut l = Leaf::new(email, Alg::EcP256);
    l.key_usages = vec![rcgen::KeyUsagePurpose::KeyAgreement];
    l.issue()
}

/// The organisation's key directory: Alice signs (alice.sign.*) and has a separate decryption
/// key beside it (`+decrypt`); Bob has only a decryption key (RFC 9216 bob.decrypt.key); Erin
/// an EC P-256 decryption key. Mode 0600 like every key file.
fn key_dir(dir: &Path, erin: &(String, String)) -> PathBuf {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for (name, pem) in [
        (
            format!("{ALICE}.pem"),
            format!("{}{}", read("alice.sign.key"), read("alice.sign.crt")),
        ),
        (
            format!("{ALICE}+decrypt.pem"),
            format!("{}{}", read("alice.decrypt.key"), read("alice.encrypt.crt")),
        ),
        (
            format!("{BOB}.pem"),
            format!("{}{}", read("bob.decrypt.key"), read("bob.encrypt.crt")),
        ),
        (format!("{ERIN}.pem"), format!("{}{}", erin.1, erin.0)),
    ] {
        chmod(&write(&keys, &name, pem), 0o600);
    }
    keys
}

fn inbound_config() -> InboundConfig {
    InboundConfig {
        listen: Vec::new(),
        relay_networks: Vec::new(),
        upstream: UpstreamConfig {
            url: "smtp://mailstore.internal:25".into(),
            target: UpstreamTarget::Smtp {
                host: "mailstore.internal".into(),
                port: 25,
                implicit_tls: false,
            },
            tls: UpstreamTls::Verify,
            ca_file: None,
            username: None,
            password_file: None,
            timeout: Duration::from_secs(30),
            max_connections: 4,
            helo_name: "gw.smime.example".into(),
            pipelining: true,
        },
        decrypt: true,
        verify: true,
        harvest: false,
        on_undecryptable: OnUndecryptable::Deliver,
        subject_tags: false,
        rules: Vec::new(),
    }
}

#[test]
fn an_encryption_certificate_makes_a_decryption_key_that_never_signs() {
    let work = tempfile::tempdir().unwrap();
    let erin = ec_encryption_leaf(ERIN);
    let keys = key_dir(work.path(), &erin);
    let (store, problems) = KeyStore::load(&keys, None, &trust(), SystemTime::now());
    assert!(problems.is_empty(), "{problems:?}");

    // Alice signs with her signing certificate, never with the encryption one.
    let alice = store.get(ALICE).expect("alice signs");
    assert_eq!(alice.usage, KeyUse::Sign);
    assert_eq!(alice.fingerprint, pem_fingerprint(&read("alice.sign.crt")));
    // Bob and Erin have no signing identity at all: nothing signs as them.
    assert!(store.get(BOB).is_none());
    assert!(store.get(ERIN).is_none());
    assert_eq!(
        store.iter().map(|id| id.email.clone()).collect::<Vec<_>>(),
        vec![ALICE.to_string()]
    );
    // The three decryption keys, with the encryption certificates' fingerprints.
    let dec = store.decryption_keys();
    let got: Vec<(String, String)> = dec
        .iter()
        .map(|id| (id.email.clone(), id.fingerprint.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (ALICE.into(), pem_fingerprint(&read("alice.encrypt.crt"))),
            (BOB.into(), pem_fingerprint(&read("bob.encrypt.crt"))),
            (ERIN.into(), pem_fingerprint(&erin.0)),
        ]
    );
    for id in &dec {
        assert_eq!(id.usage, KeyUse::Decrypt);
        let err = id
            .sign(SignatureScheme::RsaPkcs1Sha256, b"x")
            .expect_err("a decryption key never signs");
        assert!(err.to_string().contains("never signs"), "{err}");
    }
    assert_eq!(store.all().len(), 4);

    // The inbound ring holds every key that can decrypt, built once per loaded store.
    let ring = OrgKeys::shared(&store);
    assert!(Arc::ptr_eq(&ring, &OrgKeys::shared(&store)));
    let fps: Vec<&str> = ring.keys().iter().map(|k| k.fingerprint.as_str()).collect();
    for pem in [
        read("alice.encrypt.crt"),
        read("bob.encrypt.crt"),
        erin.0.clone(),
    ] {
        assert!(fps.contains(&pem_fingerprint(&pem).as_str()), "{fps:?}");
    }
    // A store that changes gets a new ring.
    let mut changed = store;
    let before = OrgKeys::shared(&changed);
    changed.retain(|id| id.email != BOB);
    let after = OrgKeys::shared(&changed);
    assert!(!Arc::ptr_eq(&before, &after));
    assert_eq!(after.keys().len() + 1, before.keys().len());
}

#[test]
fn rsa_oaep_with_every_hash_and_pkcs1_unwrap_through_the_file_key() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let erin = ec_encryption_leaf(ERIN);
    let (store, problems) = KeyStore::load(&key_dir(dir, &erin), None, &trust(), SystemTime::now());
    assert!(problems.is_empty(), "{problems:?}");
    let bob = store
        .decryption_keys()
        .into_iter()
        .find(|k| k.email == BOB)
        .unwrap();
    let cek = [0x42u8; 32];
    let cek_file = write(dir, "cek", cek);
    let cert = write(dir, "bob.crt", read("bob.encrypt.crt"));
    let wrap = |opts: &[&str]| -> Vec<u8> {
        let out = dir.join("wrapped");
        let mut cmd = Command::new("openssl");
        cmd.args(["pkeyutl", "-encrypt", "-certin", "-inkey"])
            .arg(&cert)
            .arg("-in")
            .arg(&cek_file)
            .arg("-out")
            .arg(&out);
        for o in opts {
            cmd.args(["-pkeyopt", o]);
        }
        run_ok(&mut cmd);
        std::fs::read(out).unwrap()
    };
    let pkcs1 = wrap(&[]);
    assert_eq!(&bob.decrypt(Decrypt::RsaPkcs1(&pkcs1)).unwrap()[..], &cek);
    for (md, hash) in [
        ("sha1", OaepHash::Sha1),
        ("sha256", OaepHash::Sha256),
        ("sha384", OaepHash::Sha384),
        ("sha512", OaepHash::Sha512),
    ] {
        let ct = wrap(&[
            "rsa_padding_mode:oaep",
            &format!("rsa_oaep_md:{md}"),
            &format!("rsa_mgf1_md:{md}"),
        ]);
        let got = bob
            .decrypt(Decrypt::RsaOaep {
                ciphertext: &ct,
                hash,
            })
            .unwrap_or_else(|e| panic!("OAEP {md}: {e}"));
        assert_eq!(&got[..], &cek, "{md}");
        // The wrong hash fails; it never returns a wrong key.
        let other = if hash == OaepHash::Sha384 {
            OaepHash::Sha512
        } else {
            OaepHash::Sha384
        };
        assert!(
            bob.decrypt(Decrypt::RsaOaep {
                ciphertext: &ct,
                hash: other
            })
            .is_err(),
            "{md}"
        );
    }
}

/// `openssl cms -encrypt` of a small entity to `cert` with `opts`, as a whole message.
fn cms_encrypt(dir: &Path, cert_pem: &str, cipher: &str, opts: &[&str]) -> Vec<u8> {
    let cert = write(dir, "recip.crt", cert_pem);
    let mut cmd = Command::new("openssl");
    cmd.args(["cms", "-encrypt", "-binary", "-crlfeol", cipher])
        .args([
            "-from",
            "partner@partner.test",
            "-to",
            "org@smime.example",
            "-subject",
            "for the org",
        ])
        .arg("-recip")
        .arg(&cert)
        .args(opts);
    let out = run_with_input(
        &mut cmd,
        b"Content-Type: text/plain\r\n\r\nOnly for the decryption key.\r\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn mail_encrypted_to_decryption_keys_opens_in_the_inbound_step() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let erin = ec_encryption_leaf(ERIN);
    let (keys, problems) = KeyStore::load(&key_dir(dir, &erin), None, &trust(), SystemTime::now());
    assert!(problems.is_empty(), "{problems:?}");
    let stores = Stores {
        trust: trust(),
        keys,
        ..Default::default()
    };
    let cases: Vec<(&str, String, &str, Vec<&str>, &str)> = vec![
        (
            BOB,
            read("bob.encrypt.crt"),
            "-aes-256-gcm",
            vec![
                "-keyopt",
                "rsa_padding_mode:oaep",
                "-keyopt",
                "rsa_oaep_md:sha384",
                "-keyopt",
                "rsa_mgf1_md:sha384",
            ],
            "aes-256-gcm/rsa-oaep-sha384",
        ),
        (
            ALICE,
            read("alice.encrypt.crt"),
            "-aes-128-cbc",
            vec![],
            "aes-128-cbc/rsa-pkcs1",
        ),
        (
            ERIN,
            erin.0.clone(),
            "-aes-256-cbc",
            vec!["-keyopt", "ecdh_kdf_md:sha256"],
            "aes-256-cbc/ecdh-p256-sha256kdf",
        ),
    ];
    for (rcpt, cert, cipher, opts, algorithm) in cases {
        let m = cms_encrypt(dir, &cert, cipher, &opts);
        let p = process(
            &inbound_config(),
            &stores,
            "gw.smime.example",
            "partner@partner.test",
            &[rcpt.to_string()],
            &m,
            SystemTime::now(),
        );
        let Verdict::Deliver(copies) = &p.verdict else {
            panic!("{rcpt}: {:?}", p.verdict)
        };
        let c = &copies[0].message;
        let h = header_block(c);
        assert!(
            h.contains(&format!(
                "X-Cachet-Decrypted: for=<{rcpt}>;\r\n\tkey=sha256:{}; algorithm={algorithm}",
                pem_fingerprint(&cert)
            )),
            "{rcpt}: {h}"
        );
        assert!(
            String::from_utf8_lossy(c).contains("Only for the decryption key."),
            "{rcpt}"
        );
    }
}

/// `cachet <args> --config <config>`: (success, stdout + stderr).
fn cachet(config: &Path, args: &[&str]) -> (bool, String) {
    let out = cachet_command()
        .args(args)
        .arg("--config")
        .arg(config)
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

#[test]
fn keys_list_and_check_show_decryption_keys_and_name_their_problems() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let erin = ec_encryption_leaf(ERIN);
    let keys = key_dir(dir, &erin);
    // A decryption key whose certificate chains to no trust anchor: reported with its file.
    let mut stray = Leaf::new("frank@smime.example", Alg::Rsa2048);
    stray.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment];
    stray.untrusted = true;
    let (stray_crt, stray_key) = stray.issue();
    chmod(
        &write(
            &keys,
            "frank@smime.example.pem",
            format!("{stray_key}{stray_crt}"),
        ),
        0o600,
    );
    // A decryption key that expires soon, with no newer one for the address: worth a warning.
    let mut soon = Leaf::new("grace@smime.example", Alg::Rsa2048);
    soon.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment];
    soon.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let (soon_crt, soon_key) = soon.issue();
    chmod(
        &write(
            &keys,
            "grace@smime.example.pem",
            format!("{soon_key}{soon_crt}"),
        ),
        0o600,
    );
    let mut cfg = GatewayConfig::new()
        .raw("[keys]\ndir = \"keys\"\n[certificates]\ndir = \"recipients\"\ntrust = [\"ca.pem\"]\n")
        .file("recipients/README", "none\n")
        .file("ca.pem", read("ca.rsa.crt"));
    let config = cfg.write_to(dir);

    let (ok, list) = cachet(&config, &["keys", "list"]);
    assert!(ok, "{list}");
    let line = |prefix: &str, usage: &str| {
        list.lines()
            .find(|l| l.starts_with(prefix) && l.ends_with(usage))
            .unwrap_or_else(|| panic!("no {prefix:?} ... {usage:?} line:\n{list}"))
            .to_string()
    };
    assert!(
        line(&format!("{ALICE}  RSA-2048  expires "), "  sign")
            .contains(&pem_fingerprint(&read("alice.sign.crt"))[..16])
    );
    let decrypt = "  decrypt (inbound mail only, never signs)";
    assert!(
        line(&format!("{ALICE}  RSA-2048  expires "), decrypt).contains(&format!(
            "file {}",
            keys.join(format!("{ALICE}+decrypt.pem")).display()
        ))
    );
    line(&format!("{BOB}  RSA-2048  expires "), decrypt);
    line(&format!("{ERIN}  EC-P256  expires "), decrypt);
    assert!(
        list.contains("frank@smime.example.pem: encryption certificate "),
        "{list}"
    );

    let (ok, out) = cachet(&config, &["check"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 signing key(s)"), "{out}");
    assert!(
        out.contains(&format!(
            "warning: decryption key grace@smime.example ({}) expires within 30 days",
            pem_fingerprint(&soon_crt)
        )),
        "{out}"
    );
    assert!(!out.contains("warning: decryption key bob@"), "{out}");
    for who in [ALICE, BOB] {
        assert!(
            out.contains(&format!("decryption key {who}: RSA-2048 in file ")),
            "{out}"
        );
    }
    assert!(
        out.contains(&format!("decryption key {ERIN}: EC-P256 in file ")),
        "{out}"
    );
    assert!(
        out.contains("frank@smime.example.pem: encryption certificate ")
            && !out.contains("frank@smime.example.pem: signing certificate"),
        "{out}"
    );

    // The local-domain rule: a decryption key for a partner's address is a configuration error
    // naming the key directory.
    let mut partner = Leaf::new("carol@partner.test", Alg::Rsa2048);
    partner.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment];
    let (pc, pk) = partner.issue();
    chmod(
        &write(&keys, "carol@partner.test.pem", format!("{pk}{pc}")),
        0o600,
    );
    let (ok, out) = cachet(&config, &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("keys.dir") && out.contains("decryption key for carol@partner.test"),
        "{out}"
    );
    assert!(out.contains("not in server.local_domains"), "{out}");
}

/// A decryption key on a PKCS#11 token (SoftHSM): `cachet keys import` puts RFC 9216 Bob's
/// decryption key and an EC P-256 one on the token without CKA_SIGN; the key store matches them
/// to their encryption certificates by a test decryption (a test signature would be refused),
/// `cachet keys list` shows them, and the real gateway decrypts inbound mail with them: RSA
/// PKCS#1 v1.5 and OAEP (SHA-1: what SoftHSM 2.6 implements) on `C_Decrypt`, ECDH on
/// `C_DeriveKey`.
#[tokio::test]
async fn decryption_keys_on_a_token_open_inbound_mail() {
    use common::{SoftHsm, USER_PIN, Upstream, UpstreamOptions, toml_str};
    let hsm = SoftHsm::new("cachet");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let pkcs11 = hsm.keys_toml(&hsm.pin_file(USER_PIN));
    let cli_config = dir.join("cli.toml");
    std::fs::write(dir.join("ca.pem"), read("ca.rsa.crt")).unwrap();
    std::fs::write(
        &cli_config,
        format!(
            "[server]\nlocal_domains = [\"smime.example\"]\n[upstream]\nurl = \"file://{}/out\"\n\
             [certificates]\ndir = {}\ntrust = [{}]\n[keys]\ndir = {}\n{pkcs11}",
            dir.display(),
            toml_str(&dir.display().to_string()),
            toml_str(&dir.join("ca.pem").display().to_string()),
            toml_str(&keys.display().to_string()),
        ),
    )
    .unwrap();
    let with_token = |args: &[&str]| -> (bool, String) {
        let out = cachet_command()
            .env("SOFTHSM2_CONF", &hsm.conf)
            .args(args)
            .arg("--config")
            .arg(&cli_config)
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
    };
    let erin = ec_encryption_leaf(ERIN);
    for (name, pem) in [
        (
            "bob.pem",
            format!("{}{}", read("bob.decrypt.key"), read("bob.encrypt.crt")),
        ),
        ("erin.pem", format!("{}{}", erin.1, erin.0)),
    ] {
        let f = write(dir, name, pem);
        chmod(&f, 0o600);
        let (ok, out) = with_token(&["keys", "import", f.to_str().unwrap()]);
        assert!(ok, "{out}");
        assert!(
            out.contains(", decryption key, certificate ") && out.contains("into token \"cachet\""),
            "{out}"
        );
    }
    // On the token the keys may decrypt (or derive) but not sign.
    let objects = run_ok(hsm.tool().arg("--list-objects"));
    let objects = String::from_utf8_lossy(&objects.stdout).into_owned();
    let usages: Vec<&str> = objects
        .lines()
        .filter(|l| l.trim_start().starts_with("Usage:"))
        .collect();
    assert!(!usages.is_empty(), "{objects}");
    assert!(usages.iter().all(|u| !u.contains("sign")), "{objects}");

    let (ok, list) = with_token(&["keys", "list"]);
    assert!(ok, "{list}");
    for (who, alg) in [(BOB, "RSA-2048"), (ERIN, "EC-P256")] {
        let line = list
            .lines()
            .find(|l| l.starts_with(&format!("{who}  {alg}  expires ")))
            .unwrap_or_else(|| panic!("{who} not listed:\n{list}"));
        assert!(
            line.contains("token \"cachet\" id ")
                && line.ends_with("decrypt (inbound mail only, never signs)"),
            "{line}"
        );
    }

    // The gateway: inbound mail encrypted to the token's keys is decrypted on the token.
    let internal = Upstream::start(UpstreamOptions::plain()).await;
    let gw = common::Gateway::start(
        GatewayConfig::new()
            .env("SOFTHSM2_CONF", hsm.conf.to_str().unwrap())
            .with_inbound()
            .with("inbound", "relay_networks", r#"["127.0.0.0/8"]"#)
            .with("inbound", "upstream", &toml_str(&internal.url()))
            .with("inbound", "tls", &toml_str("none"))
            .with("inbound", "decrypt", "true")
            .with("inbound", "verify", "true")
            .with("inbound", "harvest", "false")
            .file("trust/ca.pem", read("ca.rsa.crt"))
            .raw(&format!(
                "[certificates]\ndir = \"trust\"\ntrust = [\"trust/ca.pem\"]\n[keys]\ndir = {}\n{pkcs11}",
                toml_str(&keys.display().to_string()),
            )),
    )
    .await;
    let oaep1 = [
        "-keyopt",
        "rsa_padding_mode:oaep",
        "-keyopt",
        "rsa_oaep_md:sha1",
    ];
    let cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        (
            BOB,
            read("bob.encrypt.crt"),
            vec![],
            "aes-256-cbc/rsa-pkcs1",
        ),
        (
            BOB,
            read("bob.encrypt.crt"),
            oaep1.to_vec(),
            "aes-256-cbc/rsa-oaep-sha1",
        ),
        (
            ERIN,
            erin.0.clone(),
            vec!["-keyopt", "ecdh_kdf_md:sha256"],
            "aes-256-cbc/ecdh-p256-sha256kdf",
        ),
    ];
    for (n, (rcpt, cert, opts, algorithm)) in cases.into_iter().enumerate() {
        let m = crlf(&cms_encrypt(dir, &cert, "-aes-256-cbc", &opts));
        let (mut c, _) = common::SmtpClient::connect_ehlo(gw.inbound_addr())
            .await
            .unwrap();
        let r = c
            .send_message("partner@partner.test", &[rcpt], &m)
            .await
            .unwrap();
        assert_eq!(r.0, 250, "{r:?}\n{}", gw.logs());
        c.quit().await;
        let got = internal.wait_for(n + 1, Duration::from_secs(30)).await;
        assert_eq!(got.len(), n + 1, "{}", gw.logs());
        let h = header_block(&got[n].data);
        assert!(
            h.contains(&format!(
                "X-Cachet-Decrypted: for=<{rcpt}>;\r\n\tkey=sha256:{}; algorithm={algorithm}",
                pem_fingerprint(&cert)
            )),
            "{h}\n{}",
            gw.logs()
        );
        assert!(String::from_utf8_lossy(&got[n].data).contains("Only for the decryption key."));
    }
}
