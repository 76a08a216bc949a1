//! The docker-compose deployment, tested for real (issue 5).
//!
//! Builds the image from the binary cargo just built (`docker/build-image.sh`, no registry
//! needed), makes the demo PKI and config (`docker/demo/setup.sh`), brings up
//! `docker/docker-compose.yml` + `docker/docker-compose.demo.yml` (gateway + smtp-sink, same
//! image) under a private compose project name, and always tears it down with `down -v`.
//!
//! Two modes, chosen by what the binary is:
//! * the binary has a `serve` subcommand (the real gateway): wait for the gateway to be healthy,
//!   send mail from the host through the published port, check every message arrives at the sink
//!   signed by alice and encrypted to bob (`openssl cms -decrypt` then `-verify`), reload with
//!   SIGHUP, restart the gateway container while a sender is busy and check that every message it
//!   accepted (250 after DATA) still arrives.
//! * the binary has no `serve` yet (the crate's stub `main`): prove the image, the compose files
//!   and the sink work: the stack comes up, the gateway container runs non-root on a read-only
//!   root and exits cleanly, the sink is healthy and stores mail sent to it. This is the
//!   placeholder part and says so loudly.
//!
//! Without a Docker engine the test prints a LOUD skip and passes, except when `CI=true`: there it
//! fails.

#[path = "compose/support.rs"]
mod support;

use std::time::{Duration, Instant};
use support::*;

#[test]
fn compose_demo_stack() {
    let Some(docker) = Docker::find() else { return };
    let bin = env!("CARGO_BIN_EXE_cachet");
    let real_gateway = binary_has_serve(bin);

    let work = tempfile::Builder::new()
        .prefix("cachet-compose-")
        .tempdir()
        .expect("tempdir");
    let stack = Stack::up(&docker, bin, work.path());

    let sink = stack.container("sink");
    stack.wait_health(&sink, Duration::from_secs(60));
    assert_eq!(stack.inspect(&sink, "{{.Config.User}}"), "10025:10025");
    assert_eq!(
        stack.inspect(&sink, "{{.HostConfig.ReadonlyRootfs}}"),
        "true"
    );

    // The sink (same image, busybox SMTP) takes mail and stores it verbatim.
    let session = "EHLO t\r\nMAIL FROM:<a@demo.test>\r\nRCPT TO:<b@demo.test>\r\nDATA\r\n\
                   Subject: sink probe\r\n\r\n..leading dot\r\nsink-probe-token\r\n.\r\nQUIT\r\n";
    // nc keeps reading after its stdin ends, until the sink closes the connection after QUIT;
    // -w bounds a silent sink generously.
    let out = stack.exec_stdin("sink", "nc -w 30 127.0.0.1 2525", session.as_bytes());
    assert!(
        out.contains("250 2.0.0 Ok: queued"),
        "sink did not take the probe: {out}"
    );
    let got = stack.wait_outbox(1, Duration::from_secs(20));
    assert!(got.iter().any(|m| m.text.contains("sink-probe-token") && m.text.contains("\r\n.leading dot\r\n")));

    if !real_gateway {
        placeholder_checks(&stack);
        return;
    }

    // The demo config must pass `cachet check` in the image, with the compose mounts.
    let check = stack.compose(&[
        "run",
        "--rm",
        "--no-deps",
        "cachet",
        "check",
        "--config",
        "/etc/cachet/cachet.toml",
    ]);
    assert!(
        check.status.success(),
        "cachet check on the demo config failed:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let cachet = stack.container("cachet");
    stack.wait_health(&cachet, Duration::from_secs(90));
    assert_eq!(stack.inspect(&cachet, "{{.Config.User}}"), "10025:10025");
    assert_eq!(
        stack.inspect(&cachet, "{{.HostConfig.ReadonlyRootfs}}"),
        "true"
    );
    let addr = stack.published_port("cachet", 2525);
    let already = got.len();

    // 1. A few messages, each must arrive signed by alice and encrypted to bob.
    let mut tokens = Vec::new();
    for i in 0..3 {
        let token = format!("compose-basic-{i}-{}", std::process::id());
        let reply =
            smtp_send(&addr, "alice@demo.test", "bob@demo.test", &message(&token)).expect("send");
        assert!(
            reply.starts_with("250"),
            "gateway refused message {i}: {reply}"
        );
        tokens.push(token);
    }
    stack.wait_tokens(&tokens, already, Duration::from_secs(60));

    // 2. SIGHUP reload keeps it serving.
    docker.run_ok(&["kill", "-s", "HUP", &cachet]);
    stack.wait_log("cachet", "configuration reloaded", Duration::from_secs(60));
    stack.wait_health(&cachet, Duration::from_secs(30));
    let token = format!("compose-after-hup-{}", std::process::id());
    let reply = smtp_send(&addr, "alice@demo.test", "bob@demo.test", &message(&token))
        .expect("send after HUP");
    assert!(reply.starts_with("250"), "after SIGHUP: {reply}");
    tokens.push(token);

    // 3. Restart the gateway (SIGTERM, grace period) while a sender is busy; every message
    //    that got a 250 after DATA must arrive. Refused/broken sessions are retried.
    let sender_addr = addr.clone();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent = progress.clone();
    let sender = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        for i in 0..30 {
            let token = format!("compose-restart-{i}-{}", std::process::id());
            loop {
                assert!(
                    Instant::now() < deadline,
                    "gateway did not accept message {i} within 120s"
                );
                match smtp_send(
                    &sender_addr,
                    "alice@demo.test",
                    "bob@demo.test",
                    &message(&token),
                ) {
                    Ok(r) if r.starts_with("250") => break,
                    _ => std::thread::sleep(Duration::from_millis(300)),
                }
            }
            accepted.push(token);
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
        }
        accepted
    });
    // Restart once the sender is under way (it has 30 messages to go through).
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(
            Instant::now() < deadline,
            "the sender got no 3 messages through in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stack.compose_ok(&["restart", "-t", "30", "cachet"]);
    let accepted = sender.join().expect("sender thread");
    tokens.extend(accepted);
    stack.wait_health(&cachet, Duration::from_secs(60));
    stack.wait_tokens(&tokens, already, Duration::from_secs(120));
    eprintln!(
        "compose test: {} messages accepted and all arrived signed+encrypted",
        tokens.len()
    );
}

/// What the test can prove while `cachet` is still the stub: the gateway container starts with the
/// hardening from the compose file and ends cleanly (exit 0, or still running).
fn placeholder_checks(stack: &Stack) {
    loud(
        "## compose test: PLACEHOLDER MODE: the cachet binary has no `serve` subcommand yet.\n\
         ## Proven: image builds without a registry, demo stack comes up, sink is healthy and stores\n\
         ## mail, gateway container runs non-root with a read-only root and exits cleanly.\n\
         ## NOT proven yet: mail through the gateway, S/MIME result, SIGHUP, restart mid-flow.",
    );
    let cachet = stack.container("cachet");
    assert_eq!(stack.inspect(&cachet, "{{.Config.User}}"), "10025:10025");
    assert_eq!(
        stack.inspect(&cachet, "{{.HostConfig.ReadonlyRootfs}}"),
        "true"
    );
    assert_eq!(
        stack.inspect(&cachet, "{{.HostConfig.RestartPolicy.Name}}"),
        "unless-stopped"
    );
    assert_eq!(
        stack.inspect(&cachet, "{{.Config.Healthcheck.Test}}"),
        "[CMD /usr/local/bin/cachet-healthcheck]"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = stack.inspect(
            &cachet,
            "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}",
        );
        let mut it = state.split_whitespace();
        let (status, code) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        assert_ne!(status, "dead", "gateway container died: {state}");
        assert!(
            code == "0",
            "gateway container exited with an error: {state}"
        );
        if it.next().map(|n| n != "0").unwrap_or(false)
            || status == "exited"
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn message(token: &str) -> String {
    format!(
        "From: Alice <alice@demo.test>\r\nTo: Bob <bob@demo.test>\r\nSubject: compose test {token}\r\n\
         Message-ID: <{token}@demo.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello Bob,\r\n.a line starting with a dot\r\ntoken: {token}\r\n"
    )
}

/// The S/MIME check the compose test relies on, proven on messages openssl makes (needs no
/// Docker): signed-then-encrypted passes, encrypted-only and signed-only do not.
#[test]
fn smime_check_needs_both_signature_and_encryption() {
    let work = tempfile::Builder::new()
        .prefix("cachet-smime-check-")
        .tempdir()
        .expect("tempdir");
    let demo = work.path().join("demo");
    let setup = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/demo/setup.sh");
    let o = std::process::Command::new("sh")
        .arg(setup)
        .arg(&demo)
        .output()
        .expect("openssl/sh");
    assert!(
        o.status.success(),
        "setup.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let p = |name: &str| demo.join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    std::fs::write(
        demo.join("plain.txt"),
        "Content-Type: text/plain\r\n\r\ntoken: check-123\r\n",
    )
    .unwrap();
    let (plain, signed, both, enc_only) =
        (p("plain.txt"), p("signed.eml"), p("both.eml"), p("enc.eml"));
    let (alice_crt, alice_key, bob) = (
        p("private/alice@demo.test.crt"),
        p("private/alice@demo.test.key"),
        p("recipients/bob@demo.test.pem"),
    );
    openssl(&[
        "cms", "-sign", "-signer", &alice_crt, "-inkey", &alice_key, "-in", &plain, "-out", &signed,
    ]);
    openssl(&[
        "cms", "-encrypt", "-aes256", "-in", &signed, "-out", &both, &bob,
    ]);
    openssl(&[
        "cms", "-encrypt", "-aes256", "-in", &plain, "-out", &enc_only, &bob,
    ]);

    let got = verify_smime(&demo, std::path::Path::new(&both)).expect("signed+encrypted must pass");
    assert!(got.contains("token: check-123"), "{got}");
    assert!(
        verify_smime(&demo, std::path::Path::new(&enc_only)).is_err(),
        "encrypted-only must fail"
    );
    assert!(
        verify_smime(&demo, std::path::Path::new(&signed)).is_err(),
        "signed-only must fail"
    );
}
