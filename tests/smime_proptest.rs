//! Property: any MIME message (8-bit text, long lines, nested multiparts, binary attachments,
//! a lone `.`, `From ` lines, bare LF, no final CRLF) comes out signed, canonical (7-bit, lines
//! <= 998) and verifying over exactly the bytes a client sees. Every case is verified in
//! process; a fixed subset also by `openssl cms -verify`.

mod smime_common;

use std::sync::atomic::{AtomicUsize, Ordering};

use cachet::smime::{self, SignOptions};
use proptest::prelude::*;
use smime_common::*;

/// Body lines drawn from the troublemakers RFC 8551 §3.1 warns about.
fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~]{0,60}".prop_map(|s| s.into_bytes()),
        "\\PC{0,40}".prop_map(|s| s.into_bytes()),
        Just(b".".to_vec()),
        Just(b"From the start".to_vec()),
        Just(b"trailing space   ".to_vec()),
        (990usize..1400).prop_map(|n| vec![b'x'; n]),
        proptest::collection::vec(any::<u8>(), 0..80),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(line(), 0..8),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(lines, crlf, final_eol)| {
            let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            let mut out = lines.join(eol);
            if final_eol {
                out.extend_from_slice(eol);
            }
            out
        })
}

#[derive(Debug, Clone)]
enum Part {
    Leaf {
        ctype: &'static str,
        cte: Option<&'static str>,
        body: Vec<u8>,
    },
    Multi {
        subtype: &'static str,
        parts: Vec<Part>,
    },
}

fn part() -> impl Strategy<Value = Part> {
    let leaf = (
        prop::sample::select(vec![
            "text/plain; charset=utf-8",
            "text/html",
            "application/octet-stream",
            "image/png",
        ]),
        prop::sample::select(vec![None, Some("7bit"), Some("8bit"), Some("binary")]),
        body(),
    )
        .prop_map(|(ctype, cte, body)| Part::Leaf { ctype, cte, body });
    leaf.prop_recursive(3, 12, 3, |inner| {
        (
            prop::sample::select(vec!["mixed", "alternative", "related"]),
            proptest::collection::vec(inner, 1..4),
        )
            .prop_map(|(subtype, parts)| Part::Multi { subtype, parts })
    })
}

fn render(p: &Part, depth: usize, out: &mut Vec<u8>) {
    match p {
        Part::Leaf { ctype, cte, body } => {
            out.extend_from_slice(format!("Content-Type: {ctype}\r\n").as_bytes());
            if let Some(cte) = cte {
                out.extend_from_slice(format!("Content-Transfer-Encoding: {cte}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
        }
        Part::Multi { subtype, parts } => {
            let b = format!("=_b{depth}_{}", parts.len());
            out.extend_from_slice(
                format!("Content-Type: multipart/{subtype}; boundary=\"{b}\"\r\n\r\n").as_bytes(),
            );
            for child in parts {
                out.extend_from_slice(format!("--{b}\r\n").as_bytes());
                render(child, depth + 1, out);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("--{b}--\r\n").as_bytes());
        }
    }
}

static OPENSSL_CHECKS: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_mime_message_signs_canonically_and_verifies(p in part(), from_line in any::<bool>()) {
        let mut msg = b"From: Alice <alice@smime.example>\r\nTo: bob@smime.example\r\nSubject: prop\r\nMIME-Version: 1.0\r\n".to_vec();
        render(&p, 0, &mut msg);
        if from_line {
            msg.extend_from_slice(b"\r\nFrom bob Sun Nov 29 2026\r\n");
        }
        let id = alice();
        let signed = smime::sign(&msg, &id, &SignOptions::default()).unwrap();
        // Canonical: 7-bit, no line over 998 octets, CRLF only.
        prop_assert!(signed.iter().all(|&b| b != 0 && b < 0x80));
        prop_assert!(signed.split(|&b| b == b'\n').all(|l| l.len() <= 999));
        prop_assert!(!signed.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        let (content, p7s) = split_signed(&signed);
        prop_assert!(!String::from_utf8_lossy(&content).contains("Subject: prop"));
        verify_detached_in_process(&content, &p7s, &read("alice.sign.crt"));
        // Spot-check with an independent engine on a subset of cases.
        if OPENSSL_CHECKS.fetch_add(1, Ordering::Relaxed) < 10 {
            prop_assert_eq!(&openssl_verify(&signed, None), &content);
            // Encrypting the signed message keeps the signed bytes intact.
            let enc = smime::encrypt(&signed, &[bob_recipient()], &Default::default()).unwrap();
            let inner = openssl_decrypt(&enc, &rfc9216().join("bob.encrypt.crt"), &rfc9216().join("bob.decrypt.key"));
            prop_assert_eq!(split_signed(&inner).0, content);
        }
    }
}
