//! Reload storm against the real binary (issue 14): 50 SIGHUPs while clients keep sending, every
//! third one with an invalid config (a bad enum), the last one invalid too. Nothing accepted is
//! lost, the process never panics or stops, every copy was sealed the way the policy in force at
//! that moment said (the audit log's policy_version tells which), and at the end the last valid
//! policy is the one in force.
//!
//! The policy toggles `[policy] encrypt` for bob (who has a certificate) between "required" and
//! "never"; carol's domain has its own rule and is always plaintext. Most reloads are paced (the
//! next SIGHUP after the previous one was answered); twenty in the middle are sent back to back,
//! as a storm, where the kernel merges pending SIGHUPs and one reload may read a file written after
//! the signal that triggered it. The config file is replaced by rename, as an operator (or a
//! config-management tool) should, so a reload never reads half a file.
//!
//! Prints its figure: reloads applied and refused, messages accepted during the storm.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const SENDER: &str = "alice@example.org";
const BOB: &str = "bob@smime.example";
const CAROL: &str = "carol@x.example";
const SIGHUPS: usize = 50;
/// SIGHUPs sent back to back, without waiting for the previous reload.
const BURST: std::ops::Range<usize> = 20..40;
/// Messages the clients send at least.
const MIN_MESSAGES: usize = 300;

fn rfc9216(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/interop/rfc9216")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `[policy] encrypt` value of SIGHUP `i`: invalid every third time and the very last time;
/// otherwise alternating "required" and "never". The last valid one (48) is "required", unlike the
/// starting config.
fn encrypt_mode(i: usize) -> &'static str {
    if i % 3 == 2 || i == SIGHUPS - 1 {
        "sometimes"
    } else if i.is_multiple_of(2) {
        "required"
    } else {
        "never"
    }
}

fn is_encrypted(data: &[u8]) -> bool {
    String::from_utf8_lossy(data).contains("application/pkcs7-mime")
}

/// The subject of a relayed message.
fn subject(data: &[u8]) -> Option<String> {
    String::from_utf8_lossy(data)
        .lines()
        .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
}

/// The policy version `cachet explain` reports for the config file as it is now.
fn policy_version(gw: &Gateway) -> String {
    let (ok, out) = gw.cli(&["explain", "--from", SENDER, "--to", BOB, "--json"]);
    assert!(ok, "explain failed: {out}");
    let start = out.find('{').expect("json output");
    let v: serde_json::Value = serde_json::from_str(&out[start..]).expect("explain json");
    v["policy_version"]
        .as_str()
        .expect("policy_version")
        .to_string()
}

/// Waits until the logs, after byte `from`, hold a line with every one of `needles`.
async fn wait_line(gw: &Gateway, from: usize, needles: &[&str]) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        let logs = gw.logs();
        if logs
            .get(from..)
            .unwrap_or("")
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fifty_sighups_during_load_lose_nothing_and_keep_the_last_valid_policy() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let mut gw = Gateway::start(
        GatewayConfig::new()
            .upstream(&up)
            .with("policy", "encrypt", &toml_str("never"))
            .with("log", "audit_file", &toml_str("audit.jsonl"))
            .raw(
                r#"[certificates]
dir = "recipients"
trust = ["trust/ca.pem"]

[[rule]]
name = "plain partners"
to = ["*@x.example"]
encrypt = "never"
"#,
            )
            .file("recipients/bob.crt", rfc9216("bob.encrypt.crt"))
            .file("trust/ca.pem", rfc9216("ca.rsa.crt")),
    )
    .await;
    // policy_version -> whether it encrypts bob's copy.
    let mut versions: HashMap<String, bool> = HashMap::new();
    let mut known: HashMap<&str, String> = HashMap::new();
    known.insert("never", policy_version(&gw));
    versions.insert(known["never"].clone(), false);

    // The load: four clients, each on its own connection, until the storm is over.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut senders = Vec::new();
    for t in 0..4 {
        let (stop, acked, addr) = (stop.clone(), acked.clone(), gw.addr());
        senders.push(tokio::spawn(async move {
            let (mut c, _) = SmtpClient::connect_ehlo(addr).await.expect("connect");
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let subject = format!("storm-{t}-{i}");
                let msg = format!(
                    "From: {SENDER}\r\nTo: {BOB}, {CAROL}\r\nSubject: {subject}\r\n\r\nSECRET {subject}\r\n"
                );
                let r = c
                    .send_message(SENDER, &[BOB, CAROL], msg.as_bytes())
                    .await
                    .expect("the connection survives every reload");
                assert_eq!(r.0, 250, "{subject}: {r:?}");
                acked.lock().unwrap().push(subject);
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    let (mut applied, mut refused) = (0, 0);
    for i in 0..SIGHUPS {
        let mode = encrypt_mode(i);
        let from = gw.logs().len();
        gw.rewrite_config(|c| {
            c.set("policy", "encrypt", &toml_str(mode));
        });
        // Two valid modes, two versions: ask once per mode, so the burst is not slowed down.
        let version = match mode {
            "sometimes" => None,
            m => Some(match known.get(m) {
                Some(v) => v.clone(),
                None => {
                    let v = policy_version(&gw);
                    versions.insert(v.clone(), m == "required");
                    known.insert(m, v.clone());
                    v
                }
            }),
        };
        gw.sighup();
        if BURST.contains(&i) {
            continue;
        }
        let answered = match &version {
            Some(v) => wait_line(&gw, from, &["configuration reloaded", v]).await,
            None => wait_line(&gw, from, &["reload refused", "sometimes"]).await,
        };
        assert!(
            answered,
            "SIGHUP {i} ({mode}) not answered within {WAIT:?}\n{}",
            gw.logs()
        );
        assert!(gw.is_running(), "the gateway died at SIGHUP {i}");
    }
    let storm = started.elapsed();
    // The last valid config (48) is in force: every message from now on follows it.
    let last_valid = policy_version_of(&versions, true);
    let during = acked.lock().unwrap().len();
    // Keep the load going past the storm until enough messages were accepted.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < MIN_MESSAGES.max(during + 8) {
        assert!(
            Instant::now() < deadline,
            "only {} messages accepted",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_storm: BTreeSet<String> = acked.lock().unwrap()[during..].iter().cloned().collect();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.expect("a client failed");
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();

    // Nothing lost: every accepted message reached both recipients.
    let deadline = Instant::now() + Duration::from_secs(120);
    let delivered = loop {
        let mut map: BTreeMap<(String, String), bool> = BTreeMap::new();
        for r in up.received() {
            if let Some(s) = subject(&r.data) {
                for to in &r.rcpt_to {
                    map.insert((s.clone(), to.clone()), is_encrypted(&r.data));
                }
            }
        }
        let complete = acked.iter().all(|s| {
            [BOB, CAROL]
                .iter()
                .all(|t| map.contains_key(&(s.clone(), t.to_string())))
        });
        if complete || Instant::now() >= deadline {
            break map;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lost: Vec<String> = acked
        .iter()
        .flat_map(|s| [BOB, CAROL].map(|t| (s.clone(), t.to_string())))
        .filter(|k| !delivered.contains_key(k))
        .map(|(s, t)| format!("{s} to {t}"))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}\n{}", gw.logs());
    let duplicates = up.received().iter().map(|r| r.rcpt_to.len()).sum::<usize>() - delivered.len();
    assert_eq!(duplicates, 0, "some recipients got a message twice");

    // Alive, no panic, and every refused reload named the bad key.
    assert!(gw.is_running(), "the gateway is gone\n{}", gw.logs());
    let logs = gw.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    for line in logs.lines() {
        if line.contains("configuration reloaded") {
            applied += 1;
        } else if line.contains("reload refused") {
            refused += 1;
            assert!(
                line.contains("policy.encrypt"),
                "refusal without the key: {line}"
            );
        }
    }

    // Every copy followed the policy in force when it was sealed (audit policy_version), and the
    // messages accepted after the storm followed the last valid one.
    let audit = std::fs::read_to_string(gw.dir().join("audit.jsonl")).expect("audit log");
    for line in audit.lines() {
        let rec: serde_json::Value = serde_json::from_str(line).expect("audit line is JSON");
        let to: Vec<&str> = rec["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        if to != [BOB] {
            continue;
        }
        let version = rec["policy_version"].as_str().unwrap().to_string();
        let encrypts = *versions
            .get(&version)
            .unwrap_or_else(|| panic!("a copy sealed under an unknown policy {version}: {line}"));
        let encrypted = !rec["encrypted_to"].as_array().unwrap().is_empty();
        assert_eq!(encrypted, encrypts, "sealed against its policy: {line}");
    }
    for (key, encrypted) in &delivered {
        if key.1 == BOB && after_storm.contains(&key.0) {
            assert!(encrypted, "{} sent after the storm in the clear", key.0);
        }
        if key.1 == CAROL {
            assert!(!encrypted, "carol's rule never encrypts");
        }
    }
    let last_policy_line = logs
        .lines()
        .rfind(|l| l.contains("configuration reloaded"))
        .unwrap_or("");
    assert!(
        last_policy_line.contains(&last_valid),
        "the last reload applied is not the last valid config: {last_policy_line}"
    );
    println!(
        "FIGURE fault_reload_storm: {SIGHUPS} SIGHUPs in {:.1} s ({} back to back): {applied} reloads \
         applied, {refused} refused; {} messages accepted ({during} during the storm), none lost, \
         none twice; the last valid policy {last_valid} in force",
        storm.as_secs_f64(),
        BURST.len(),
        acked.len(),
    );
}

/// The version of the last valid config (SIGHUP 48, "required").
fn policy_version_of(versions: &HashMap<String, bool>, encrypts: bool) -> String {
    let v: Vec<&String> = versions
        .iter()
        .filter(|(_, e)| **e == encrypts)
        .map(|(v, _)| v)
        .collect();
    assert_eq!(v.len(), 1, "one version per mode: {versions:?}");
    v[0].clone()
}
