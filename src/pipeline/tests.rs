//! Table-driven tests of the pure pipeline: `decide` and grouping over a policy parsed from
//! TOML text and stores built in memory (rcgen PKI from `demo`), no disk, no sockets.

use super::decide::{Ask, Fate, decide};
use super::group::{GroupKey, Message, plan};
use super::headers;
use crate::config::Config;
use crate::policy::{Cipher, KeyTransport, Policy};
use crate::runtime::Stores;
use crate::store::{CertStore, KeyStore, SigningIdentity, TrustAnchors};
use rcgen::KeyUsagePurpose;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

const ALICE: &str = "alice@example.org";
/// Recipients with a valid encryption certificate.
const BOB: &str = "bob@partner.example";
const CAROL: &str = "carol@partner.example";
/// A recipient nobody holds a certificate for.
const DAVE: &str = "dave@nocert.example";

/// One PKI for every test (RSA key generation is the slow part): alice signs, bob and carol
/// can be encrypted to.
fn stores() -> &'static Stores {
    static S: OnceLock<Stores> = OnceLock::new();
    S.get_or_init(|| {
        let ca = crate::demo::new_ca("pipeline test CA").unwrap();
        let (trust, bad) =
            TrustAnchors::from_certs(vec![CertificateDer::from(ca.cert.der().to_vec())]);
        assert!(bad.is_empty(), "{bad:?}");
        let now = SystemTime::now();
        let (a_cert, a_key) =
            crate::demo::smime_leaf(&ca, ALICE, KeyUsagePurpose::DigitalSignature).unwrap();
        let pem = format!("{a_key}{a_cert}");
        let alice = SigningIdentity::from_pem(ALICE, pem.as_bytes(), &trust, now).unwrap();
        let mut keys = KeyStore::default();
        keys.insert(alice);
        let mut certs = Vec::new();
        for who in [BOB, CAROL] {
            let (c, _) =
                crate::demo::smime_leaf(&ca, who, KeyUsagePurpose::KeyEncipherment).unwrap();
            certs.push(CertificateDer::from_pem_slice(c.as_bytes()).unwrap());
        }
        let (certs, problems) = CertStore::from_certs(certs, &trust, now);
        assert!(problems.is_empty(), "{problems:?}");
        Stores {
            trust,
            keys,
            certs,
            ..Default::default()
        }
    })
}

fn policy(toml: &str) -> Policy {
    let src = format!(
        "[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://a\"\n{toml}"
    );
    Config::parse(Path::new("/x/cachet.toml"), &src)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .policy
}

/// What a decision amounts to, in one comparable value.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    /// (signed, encrypted)
    Send(bool, bool),
    Refuse(u16),
    Bounce(u16),
    Hold,
}

const PARTNERS: &str = r#"
[policy]
sign = "opportunistic"
encrypt = "opportunistic"
[[rule]]
name = "hold-them"
to = ["held@nocert.example"]
encrypt = "required"
on_missing_key = "hold"
[[rule]]
name = "nocert-required"
to = ["*@nocert.example"]
from = ["*@example.org"]
encrypt = "required"
[[rule]]
name = "plain"
to = ["plain@partner.example"]
sign = "never"
encrypt = "never"
"#;

#[test]
fn decide_table() {
    let s = stores();
    let now = SystemTime::now();
    // rcgen certificates are valid from 1975 on: in 1970 neither key nor certificates are.
    let too_early = SystemTime::UNIX_EPOCH + Duration::from_secs(86400);
    let p = policy(PARTNERS);
    let never_enc = policy("[policy]\nencrypt = \"never\"\nsign = \"required\"\n");
    let sign_required = policy("[policy]\nsign = \"required\"\non_missing_key = \"bounce\"\n");
    // (policy, sender, from, recipient, triggered, during_smtp, now, expected)
    type Row<'a> = (
        &'a Policy,
        &'a str,
        Option<&'a str>,
        &'a str,
        bool,
        bool,
        SystemTime,
        Out,
    );
    let table: Vec<Row> = vec![
        // Certificate and key present: signed and encrypted.
        (
            &p,
            ALICE,
            Some(ALICE),
            BOB,
            false,
            false,
            now,
            Out::Send(true, true),
        ),
        // No certificate, opportunistic: signed only.
        (
            &p,
            ALICE,
            Some(ALICE),
            "x@nowhere.example",
            false,
            false,
            now,
            Out::Send(true, false),
        ),
        // Required and impossible: refused during SMTP, bounced at delivery, held by rule.
        (&p, ALICE, None, DAVE, false, true, now, Out::Refuse(550)),
        (
            &p,
            ALICE,
            Some(ALICE),
            DAVE,
            false,
            false,
            now,
            Out::Bounce(550),
        ),
        (
            &p,
            ALICE,
            Some(ALICE),
            "held@nocert.example",
            false,
            true,
            now,
            Out::Hold,
        ),
        // The rule matches senders in example.org only: another sender gets the default.
        (
            &p,
            "x@elsewhere.example",
            Some("x@elsewhere.example"),
            DAVE,
            false,
            false,
            now,
            Out::Send(false, false),
        ),
        // A trigger raises encryption to required (default on_missing_key = reject).
        (
            &p,
            ALICE,
            Some(ALICE),
            "x@nowhere.example",
            true,
            true,
            now,
            Out::Refuse(550),
        ),
        (
            &p,
            ALICE,
            Some(ALICE),
            BOB,
            true,
            false,
            now,
            Out::Send(true, true),
        ),
        // Never means never, even with a certificate.
        (
            &p,
            ALICE,
            Some(ALICE),
            "plain@partner.example",
            false,
            false,
            now,
            Out::Send(false, false),
        ),
        (
            &never_enc,
            ALICE,
            Some(ALICE),
            BOB,
            false,
            false,
            now,
            Out::Send(true, false),
        ),
        // Signing required: undecided at RCPT (no From: yet), decided at delivery.
        (
            &sign_required,
            ALICE,
            None,
            BOB,
            false,
            true,
            now,
            Out::Send(false, true),
        ),
        (
            &sign_required,
            "x@elsewhere.example",
            Some("x@elsewhere.example"),
            BOB,
            false,
            false,
            now,
            Out::Bounce(550),
        ),
        (
            &sign_required,
            ALICE,
            Some("ALICE@Example.ORG"),
            BOB,
            false,
            false,
            now,
            Out::Send(true, true),
        ),
        // Outside their validity, key and certificates are not used.
        (
            &p,
            ALICE,
            Some(ALICE),
            BOB,
            false,
            false,
            too_early,
            Out::Send(false, false),
        ),
        (
            &p,
            ALICE,
            Some(ALICE),
            DAVE,
            false,
            false,
            too_early,
            Out::Bounce(550),
        ),
    ];
    for (i, (policy, sender, from, rcpt, triggered, during_smtp, now, want)) in
        table.into_iter().enumerate()
    {
        let d = decide(
            policy,
            s,
            Ask {
                sender,
                from,
                recipient: rcpt,
                triggered,
                during_smtp,
                now,
            },
        );
        let got = match &d.fate {
            Fate::Send => Out::Send(d.signer.is_some(), d.cert.is_some()),
            Fate::Refuse(r) => Out::Refuse(r.code),
            Fate::Bounce(r) => Out::Bounce(r.code),
            Fate::Hold(_) => Out::Hold,
            // These stores have no revocation source and the table's policy is soft.
            Fate::Defer(r) => panic!("row {i}: deferred ({r})"),
        };
        assert_eq!(got, want, "row {i}: {sender} / {from:?} -> {rcpt}: {d:?}");
    }
}

#[test]
fn refusals_name_the_missing_piece_without_internals() {
    let s = stores();
    let p = policy(PARTNERS);
    let d = decide(&p, s, Ask::at_rcpt(ALICE, DAVE));
    let Fate::Refuse(r) = d.fate else {
        panic!("{d:?}")
    };
    let text = r.to_string();
    assert!(
        text.contains(DAVE) && text.contains("certificate"),
        "{text}"
    );
    // No rule name, no file path.
    assert!(
        !text.contains("nocert-required") && !text.contains("/x/"),
        "{text}"
    );
}

fn head(to: &[&str], cc: &[&str], extra: &str) -> headers::Headers {
    let mut h = format!("From: {ALICE}\r\n");
    if !to.is_empty() {
        h.push_str(&format!("To: {}\r\n", to.join(", ")));
    }
    if !cc.is_empty() {
        h.push_str(&format!("Cc: {}\r\n", cc.join(", ")));
    }
    h.push_str(extra);
    h.push_str("Subject: hello\r\n\r\nbody\r\n");
    headers::read(h.as_bytes(), Some("X-Encrypt"))
}

#[test]
fn grouping_table() {
    let s = stores();
    let p = policy(
        r#"
[policy]
encrypt = "opportunistic"
encrypt_header = "X-Encrypt"
[[rule]]
name = "gcm"
to = ["carol@partner.example"]
encryption = "aes256-gcm"
[[rule]]
name = "held"
to = ["*@nocert.example"]
encrypt = "required"
on_missing_key = "hold"
"#,
    );
    let msg = Message {
        sender: ALICE,
        is_bounce: false,
        now: SystemTime::now(),
    };
    let signer = s.keys.get(ALICE).unwrap().fingerprint.clone();
    let cbc = Some((Cipher::Aes256Cbc, KeyTransport::RsaPkcs1));
    let gcm = Some((Cipher::Aes256Gcm, KeyTransport::RsaPkcs1));
    let other = "x@nowhere.example";
    // (To, Cc, extra header, recipients, expected groups as (recipients, encryption, blind),
    //  held)
    type Groups<'a> = Vec<(Vec<&'a str>, Option<(Cipher, KeyTransport)>, bool)>;
    type Row<'a> = (
        Vec<&'a str>,
        Vec<&'a str>,
        &'a str,
        Vec<&'a str>,
        Groups<'a>,
        Vec<&'a str>,
    );
    let bob2 = "bob2@partner.example";
    let table: Vec<Row> = vec![
        // Two visible recipients with the same treatment share one signed copy.
        (
            vec![other, "y@nowhere.example"],
            vec![],
            "",
            vec![other, "y@nowhere.example"],
            vec![(vec![other, "y@nowhere.example"], None, false)],
            vec![],
        ),
        // Encrypted and signed-only recipients get different copies.
        (
            vec![BOB, other],
            vec![],
            "",
            vec![BOB, other],
            vec![(vec![BOB], cbc, false), (vec![other], None, false)],
            vec![],
        ),
        // A rule's cipher makes its own group.
        (
            vec![BOB],
            vec![CAROL],
            "",
            vec![BOB, CAROL],
            vec![(vec![BOB], cbc, false), (vec![CAROL], gcm, false)],
            vec![],
        ),
        // Bcc of an encrypted copy: alone, so no one else sees their certificate.
        (
            vec![other],
            vec![],
            "",
            vec![other, BOB],
            vec![(vec![other], None, false), (vec![BOB], cbc, true)],
            vec![],
        ),
        // A Bcc without a certificate shares the plain signed copy (nothing to hide).
        (
            vec![other],
            vec![],
            "",
            vec![other, "bcc@nowhere.example"],
            vec![(vec![other, "bcc@nowhere.example"], None, false)],
            vec![],
        ),
        // Required and impossible: held, never grouped.
        (
            vec![BOB, DAVE],
            vec![],
            "",
            vec![BOB, DAVE],
            vec![(vec![BOB], cbc, false)],
            vec![DAVE],
        ),
        // The trigger header raises encryption to required; a recipient with a certificate
        // is simply encrypted to.
        (
            vec![BOB],
            vec![],
            "X-Encrypt: yes\r\n",
            vec![BOB],
            vec![(vec![BOB], cbc, false)],
            vec![],
        ),
        // An address the store has no certificate for is not confused with a similar one.
        (
            vec![bob2],
            vec![],
            "",
            vec![bob2],
            vec![(vec![bob2], None, false)],
            vec![],
        ),
    ];
    for (i, (to, cc, extra, rcpts, want, want_held)) in table.into_iter().enumerate() {
        let h = head(&to, &cc, extra);
        let rcpts: Vec<String> = rcpts.iter().map(|r| r.to_string()).collect();
        let plan = plan(&p, s, msg, &h, &rcpts);
        let got: Groups = plan
            .groups
            .iter()
            .map(|g| {
                assert_eq!(g.key.signer.as_deref(), Some(signer.as_str()), "row {i}");
                (
                    g.decisions.iter().map(|d| d.recipient.as_str()).collect(),
                    g.key.encryption,
                    g.key.blind.is_some(),
                )
            })
            .collect();
        assert_eq!(got, want, "row {i}");
        let held: Vec<&str> = plan.held.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(held, want_held, "row {i}");
        assert!(plan.failed.is_empty(), "row {i}: {:?}", plan.failed);
    }
}

#[test]
fn triggers_raise_protection_but_not_for_our_own_bounces() {
    let s = stores();
    let p = policy("[policy]\nencrypt = \"opportunistic\"\nencrypt_header = \"X-Encrypt\"\n");
    let h = head(&["x@nowhere.example"], &[], "X-Encrypt: yes\r\n");
    let rcpts = vec!["x@nowhere.example".to_string()];
    let mut msg = Message {
        sender: ALICE,
        is_bounce: false,
        now: SystemTime::now(),
    };
    let user = plan(&p, s, msg, &h, &rcpts);
    assert!(user.groups.is_empty());
    assert_eq!(
        user.failed.len(),
        1,
        "required + reject at delivery = bounce"
    );
    msg.is_bounce = true;
    let bounce = plan(&p, s, msg, &h, &rcpts);
    assert_eq!(bounce.groups.len(), 1);
    assert_eq!(
        bounce.groups[0].key,
        GroupKey {
            signer: Some(s.keys.get(ALICE).unwrap().fingerprint.clone()),
            encryption: None,
            blind: None,
        }
    );
}
