//! What the fuzz targets share: one function per target, each feeding bytes to the same library
//! function live traffic reaches, plus the fixtures they need (built once per process) and the
//! oracles beyond "does not panic". A target file in `fuzz_targets/` is one line calling one of
//! these, so adding a target is: a function here, a five-line file, a `[[bin]]` entry, seeds.
//!
//! Rules for every function here: deterministic, no sockets, writes only under a temp dir
//! (on /dev/shm when the machine has it, so fsync costs nothing).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod session;

/// A temp dir for one fuzzing process, in RAM when possible.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new()
            .prefix("cachet-fuzz")
            .tempdir_in(shm)
    {
        return d;
    }
    tempfile::Builder::new()
        .prefix("cachet-fuzz")
        .tempdir()
        .expect("temp dir")
}

/// Splits `data` at the first `sep`: (before, after). Without `sep`, everything is `before`.
pub fn split_at_byte(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Bare CR or bare LF somewhere in `bytes` (every line must end in CRLF).
pub fn has_bare_newline(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || bytes[i - 1] != b'\r',
        _ => false,
    })
}

/// DATA framing: the result must not depend on where the stream was split, and what comes out
/// has CRLF line ends only (RFC 5321 §4.1.1.4; the smuggling defence).
pub fn data_framer(data: &[u8]) {
    use cachet::session::data::{DataReader, Feed};
    let (cuts, input) = data.split_at(data.len().min(2));
    let whole = {
        let mut r = DataReader::new();
        let mut out = Vec::new();
        let feed = r.feed(input, &mut out);
        (out, feed)
    };
    if let Feed::End { consumed } = whole.1 {
        assert!(consumed <= input.len());
        assert!(input[..consumed].ends_with(b"\r\n.\r\n") || input[..consumed] == *b".\r\n");
    }
    if whole.1 != Feed::BareNewline {
        assert!(
            !has_bare_newline(&whole.0),
            "DataReader passed a bare CR or LF"
        );
    }
    // The same bytes in pieces of 1..=256 octets (chosen by the first input bytes).
    let step = 1 + cuts.iter().map(|&b| b as usize).sum::<usize>() % 256;
    let mut r = DataReader::new();
    let mut out = Vec::new();
    let mut feed = Feed::More;
    let mut offset = 0;
    for piece in input.chunks(step) {
        feed = r.feed(piece, &mut out);
        match feed {
            Feed::More => offset += piece.len(),
            Feed::End { consumed } => {
                feed = Feed::End {
                    consumed: offset + consumed,
                };
                break;
            }
            Feed::BareNewline => break,
        }
    }
    assert_eq!(feed, whole.1, "framing depends on the split (step {step})");
    if feed != Feed::BareNewline {
        assert_eq!(out, whole.0, "output depends on the split (step {step})");
    }
}

/// Envelope addresses: the command line as a client sends it, parsed by smtp-proto, then judged
/// by `plain_address`; and `plain_address` on the raw text. An address judged plain never
/// carries what would read differently to another party.
pub fn envelope_address(data: &[u8]) {
    use smtp_proto::Request;
    let _ = Request::parse(&mut data.iter());
    for verb in [&b"MAIL FROM:<"[..], b"RCPT TO:<"] {
        let mut line = verb.to_vec();
        line.extend_from_slice(data);
        line.extend_from_slice(b">\r\n");
        if let Ok(req) = Request::parse(&mut line.iter()) {
            match req {
                Request::Mail { from } => check_plain(from.address.as_ref()),
                Request::Rcpt { to } => check_plain(to.address.as_ref()),
                _ => {}
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_plain(text);
        let _ = cachet::store::normalize_address(text);
    }
}

fn check_plain(address: &str) {
    if cachet::session::plain_address(address) {
        assert_eq!(address.matches('@').count(), 1, "{address:?}");
        // Non-ASCII is allowed (RFC 6531 UTF8-non-ascii): Unicode spaces such as U+00A0 pass,
        // as the function documents; ASCII specials and every control character never do.
        assert!(
            !address.chars().any(|c| c.is_control()
                || c.is_ascii_whitespace()
                || "<>\"\\(),;:[]".contains(c) && !address.ends_with(']')),
            "plain address with special characters: {address:?}"
        );
        assert!(address.len() <= 254);
    }
}

/// MIME canonicalisation as fed to the signer: never panics, and the entity has CRLF line ends
/// only (RFC 8551 §3.1.1), as do the outer fields.
pub fn mime_canonical(data: &[u8]) {
    let (outer, entity) = cachet::smime::canonical_entity(data);
    assert!(!has_bare_newline(&entity), "entity has a bare CR or LF");
    assert!(
        !has_bare_newline(&outer),
        "outer fields have a bare CR or LF"
    );
}

/// Header reading, trigger stripping and field removal on the raw bytes. The first line of the
/// input names the trigger header and subject tag (`Name:Tag`); the rest is the message.
pub fn header_rewrite(data: &[u8]) {
    use cachet::pipeline::headers;
    let (spec, message) = split_at_byte(data, b'\n');
    let spec = String::from_utf8_lossy(spec);
    let (name, tag) = spec.split_once(':').unwrap_or((&spec, ""));
    let name = (!name.is_empty()).then_some(name);
    let tag = (!tag.is_empty()).then_some(tag);
    let h = headers::read(message, name);
    let _ = headers::authors(message);
    let _ = headers::has_tag(h.subject.as_deref(), tag);
    if let Some(n) = name {
        let _ = headers::has_field(message, n, "yes");
    }
    if let Some(stripped) = headers::strip_triggers(message, tag, name) {
        // A Subject rebuilt from its decoded text is re-encoded (RFC 2047): undecodable bytes
        // become U+FFFD and base64 adds a third, so it may grow, but only by a bounded factor.
        assert!(
            stripped.len() <= message.len() * 4 + 256,
            "stripping grew the message without bound"
        );
        let _ = headers::read(&stripped, name);
    }
    let names: Vec<String> = name.map(|n| vec![n.to_string()]).unwrap_or_default();
    if let Some(removed) = headers::remove_fields(message, &names) {
        assert!(removed.len() < message.len(), "removal did not shrink");
        // The tenant header never leaves: after removal a second pass finds none. Only for
        // messages as DATA delivers them (CRLF only): with a bare LF before the removed field,
        // removal can move the end of the header (unreachable through the session).
        if let Some(n) = name
            && !n.contains(['\r', '\n'])
            && !has_bare_newline(message)
        {
            assert!(
                headers::remove_fields(&removed, &names).is_none(),
                "{n:?} still present after removal"
            );
        }
    }
}

/// The TOML config loader and validator, as `cachet check` runs it: never panics; every
/// problem names the file.
pub fn config_load(data: &[u8]) {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(scratch_dir);
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let path = dir.path().join("cachet.toml");
    if let Err(errors) = cachet::config::Config::parse(&path, source) {
        assert!(!errors.is_empty());
        for e in &errors {
            assert_eq!(e.file, path, "{e:?}");
        }
    }
}

/// Spool recovery on a damaged envelope: the scan never panics and never deletes a file it
/// cannot read (it goes to corrupt/), what it returns is named by its file, and the DSN for
/// it can be built.
/// Input: envelope bytes (one record of a queue file); after a 0xFF byte, a second copy for
/// deferred/ (the same message in two queues).
pub fn spool_recover(data: &[u8]) {
    use cachet::spool::{Queue, Spool};
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = ROOT.get_or_init(scratch_dir).path().join("spool");
    let _ = std::fs::remove_dir_all(&root);
    let spool = Spool::open(&root).expect("spool");
    let _: Result<cachet::spool::Envelope, _> = serde_json::from_slice(data);
    let (first, second) = split_at_byte(data, 0xFF);
    let id = "0000000000000000000000";
    let queue_file =
        |json: &[u8]| cachet::spool::file::compose(b"Subject: x\r\n\r\nbody\r\n", json);
    std::fs::write(root.join("incoming").join(id), queue_file(first)).unwrap();
    let two = data.contains(&0xFF);
    if two {
        std::fs::write(root.join("deferred").join(id), queue_file(second)).unwrap();
    }
    let found = spool
        .scan(&[Queue::Incoming, Queue::Deferred])
        .expect("scan")
        .found;
    assert!(found.len() <= 1);
    for (_, env) in &found {
        assert_eq!(env.id, id, "recovered an envelope under another name");
        // What the scheduler does with it next: bounce the recipients, as on expiry, quoting
        // each one's last reply.
        let replies: Vec<cachet::reply::Reply> = env
            .recipients
            .iter()
            .map(|r| cachet::reply::expired(60, r.reply.as_deref()))
            .collect();
        let failures: Vec<cachet::dsn::Failure> = env
            .recipients
            .iter()
            .zip(&replies)
            .map(|(r, reply)| cachet::dsn::Failure {
                recipient: &r.address,
                reply,
            })
            .collect();
        let _ = cachet::dsn::build("gw.test", env, b"Subject: x\r\n\r\n", &failures);
    }
    let kept = |q: &str| root.join(q).join(id).exists();
    if !two {
        assert!(kept("incoming") || kept("corrupt"), "envelope deleted");
    } else {
        assert!(
            kept("incoming") || kept("deferred") || kept("corrupt"),
            "both copies deleted"
        );
    }
}

/// The DSN builder's inputs: queue id, hostname, sender, failures and the original message.
/// Input: NUL-separated `hostname, id, sender, (recipient, reply)*`, then the original after
/// 0xFF. The DSN's own header stays eight fields (nothing injected) and it ends with its
/// closing boundary.
pub fn dsn_build(data: &[u8]) {
    let (meta, original) = split_at_byte(data, 0xFF);
    let parts: Vec<String> = meta
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let get = |i: usize| parts.get(i).cloned().unwrap_or_default();
    let hostname = get(0);
    let mut env = cachet::spool::Envelope::new(
        get(2),
        vec!["r@example.net".into()],
        "127.0.0.1".into(),
        "h".into(),
    );
    env.id = get(1);
    env.received = u64::from_le_bytes(
        data.iter()
            .copied()
            .chain(std::iter::repeat(0))
            .take(8)
            .collect::<Vec<_>>()
            .try_into()
            .unwrap(),
    );
    let pairs: Vec<(String, String)> = parts
        .get(3..)
        .unwrap_or(&[])
        .chunks(2)
        .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
        .collect();
    // Each reply as a next hop could send it: `code [status] text`, whatever the bytes.
    let replies: Vec<cachet::reply::Reply> = pairs
        .iter()
        .map(|(_, line)| {
            let mut words = line.splitn(3, ' ');
            let code = words.next().and_then(|c| c.parse().ok()).unwrap_or(554);
            let status = words.next().map(str::to_string);
            let text = words.next().unwrap_or_default().to_string();
            cachet::reply::Reply::remote(code, status, text)
        })
        .collect();
    let failures: Vec<cachet::dsn::Failure> = pairs
        .iter()
        .zip(&replies)
        .map(|((r, _), reply)| cachet::dsn::Failure {
            recipient: r,
            reply,
        })
        .collect();
    let out = cachet::dsn::build(&hostname, &env, original, &failures);
    // What the session guarantees (plain addresses, a configured hostname) keeps the DSN's own
    // header intact.
    let clean = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic());
    if clean(&hostname) && clean(&env.id) && cachet::session::plain_address(&env.sender) {
        let head_end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("DSN has a header");
        let fields = out[..head_end]
            .split(|&b| b == b'\n')
            .filter(|l| !l.starts_with(b" ") && !l.starts_with(b"\t"))
            .count();
        assert_eq!(fields, 8, "DSN header fields");
        assert!(out.ends_with(b"--\r\n"));
    }
}

/// The trust anchors and clock the key-loading targets validate against (RFC 9216 CA).
pub struct KeyWorld {
    pub trust: cachet::store::TrustAnchors,
    pub now: SystemTime,
}

pub fn key_world() -> &'static KeyWorld {
    static WORLD: OnceLock<KeyWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(CA_PEM.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("CA PEM");
        let (trust, problems) = cachet::store::TrustAnchors::from_certs(certs);
        assert!(problems.is_empty(), "{problems:?}");
        KeyWorld {
            trust,
            // 2025-01-01: inside the RFC 9216 certificates' validity.
            now: UNIX_EPOCH + Duration::from_secs(1_735_689_600),
        }
    })
}

/// The RFC 9216 RSA CA (../shared/interop/rfc9216/ca.rsa.crt), embedded so targets run anywhere.
const CA_PEM: &str = include_str!("../fixtures/ca.rsa.crt");

/// PEM key files as `keys.dir` holds them: key plus chain, validated against the CA.
pub fn key_pem(data: &[u8]) {
    let w = key_world();
    let _ = cachet::store::keys::SigningIdentity::from_pem(
        "alice@smime.example",
        data,
        &w.trust,
        w.now,
    );
}

/// PKCS#12 key files (`<address>.p12` + password file). Input: one length byte, the password
/// (at most 32 bytes, UTF-8), then the PKCS#12 bytes.
pub fn key_p12(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize).min(32).min(rest.len());
    let (password, p12) = rest.split_at(n);
    let Ok(password) = std::str::from_utf8(password) else {
        return;
    };
    let w = key_world();
    let _ = cachet::store::keys::SigningIdentity::from_p12(
        "bob@smime.example",
        p12,
        password,
        &w.trust,
        w.now,
    );
}

/// Where the committed seeds are (for tools that want them).
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// What the S/MIME opening targets open with: Bob's RFC 9216 decryption key (so inputs made
/// for him reach content decryption) and the RFC 9216 CA as the only trust anchor.
pub struct OpenWorld {
    pub keys: Vec<cachet::smime::OrgKey>,
    pub trust: cachet::store::TrustAnchors,
    pub now: SystemTime,
}

pub fn open_world() -> &'static OpenWorld {
    static WORLD: OnceLock<OpenWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut pem = BOB_CERT_PEM.as_bytes().to_vec();
        pem.extend_from_slice(BOB_KEY_PEM.as_bytes());
        let bob = cachet::smime::OrgKey::from_pem(&pem).expect("Bob's fixture key");
        use rustls_pki_types::pem::PemObject;
        let w = key_world();
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(CA_PEM.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("CA PEM");
        let (trust, problems) = cachet::store::TrustAnchors::from_certs(certs);
        assert!(problems.is_empty(), "{problems:?}");
        OpenWorld {
            keys: vec![bob],
            trust,
            now: w.now,
        }
    })
}

/// RFC 9216 Bob's encryption certificate and key (../shared/interop/rfc9216), public test keys.
const BOB_CERT_PEM: &str = include_str!("../fixtures/bob.encrypt.crt");
const BOB_KEY_PEM: &str = include_str!("../fixtures/bob.decrypt.key");

/// Opens `message` and checks the promises of `smime::open`: no panic; the delivered message
/// is the input unless it was decrypted; the Authentication-Results field is one field
/// (CRLF only as folding, printable ASCII) whatever the certificates say.
fn open_and_check(message: &[u8]) {
    let w = open_world();
    let trust = cachet::smime::Trust {
        anchors: &w.trust,
        known: &[],
    };
    let opened = cachet::smime::open(
        message,
        &w.keys,
        &trust,
        w.now,
        &cachet::smime::Limits::default(),
    );
    if !opened.decrypted {
        assert_eq!(
            opened.message, message,
            "undecrypted message must be untouched"
        );
    }
    let h = cachet::smime::authres::header("gw.example.org", &opened);
    assert!(h.ends_with("\r\n"));
    let body = &h[..h.len() - 2];
    for (i, line) in body.split("\r\n").enumerate() {
        assert!(i == 0 || line.starts_with('\t'), "unfolded line in {h:?}");
        assert!(
            line.bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)),
            "{h:?}"
        );
    }
    let _ = cachet::smime::authres::strip(message, "gw.example.org");
}

/// Whole messages (any MIME, base64 or not) through `smime::open`.
pub fn smime_open(data: &[u8]) {
    open_and_check(data);
}

/// Raw CMS (BER or DER): the BER normaliser must be idempotent, and the same bytes are
/// opened as an opaque `application/pkcs7-mime` body and as a detached signature.
/// The first byte picks the wrapper; the rest is the CMS.
pub fn smime_cms(data: &[u8]) {
    let Some((&pick, cms)) = data.split_first() else {
        return;
    };
    if let Ok(der) = cachet::smime::ber::to_der(cms, 200_000) {
        let again = cachet::smime::ber::to_der(&der, 200_000).expect("DER re-parses");
        assert_eq!(again, der, "BER normalisation is idempotent");
    }
    let mut m =
        b"From: alice@smime.example\r\nTo: bob@smime.example\r\nMIME-Version: 1.0\r\n".to_vec();
    if pick & 1 == 0 {
        m.extend_from_slice(
            b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: binary\r\n\r\n",
        );
        m.extend_from_slice(cms);
    } else {
        m.extend_from_slice(b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--b\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: binary\r\n\r\n");
        m.extend_from_slice(cms);
        m.extend_from_slice(b"\r\n--b--\r\n");
    }
    open_and_check(&m);
}

/// The whole inbound step (`pipeline::inbound::process_with`) with Bob's RFC 9216 key. Input:
/// one byte choosing the configuration (bits: decrypt, verify, subject_tags, on_undecryptable
/// hold / reject, a rule's action), then the message. Recipients: Bob (holds the key) and Dave
/// (none). Oracles beyond "no panic": every recipient is served exactly once; a copy starts
/// with at most one Authentication-Results of ours, as one well-formed field; no copy carries
/// another field claiming our authserv-id; a refusal is one of the inbound replies.
pub fn inbound_process(data: &[u8]) {
    use cachet::config::{InboundAction, InboundRequirement, OnUndecryptable};
    use cachet::pipeline::inbound::{self, Verdict};
    let Some((&pick, message)) = data.split_first() else {
        return;
    };
    let w = open_world();
    let keys = inbound_keys();
    let mut cfg = inbound_config();
    cfg.decrypt = pick & 1 != 0;
    cfg.verify = pick & 2 != 0;
    cfg.subject_tags = pick & 4 != 0;
    cfg.on_undecryptable = match (pick >> 3) & 3 {
        1 => OnUndecryptable::Hold,
        2 => OnUndecryptable::Reject,
        _ => OnUndecryptable::Deliver,
    };
    let action = match (pick >> 5) & 3 {
        0 => None,
        1 => Some(InboundAction::Tag),
        2 => Some(InboundAction::Hold),
        _ => Some(InboundAction::Reject),
    };
    if let Some(action) = action {
        let glob = "*@smime.example".to_string();
        cfg.rules.push(cachet::config::InboundRule {
            senders: vec![(glob.clone(), wildmatch::WildMatch::new(&glob))],
            require: if pick & 0x80 != 0 {
                InboundRequirement::ValidSignature
            } else {
                InboundRequirement::Encrypted
            },
            action,
        });
    }
    let trust = cachet::smime::Trust {
        anchors: &w.trust,
        known: &[],
    };
    let host = "gw.example.org";
    let rcpts = [
        "bob@smime.example".to_string(),
        "dave@smime.example".to_string(),
    ];
    let p = inbound::process_with(
        &cfg,
        keys,
        &trust,
        host,
        "a@b.example",
        &rcpts,
        message,
        w.now,
    );
    match p.verdict {
        Verdict::Deliver(copies) => {
            let mut served: Vec<&String> = copies.iter().flat_map(|c| &c.recipients).collect();
            served.sort();
            assert_eq!(
                served,
                rcpts.iter().collect::<Vec<_>>(),
                "each recipient once"
            );
            for c in &copies {
                check_inbound_copy(&c.message, host, cfg.verify);
            }
        }
        Verdict::Hold(_) => {}
        Verdict::Reject(f) => {
            let known = [
                cachet::reply::INBOUND_UNDECRYPTABLE,
                cachet::reply::INBOUND_TEMPORARY,
                cachet::reply::INBOUND_NOT_SIGNED,
                cachet::reply::INBOUND_NO_VALID_SIGNATURE,
                cachet::reply::INBOUND_NOT_ENCRYPTED,
            ];
            assert!(known.contains(&f.reply), "unexpected reply {}", f.reply);
        }
    }
}

/// One delivered copy: our field first (when `verify`), well formed, and the only one.
fn check_inbound_copy(message: &[u8], host: &str, verify: bool) {
    let ours = format!("Authentication-Results: {host}");
    if verify {
        assert!(
            message.starts_with(ours.as_bytes()),
            "our field comes first"
        );
        let end = (1..message.len())
            .find(|&i| message[i - 1] == b'\n' && !matches!(message[i], b' ' | b'\t'))
            .unwrap_or(message.len());
        let field = &message[..end];
        assert!(field.ends_with(b"\r\n"));
        for (i, line) in field[..field.len() - 2].split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(
                i == 0 || line.starts_with(b"\t"),
                "unfolded line in our field"
            );
            assert!(
                line.iter()
                    .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
            );
        }
        // Without ours, nothing claims our authserv-id.
        assert!(cachet::smime::authres::strip(&message[end..], host).is_none());
    } else {
        assert!(cachet::smime::authres::strip(message, host).is_none());
    }
}

fn inbound_keys() -> &'static cachet::pipeline::inbound::OrgKeys {
    static KEYS: OnceLock<cachet::pipeline::inbound::OrgKeys> = OnceLock::new();
    KEYS.get_or_init(|| cachet::pipeline::inbound::OrgKeys::new(open_world().keys.clone()))
}

fn inbound_config() -> cachet::config::InboundConfig {
    use cachet::config::*;
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
            max_connections: 1,
            helo_name: "gw.example.org".into(),
            pipelining: true,
        },
        decrypt: true,
        verify: true,
        harvest: false,
        on_undecryptable: OnUndecryptable::Deliver,
        subject_tags: false,
        rules: Vec::new(),
    }
}
