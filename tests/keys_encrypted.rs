//! Encrypted key files (issue 11): PKCS#8 EncryptedPrivateKeyInfo made by `openssl pkcs8 -topk8
//! -v2 aes-256-cbc` (PBKDF2) and `-scrypt`, and a password-protected PKCS#12, all opened with
//! `keys.passphrase_file`; a wrong passphrase is named; `cachet check` warns about plain key files
//! beside them; `cachet keys import` into keys.dir (mode 0600) and `cachet keys list`; the real
//! gateway signs with the encrypted key and openssl verifies.

mod common;
mod smime_common;

use common::*;
use smime_common::{Alg, Leaf, chmod, openssl_verify, read, run_ok, write};
use std::path::Path;
use std::process::Command;

const PASSPHRASE: &str = "correct horse battery staple";

/// `openssl pkcs8 -topk8 -v2 aes-256-cbc [-scrypt]` of `key_pem`, with the passphrase.
fn encrypt_pkcs8(dir: &Path, key_pem: &str, scrypt: bool) -> String {
    let plain = write(dir, "plain.key", key_pem);
    let out = dir.join("enc.key");
    let mut cmd = Command::new("openssl");
    cmd.args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout"])
        .arg(format!("pass:{PASSPHRASE}"))
        .arg("-in")
        .arg(&plain)
        .arg("-out")
        .arg(&out);
    if scrypt {
        cmd.arg("-scrypt");
    }
    run_ok(&mut cmd);
    std::fs::remove_file(plain).unwrap();
    std::fs::read_to_string(out).unwrap()
}

fn p12(dir: &Path, key_pem: &str, cert_pem: &str) -> Vec<u8> {
    let key = write(dir, "p12.key", key_pem);
    let cert = write(dir, "p12.crt", cert_pem);
    let out = dir.join("out.p12");
    run_ok(
        Command::new("openssl")
            .args(["pkcs12", "-export", "-passout"])
            .arg(format!("pass:{PASSPHRASE}"))
            .arg("-inkey")
            .arg(&key)
            .arg("-in")
            .arg(&cert)
            .arg("-out")
            .arg(&out),
    );
    std::fs::read(out).unwrap()
}

/// keys.dir with: PBKDF2-encrypted RSA (alice), scrypt-encrypted P-256 (erin), PKCS#12 (dave),
/// a plain key (frank); the passphrase file beside it.
fn key_dir(dir: &Path) {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (c, k) = Leaf::new("alice@smime.example", Alg::Rsa2048).issue();
    let enc = encrypt_pkcs8(dir, &k, false);
    assert!(enc.contains("BEGIN ENCRYPTED PRIVATE KEY"));
    chmod(
        &write(&keys, "alice@smime.example.pem", format!("{enc}{c}")),
        0o600,
    );
    let (c, k) = Leaf::new("erin@smime.example", Alg::EcP256).issue();
    let enc = encrypt_pkcs8(dir, &k, true);
    chmod(
        &write(&keys, "erin@smime.example.pem", format!("{enc}{c}")),
        0o600,
    );
    let (c, k) = Leaf::new("dave@smime.example", Alg::Rsa2048).issue();
    chmod(
        &write(&keys, "dave@smime.example.p12", p12(dir, &k, &c)),
        0o600,
    );
    let (c, k) = Leaf::new("frank@smime.example", Alg::EcP256).issue();
    chmod(
        &write(&keys, "frank@smime.example.pem", format!("{k}{c}")),
        0o600,
    );
    chmod(&write(dir, "passphrase", format!("{PASSPHRASE}\n")), 0o600);
}

fn config(dir: &Path, passphrase: &str) -> GatewayConfig {
    GatewayConfig::new()
        .file("trust/ca.pem", read("ca.rsa.crt"))
        .raw(&format!(
            "[certificates]\ndir = \"trust\"\ntrust = [\"trust/ca.pem\"]\n[keys]\ndir = {}\npassphrase_file = {}\n",
            toml_str(&dir.join("keys").display().to_string()),
            toml_str(&dir.join(passphrase).display().to_string()),
        ))
}

#[tokio::test]
async fn pbkdf2_scrypt_and_p12_keys_open_with_the_passphrase_file_and_sign() {
    let work = tempfile::tempdir().unwrap();
    key_dir(work.path());
    let up = Upstream::start(UpstreamOptions::plain()).await;
    let gw = Gateway::start(
        config(work.path(), "passphrase")
            .upstream(&up)
            .raw("[policy]\nsign = \"required\"\n"),
    )
    .await;
    let (ok, out) = gw.cli(&["check"]);
    assert!(ok, "{out}");
    for (who, alg, place) in [
        ("alice", "RSA-2048", "encrypted file"),
        ("erin", "EC-P256", "encrypted file"),
        ("dave", "RSA-2048", "encrypted file"),
        ("frank", "EC-P256", "file"),
    ] {
        assert!(
            out.contains(&format!("key {who}@smime.example: {alg} in {place} ")),
            "{who}: {out}"
        );
    }
    // The plain key beside a passphrase is worth a warning; the encrypted ones are not.
    assert!(
        out.contains("frank@smime.example.pem: plain private key for frank@smime.example although keys.passphrase_file is configured"),
        "{out}"
    );
    assert!(!out.contains("plain private key for alice"), "{out}");
    let (ok, list) = gw.cli(&["keys", "list"]);
    assert!(ok, "{list}");
    assert!(
        list.contains("erin@smime.example  EC-P256  expires "),
        "{list}"
    );

    for who in ["alice", "erin", "dave"] {
        let from = format!("{who}@smime.example");
        let msg = format!(
            "From: {from}\r\nTo: bob@x.test\r\nSubject: {who}\r\n\r\nfrom an encrypted key file: {who}\r\n"
        );
        gw.send_ok(&from, &["bob@x.test"], msg.as_bytes()).await;
    }
    let got = gw.expect_upstream(&up, 3).await;
    for r in &got {
        let content = openssl_verify(&r.data, None);
        assert!(
            String::from_utf8_lossy(&content).contains("from an encrypted key file"),
            "{}",
            String::from_utf8_lossy(&r.data)
        );
    }
}

/// `cachet check` on `config` written into `dir`: (success, stdout, stderr).
fn check(dir: &Path, mut config: GatewayConfig) -> (bool, String, String) {
    let path = config.write_to(dir);
    let out = cachet_command()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_wrong_passphrase_is_an_error_naming_the_file() {
    let work = tempfile::tempdir().unwrap();
    key_dir(work.path());
    chmod(&write(work.path(), "wrong", "not the passphrase\n"), 0o600);
    let (ok, out, err) = check(work.path(), config(work.path(), "wrong"));
    assert!(!ok, "{out}");
    for f in ["alice@smime.example.pem", "erin@smime.example.pem"] {
        assert!(
            err.lines().any(|l| l.contains(f)
                && l.contains("keys.dir: cannot decrypt the private key: wrong passphrase in keys.passphrase_file?")),
            "{f}: {err}"
        );
    }
    // Without any passphrase the encrypted file says what is missing.
    let no_pass = GatewayConfig::new()
        .file("trust/ca.pem", read("ca.rsa.crt"))
        .raw(&format!(
            "[certificates]\ndir = \"trust\"\ntrust = [\"trust/ca.pem\"]\n[keys]\ndir = {}\n",
            toml_str(&work.path().join("keys").display().to_string()),
        ));
    let (ok, _, err) = check(work.path(), no_pass);
    assert!(!ok);
    assert!(
        err.contains("the private key is encrypted: set keys.passphrase_file"),
        "{err}"
    );
    // A passphrase file others can read is refused.
    chmod(&work.path().join("passphrase"), 0o644);
    let (ok, _, err) = check(work.path(), config(work.path(), "passphrase"));
    assert!(!ok);
    assert!(
        err.contains("keys.passphrase_file: readable or writable by group/others"),
        "{err}"
    );
    // With the right passphrase the same directory checks clean.
    chmod(&work.path().join("passphrase"), 0o600);
    let (ok, out, err) = check(work.path(), config(work.path(), "passphrase"));
    assert!(ok, "{out}{err}");
}

#[tokio::test]
async fn keys_import_writes_into_the_key_directory_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("keys")).unwrap();
    chmod(&write(work.path(), "passphrase", PASSPHRASE), 0o600);
    let gw = Gateway::start(config(work.path(), "passphrase")).await;
    let (c, k) = Leaf::new("grace@smime.example", Alg::Rsa2048).issue();
    let enc = encrypt_pkcs8(work.path(), &k, true);
    let file = write(work.path(), "grace-export.pem", format!("{enc}{c}"));
    let (ok, out) = gw.cli(&["keys", "import", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("imported grace@smime.example (RSA-2048"),
        "{out}"
    );
    let target = work.path().join("keys/grace@smime.example.pem");
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second certificate for the same address (rotation) lands beside it, never over it.
    let (c2, k2) = Leaf::new("grace@smime.example", Alg::EcP256).issue();
    let file2 = write(work.path(), "grace-next.pem", format!("{k2}{c2}"));
    let (ok, out) = gw.cli(&["keys", "import", file2.to_str().unwrap()]);
    assert!(ok, "{out}");
    let names: Vec<String> = std::fs::read_dir(work.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("grace@smime.example+")),
        "{names:?}"
    );
    let (ok, list) = gw.cli(&["keys", "list"]);
    assert!(ok, "{list}");
    assert_eq!(
        list.lines()
            .filter(|l| l.starts_with("grace@smime.example  "))
            .count(),
        2,
        "{list}"
    );
    assert_eq!(
        list.matches("(standby: a newer certificate signs)").count(),
        1,
        "{list}"
    );
    // A PKCS#12 export with its password in a file of its own lands as <address>.p12.
    let (c4, k4) = Leaf::new("judy@smime.example", Alg::Rsa2048).issue();
    let p12_file = write(work.path(), "judy.p12", p12(work.path(), &k4, &c4));
    let pass = write(work.path(), "judy.pass", PASSPHRASE);
    chmod(&pass, 0o600);
    let (ok, out) = gw.cli(&[
        "keys",
        "import",
        p12_file.to_str().unwrap(),
        "--password-file",
        pass.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        work.path().join("keys/judy@smime.example.p12").exists(),
        "{out}"
    );
    // It opens with keys.passphrase_file (the same passphrase here).
    let (ok, list) = gw.cli(&["keys", "list"]);
    assert!(ok, "{list}");
    assert!(
        list.contains("judy@smime.example  RSA-2048  expires "),
        "{list}"
    );
    // A file that does not validate (untrusted CA) is refused and nothing is written.
    let mut l = Leaf::new("heidi@smime.example", Alg::EcP256);
    l.untrusted = true;
    let (c3, k3) = l.issue();
    let bad = write(work.path(), "heidi.pem", format!("{k3}{c3}"));
    let (ok, out) = gw.cli(&["keys", "import", bad.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(!work.path().join("keys/heidi@smime.example.pem").exists());
}

#[test]
fn the_newest_valid_certificate_signs_during_rotation() {
    use cachet::store::KeyStore;
    use smime_common::{now, trust};
    let dir = tempfile::tempdir().unwrap();
    let now_t = time::OffsetDateTime::now_utc();
    // The old certificate (issued 300 days ago, still valid for 20 days) and its successor.
    let mut old = Leaf::new("ivy@smime.example", Alg::Rsa2048);
    old.not_before = now_t - time::Duration::days(300);
    old.not_after = now_t + time::Duration::days(20);
    let mut new = Leaf::new("ivy@smime.example", Alg::EcP256);
    new.not_before = now_t - time::Duration::hours(2);
    let (oc, ok) = old.issue();
    let (nc, nk) = new.issue();
    chmod(
        &write(dir.path(), "ivy@smime.example.pem", format!("{ok}{oc}")),
        0o600,
    );
    chmod(
        &write(
            dir.path(),
            "ivy@smime.example+2027.pem",
            format!("{nk}{nc}"),
        ),
        0o600,
    );
    let (keys, problems) = KeyStore::load(dir.path(), None, &trust(), now());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(keys.all().len(), 2);
    let signing = keys.get("ivy@smime.example").unwrap();
    assert_eq!(
        signing.key,
        cachet::store::KeyKind::EcP256,
        "the newer one signs"
    );
    assert_eq!(keys.iter().count(), 1, "one active identity per address");
    // Without the successor the old one signs again.
    std::fs::remove_file(dir.path().join("ivy@smime.example+2027.pem")).unwrap();
    let (keys, _) = KeyStore::load(dir.path(), None, &trust(), now());
    assert!(matches!(
        keys.get("ivy@smime.example").unwrap().key,
        cachet::store::KeyKind::Rsa { .. }
    ));
}
