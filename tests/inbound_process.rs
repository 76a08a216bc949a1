//! The inbound step (`cachet::pipeline::inbound::process`, issue 13): a message as the
//! internet-facing MTA hands it in -> the copies the internal mail server receives, or hold, or
//! the end-of-DATA reply. Messages are made at test time by `openssl cms` and by cachet's own
//! sealing, plus the real-client messages in `../shared/interop`; the organisation's keys are
//! key-store identities (`SigningIdentity`, as `[keys]` loads them) unless a test says otherwise.
//! Delivered copies are checked by an independent engine (`openssl cms -verify`) where a
//! signature must survive.

mod smime_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use cachet::config::{
    InboundAction, InboundConfig, InboundRequirement, InboundRule, OnUndecryptable, UpstreamConfig,
    UpstreamTarget, UpstreamTls,
};
use cachet::pipeline::inbound::{
    self, InboundCopy, OrgKeys, Processed, Verdict, may_reject, process, process_with,
};
use cachet::reply;
use cachet::runtime::Stores;
use cachet::smime::{self, EncryptOptions, OrgKey, SignForm, SignOptions, Trust};
use cachet::store::TrustAnchors;
use cachet::store::keys::{KeyStore, SigningIdentity};
use smime_common::*;

const HOST: &str = "gw.org.example";

fn config() -> InboundConfig {
    InboundConfig {
        listen: Vec::new(),
        relay_networks: Vec::new(),
        upstream: UpstreamConfig {
            url: "smtp://mailstore.internal:25".into(),
            target: UpstreamTarget::Smtp {
                host: "mailstore.internal".into(),
                port: 25,
                implicit_tls: false,
            },
            tls: UpstreamTls::Verify,
            ca_file: None,
            username: None,
            password_file: None,
            timeout: Duration::from_secs(30),
            max_connections: 4,
            helo_name: HOST.into(),
            pipelining: true,
        },
        decrypt: true,
        verify: true,
        harvest: true,
        on_undecryptable: OnUndecryptable::Deliver,
        subject_tags: false,
        rules: Vec::new(),
    }
}

fn rule(senders: &[&str], require: InboundRequirement, action: InboundAction) -> InboundRule {
    InboundRule {
        senders: senders
            .iter()
            .map(|g| {
                let g = cachet::store::normalize_glob(g);
                (g.clone(), wildmatch::WildMatch::new(&g))
            })
            .collect(),
        require,
        action,
    }
}

/// The organisation: Bob (RSA) and Carol (EC P-256) hold keys; Dave does not.
struct Org {
    _dir: tempfile::TempDir,
    bob_cert: PathBuf,
    carol_cert: PathBuf,
    bob_fp: String,
    carol_fp: String,
    stores: Stores,
}

const BOB: &str = "bob@org.example";
const CAROL: &str = "carol@org.example";
const DAVE: &str = "dave@org.example";

fn identity(address: &str, cert: &str, key: &str, trust: &TrustAnchors) -> SigningIdentity {
    SigningIdentity::from_pem(
        address,
        format!("{key}{cert}").as_bytes(),
        trust,
        SystemTime::now(),
    )
    .unwrap_or_else(|e| panic!("{address}: {e}"))
}

fn org() -> Org {
    let dir = tempfile::tempdir().unwrap();
    let (bc, bk) = Leaf::new(BOB, Alg::Rsa2048).issue();
    let (cc, ck) = Leaf::new(CAROL, Alg::EcP256).issue();
    let mut stores = Stores {
        trust: trust(),
        ..Default::default()
    };
    let bob = identity(BOB, &bc, &bk, &stores.trust);
    let carol = identity(CAROL, &cc, &ck, &stores.trust);
    let (bob_fp, carol_fp) = (bob.fingerprint.clone(), carol.fingerprint.clone());
    let mut keys = KeyStore::default();
    keys.insert(bob);
    keys.insert(carol);
    stores.keys = keys;
    Org {
        bob_cert: write(dir.path(), "bob.crt", &bc),
        carol_cert: write(dir.path(), "carol.crt", &cc),
        _dir: dir,
        bob_fp,
        carol_fp,
        stores,
    }
}

fn run(cfg: &InboundConfig, stores: &Stores, rcpts: &[&str], message: &[u8]) -> Processed {
    let rcpts: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
    process(
        cfg,
        stores,
        HOST,
        "partner-bounces@smime.example",
        &rcpts,
        message,
        SystemTime::now(),
    )
}

fn copies(p: &Processed) -> &[InboundCopy] {
    match &p.verdict {
        Verdict::Deliver(c) => c,
        other => panic!("expected delivery, got {other:?}"),
    }
}

fn copy_for<'a>(p: &'a Processed, rcpt: &str) -> &'a InboundCopy {
    copies(p)
        .iter()
        .find(|c| c.recipients.iter().any(|r| r == rcpt))
        .unwrap_or_else(|| panic!("no copy for {rcpt}: {:?}", p.verdict))
}

/// The message below the header fields cachet put on top: our Authentication-Results and
/// our X-Cachet-* fields, as long as they lead.
fn below_ours(m: &[u8]) -> Vec<u8> {
    let mut rest = m;
    loop {
        let ours = rest.starts_with(format!("Authentication-Results: {HOST};").as_bytes())
            || rest.starts_with(b"X-Cachet-");
        if !ours {
            return rest.to_vec();
        }
        // Skip the field and its continuation lines.
        let mut i = 0;
        loop {
            i += rest[i..].iter().position(|&b| b == b'\n').unwrap() + 1;
            if !matches!(rest.get(i), Some(b' ' | b'\t')) {
                break;
            }
        }
        rest = &rest[i..];
    }
}

fn subject(m: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse_headers(m)
        .and_then(|h| h.subject().map(str::to_string))
        .unwrap_or_default()
}

const ENTITY: &[u8] = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nHello from the partner.\r\nSecond line.\r\n";

/// Signed by RFC 9216 Alice (RSA) with `openssl cms`, with a message header when `headers`.
fn alice_sign(input: &[u8], opaque: bool, subject: Option<&str>) -> Vec<u8> {
    let (cert, key) = (
        rfc9216().join("alice.sign.crt"),
        rfc9216().join("alice.sign.key"),
    );
    let mut args = vec![
        "-sign",
        "-binary",
        "-crlfeol",
        "-signer",
        path_str(&cert),
        "-inkey",
        path_str(&key),
    ];
    if opaque {
        args.push("-nodetach");
    }
    if let Some(s) = subject {
        args.extend([
            "-from",
            "Alice <alice@smime.example>",
            "-to",
            BOB,
            "-subject",
            s,
        ]);
    }
    openssl_cms(&args, input)
}

/// Encrypted with `openssl cms` to `recips`, each followed by its own `-keyopt`s.
fn encrypt(input: &[u8], cipher: &str, recips: &[(&Path, &[&str])]) -> Vec<u8> {
    let mut args = vec![
        "-encrypt",
        "-binary",
        "-crlfeol",
        cipher,
        "-from",
        "Alice <alice@smime.example>",
        "-to",
        BOB,
        "-subject",
        "quarterly",
    ];
    for (cert, opts) in recips {
        args.extend(["-recip", path_str(cert)]);
        args.extend_from_slice(opts);
    }
    openssl_cms(&args, input)
}

const OAEP256: &[&str] = &[
    "-keyopt",
    "rsa_padding_mode:oaep",
    "-keyopt",
    "rsa_oaep_md:sha256",
    "-keyopt",
    "rsa_mgf1_md:sha256",
];
const KDF256: &[&str] = &["-keyopt", "ecdh_kdf_md:sha256"];

// ---- Authentication-Results ----

#[test]
fn signed_mail_gets_our_authentication_results_and_forged_claims_are_removed() {
    let org = org();
    let signed = alice_sign(ENTITY, false, Some("hello"));
    let forged = [
        "Authentication-Results: gw.org.example; smime=pass body.smime-identifier=ceo@org.example\r\n",
        "Authentication-Results: (comment) GW.ORG.EXAMPLE;\r\n\tsmime=pass\r\n",
        "X-Cachet-Decrypted: for=<bob@org.example>; key=sha256:00; algorithm=x/y\r\n",
        "X-Cachet-Inbound-Rule: rule=1\r\n",
    ];
    let foreign =
        "Authentication-Results: mx.org.example; spf=pass smtp.mailfrom=smime.example\r\n";
    let mut m = forged.concat().into_bytes();
    m.extend_from_slice(foreign.as_bytes());
    m.extend_from_slice(&signed);

    let mut cfg = config();
    let p = run(&cfg, &org.stores, &[BOB, DAVE], &m);
    // Not encrypted: one copy for everyone.
    let [c] = copies(&p) else {
        panic!("{:?}", p.verdict)
    };
    assert_eq!(c.recipients, [BOB, DAVE]);
    let head = header_block(&c.message);
    assert!(
        head.starts_with("Authentication-Results: gw.org.example;\r\n\tsmime=pass\r\n\t  body.smime-identifier=alice@smime.example"),
        "{head}"
    );
    assert_eq!(head.matches("gw.org.example").count(), 1, "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("gw.org.example;\r\n\tsmime=pass\r\n\t  body.smime-identifier=ceo")
    );
    assert!(!head.contains("X-Cachet"), "{head}");
    assert!(head.contains(foreign), "others' results stay: {head}");
    // Below our field: what arrived, minus the forged claims, byte for byte.
    let mut want = foreign.as_bytes().to_vec();
    want.extend_from_slice(&signed);
    assert_eq!(text(&below_ours(&c.message)), text(&want));
    // The signature still verifies for the user's client.
    let content = openssl_verify(&c.message, None);
    assert!(contains(&content, "Hello from the partner."));
    assert_eq!(p.signers.len(), 1);
    assert_eq!(p.signers[0].address.as_deref(), Some("alice@smime.example"));

    // verify = false: no result of ours, forged ones still removed, nobody to harvest.
    cfg.verify = false;
    let p = run(&cfg, &org.stores, &[BOB], &m);
    let [c] = copies(&p) else {
        panic!("{:?}", p.verdict)
    };
    assert_eq!(text(&c.message), text(&want));
    assert!(p.signers.is_empty());
}

#[test]
fn unsigned_and_badly_signed_mail_say_so() {
    let org = org();
    let cfg = config();
    let plain = b"From: someone@partner.example\r\nSubject: hi\r\n\r\nplain\r\n";
    let p = run(&cfg, &org.stores, &[BOB], plain);
    let c = copy_for(&p, BOB);
    assert!(
        text(&c.message).starts_with("Authentication-Results: gw.org.example; smime=none\r\nFrom:")
    );
    assert!(p.signers.is_empty());

    // Apple Mail, body modified after signing.
    let m =
        crlf(&std::fs::read(interop("realworld/applemail93-signed-MODIFIED-badsig.eml")).unwrap());
    let p = run(&cfg, &org.stores, &[BOB], &m);
    let h = header_block(&copy_for(&p, BOB).message);
    assert!(h.contains("\tsmime=fail"), "{h}");
    assert!(p.signers.is_empty());
}

// ---- decryption ----

#[test]
fn each_recipient_gets_a_copy_decrypted_with_their_own_key() {
    let org = org();
    // Signed by Alice, then encrypted to Bob (RSA-OAEP-SHA256) and Carol (ECDH P-256), AES-GCM.
    let signed = alice_sign(ENTITY, false, None);
    let m = encrypt(
        &signed,
        "-aes-256-gcm",
        &[(&org.bob_cert, OAEP256), (&org.carol_cert, KDF256)],
    );
    let cfg = config();
    let p = run(&cfg, &org.stores, &[BOB, CAROL, DAVE], &m);
    assert_eq!(copies(&p).len(), 3, "{:?}", p.verdict);
    for (who, fp, other_fp, alg) in [
        (
            BOB,
            &org.bob_fp,
            &org.carol_fp,
            "aes-256-gcm/rsa-oaep-sha256",
        ),
        (
            CAROL,
            &org.carol_fp,
            &org.bob_fp,
            "aes-256-gcm/ecdh-p256-sha256kdf",
        ),
    ] {
        let c = copy_for(&p, who);
        assert_eq!(c.recipients, [who]);
        let head = header_block(&c.message);
        assert!(
            head.contains(&format!(
                "{}: for=<{who}>;\r\n\tkey=sha256:{fp}; algorithm={alg}\r\n",
                inbound::DECRYPTED_FIELD
            )),
            "{head}"
        );
        assert!(!head.contains(other_fp.as_str()), "{head}");
        assert!(
            head.contains("\tsmime=pass"),
            "the signature inside is checked: {head}"
        );
        // Outer fields kept, the inner entity's Content-Type replaces the outer one.
        assert!(head.contains("\r\nSubject: quarterly\r\n"), "{head}");
        assert!(head.contains("Content-Type: multipart/signed"), "{head}");
        assert!(!head.contains("pkcs7-mime"), "{head}");
        assert_eq!(head.matches("MIME-Version").count(), 1, "{head}");
        let content = openssl_verify(&c.message, None);
        assert!(contains(&content, "Hello from the partner."));
    }
    // Dave: as it arrived, with the reason on top; nothing inside could be seen.
    let c = copy_for(&p, DAVE);
    assert_eq!(c.recipients, [DAVE]);
    let head = header_block(&c.message);
    assert!(
        head.contains(&format!("{}: reason=no-key", inbound::UNDECRYPTABLE_FIELD)),
        "{head}"
    );
    assert!(head.contains("smime=none"), "{head}");
    assert_eq!(text(&below_ours(&c.message)), text(&m));
    // One signer, found in two copies, harvested once.
    assert_eq!(p.signers.len(), 1);
}

#[test]
fn claims_inside_the_encrypted_entity_are_removed_too() {
    let org = org();
    let inner = format!(
        "Authentication-Results: {HOST}; smime=pass body.smime-identifier=ceo@org.example\r\n{}: for=<{BOB}>; key=sha256:00; algorithm=x/y\r\nAuthentication-Results: mx.partner.example; dkim=pass\r\nContent-Type: text/plain\r\n\r\nWire the money.\r\n",
        inbound::DECRYPTED_FIELD
    );
    let m = encrypt(inner.as_bytes(), "-aes256", &[(&org.bob_cert, &[])]);
    let p = run(&config(), &org.stores, &[BOB], &m);
    let c = copy_for(&p, BOB);
    let h = header_block(&c.message);
    assert_eq!(h.matches(HOST).count(), 1, "{h}");
    assert!(
        h.starts_with(&format!("Authentication-Results: {HOST}; smime=none\r\n")),
        "{h}"
    );
    assert_eq!(h.matches(inbound::DECRYPTED_FIELD).count(), 1, "{h}");
    assert!(!h.contains("key=sha256:00;"), "{h}");
    assert!(
        h.contains("Authentication-Results: mx.partner.example; dkim=pass\r\n"),
        "{h}"
    );
    assert!(contains(&c.message, "Wire the money."));
}

#[test]
fn openssl_ciphers_and_key_transports_decrypt_through_the_key_store() {
    let org = org();
    let cases: &[(&str, &[&str], &str)] = &[
        ("-aes256", &[], "aes-256-cbc/rsa-pkcs1"),
        (
            "-aes128",
            &["-keyopt", "rsa_padding_mode:oaep"],
            "aes-128-cbc/rsa-oaep-sha1",
        ),
        ("-aes-256-gcm", OAEP256, "aes-256-gcm/rsa-oaep-sha256"),
        ("-des3", &[], "des-ede3-cbc/rsa-pkcs1"),
    ];
    for (cipher, opts, alg) in cases {
        let m = encrypt(ENTITY, cipher, &[(&org.bob_cert, opts)]);
        let p = run(&config(), &org.stores, &[BOB], &m);
        let c = copy_for(&p, BOB);
        let head = header_block(&c.message);
        assert!(
            head.contains(&format!("algorithm={alg}\r\n")),
            "{cipher}: {head}"
        );
        assert!(contains(
            &c.message,
            "Hello from the partner.\r\nSecond line.\r\n"
        ));
    }
    let m = encrypt(ENTITY, "-aes128", &[(&org.carol_cert, &[])]);
    let p = run(&config(), &org.stores, &[CAROL], &m);
    assert!(
        header_block(&copy_for(&p, CAROL).message)
            .contains("algorithm=aes-128-cbc/ecdh-p256-sha1kdf")
    );
}

#[test]
fn cachet_sealed_mail_opens_for_its_recipient() {
    let org = org();
    let bob_rcpt = recipient(&std::fs::read_to_string(&org.bob_cert).unwrap());
    let carol_rcpt = recipient(&std::fs::read_to_string(&org.carol_cert).unwrap());
    let msg = sample_message();
    let signed = smime::sign(
        &msg,
        &alice(),
        &SignOptions {
            form: SignForm::Opaque,
            ..Default::default()
        },
    )
    .unwrap();
    for cipher in [
        smime::ContentCipher::Aes256Cbc,
        smime::ContentCipher::Aes128Gcm,
    ] {
        let enc = smime::encrypt(
            &signed,
            &[bob_rcpt.clone(), carol_rcpt.clone()],
            &EncryptOptions {
                cipher,
                ..Default::default()
            },
        )
        .unwrap();
        let p = run(&config(), &org.stores, &[CAROL, BOB], &enc);
        assert_eq!(copies(&p).len(), 2);
        for who in [BOB, CAROL] {
            let c = copy_for(&p, who);
            let head = header_block(&c.message);
            assert!(head.contains(&format!("for=<{who}>")), "{head}");
            assert!(head.contains("\tsmime=pass"), "{head}");
            // The peeled message is the signed one, byte for byte below the header.
            let at = find(&c.message, b"\r\n\r\n").unwrap();
            let signed_at = find(&signed, b"\r\n\r\n").unwrap();
            assert_eq!(c.message[at..], signed[signed_at..]);
        }
    }
}

#[test]
fn on_undecryptable_decides_for_recipients_without_a_key() {
    let org = org();
    let m = encrypt(ENTITY, "-aes256", &[(&org.bob_cert, &[])]);
    let mut cfg = config();
    for (mode, rejects) in [
        (OnUndecryptable::Deliver, false),
        (OnUndecryptable::Hold, false),
        (OnUndecryptable::Reject, true),
    ] {
        cfg.on_undecryptable = mode;
        assert_eq!(may_reject(&cfg), rejects, "{mode:?}");
        // Bob alone: decrypted, whatever the mode.
        let p = run(&cfg, &org.stores, &[BOB], &m);
        assert!(contains(
            &copy_for(&p, BOB).message,
            "Hello from the partner."
        ));
        // Bob and Dave: Dave has no key.
        let p = run(&cfg, &org.stores, &[BOB, DAVE], &m);
        match (mode, &p.verdict) {
            (OnUndecryptable::Deliver, Verdict::Deliver(c)) => {
                assert_eq!(c.len(), 2);
                let d = copy_for(&p, DAVE);
                assert!(header_block(&d.message).contains("reason=no-key"));
            }
            (OnUndecryptable::Hold, Verdict::Hold(why)) => {
                assert!(why.contains(DAVE) && !why.contains(BOB), "{why}");
            }
            (OnUndecryptable::Reject, Verdict::Reject(f)) => {
                assert_eq!(f.reply, reply::INBOUND_UNDECRYPTABLE);
                assert_eq!(
                    f.reply.to_string(),
                    "550 5.7.5 Message could not be decrypted for its recipients"
                );
                assert!(f.private.contains(DAVE));
            }
            (mode, v) => panic!("{mode:?}: {v:?}"),
        }
        // Released from hold by an operator: delivered, saying why it was held.
        if mode == OnUndecryptable::Hold {
            let released = inbound::for_release(&cfg);
            let p = run(&released, &org.stores, &[BOB, DAVE], &m);
            assert!(header_block(&copy_for(&p, DAVE).message).contains("reason=no-key"));
            assert!(contains(
                &copy_for(&p, BOB).message,
                "Hello from the partner."
            ));
        }
    }
    // decrypt = false: nothing is decrypted, nothing is undecryptable.
    cfg.decrypt = false;
    let p = run(&cfg, &org.stores, &[BOB, DAVE], &m);
    let [c] = copies(&p) else {
        panic!("{:?}", p.verdict)
    };
    assert_eq!(text(&below_ours(&c.message)), text(&m));
    assert!(!header_block(&c.message).contains("X-Cachet"));
}

/// The DER inside a base64 pkcs7-mime message, with byte `at` (from the end when negative)
/// flipped.
fn tamper(m: &[u8], at: isize) -> Vec<u8> {
    let mut der = p7m_der(m);
    let i = if at < 0 {
        der.len() - (-at) as usize
    } else {
        at as usize
    };
    der[i] ^= 0x01;
    der
}

/// Offset of the last byte of the first RecipientInfo's encryptedKey (the last element of a
/// KeyTransRecipientInfo).
fn encrypted_key_end(der: &[u8]) -> usize {
    let tree = cachet::smime::ber::parse(der, 100_000).unwrap();
    let set = tree.children()[1].children()[0]
        .children()
        .iter()
        .find(|n| n.tag == [0x31])
        .unwrap()
        .to_der();
    let first = cachet::smime::ber::parse(&set, 100_000).unwrap().children()[0].to_der();
    find(der, &first).unwrap() + first.len() - 3
}

#[test]
fn every_decryption_failure_gets_the_same_answer() {
    let org = org();
    let mut cfg = config();
    // Secret-dependent failures: a broken PKCS#1 v1.5 block, a broken OAEP block, a changed
    // GCM tag, a changed last CBC block. Each must give the same verdict, reason included.
    let pkcs1 = encrypt(ENTITY, "-aes-256-gcm", &[(&org.bob_cert, &[])]);
    let oaep = encrypt(ENTITY, "-aes-256-gcm", &[(&org.bob_cert, OAEP256)]);
    let cbc = encrypt(ENTITY, "-aes256", &[(&org.bob_cert, &[])]);
    let secret_dependent = [
        (
            "pkcs1 block",
            tamper(&pkcs1, encrypted_key_end(&p7m_der(&pkcs1)) as isize),
        ),
        (
            "oaep block",
            tamper(&oaep, encrypted_key_end(&p7m_der(&oaep)) as isize),
        ),
        ("gcm tag", tamper(&pkcs1, -1)),
        ("cbc padding", tamper(&cbc, -1)),
    ];
    // Public failures: not for our key, an unknown content algorithm, malformed CMS.
    let alice_only = p7m_der(&encrypt(
        ENTITY,
        "-aes256",
        &[(&rfc9216().join("alice.encrypt.crt"), &[])],
    ));
    let chacha = std::fs::read(interop(
        "samples/examples-cms/authEnvelopedForBobChaCha20Poly1305.p7m",
    ))
    .unwrap();
    let mut truncated = p7m_der(&pkcs1);
    truncated.truncate(truncated.len() / 2);
    let public = [
        ("no key", alice_only, "enveloped-data"),
        ("unsupported", chacha, "authEnveloped-data"),
        ("malformed", truncated, "enveloped-data"),
    ];
    for mode in [OnUndecryptable::Reject, OnUndecryptable::Hold] {
        cfg.on_undecryptable = mode;
        let mut verdicts = Vec::new();
        for (what, der) in &secret_dependent {
            let p = run(
                &cfg,
                &org.stores,
                &[BOB],
                &p7m_message(der, "enveloped-data", "alice@smime.example"),
            );
            verdicts.push((what, p.verdict));
        }
        // A changed CBC block passes the padding check about once in 256 (garbage, never
        // the plaintext, delivered as a decryption: CBC has no integrity); GCM always fails.
        verdicts.retain(|(what, v)| match v {
            Verdict::Deliver(c) => {
                assert!(what.contains("cbc"), "{what}: {v:?}");
                assert!(!contains(&c[0].message, "Hello from the partner."));
                false
            }
            _ => true,
        });
        assert!(verdicts.len() >= 3, "{verdicts:?}");
        for (what, v) in &verdicts {
            assert_eq!(
                v, &verdicts[0].1,
                "{mode:?}: {what} differs from {}",
                verdicts[0].0
            );
        }
        match (&verdicts[0].1, mode) {
            (Verdict::Reject(f), OnUndecryptable::Reject) => {
                assert_eq!(f.reply, reply::INBOUND_UNDECRYPTABLE);
                assert!(f.private.contains("decryption failed"), "{}", f.private);
            }
            (Verdict::Hold(why), OnUndecryptable::Hold) => {
                assert!(why.contains("decryption failed"))
            }
            (v, _) => panic!("{mode:?}: {v:?}"),
        }
        // Public failures: the same reply to the sender; only the private reason differs.
        for (what, der, smime_type) in &public {
            let p = run(
                &cfg,
                &org.stores,
                &[BOB],
                &p7m_message(der, smime_type, "alice@smime.example"),
            );
            match (&p.verdict, mode) {
                (Verdict::Reject(f), OnUndecryptable::Reject) => {
                    assert_eq!(f.reply, reply::INBOUND_UNDECRYPTABLE, "{what}")
                }
                (Verdict::Hold(_), OnUndecryptable::Hold) => {}
                (v, _) => panic!("{what} {mode:?}: {v:?}"),
            }
        }
    }
    // Delivered (the default), every failure kind names its public reason to the recipient.
    cfg.on_undecryptable = OnUndecryptable::Deliver;
    for (der, t, reason) in [
        (&secret_dependent[2].1, "enveloped-data", "failed"),
        (&public[0].1, "enveloped-data", "no-key"),
        (&public[1].1, "authEnveloped-data", "unsupported"),
        (&public[2].1, "enveloped-data", "malformed"),
    ] {
        let m = p7m_message(der, t, "alice@smime.example");
        let p = run(&cfg, &org.stores, &[BOB], &m);
        let c = copy_for(&p, BOB);
        assert!(
            header_block(&c.message).contains(&format!("reason={reason} (")),
            "{reason}"
        );
        assert_eq!(
            text(&below_ours(&c.message)),
            text(&m),
            "{reason}: delivered as it arrived"
        );
    }
}

// ---- [[inbound.rule]] and subject tags ----

/// A signing identity of the partner bank (trusted CA), and mail signed by it with openssl.
fn bank_signed(dir: &Path, subject: &str) -> Vec<u8> {
    let (cert, key) = Leaf::new("ceo@bank.example", Alg::Rsa2048).issue();
    let (c, k) = (write(dir, "bank.crt", cert), write(dir, "bank.key", key));
    openssl_cms(
        &[
            "-sign",
            "-binary",
            "-crlfeol",
            "-signer",
            path_str(&c),
            "-inkey",
            path_str(&k),
            "-from",
            "CEO <ceo@bank.example>",
            "-to",
            BOB,
            "-subject",
            subject,
        ],
        ENTITY,
    )
}

fn run_from(cfg: &InboundConfig, stores: &Stores, sender: &str, message: &[u8]) -> Processed {
    process(
        cfg,
        stores,
        HOST,
        sender,
        &[BOB.to_string()],
        message,
        SystemTime::now(),
    )
}

#[test]
fn rules_judge_the_from_address_and_the_first_unmet_rule_acts() {
    use InboundAction::*;
    use InboundRequirement::*;
    let org = org();
    let dir = tempfile::tempdir().unwrap();
    let signed = bank_signed(dir.path(), "invoice");
    let unsigned = b"From: CEO <ceo@bank.example>\r\nTo: bob@org.example\r\nSubject: invoice\r\n\r\npay now\r\n".to_vec();
    let bad = {
        // The signed text changed in transit: signed, but not validly.
        let at = find(&signed, b"Hello from the partner.").unwrap();
        let mut b = signed.clone();
        b[at] = b'J';
        b
    };
    let encrypted = encrypt(ENTITY, "-aes256", &[(&org.bob_cert, &[])]);
    let bob_cert = org.bob_cert.to_str().unwrap();
    let no_from = openssl_cms(
        &["-encrypt", "-binary", "-crlfeol", "-aes256", bob_cert],
        ENTITY,
    );
    assert!(!contains(&no_from, "From:"));
    let other = b"From: someone@else.example\r\nSubject: hi\r\n\r\nx\r\n".to_vec();

    // (rules, message, envelope sender, expected: None = delivered untouched by rules, or
    // Some((action, requirement)))
    let bank = ["*@bank.example"];
    type Case<'a> = (
        Vec<InboundRule>,
        &'a [u8],
        &'a str,
        Option<(InboundAction, InboundRequirement)>,
    );
    let cases: Vec<Case> = vec![
        (
            vec![rule(&bank, ValidSignature, Tag)],
            &unsigned,
            "x@y.example",
            Some((Tag, ValidSignature)),
        ),
        (
            vec![rule(&bank, ValidSignature, Hold)],
            &unsigned,
            "x@y.example",
            Some((Hold, ValidSignature)),
        ),
        (
            vec![rule(&bank, ValidSignature, Reject)],
            &unsigned,
            "x@y.example",
            Some((Reject, ValidSignature)),
        ),
        (
            vec![rule(&bank, ValidSignature, Reject)],
            &bad,
            "x@y.example",
            Some((Reject, ValidSignature)),
        ),
        (vec![rule(&bank, Signed, Reject)], &bad, "x@y.example", None),
        (
            vec![rule(&bank, ValidSignature, Reject)],
            &signed,
            "x@y.example",
            None,
        ),
        // Not from the bank: the rule does not apply, whatever the envelope sender says.
        (
            vec![rule(&bank, ValidSignature, Reject)],
            &other,
            "ceo@bank.example",
            None,
        ),
        // From: the bank, envelope from a mailing service: the rule applies.
        (
            vec![rule(&bank, Signed, Hold)],
            &unsigned,
            "bounces@mailer.example",
            Some((Hold, Signed)),
        ),
        // First unmet rule acts: signed but not encrypted -> the second rule.
        (
            vec![
                rule(&bank, Signed, Tag),
                rule(&["CEO@Bank.Example"], Encrypted, Reject),
            ],
            &signed,
            "x@y.example",
            Some((Reject, Encrypted)),
        ),
        (
            vec![rule(&bank, Signed, Tag), rule(&bank, Encrypted, Reject)],
            &unsigned,
            "x@y.example",
            Some((Tag, Signed)),
        ),
        // Mail without a From: field is matched by its envelope sender.
        (
            vec![rule(&bank, Signed, Hold)],
            &no_from,
            "ceo@bank.example",
            Some((Hold, Signed)),
        ),
        (
            vec![rule(&bank, Signed, Hold)],
            &no_from,
            "x@y.example",
            None,
        ),
        (
            vec![rule(&bank, Encrypted, Hold)],
            &no_from,
            "ceo@bank.example",
            None,
        ),
        (
            vec![rule(&["*"], Signed, Hold)],
            &encrypted,
            "ceo@bank.example",
            Some((Hold, Signed)),
        ),
    ];
    for (i, (rules, m, sender, want)) in cases.into_iter().enumerate() {
        let mut cfg = config();
        cfg.rules = rules;
        let any_reject = cfg.rules.iter().any(|r| r.action == Reject);
        assert_eq!(may_reject(&cfg), any_reject, "case {i}");
        let p = run_from(&cfg, &org.stores, sender, m);
        match (want, &p.verdict) {
            (None, Verdict::Deliver(c)) => {
                assert!(
                    !header_block(&c[0].message).contains(inbound::RULE_FIELD),
                    "case {i}"
                );
            }
            (Some((Tag, req)), Verdict::Deliver(c)) => {
                let m = &c[0].message;
                let h = header_block(m);
                assert!(
                    h.contains(&format!("{}: rule=", inbound::RULE_FIELD)),
                    "case {i}: {h}"
                );
                assert!(
                    subject(m).starts_with(inbound::rule_tag(req)),
                    "case {i}: {}",
                    subject(m)
                );
            }
            (Some((Hold, _)), Verdict::Hold(why)) => {
                assert!(why.starts_with("inbound rule"), "case {i}: {why}");
                // Released: delivered with the rule's header instead.
                let p = run_from(&inbound::for_release(&cfg), &org.stores, sender, m);
                let Verdict::Deliver(c) = &p.verdict else {
                    panic!("case {i} released: {:?}", p.verdict)
                };
                assert!(header_block(&c[0].message).contains(inbound::RULE_FIELD));
            }
            (Some((Reject, req)), Verdict::Reject(f)) => {
                let want = match req {
                    Signed => reply::INBOUND_NOT_SIGNED,
                    ValidSignature => reply::INBOUND_NO_VALID_SIGNATURE,
                    Encrypted => reply::INBOUND_NOT_ENCRYPTED,
                };
                assert_eq!(f.reply, want, "case {i}");
                assert_eq!(f.reply.code, 550);
                assert!(f.reply.status.starts_with("5.7."));
                // The public text never shows the rule's globs.
                assert!(!f.reply.text.contains("bank"), "case {i}");
                assert!(
                    f.private.contains("inbound rule"),
                    "case {i}: {}",
                    f.private
                );
            }
            (want, got) => panic!("case {i}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn subject_tags_say_what_cachet_found_once() {
    let org = org();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.subject_tags = true;
    // Signed and valid.
    let signed = bank_signed(dir.path(), "invoice");
    let p = run(&cfg, &org.stores, &[BOB], &signed);
    assert_eq!(subject(&copy_for(&p, BOB).message), "[signed] invoice");
    // Changed in transit.
    let at = find(&signed, b"Hello from the partner.").unwrap();
    let mut bad = signed.clone();
    bad[at] = b'J';
    let p = run(&cfg, &org.stores, &[BOB], &bad);
    assert_eq!(
        subject(&copy_for(&p, BOB).message),
        "[signature invalid] invoice"
    );
    // Signed, then encrypted to Bob; an RFC 2047 subject stays decodable.
    let inner = alice_sign(ENTITY, false, None);
    let bob_cert = org.bob_cert.to_str().unwrap();
    let mut args = vec![
        "-encrypt",
        "-binary",
        "-crlfeol",
        "-aes256",
        "-from",
        "alice@smime.example",
        "-to",
        BOB,
    ];
    args.extend(["-subject", "=?UTF-8?B?R3LDvMOfZQ==?=", bob_cert]);
    let m = openssl_cms(&args, &inner);
    let p = run(&cfg, &org.stores, &[BOB], &m);
    let c = copy_for(&p, BOB);
    assert_eq!(subject(&c.message), "[decrypted] [signed] Grüße");
    assert!(
        header_block(&c.message).contains("Subject: [decrypted] [signed] =?UTF-8?B?R3LDvMOfZQ==?=")
    );
    // Tagged once: the same message again carries the tags already (a reply quoting them).
    let again = process(
        &cfg,
        &org.stores,
        HOST,
        "a@b.example",
        &[BOB.to_string()],
        &c.message,
        SystemTime::now(),
    );
    assert_eq!(subject(&copy_for(&again, BOB).message), "[signed] Grüße");
    // A sender's own "[signed]" on unsigned mail is not believed.
    let forged = b"From: x@y.example\r\nSubject: [signed] [decrypted] pay now\r\n\r\nx\r\n";
    let p = run(&cfg, &org.stores, &[BOB], forged);
    assert_eq!(subject(&copy_for(&p, BOB).message), "pay now");
    // Off by default: nothing changes.
    cfg.subject_tags = false;
    let p = run(&cfg, &org.stores, &[BOB], forged);
    assert_eq!(
        subject(&copy_for(&p, BOB).message),
        "[signed] [decrypted] pay now"
    );
}

// ---- keys that cannot be reached ----

/// A key on a token that has gone away: every operation is `Unavailable`.
struct GoneToken;

impl cachet::store::keys::PrivateKey for GoneToken {
    fn sign(
        &self,
        _: cachet::store::keys::SignatureScheme,
        _: &[u8],
    ) -> Result<Vec<u8>, cachet::store::keys::KeyError> {
        Err(cachet::store::keys::KeyError::Unavailable(
            "token removed".into(),
        ))
    }
    fn decrypt(
        &self,
        _: cachet::store::keys::Decrypt<'_>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, cachet::store::keys::KeyError> {
        Err(cachet::store::keys::KeyError::Unavailable(
            "token removed".into(),
        ))
    }
}

#[test]
fn a_key_that_cannot_be_reached_is_a_temporary_failure_not_undecryptable() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = Leaf::new("erin@org.example", Alg::Rsa2048).issue();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    use rustls_pki_types::pem::PemObject;
    let public = cachet::store::validate::inspect(&der).unwrap().public_key;
    let id = SigningIdentity::from_key(
        "erin@org.example",
        std::sync::Arc::new(GoneToken),
        &public,
        &[der],
        &trust(),
        SystemTime::now(),
        cachet::store::keys::KeySource::Memory,
    )
    .unwrap();
    let mut stores = Stores {
        trust: trust(),
        ..Default::default()
    };
    stores.keys.insert(id);
    let cert_path = write(dir.path(), "erin.crt", &cert);
    let mut cfg = config();
    for mode in [OnUndecryptable::Deliver, OnUndecryptable::Reject] {
        cfg.on_undecryptable = mode;
        for cipher in ["-aes256", "-aes-128-gcm"] {
            let m = encrypt(ENTITY, cipher, &[(&cert_path, &[])]);
            let p = process(
                &cfg,
                &stores,
                HOST,
                "a@b.example",
                &["erin@org.example".to_string()],
                &m,
                SystemTime::now(),
            );
            let Verdict::Reject(f) = &p.verdict else {
                panic!("{mode:?} {cipher}: {:?}", p.verdict)
            };
            assert_eq!(f.reply, reply::INBOUND_TEMPORARY);
            assert!(f.is_temporary());
        }
    }
}

// ---- real clients and spec samples ----

fn rw(name: &str) -> Vec<u8> {
    crlf(&std::fs::read(interop("realworld").join(name)).unwrap())
}

fn anchors(files: &[PathBuf]) -> TrustAnchors {
    let (t, problems) = TrustAnchors::load(files);
    assert!(problems.is_empty(), "{problems:?}");
    t
}

#[test]
fn thunderbird_mail_decrypts_through_the_key_store_and_verifies() {
    // The Simple Java Mail test user holds a signing-and-encryption certificate: a key-store
    // identity like any in `[keys]`.
    let k = interop("realworld/keys");
    let mut stores = Stores {
        trust: anchors(&[k.join("sjm_ca.crt")]),
        ..Default::default()
    };
    let benny = "benny@bennybottema.com";
    let id = identity(
        benny,
        &std::fs::read_to_string(k.join("sjm_smime_test_user.crt")).unwrap(),
        &std::fs::read_to_string(k.join("sjm_smime_test_user.nopass.key")).unwrap(),
        &stores.trust,
    );
    let fp = id.fingerprint.clone();
    stores.keys.insert(id);
    let cfg = config();

    let p = run(&cfg, &stores, &[benny], &rw("thunderbird52-signed.eml"));
    let h = header_block(&copy_for(&p, benny).message);
    assert!(
        h.contains("\tsmime=pass\r\n\t  body.smime-identifier=benny@bennybottema.com"),
        "{h}"
    );
    assert_eq!(p.signers.len(), 1);

    let p = run(&cfg, &stores, &[benny], &rw("thunderbird52-encrypted.eml"));
    let c = copy_for(&p, benny);
    let h = header_block(&c.message);
    assert!(
        h.contains(&format!(
            "for=<{benny}>;\r\n\tkey=sha256:{fp}; algorithm=des-ede3-cbc/rsa-pkcs1"
        )),
        "{h}"
    );
    assert!(!contains(&c.message, "application/pkcs7-mime"));

    // Signed inside encrypted: decrypted, the signature inside passes, and still verifies.
    let p = run(
        &cfg,
        &stores,
        &[benny, DAVE],
        &rw("thunderbird52-signed-encrypted.eml"),
    );
    let c = copy_for(&p, benny);
    let h = header_block(&c.message);
    assert!(h.contains("\tsmime=pass"), "{h}");
    assert!(h.contains("Content-Type: multipart/signed"), "{h}");
    let content = openssl_verify(&c.message, Some(&k.join("sjm_ca.crt")));
    assert!(!content.is_empty());
    assert!(header_block(&copy_for(&p, DAVE).message).contains("reason=no-key"));
}

#[test]
fn real_client_and_spec_messages_with_in_process_keys() {
    // RFC 9216 Bob's separate encryption key, held in process (`process_with`); the same key
    // through the key store is tests/keys_encryption_certs.rs and tests/inbound_gateway.rs.
    let bob = {
        let mut pem = std::fs::read(rfc9216().join("bob.encrypt.crt")).unwrap();
        pem.extend(std::fs::read(rfc9216().join("bob.decrypt.key")).unwrap());
        OrgKey::from_pem(&pem).unwrap()
    };
    let keys = OrgKeys::new(vec![bob]);
    let anchors = trust();
    let trust = Trust {
        anchors: &anchors,
        known: &[],
    };
    let cfg = config();
    let go = |rcpts: &[&str], m: &[u8]| {
        let rcpts: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
        process_with(
            &cfg,
            &keys,
            &trust,
            HOST,
            "a@b.example",
            &rcpts,
            m,
            SystemTime::now(),
        )
    };
    let bob_addr = "bob@smime.example";

    // RFC 9788 vector: enveloped(signed) to Alice and Bob.
    let m =
        crlf(&std::fs::read(interop("samples/rfc9788/lhp-draft-smime-enc-signed.eml")).unwrap());
    let p = go(&[bob_addr, "alice@smime.example"], &m);
    let c = copy_for(&p, bob_addr);
    let h = header_block(&c.message);
    assert!(
        h.contains(&format!("{}: for=<{bob_addr}>", inbound::DECRYPTED_FIELD)),
        "{h}"
    );
    assert!(h.contains("\tsmime=pass"), "{h}");
    // Alice's key is not ours: her copy is as it arrived.
    let a = copy_for(&p, "alice@smime.example");
    assert_eq!(text(&below_ours(&a.message)), text(&m));

    // KMail, encrypted to a key we do not hold.
    for name in [
        "kmail413-opaque-enc+sign.eml",
        "kmail46-signed-encrypted.eml",
    ] {
        let m = rw(name);
        let p = go(&[bob_addr], &m);
        let c = copy_for(&p, bob_addr);
        assert!(header_block(&c.message).contains("reason=no-key"), "{name}");
        assert_eq!(text(&below_ours(&c.message)), text(&m), "{name}");
    }
    // Outlook, opaque SHA-1, a root we do not hold: the signature is good, the chain is not.
    let p = go(&[bob_addr], &rw("outlook-opaque-signed.eml"));
    assert!(header_block(&copy_for(&p, bob_addr).message).contains("\tsmime=policy"));
    // Offered to the store for its pending list (an operator may approve it), never as verified.
    assert_eq!(p.signers.len(), 1, "{:?}", p.signers);
    assert!(p.signers[0].signature_ok && p.signers[0].result != smime::AuthResult::Pass);
}

// ---- bad input ----

#[test]
fn bad_input_is_delivered_untouched_with_permerror_or_held_as_configured() {
    let org = org();
    let bob_rcpt = recipient(&std::fs::read_to_string(&org.bob_cert).unwrap());
    // 50 nested EnvelopedData layers to Bob, each the binary DER of the one inside.
    let mut nested = ENTITY.to_vec();
    for _ in 0..50 {
        let der = openssl_cms(
            &[
                "-encrypt",
                "-binary",
                "-aes128",
                "-outform",
                "DER",
                path_str(&org.bob_cert),
            ],
            &nested,
        );
        nested = b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: binary\r\n\r\n".to_vec();
        nested.extend_from_slice(&der);
    }
    let mut deep =
        b"From: alice@smime.example\r\nTo: bob@org.example\r\nMIME-Version: 1.0\r\n".to_vec();
    deep.extend_from_slice(&nested);
    // 10,000 RecipientInfos.
    let enc = smime::encrypt(&sample_message(), &[bob_rcpt], &EncryptOptions::default()).unwrap();
    let many = p7m_message(
        &grow_set(&p7m_der(&enc), &[1, 0, 1], 10_000, None),
        "enveloped-data",
        "alice@smime.example",
    );
    // A 20 MB "certificate" in a signature's certificate bag.
    let signed = smime::sign(
        &sample_message(),
        &alice(),
        &SignOptions {
            form: SignForm::Opaque,
            ..Default::default()
        },
    )
    .unwrap();
    let size = 20u32 << 20;
    let mut blob = vec![0x30, 0x84];
    blob.extend_from_slice(&(size + 6).to_be_bytes());
    blob.extend_from_slice(&[0x04, 0x84]);
    blob.extend_from_slice(&size.to_be_bytes());
    blob.extend(std::iter::repeat_n(0u8, size as usize));
    let bag = p7m_message(
        &grow_set(&p7m_der(&signed), &[1, 0, 3], 0, Some(blob)),
        "signed-data",
        "alice@smime.example",
    );
    // Truncated base64, malformed CMS, an algorithm we do not implement.
    let truncated = b"From: a@b.example\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\r\nA\r\n".to_vec();
    let malformed = p7m_message(
        &[0x30, 0x80, 0x06, 0x09, 0x2a, 0x86],
        "signed-data",
        "alice@smime.example",
    );
    let ed25519 = p7m_message(
        &std::fs::read(interop("samples/examples-cms/signedByCarlosEd25519.p7m")).unwrap(),
        "signed-data",
        "alice@smime.example",
    );
    // (name, message, encrypted: held under on_undecryptable = "hold")
    let cases: [(&str, &[u8], bool); 6] = [
        ("50 layers", &deep, true),
        ("10,000 RecipientInfos", &many, true),
        ("20 MB certificate bag", &bag, false),
        ("truncated base64", &truncated, true),
        ("malformed CMS", &malformed, false),
        ("Ed25519", &ed25519, false),
    ];
    let mut cfg = config();
    for (name, m, encrypted) in cases {
        cfg.on_undecryptable = OnUndecryptable::Deliver;
        let started = Instant::now();
        let p = run(&cfg, &org.stores, &[BOB], m);
        assert!(started.elapsed() < Duration::from_secs(60), "{name}");
        let [c] = copies(&p) else {
            panic!("{name}: {:?}", p.verdict)
        };
        let h = header_block(&c.message);
        assert!(h.contains("smime=permerror"), "{name}: {h}");
        assert!(
            below_ours(&c.message) == m,
            "{name}: delivered as it arrived"
        );
        assert!(p.signers.is_empty(), "{name}");
        cfg.on_undecryptable = OnUndecryptable::Hold;
        let p = run(&cfg, &org.stores, &[BOB], m);
        assert_eq!(
            matches!(p.verdict, Verdict::Hold(_)),
            encrypted,
            "{name}: {:?}",
            p.verdict
        );
    }
}

#[test]
fn gpgsm_encrypted_mail_decrypts_for_its_recipient() {
    let org = org();
    let dir = tempfile::tempdir().unwrap();
    let der = Gpgsm::new().encrypt_to(&org.bob_cert, BOB, ENTITY, dir.path());
    assert_eq!(&der[..2], &[0x30, 0x80], "gpgsm writes BER");
    let m = p7m_message(&der, "enveloped-data", "alice@smime.example");
    let p = run(&config(), &org.stores, &[BOB, CAROL], &m);
    let c = copy_for(&p, BOB);
    assert!(header_block(&c.message).contains(&format!("key=sha256:{}", org.bob_fp)));
    assert!(contains(&c.message, "Hello from the partner."));
    // Carol holds a key, but not the one this was encrypted to.
    let c = copy_for(&p, CAROL);
    assert!(header_block(&c.message).contains("reason=no-key"));
}

/// What a private key answers in [`every_key_transport_failure_is_the_one_undecryptable_error`].
#[derive(Clone, Copy, Debug)]
enum Answer {
    Fails,
    ShortKey,
    WrongKey,
}

struct Scripted {
    answer: Answer,
    calls: std::sync::atomic::AtomicUsize,
}

impl cachet::smime::Decrypter for Scripted {
    fn rsa_decrypt(
        &self,
        _: cachet::smime::decrypt::RsaPadding,
        _: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, cachet::smime::decrypt::KeyOpFailed> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match self.answer {
            Answer::Fails => Err(cachet::smime::decrypt::KeyOpFailed),
            Answer::ShortKey => Ok(zeroize::Zeroizing::new(vec![7; 5])),
            Answer::WrongKey => Ok(zeroize::Zeroizing::new(vec![7; 32])),
        }
    }
    fn ecdh_p256(
        &self,
        _: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, cachet::smime::decrypt::KeyOpFailed> {
        Err(cachet::smime::decrypt::KeyOpFailed)
    }
}

/// RFC 3218 §2.3.2: a key transport that fails (bad PKCS#1 v1.5 block, OAEP check), yields a
/// key of the wrong length or a wrong key of the right length gives the one error a wrong key
/// gives, after exactly one private-key operation (`smime/decrypt.rs` goes on with a random key
/// and fails at the content, GCM tag or CBC padding; the path itself is not observable here).
#[test]
fn every_key_transport_failure_is_the_one_undecryptable_error() {
    let org = org();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(
        std::fs::read_to_string(&org.bob_cert).unwrap().as_bytes(),
    )
    .unwrap();
    use rustls_pki_types::pem::PemObject;
    for cipher in ["-aes-256-gcm", "-aes256"] {
        for padding in [&[][..], &["-keyopt", "rsa_padding_mode:oaep"][..]] {
            let m = encrypt(ENTITY, cipher, &[(&org.bob_cert, padding)]);
            for answer in [Answer::Fails, Answer::ShortKey, Answer::WrongKey] {
                let scripted = std::sync::Arc::new(Scripted {
                    answer,
                    calls: Default::default(),
                });
                let key = OrgKey::new(der.clone(), scripted.clone()).unwrap();
                let anchors = trust();
                let o = smime::open(
                    &m,
                    &[key],
                    &Trust {
                        anchors: &anchors,
                        known: &[],
                    },
                    SystemTime::now(),
                    &cachet::smime::Limits::default(),
                );
                assert_eq!(scripted.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
                match &o.layers[..] {
                    [cachet::smime::Layer::Encrypted { result: Err(e), .. }] => {
                        assert_eq!(
                            *e,
                            cachet::smime::OpenError::Undecryptable,
                            "{cipher} {answer:?}"
                        )
                    }
                    // A wrong CBC key passes the padding check about once in 256: garbage.
                    [cachet::smime::Layer::Encrypted { result: Ok(_), .. }]
                        if cipher == "-aes256" =>
                    {
                        assert!(!contains(&o.message, "Hello from the partner."))
                    }
                    other => panic!("{cipher} {answer:?}: {other:?}"),
                }
            }
        }
    }
}

// ---- property: damaged mail, any configuration ----

/// Property: whatever bytes of a signed, an encrypted (AES-GCM to Bob and Carol) or a plain
/// message are damaged, under any configuration, nothing panics; every recipient is served
/// exactly once; our Authentication-Results comes first and alone; a copy is either a whole
/// decryption (the full text) or, with no tags or rules at play, the message exactly as it
/// arrived below our fields.
#[test]
fn damaged_mail_in_any_configuration_keeps_the_promises() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let org = org();
    let signed = alice_sign(ENTITY, false, Some("hello"));
    let encrypted = encrypt(
        &alice_sign(ENTITY, false, None),
        "-aes-256-gcm",
        &[(&org.bob_cert, OAEP256), (&org.carol_cert, KDF256)],
    );
    let plain = b"From: x@partner.example\r\nSubject: [signed] hi\r\n\r\nHello from the partner.\r\nSecond line.\r\n".to_vec();
    let bases = [signed, encrypted, plain];
    let rcpts = [BOB, CAROL, DAVE];
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        any::<u8>(),
        0..bases.len(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    );
    runner
        .run(&strategy, |(pick, which, flips)| {
            let mut m = bases[which].clone();
            for (at, byte) in &flips {
                let i = at.index(m.len());
                m[i] = *byte;
            }
            let mut cfg = config();
            cfg.decrypt = pick & 1 != 0;
            cfg.verify = pick & 2 != 0;
            cfg.subject_tags = pick & 4 != 0;
            cfg.on_undecryptable = match (pick >> 3) & 3 {
                1 => OnUndecryptable::Hold,
                2 => OnUndecryptable::Reject,
                _ => OnUndecryptable::Deliver,
            };
            if pick & 0x20 != 0 {
                cfg.rules.push(rule(
                    &["*"],
                    InboundRequirement::ValidSignature,
                    InboundAction::Tag,
                ));
            }
            let p = run(&cfg, &org.stores, &rcpts, &m);
            let Verdict::Deliver(copies) = &p.verdict else {
                return Ok(());
            };
            let mut served: Vec<&str> = copies
                .iter()
                .flat_map(|c| c.recipients.iter().map(String::as_str))
                .collect();
            served.sort();
            prop_assert_eq!(served, vec![BOB, CAROL, DAVE]);
            let untouched_input = !matches!(m.first(), Some(b' ' | b'\t'))
                && cachet::smime::authres::strip(&m, HOST).is_none()
                && !text(&m).to_ascii_lowercase().contains("x-cachet-");
            for c in copies {
                let ours = format!("Authentication-Results: {HOST};");
                prop_assert_eq!(c.message.starts_with(ours.as_bytes()), cfg.verify);
                let below = below_ours(&c.message);
                prop_assert!(cachet::smime::authres::strip(&below, HOST).is_none());
                let end = find(&c.message, b"\r\n\r\n").unwrap_or(c.message.len());
                if text(&c.message[..end]).contains(inbound::DECRYPTED_FIELD) {
                    prop_assert!(contains(
                        &c.message,
                        "Hello from the partner.\r\nSecond line.\r\n"
                    ));
                } else if untouched_input && !cfg.subject_tags && cfg.rules.is_empty() {
                    prop_assert!(below == m, "not as it arrived: {}", text(&c.message));
                }
            }
            Ok(())
        })
        .unwrap();
}
