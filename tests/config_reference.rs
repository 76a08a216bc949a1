//! The configuration reference cannot drift from the code: every key the config loader accepts
//! (asked of the loader itself, via its "unknown field ... expected one of" error) must be
//! documented in `config/cachet.toml` and in `docs/configuration.md`, and the example must load.

use std::process::Command;

const SECTIONS: &[&str] = &[
    "server",
    "spool",
    "upstream",
    "keys",
    "keys.pkcs11",
    "certificates",
    "policy",
    "rule",
    "submitter",
    "directory",
    "admin",
    "log",
    "inbound",
    "inbound.rule",
];

/// Asks the real binary which keys `[section]` accepts.
fn accepted_keys(section: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let header = if matches!(section, "rule" | "submitter" | "directory" | "inbound.rule") {
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
                l.starts_with(&format!("{key} ="))
                    || l.starts_with(&format!("{key}  ="))
                    || l == format!("[{section}.{key}]")
                    || l == format!("[[{section}.{key}]]")
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

/// `config/cachet.toml` shows the real defaults: for every key `cachet config --defaults` prints
/// with a value, the reference file has a `key = value` line (commented or not) in that section
/// with the same TOML value.
#[test]
fn the_reference_shows_the_real_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["config", "--defaults"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let defaults = String::from_utf8(out.stdout).unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/cachet.toml"))
            .unwrap();
    // section -> the `key = value` lines under it, comment marks removed.
    let mut section = String::new();
    let mut shown: Vec<(String, String, String)> = Vec::new();
    for line in example.lines() {
        let l = line.trim_start_matches('#').trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|x| x.strip_suffix("]]")) {
            section = name.to_string();
        } else if let Some(name) = l.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((k, v)) = l.split_once(" = ") {
            shown.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    let value = |lit: &str| -> toml::Value {
        toml::from_str::<toml::Table>(&format!("v = {lit}"))
            .unwrap_or_else(|e| panic!("{lit}: {e}"))["v"]
            .clone()
    };
    let mut wrong = Vec::new();
    for line in defaults.lines().filter(|l| !l.starts_with('#')) {
        let (key, lit) = line.split_once(" = ").unwrap();
        // `section.key`, or `section.sub.key` for a sub-table such as [keys.pkcs11].
        let (sec, k) = key.rsplit_once('.').unwrap();
        let want = value(lit);
        let found: Vec<&(String, String, String)> = shown
            .iter()
            .filter(|(s, kk, _)| s == sec && kk == k)
            .collect();
        if !found.iter().any(|(_, _, v)| {
            toml::from_str::<toml::Table>(&format!("v = {v}")).is_ok_and(|t| t["v"] == want)
        }) {
            wrong.push(format!(
                "{key}: default {lit}, config/cachet.toml shows {:?}",
                found.iter().map(|f| f.2.as_str()).collect::<Vec<_>>()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Bounds come from the same table: a zero that used to become 1 silently is an error now.
#[test]
fn out_of_range_values_are_errors_naming_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nlocal_domains = [\"example.org\"]\nmax_connections = 0\n[upstream]\nurl = \"file://out\"\nmax_connections = 0\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for key in ["server.max_connections", "upstream.max_connections"] {
        assert!(
            err.contains(&format!(
                "{key}: 0 connections is out of range: must be from 1 to"
            )),
            "{err}"
        );
    }
    let changed = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["config", "--changed", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&changed.stdout);
    assert!(text.contains("server.max_connections = 0\n"), "{text}");
    assert!(!text.contains("server.hostname"), "{text}");
}
