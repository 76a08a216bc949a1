//! The spool holds plaintext mail: its directories are 0700 and its files 0600 whatever the umask, and
//! ones left wider by an older version are tightened at start. `cachet check` names every configured
//! secret or spool that other local users can read.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn spool_is_private_whatever_the_umask() {
    // A spool left by an older version: world-readable directories and an old file.
    let base = tempfile::tempdir().unwrap();
    let spool = base.path().join("spool");
    std::fs::create_dir_all(spool.join("data")).unwrap();
    std::fs::create_dir_all(spool.join("corrupt")).unwrap();
    std::fs::write(spool.join("corrupt").join("OLD1"), b"{").unwrap();
    chmod(&spool, 0o755);
    chmod(&spool.join("data"), 0o777);
    chmod(&spool.join("corrupt").join("OLD1"), 0o644);

    let up = Upstream::start(
        UpstreamOptions::starttls().fault(Stage::Greeting, Fault::always(421, "4.3.2 not now")),
    )
    .await;
    // The gateway runs under umask 000: only explicit modes keep the spool private.
    let umask_wrapper = r#"umask 000 && exec "$0" "$@""#;
    let gw = Gateway::start(
        GatewayConfig::new()
            .upstream(&up)
            .with("spool", "dir", &toml_str(&spool.display().to_string()))
            .program(&["sh", "-c", umask_wrapper, env!("CARGO_BIN_EXE_cachet")]),
    )
    .await;
    let id = gw
        .send_ok(
            "a@example.org",
            &["b@x.example"],
            b"Subject: s\r\n\r\nsecret\r\n",
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !spool.join("deferred").join(&id).exists() {
        assert!(Instant::now() < deadline, "never deferred\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut wrong = Vec::new();
    let mut dirs = vec![spool.clone()];
    while let Some(d) = dirs.pop() {
        if mode(&d) != 0o700 {
            wrong.push(format!("{} {:o}", d.display(), mode(&d)));
        }
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if mode(&p) != 0o600 {
                wrong.push(format!("{} {:o}", p.display(), mode(&p)));
            }
        }
    }
    assert!(wrong.is_empty(), "not private: {wrong:#?}");
    // The walk above did look at the message's queue file.
    assert!(spool.join("deferred").join(&id).is_file());
}

#[tokio::test]
async fn check_names_secrets_and_spool_that_others_can_read() {
    let pki = TestPki::new("gateway");
    let gw = Gateway::start(
        GatewayConfig::new()
            .with_tls(&pki)
            .with("upstream", "url", &toml_str("smtp://127.0.0.1:1"))
            .with("upstream", "username", &toml_str("relay"))
            .with("upstream", "password_file", &toml_str("upstream.pw"))
            .file("upstream.pw", "secret\n"),
    )
    .await;
    let (ok, out) = gw.cli(&["check"]);
    assert!(ok, "{out}");
    assert!(!out.contains("readable by other users"), "{out}");

    chmod(&gw.dir().join("server.key"), 0o644);
    chmod(&gw.dir().join("upstream.pw"), 0o604);
    chmod(&gw.spool_dir(), 0o755);
    let (ok, out) = gw.cli(&["check"]);
    assert!(ok, "a warning, not an error: {out}");
    let config = gw.config_path().display().to_string();
    for key in ["server.tls_key", "upstream.password_file", "spool.dir"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{config}: {key}: warning: "))
                    && l.contains("readable by other users")),
            "no warning for {key}:\n{out}"
        );
    }
    assert_eq!(out.matches("readable by other users").count(), 3, "{out}");
}
