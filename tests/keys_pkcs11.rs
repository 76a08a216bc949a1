//! Private keys on a PKCS#11 token (issue 11), against SoftHSM2: a token initialised by the test,
//! keys put there by `cachet keys import` and by OpenSC's `pkcs11-tool`, the real gateway
//! signing through the token (RSA PKCS#1 v1.5, RSA-PSS, ECDSA P-256), the output checked by
//! `openssl cms` and `gpgsm`; a wrong PIN; a token unplugged mid-run (messages wait, then leave
//! signed); `cachet keys list`.

mod common;
mod smime_common;

use common::*;
use smime_common::{Alg, Gpgsm, Leaf, chmod, openssl_print, openssl_verify, read, write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: bob@x.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@smime.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nsigned on the token: {subject}\r\n"
    )
    .into_bytes()
}

/// A minimal config for the CLI (`cachet keys import`, `check`) sharing the gateway's keys.
fn cli_config(dir: &Path, keys_dir: &Path, extra: &str) -> PathBuf {
    std::fs::write(dir.join("ca.pem"), read("ca.rsa.crt")).unwrap();
    let path = dir.join("cli.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlocal_domains = [\"smime.example\"]\n[upstream]\nurl = \"file://{}/out\"\n\
             [certificates]\ndir = {}\ntrust = [{}]\n[keys]\ndir = {}\n{extra}",
            dir.display(),
            toml_str(&dir.display().to_string()),
            toml_str(&dir.join("ca.pem").display().to_string()),
            toml_str(&keys_dir.display().to_string()),
        ),
    )
    .unwrap();
    path
}

fn cachet(hsm: &SoftHsm, args: &[&str], config: &Path) -> (bool, String, String) {
    let out = cachet_command()
        .env("SOFTHSM2_CONF", &hsm.conf)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Alice (RSA-2048) imported by `cachet keys import` (key and certificate on the token); Erin
/// (P-256) written by pkcs11-tool, her certificate in keys.dir. Returns the keys dir.
fn provision(hsm: &SoftHsm, work: &Path) -> PathBuf {
    let keys = work.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let config = cli_config(work, &keys, &hsm.keys_toml(&hsm.pin_file(USER_PIN)));
    let (cert, key) = Leaf::new("alice@smime.example", Alg::Rsa2048).issue();
    let file = write(work, "alice-export.pem", format!("{key}{cert}"));
    chmod(&file, 0o600);
    let (ok, out, err) = cachet(hsm, &["keys", "import", file.to_str().unwrap()], &config);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("imported alice@smime.example (RSA-2048")
            && out.contains("into token \"cachet\""),
        "{out}"
    );
    // Importing it again is refused (same CKA_ID), nothing is overwritten.
    let (ok, _, err) = cachet(hsm, &["keys", "import", file.to_str().unwrap()], &config);
    assert!(!ok && err.contains("already holds a key"), "{err}");

    let (cert, key) = Leaf::new("erin@smime.example", Alg::EcP256).issue();
    hsm.write_key(&key, "0e01", "erin-key");
    chmod(&write(&keys, "erin@smime.example.pem", cert), 0o600);
    keys
}

fn gateway_config(up: &Upstream, hsm: &SoftHsm, keys: &Path, policy: &str) -> GatewayConfig {
    GatewayConfig::new()
        .upstream(up)
        .env("SOFTHSM2_CONF", hsm.conf.to_str().unwrap())
        .file("trust/ca.pem", read("ca.rsa.crt"))
        .raw(&format!(
            "[certificates]\ndir = \"trust\"\ntrust = [\"trust/ca.pem\"]\n[keys]\ndir = {}\n{}{policy}",
            toml_str(&keys.display().to_string()),
            hsm.keys_toml(&hsm.pin_file(USER_PIN)),
        ))
}

#[tokio::test]
async fn rsa_and_ecdsa_signatures_made_on_the_token_verify_with_openssl_and_gpgsm() {
    let hsm = SoftHsm::new("cachet");
    let work = tempfile::tempdir().unwrap();
    let keys = provision(&hsm, work.path());

    // A plain key file beside the token still works, but is worth a warning.
    let (fc, fk) = Leaf::new("frank@smime.example", Alg::EcP256).issue();
    chmod(
        &write(&keys, "frank@smime.example.pem", format!("{fk}{fc}")),
        0o600,
    );
    // `cachet check` lists each address with a usable key and where it lives.
    let config = cli_config(work.path(), &keys, &hsm.keys_toml(&hsm.pin_file(USER_PIN)));
    let (ok, out, err) = cachet(&hsm, &["check"], &config);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("key alice@smime.example: RSA-2048 in token \"cachet\" id ")
            && out.contains("(certificate on the token)"),
        "{out}"
    );
    assert!(
        out.contains("key erin@smime.example: EC-P256 in token \"cachet\" id 0e01 (certificate ")
            && out.contains("erin@smime.example.pem)"),
        "{out}"
    );
    assert!(
        out.contains("frank@smime.example.pem: plain private key for frank@smime.example although [keys.pkcs11] is configured"),
        "{out}"
    );
    assert!(
        out.contains("key frank@smime.example: EC-P256 in file "),
        "{out}"
    );
    std::fs::remove_file(keys.join("frank@smime.example.pem")).unwrap();
    let (ok, list, err) = cachet(&hsm, &["keys", "list"], &config);
    assert!(ok, "{err}");
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        list.contains("alice@smime.example  RSA-2048  expires "),
        "{list}"
    );
    assert!(
        list.contains("erin@smime.example  EC-P256  expires "),
        "{list}"
    );

    let up = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(gateway_config(
        &up,
        &hsm,
        &keys,
        "[policy]\nsign = \"required\"\n",
    ))
    .await;
    gw.send_ok(
        "alice@smime.example",
        &["bob@x.test"],
        &message("alice@smime.example", "rsa"),
    )
    .await;
    gw.send_ok(
        "erin@smime.example",
        &["bob@x.test"],
        &message("erin@smime.example", "ecdsa"),
    )
    .await;
    let got = gw.expect_upstream(&up, 2).await;
    let g = Gpgsm::new();
    let scratch = tempfile::tempdir().unwrap();
    for r in &got {
        let text = String::from_utf8_lossy(&r.data);
        let subject = if text.contains("Subject: rsa") {
            "rsa"
        } else {
            "ecdsa"
        };
        let content = openssl_verify(&r.data, None);
        assert!(
            String::from_utf8_lossy(&content).contains(&format!("signed on the token: {subject}")),
            "{text}"
        );
        let printed = openssl_print(&r.data);
        if subject == "rsa" {
            assert!(printed.contains("rsaEncryption"), "PKCS#1 v1.5: {printed}");
        } else {
            assert!(printed.contains("ecdsa-with-SHA256"), "{printed}");
        }
        g.verify_detached(&r.data, scratch.path());
    }
}

#[tokio::test]
async fn rsa_pss_signatures_made_on_the_token_verify_with_openssl() {
    let hsm = SoftHsm::new("cachet");
    let work = tempfile::tempdir().unwrap();
    let keys = provision(&hsm, work.path());
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(gateway_config(
        &up,
        &hsm,
        &keys,
        "[policy]\nsign = \"required\"\nrsa_signature = \"pss\"\ndigest = \"sha512\"\n",
    ))
    .await;
    gw.send_ok(
        "alice@smime.example",
        &["bob@x.test"],
        &message("alice@smime.example", "pss"),
    )
    .await;
    let got = gw.expect_upstream(&up, 1).await;
    let printed = openssl_print(&got[0].data);
    assert!(printed.contains("rsassaPss"), "{printed}");
    assert!(printed.contains("sha512"), "{printed}");
    let content = openssl_verify(&got[0].data, None);
    assert!(String::from_utf8_lossy(&content).contains("signed on the token: pss"));
    // A reload opens the token again in the same process (one PKCS#11 library, shared).
    gw.sighup();
    assert!(
        gw.wait_log("configuration reloaded", WAIT).await,
        "{}",
        gw.logs()
    );
    gw.send_ok(
        "alice@smime.example",
        &["bob@x.test"],
        &message("alice@smime.example", "after-reload"),
    )
    .await;
    let got = gw.expect_upstream(&up, 2).await;
    let content = openssl_verify(&got[1].data, None);
    assert!(String::from_utf8_lossy(&content).contains("signed on the token: after-reload"));
}

#[test]
fn a_wrong_pin_is_a_check_error_naming_the_token_and_the_key() {
    let hsm = SoftHsm::new("cachet");
    let work = tempfile::tempdir().unwrap();
    let keys = provision(&hsm, work.path());
    let config = cli_config(work.path(), &keys, &hsm.keys_toml(&hsm.pin_file("0000")));
    let (ok, out, err) = cachet(&hsm, &["check"], &config);
    assert!(!ok, "{out}");
    assert!(
        err.contains("keys.pkcs11: token \"cachet\" refused the PIN in keys.pkcs11.pin_file (PinIncorrect); keys on it cannot be used"),
        "{err}"
    );
    assert!(
        err.contains("erin@smime.example.pem: keys.dir: the private key for erin@smime.example is on the token, which cannot be used"),
        "{err}"
    );
    // A token label that does not exist is named too.
    let config = cli_config(
        work.path(),
        &keys,
        &hsm.keys_toml(&hsm.pin_file(USER_PIN))
            .replace("token = \"cachet\"", "token = \"elsewhere\""),
    );
    let (ok, _, err) = cachet(&hsm, &["check"], &config);
    assert!(!ok);
    assert!(err.contains("no token labelled \"elsewhere\""), "{err}");
}

#[tokio::test]
async fn an_unplugged_token_defers_mail_which_leaves_signed_once_it_is_back() {
    let hsm = SoftHsm::new("cachet");
    let work = tempfile::tempdir().unwrap();
    let keys = provision(&hsm, work.path());
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let mut gw = Gateway::start(gateway_config(
        &up,
        &hsm,
        &keys,
        "[policy]\nsign = \"opportunistic\"\n",
    ))
    .await;
    // Works while the token is there.
    gw.send_ok(
        "alice@smime.example",
        &["bob@x.test"],
        &message("alice@smime.example", "before"),
    )
    .await;
    gw.expect_upstream(&up, 1).await;

    hsm.unplug();
    // Accepted (the key is known), but not relayed: neither unsigned nor at all.
    gw.send_ok(
        "alice@smime.example",
        &["bob@x.test"],
        &message("alice@smime.example", "during"),
    )
    .await;
    gw.send_ok(
        "erin@smime.example",
        &["bob@x.test"],
        &message("erin@smime.example", "during-ec"),
    )
    .await;
    assert!(
        gw.wait_log("signing deferred", WAIT).await,
        "no deferral logged\n{}",
        gw.logs()
    );
    // Several retries (1 s, 2 s, 2 s...) pass while it is away; nothing leaves.
    let (_, queue) = gw.cli(&["queue", "list"]);
    assert!(queue.contains("deferred"), "{queue}");
    assert_eq!(up.wait_for(2, Duration::from_secs(4)).await.len(), 1);
    assert!(gw.is_running(), "the gateway survived the token going away");

    hsm.plug_in();
    let got = gw.expect_upstream(&up, 3).await;
    for r in &got[1..] {
        let content = openssl_verify(&r.data, None);
        assert!(
            String::from_utf8_lossy(&content).contains("signed on the token: during"),
            "{}",
            String::from_utf8_lossy(&r.data)
        );
    }
    assert!(gw.is_running());
}

#[tokio::test]
async fn a_re_initialised_token_is_found_again_and_a_swapped_key_never_signs() {
    let hsm = SoftHsm::new("cachet");
    let work = tempfile::tempdir().unwrap();
    let keys = provision(&hsm, work.path());
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(gateway_config(
        &up,
        &hsm,
        &keys,
        "[policy]\nsign = \"required\"\n",
    ))
    .await;
    gw.send_ok(
        "alice@smime.example",
        &["bob@x.test"],
        &message("alice@smime.example", "first"),
    )
    .await;
    gw.expect_upstream(&up, 1).await;
    let config = cli_config(work.path(), &keys, &hsm.keys_toml(&hsm.pin_file(USER_PIN)));
    let (_, list, _) = cachet(&hsm, &["keys", "list"], &config);
    let alice_id = list
        .lines()
        .find(|l| l.starts_with("alice@"))
        .and_then(|l| l.split(" id ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{list}"))
        .to_string();

    // The token is wiped and set up again from the same export: found again by its label, the
    // key again by its CKA_ID, logged in again.
    hsm.reinit();
    let export = work.path().join("alice-export.pem");
    let (ok, out, err) = cachet(&hsm, &["keys", "import", export.to_str().unwrap()], &config);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("as CKA_ID {alice_id}")), "{out}");
    gw.send_ok(
        "alice@smime.example",
        &["bob@x.test"],
        &message("alice@smime.example", "after-reinit"),
    )
    .await;
    let got = gw.expect_upstream(&up, 2).await;
    let content = openssl_verify(&got[1].data, None);
    assert!(String::from_utf8_lossy(&content).contains("signed on the token: after-reinit"));

    // Set up again with another key under alice's CKA_ID: signatures would not verify with her
    // certificate, so the mail waits instead.
    hsm.reinit();
    let (_, other_key) = Leaf::new("alice@smime.example", Alg::Rsa2048).issue();
    hsm.write_key(&other_key, &alice_id, "alice@smime.example");
    gw.send_ok(
        "alice@smime.example",
        &["bob@x.test"],
        &message("alice@smime.example", "swapped"),
    )
    .await;
    assert!(
        gw.wait_log("no longer matches its certificate", WAIT).await,
        "{}",
        gw.logs()
    );
    assert_eq!(up.wait_for(3, Duration::from_secs(3)).await.len(), 2);
}
