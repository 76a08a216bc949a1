//! `cachet explain`: what the live policy does with a message from SENDER to each recipient,
//! computed by the same [`decide`](super::decide) the gateway runs at RCPT time and at delivery
//! (not a re-implementation). Text for people, JSON (`--json`) for scripts.

use super::{Ask, Fate, cipher_name, decide, headers};
use crate::policy::{KeyTransport, Mode};
use crate::runtime::Runtime;
use serde_json::{Value, json};

fn mode(m: Mode) -> &'static str {
    match m {
        Mode::Never => "never",
        Mode::Opportunistic => "opportunistic",
        Mode::Required => "required",
    }
}

/// The client to evaluate the submitter decision for (`--client`, `--user`, `--tls-fingerprint`).
#[derive(Debug, Clone, Default)]
pub struct ExplainClient {
    pub ip: Option<std::net::IpAddr>,
    pub user: Option<String>,
    /// SHA-256 fingerprint of a TLS client certificate (hex, colons allowed).
    pub tls_fingerprint: Option<String>,
}

/// Who may submit: the grant the client gets and whether it may use the envelope sender and
/// the From: address — the same [`Submitters::resolve`](crate::policy::submitter::Submitters::resolve)
/// the session runs.
fn submitter_decision(rt: &Runtime, c: &ExplainClient, sender: &str, from: &str) -> Value {
    use crate::policy::submitter::{Client, ClientCert};
    let Some(ip) = c.ip else {
        return json!({"evaluated": false, "why": "give --client IP (and --user, --tls-fingerprint) to see who may submit"});
    };
    let cert = c.tls_fingerprint.as_ref().map(|fp| ClientCert {
        fingerprint: fp.replace(':', "").to_lowercase(),
        ..Default::default()
    });
    let subs = &rt.config.submitters;
    let grant = subs.resolve(&Client {
        ip,
        user: c.user.as_deref(),
        cert: cert.as_ref(),
    });
    let Some(g) = grant else {
        return json!({"evaluated": true, "client": ip.to_string(), "submitter": null,
            "action": "refuse at RCPT", "reply": crate::reply::RELAY_DENIED.to_string()});
    };
    let sender_ok = sender.is_empty() || subs.allows(&g, sender);
    let from_ok = subs.allows(&g, from);
    let (action, reply) = if !sender_ok {
        (
            "refuse at MAIL",
            Some(crate::reply::SENDER_NOT_ALLOWED.to_string()),
        )
    } else if !from_ok {
        (
            "refuse at end of DATA",
            Some(crate::reply::FROM_NOT_ALLOWED.to_string()),
        )
    } else {
        ("accept", None)
    };
    json!({
        "evaluated": true,
        "client": ip.to_string(),
        "submitter": g.name,
        "grant": g.describe(),
        "sender_allowed": sender_ok,
        "from_allowed": from_ok,
        "require_header": g.require_header.as_ref().map(|h| format!("{}: {}", h.name, h.value)),
        "action": action,
        "reply": reply,
    })
}

/// The decision for every recipient as JSON. `from` is the From: header address (defaults to
/// the sender); `subject` lets the subject-tag trigger be tried.
pub fn explain(
    rt: &Runtime,
    client: &ExplainClient,
    sender: &str,
    from: Option<&str>,
    recipients: &[String],
    subject: Option<&str>,
) -> Value {
    let from = from.unwrap_or(sender);
    let p = &rt.config.policy;
    let submitter = submitter_decision(rt, client, sender, from);
    let local = rt.config.submitters.is_local(from);
    let triggered = headers::has_tag(subject, p.subject_tag.as_deref());
    // How each copy would be encrypted: the grouping the gateway runs, every recipient in To:.
    let plan = super::group::plan(
        p,
        &rt.stores,
        super::group::Message {
            sender,
            is_bounce: false,
            now: std::time::SystemTime::now(),
        },
        &headers::Headers {
            from: Some(from.to_ascii_lowercase()),
            authors: vec![from.to_ascii_lowercase()],
            visible: recipients.iter().map(|r| r.to_ascii_lowercase()).collect(),
            message_id: None,
            subject: subject.map(str::to_string),
            encrypt_header: false,
        },
        recipients,
    );
    let choice_for = |r: &str| {
        plan.groups
            .iter()
            .find(|g| g.decisions.iter().any(|d| d.recipient == r))
            .and_then(|g| g.choice.clone())
    };
    let list: Vec<Value> = recipients
        .iter()
        .map(|r| {
            let (policy, stores) = (&rt.config.policy, &rt.stores);
            let at_rcpt = decide(policy, stores, Ask::at_rcpt(sender, r));
            let d = decide(
                policy,
                stores,
                Ask {
                    from: Some(from),
                    triggered,
                    during_smtp: false,
                    ..Ask::at_rcpt(sender, r)
                },
            );
            let t = d.treatment;
            let outcome = match (&at_rcpt.fate, &d.fate) {
                (Fate::Refuse(reply), _) => json!({"action": "refuse at RCPT", "reply": reply.to_string()}),
                (_, Fate::Send) => json!({"action": "relay"}),
                (_, Fate::Hold(reason)) => json!({"action": "hold", "reason": reason}),
                (_, Fate::Defer(reason)) => json!({"action": "defer", "reason": reason}),
                (_, Fate::Bounce(reply)) | (_, Fate::Refuse(reply)) => json!({"action": "bounce", "reply": reply.to_string()}),
            };
            let sign = match &d.signer {
                Some(id) => json!({"mode": mode(t.sign), "sign": true, "key": id.fingerprint, "address": id.email, "expires": crate::date::rfc3339(id.not_after)}),
                None => json!({"mode": mode(t.sign), "sign": false, "why": if t.sign == Mode::Never { "policy says never".to_string() } else if !local { format!("{from} is not in server.local_domains: cachet signs only the organisation's own addresses") } else { format!("no valid signing key for {from}") }}),
            };
            let rejected: Vec<Value> = d.rejected_certs.iter().map(|(fp, why)| json!({"fingerprint": fp, "reason": why})).collect();
            let encrypt = match &d.cert {
                Some(c) => {
                    let choice = choice_for(r);
                    let cipher = choice.as_ref().map_or(t.encryption, |c| c.cipher);
                    let transport = choice.as_ref().map_or(t.key_transport, |c| c.key_transport);
                    json!({
                    "mode": mode(t.encrypt), "encrypt": true, "certificate": c.fingerprint, "expires": crate::date::rfc3339(c.not_after),
                    "encryption": cipher_name(cipher),
                    "encryption_why": choice.as_ref().map(|c| c.cipher_why.clone()),
                    "key_transport": match (c.key, transport) {
                        (crate::store::KeyKind::EcP256, _) => "ecdh-p256",
                        (_, KeyTransport::RsaPkcs1) => "rsa-pkcs1",
                        (_, KeyTransport::RsaOaep) => "rsa-oaep",
                    },
                    "key_transport_why": match c.key {
                        crate::store::KeyKind::EcP256 => None,
                        _ => choice.as_ref().map(|c| c.key_transport_why.clone()),
                    },
                    "capabilities": crate::pipeline::capabilities::announced_ciphers(&c.capabilities).into_iter().map(cipher_name).collect::<Vec<_>>(),
                    "skipped": rejected,
                })
                }
                None => json!({"mode": mode(t.encrypt), "encrypt": false, "why": if t.encrypt == Mode::Never { "policy says never".to_string() } else { format!("no valid certificate for {r}") }, "skipped": rejected}),
            };
            json!({
                "recipient": r,
                "rule": d.rule,
                "triggered": triggered,
                "sign": sign,
                "encrypt": encrypt,
                "on_missing_key": format!("{:?}", t.on_missing_key).to_lowercase(),
                "outcome": outcome,
            })
        })
        .collect();
    json!({"sender": sender, "from": from, "policy_version": p.version, "submitter": submitter, "recipients": list})
}

/// The same, for a terminal.
pub fn render_text(v: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "sender {}  From: {}  policy {}",
        v["sender"].as_str().unwrap_or(""),
        v["from"].as_str().unwrap_or(""),
        v["policy_version"].as_str().unwrap_or("")
    );
    let sub = &v["submitter"];
    if sub["evaluated"].as_bool() == Some(true) {
        let who = sub["submitter"].as_str().unwrap_or("(none: may not relay)");
        let _ = writeln!(
            s,
            "submitter {who} for client {}",
            sub["client"].as_str().unwrap_or("")
        );
        if let Some(g) = sub["grant"].as_str() {
            let _ = writeln!(s, "  grant:    {g}");
        }
        if let Some(h) = sub["require_header"].as_str() {
            let _ = writeln!(
                s,
                "  header:   the message must carry {h} (removed before relaying)"
            );
        }
        let reply = sub["reply"]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  action:   {}{reply}",
            sub["action"].as_str().unwrap_or("")
        );
    } else {
        let _ = writeln!(s, "submitter: {}", sub["why"].as_str().unwrap_or(""));
    }
    for r in v["recipients"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "\n{}", r["recipient"].as_str().unwrap_or(""));
        let _ = writeln!(
            s,
            "  rule:     {}",
            r["rule"].as_str().unwrap_or("(none: [policy] defaults)")
        );
        let sign = &r["sign"];
        if sign["sign"].as_bool() == Some(true) {
            let _ = writeln!(
                s,
                "  sign:     yes ({}) with key {} for {}, expires {}",
                sign["mode"].as_str().unwrap_or(""),
                sign["key"].as_str().unwrap_or(""),
                sign["address"].as_str().unwrap_or(""),
                sign["expires"].as_str().unwrap_or("")
            );
        } else {
            let _ = writeln!(
                s,
                "  sign:     no ({}): {}",
                sign["mode"].as_str().unwrap_or(""),
                sign["why"].as_str().unwrap_or("")
            );
        }
        let enc = &r["encrypt"];
        if enc["encrypt"].as_bool() == Some(true) {
            let _ = writeln!(
                s,
                "  encrypt:  yes ({}) to certificate {}, expires {}; {} with {}",
                enc["mode"].as_str().unwrap_or(""),
                enc["certificate"].as_str().unwrap_or(""),
                enc["expires"].as_str().unwrap_or(""),
                enc["encryption"].as_str().unwrap_or(""),
                enc["key_transport"].as_str().unwrap_or("")
            );
            if let Some(why) = enc["encryption_why"].as_str() {
                let _ = writeln!(s, "  cipher:   {why}");
            }
            if let Some(why) = enc["key_transport_why"].as_str() {
                let _ = writeln!(s, "  key:      {why}");
            }
        } else {
            let _ = writeln!(
                s,
                "  encrypt:  no ({}): {}",
                enc["mode"].as_str().unwrap_or(""),
                enc["why"].as_str().unwrap_or("")
            );
        }
        for skipped in enc["skipped"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "  skipped:  certificate {}: {}",
                skipped["fingerprint"].as_str().unwrap_or(""),
                skipped["reason"].as_str().unwrap_or("")
            );
        }
        let o = &r["outcome"];
        let detail = o["reply"]
            .as_str()
            .or(o["reason"].as_str())
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  outcome:  {}{detail}",
            o["action"].as_str().unwrap_or("")
        );
    }
    s
}
