//! Reload under load: mail keeps flowing over open connections while the policy changes by
//! SIGHUP; nothing is lost, no connection is reset, new mail follows the new rules, and an
//! invalid edit leaves the old policy running.

mod common;
mod smime_common;

use common::*;
use smime_common::read;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn is_encrypted(data: &[u8]) -> bool {
    String::from_utf8_lossy(data).contains("smime-type=enveloped-data")
}

/// Polls `done` every 50 ms until it holds; panics with `what` after 30 s.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 30 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn policy_reload_under_load_loses_nothing_and_applies_to_new_mail() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let mut gw = Gateway::start(
        GatewayConfig::new()
            .upstream(&up)
            .raw("[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n")
            .file("recipients/bob.crt", read("bob.encrypt.crt"))
            .file("trust/ca.pem", read("ca.rsa.crt")),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, bool)>>> = Arc::default(); // (subject, sent after the good reload)
    let reloaded = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for t in 0..4 {
        let (stop, acked, reloaded, addr) =
            (stop.clone(), acked.clone(), reloaded.clone(), gw.addr());
        senders.push(tokio::spawn(async move {
            // One connection per sender for the whole test: a reload must not reset it.
            let (mut c, _) = SmtpClient::connect_ehlo(addr).await.expect("connect");
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let after = reloaded.load(Ordering::Relaxed);
                let subject = format!("load-{t}-{i}");
                let msg = format!("From: a@example.org\r\nTo: bob@smime.example\r\nSubject: {subject}\r\n\r\nbody\r\n");
                let r = c.send_message("a@example.org", &["bob@smime.example"], msg.as_bytes()).await.expect("connection survived");
                assert_eq!(r.0, 250, "{r:?}");
                acked.lock().unwrap().push((subject, after));
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Mail flows, and the first message was delivered (sealed) under the old policy: sealing
    // happens at delivery, so it must be out before the good reload below.
    let delivered = |subject: &str| {
        up.received()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.data).contains(&format!("Subject: {subject}\r\n")))
    };
    wait_until("load-0-0 delivered", || delivered("load-0-0")).await;
    wait_until("mail before the reloads", || {
        acked.lock().unwrap().len() >= 12
    })
    .await;
    // An invalid edit first: refused, the old (encrypting) policy keeps running.
    gw.rewrite_config(|c| {
        c.set("policy", "encrypt", "\"sometimes\"");
    });
    gw.sighup();
    assert!(
        gw.wait_log("reload refused", Duration::from_secs(20)).await,
        "{}",
        gw.logs()
    );
    let so_far = acked.lock().unwrap().len();
    wait_until("mail after the refused reload", || {
        acked.lock().unwrap().len() >= so_far + 4
    })
    .await;
    // A valid edit: stop encrypting.
    gw.rewrite_config(|c| {
        c.set("policy", "encrypt", "\"never\"");
    });
    gw.sighup();
    assert!(
        gw.wait_log("configuration reloaded", Duration::from_secs(20))
            .await,
        "{}",
        gw.logs()
    );
    reloaded.store(true, Ordering::Relaxed);
    wait_until("mail after the good reload", || {
        acked.lock().unwrap().iter().filter(|(_, a)| *a).count() >= 8
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.expect("sender saw an error");
    }
    let acked = acked.lock().unwrap().clone();
    let after: Vec<&String> = acked.iter().filter(|(_, a)| *a).map(|(s, _)| s).collect();
    assert!(
        acked.len() > 20 && after.len() > 4,
        "too little traffic: {} / {}",
        acked.len(),
        after.len()
    );

    let wanted: BTreeSet<String> = acked.iter().map(|(s, _)| s.clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let by_subject = loop {
        let got = up.received();
        let map: std::collections::BTreeMap<String, bool> = got
            .iter()
            .filter_map(|r| {
                let t = String::from_utf8_lossy(&r.data).to_string();
                t.lines().find_map(|l| {
                    l.strip_prefix("Subject: ")
                        .map(|s| (s.to_string(), is_encrypted(&r.data)))
                })
            })
            .collect();
        if wanted.iter().all(|s| map.contains_key(s)) || tokio::time::Instant::now() > deadline {
            break map;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lost: Vec<&String> = wanted
        .iter()
        .filter(|s| !by_subject.contains_key(*s))
        .collect();
    assert!(lost.is_empty(), "lost across reloads: {lost:?}");
    // Mail accepted after the reload took effect follows the new rule (not encrypted); the
    // first message, delivered before any reload, was encrypted under the old one.
    for s in &after {
        assert!(
            !by_subject[*s],
            "{s} was sent after the reload but encrypted"
        );
    }
    assert!(
        by_subject["load-0-0"],
        "the first message was encrypted under the old policy"
    );
}
