//! The README's first command: `cachet demo` runs a self-contained gateway whose output
//! decrypts with the printed `openssl cms` line and verifies against the demo CA.

mod common;

use common::{SmtpClient, free_port};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `cachet demo` on free ports and connects (EHLO done). A free port can be taken by another
/// process before the demo binds it: when the demo exits with `cannot listen on`, new ports are
/// picked (three tries). Its stderr goes to `logs/stderr.N.log`.
async fn start_demo(d: &Path, logs: &Path, deadline: Instant) -> (Child, SmtpClient) {
    for attempt in 1..=3 {
        let (port, admin) = (free_port(), free_port());
        let log = logs.join(format!("stderr.{attempt}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_cachet"))
            .args(["demo", "--dir"])
            .arg(d)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        loop {
            if let Ok((c, _)) = SmtpClient::connect_ehlo(addr).await {
                return (child, c);
            }
            if let Some(status) = child.try_wait().unwrap() {
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(
                    err.contains("cannot listen on") && attempt < 3,
                    "demo exited ({status}):\n{err}"
                );
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "demo did not listen:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    unreachable!("the third attempt returns or panics")
}

#[tokio::test]
async fn demo_signs_and_encrypts_to_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("demo");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut child, mut c) = start_demo(&d, dir.path(), deadline).await;
    let msg = b"From: alice@demo.test\r\nTo: bob@demo.test\r\nSubject: hello\r\n\r\nsigned and encrypted\r\n";
    assert_eq!(
        c.send_message("alice@demo.test", &["bob@demo.test"], msg)
            .await
            .unwrap()
            .0,
        250
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let eml = loop {
        let found = std::fs::read_dir(d.join("outbox"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "eml"));
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "nothing in the outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let decrypt = Command::new("openssl")
        .args(["cms", "-decrypt", "-recip"])
        .arg(d.join("bob.crt"))
        .arg("-inkey")
        .arg(d.join("bob.key"))
        .arg("-in")
        .arg(&eml)
        .output()
        .unwrap();
    assert!(
        decrypt.status.success(),
        "{}",
        String::from_utf8_lossy(&decrypt.stderr)
    );
    let mut verify = Command::new("openssl")
        .args(["cms", "-verify", "-CAfile"])
        .arg(d.join("ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    verify
        .stdin
        .take()
        .unwrap()
        .write_all(&decrypt.stdout)
        .unwrap();
    let out = verify.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("signed and encrypted"));
    let _ = child.wait();
}
