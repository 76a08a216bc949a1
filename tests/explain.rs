//! `cachet explain` answers from the same decision code as live traffic: per recipient the rule,
//! the signing key, the certificate (and why others were skipped), algorithms, and the exact
//! reply a refused recipient would get.

mod smime_common;

use smime_common::read;
use std::process::Command;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for sub in ["keys", "recipients", "trust"] {
        std::fs::create_dir_all(p.join(sub)).unwrap();
    }
    let key = p.join("keys/alice@smime.example.pem");
    std::fs::write(
        &key,
        format!("{}{}", read("alice.sign.key"), read("alice.sign.crt")),
    )
    .unwrap();
    smime_common::chmod(&key, 0o600);
    std::fs::write(p.join("recipients/bob.crt"), read("bob.encrypt.crt")).unwrap();
    // Bob's signing certificate is not fit for encryption: explain must say so.
    std::fs::write(p.join("recipients/bob-sign.crt"), read("bob.sign.crt")).unwrap();
    std::fs::write(p.join("trust/ca.pem"), read("ca.rsa.crt")).unwrap();
    std::fs::write(
        p.join("cachet.toml"),
        "[server]\nlocal_domains = [\"example.org\", \"smime.example\"]\n[upstream]\nurl = \"file://out\"\n[keys]\ndir = \"keys\"\n[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n\
         [policy]\nsubject_tag = \"[secure]\"\n\
         [[rule]]\nname = \"partners\"\nto = [\"*@partner.example\"]\nencrypt = \"required\"\nencryption = \"aes256-gcm\"\n\
         [[rule]]\nname = \"held\"\nto = [\"*@hold.example\"]\nencrypt = \"required\"\non_missing_key = \"hold\"\n",
    )
    .unwrap();
    dir
}

fn explain(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .arg("explain")
        .arg("--config")
        .arg(dir.join("cachet.toml"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn json_explains_each_recipient() {
    let dir = setup();
    let out = explain(
        dir.path(),
        &[
            "--from",
            "alice@smime.example",
            "--to",
            "bob@smime.example",
            "--to",
            "carol@partner.example",
            "--to",
            "dave@hold.example",
            "--to",
            "erin@plain.example",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &v["recipients"];
    // Bob: default policy, signed by Alice's key, encrypted to his encryption certificate; his
    // signing-only certificate is skipped with the reason.
    assert_eq!(r[0]["rule"], serde_json::Value::Null);
    assert_eq!(r[0]["sign"]["sign"], true);
    assert_eq!(r[0]["sign"]["address"], "alice@smime.example");
    assert_eq!(r[0]["encrypt"]["encrypt"], true);
    assert_eq!(r[0]["encrypt"]["encryption"], "aes256-cbc");
    assert_eq!(r[0]["encrypt"]["key_transport"], "rsa-pkcs1");
    let skipped = r[0]["encrypt"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{out}");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("keyEncipherment"),
        "{out}"
    );
    assert_eq!(r[0]["outcome"]["action"], "relay");
    // Carol: the partners rule requires encryption and she has no certificate: refused at RCPT.
    assert_eq!(r[1]["rule"], "partners");
    assert_eq!(r[1]["outcome"]["action"], "refuse at RCPT");
    assert_eq!(
        r[1]["outcome"]["reply"],
        "550 5.7.1 no valid S/MIME certificate for carol@partner.example"
    );
    // Dave: required with hold.
    assert_eq!(r[2]["outcome"]["action"], "hold");
    // Erin: opportunistic, no certificate: signed only.
    assert_eq!(
        (
            r[3]["sign"]["sign"].as_bool(),
            r[3]["encrypt"]["encrypt"].as_bool()
        ),
        (Some(true), Some(false))
    );
}

#[test]
fn text_output_and_the_subject_trigger() {
    let dir = setup();
    let plain = explain(
        dir.path(),
        &[
            "--from",
            "alice@smime.example",
            "--to",
            "erin@plain.example",
        ],
    );
    assert!(
        plain.contains("erin@plain.example\n  rule:     (none: [policy] defaults)"),
        "{plain}"
    );
    assert!(
        plain.contains(
            "  encrypt:  no (opportunistic): no valid certificate for erin@plain.example"
        ),
        "{plain}"
    );
    assert!(plain.contains("  outcome:  relay"), "{plain}");
    // The subject tag raises encryption to required: without a certificate, the default (reject)
    // can no longer apply after DATA, so it bounces.
    let tagged = explain(
        dir.path(),
        &[
            "--from",
            "alice@smime.example",
            "--to",
            "erin@plain.example",
            "--subject",
            "[secure] numbers",
        ],
    );
    assert!(tagged.contains("  encrypt:  no (required)"), "{tagged}");
    assert!(
        tagged.contains(
            "  outcome:  bounce: 550 5.7.1 no valid S/MIME certificate for erin@plain.example"
        ),
        "{tagged}"
    );
}

#[test]
fn check_warns_about_expiring_keys_and_settings_a_key_cannot_honour() {
    use smime_common::{Alg, Leaf};
    let dir = setup();
    // Carol signs with EC P-256 and her certificate expires in ten days.
    let mut leaf = Leaf::new("carol@smime.example", Alg::EcP256);
    leaf.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let (cert, key) = leaf.issue();
    let path = dir.path().join("keys/carol@smime.example.pem");
    std::fs::write(&path, format!("{key}{cert}")).unwrap();
    smime_common::chmod(&path, 0o600);
    let cfg = dir.path().join("cachet.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[policy]\n", "[policy]\ndigest = \"sha512\"\n");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 signing key(s)"), "{stdout}");
    assert!(
        stdout.contains("warning: signing key carol@smime.example (")
            && stdout.contains("expires within 30 days"),
        "{stdout}"
    );
    assert!(stdout.contains("warning: policy.digest = \"sha512\" but the signing key for carol@smime.example is EC P-256"), "{stdout}");
    assert!(!stdout.contains("alice@smime.example is EC"), "{stdout}");
}
