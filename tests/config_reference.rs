//! The configuration reference cannot drift from the code: every key the config loader accepts
//! (asked of the loader itself, via its "unknown field ... expected one of" error) must be
//! documented in `config/cachet.toml` and in `docs/configuration.md`, and the example must load.

use std::process::Command;

const SECTIONS: &[&str] = &[
    "server",
    "spool",
    "upstream",
    "keys",
    "certificates",
    "policy",
    "rule",
    "submitter",
    "admin",
    "log",
];

/// Asks the real binary which keys `[section]` accepts.
fn accepted_keys(section: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let header = if section == "rule" || section == "submitter" {
        format!("[[{section}]]")
    } else {
        format!("[{section}]")
    };
    // A minimal valid config, plus one unknown key in the section under test.
    let mut toml = String::new();
    if section != "server" {
        toml.push_str("[server]\nlocal_domains = [\"example.org\"]\n");
    }
    if section != "upstream" {
        toml.push_str("[upstream]\nurl = \"file://out\"\n");
    }
    toml.push_str(&format!("{header}\nzz_not_a_key = 1\n"));
    if section == "upstream" {
        toml.push_str("url = \"file://out\"\n");
    }
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    // serde says "expected `a` or `b`" for two fields and "expected one of `a`, `b`, ..." beyond.
    let list = err
        .split("expected")
        .nth(1)
        .unwrap_or_else(|| panic!("[{section}]: {err}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_accepted_key_is_documented() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/cachet.toml"))
            .unwrap();
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let mut missing = Vec::new();
    for section in SECTIONS {
        let keys = accepted_keys(section);
        assert!(!keys.is_empty(), "[{section}] reported no keys");
        for key in keys {
            let in_example = example.lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}  ="))
            });
            if !in_example {
                missing.push(format!("config/cachet.toml: {section}.{key}"));
            }
            if !reference.contains(&format!("`{section}.{key}`")) {
                missing.push(format!("docs/configuration.md: {section}.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented keys:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_annotated_example_loads() {
    let out = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/cachet.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("config/cachet.toml: ok"));
}

#[test]
fn check_lists_every_problem_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"0.0.0.0:99999\"]\ntls_cert = \"nope.crt\"\ntls_key = \"nope.key\"\n[upstream]\nurl = \"smtp://mx.example:587\"\ntls = \"sometimes\"\n[[rule]]\nname = \"r\"\nencrypt = \"always\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = path.display().to_string();
    for expected in [
        format!("{f}:2: server.listen: \"0.0.0.0:99999\" is not an address:port"),
        format!(
            "{f}:3: server.tls_cert: file {}/nope.crt does not exist",
            dir.path().display()
        ),
        format!(
            "{f}:4: server.tls_key: file {}/nope.key does not exist",
            dir.path().display()
        ),
        format!("{f}:7: upstream.tls: \"sometimes\" is not one of verify, insecure, none"),
        format!(
            "{f}:10: rule \"r\": encrypt: \"always\" is not one of never, opportunistic, required"
        ),
        format!("{f}: server.local_domains: list the organisation's own domains"),
        "6 problem(s) found".to_string(),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
}
