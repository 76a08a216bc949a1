//! The `Authentication-Results:` header field (RFC 8601) with the `smime` method (RFC 7281).
//!
//! ```text
//! Authentication-Results: mx.example.org;
//!         smime=pass
//!           body.smime-identifier=alice@example.com
//!           body.smime-serial=1A2B
//!           body.smime-issuer="CN=Example CA" (sha256:9f86...)
//! ```
//!
//! One `smime=` resinfo per signature (outermost layer first), `permerror` for a layer that
//! could not be read at all, or `smime=none` for a message without any. Properties are those
//! RFC 7281 §3 registers for ptype `body`: `smime-identifier`
//! (the signer's address), `smime-serial` and `smime-issuer` (the signer certificate);
//! the certificate's SHA-256 fingerprint and the reason for anything but a clean `pass` go in
//! comments, which RFC 8601 §2.2 lets readers ignore. Text from the message (addresses, DN)
//! is reduced to printable ASCII and quoted, so a hostile certificate cannot inject header
//! syntax or line breaks.
//!
//! [`strip`] removes every incoming `Authentication-Results` field that claims our authserv-id
//! (RFC 8601 §5): only we may speak for it, and downstream filters trust it.

use super::open::{Layer, Opened};
use super::verify::Signer;
use crate::message::header_len;

pub use super::opening::AuthResult;

/// The whole header field (name, folded value, CRLF) for `opened`, as `authserv_id` says it.
/// A layer that could not even be classified (broken MIME or CMS, too deep) counts as a
/// signature that cannot be processed: `permerror` with the reason.
pub fn header(authserv_id: &str, opened: &Opened) -> String {
    let mut out = format!("Authentication-Results: {}", printable(authserv_id));
    let mut any = false;
    for layer in &opened.layers {
        match layer {
            Layer::Signed { signers, .. } => {
                for s in signers {
                    any = true;
                    signer(&mut out, s);
                }
            }
            Layer::Broken(e) => {
                any = true;
                out.push_str(&format!(
                    ";\r\n\tsmime={} ({})",
                    e.auth_result().as_str(),
                    comment(&e.to_string())
                ));
            }
            Layer::Encrypted { .. } => {}
        }
    }
    if !any {
        out.push_str("; smime=none");
    }
    out.push_str("\r\n");
    out
}

fn signer(out: &mut String, s: &Signer) {
    out.push_str(";\r\n\tsmime=");
    out.push_str(s.result.as_str());
    if !s.reason.is_empty() {
        out.push_str(&format!(" ({})", comment(&s.reason)));
    }
    if let Some(a) = &s.address {
        out.push_str(&format!("\r\n\t  body.smime-identifier={}", value(a)));
    }
    if let Some(serial) = &s.serial {
        out.push_str(&format!("\r\n\t  body.smime-serial={}", value(serial)));
    }
    if let Some(issuer) = &s.issuer {
        out.push_str(&format!("\r\n\t  body.smime-issuer={}", value(issuer)));
    }
    if let Some(fp) = &s.fingerprint {
        out.push_str(&format!(" (sha256:{fp})"));
    }
}

/// Printable ASCII only (no controls, no 8-bit), so nothing can break the field.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// A comment's text (RFC 5322 ctext): parentheses and backslashes escaped.
fn comment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in printable(s).chars() {
        if matches!(c, '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A pvalue (RFC 8601 §2.2): an address or token as it is, anything else quoted.
fn value(s: &str) -> String {
    let s = printable(s);
    let token_or_addr = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.@".contains(c));
    if token_or_addr {
        return s;
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The authserv-id an Authentication-Results value starts with (RFC 8601 §2.2), after any
/// CFWS; comments may nest.
fn authserv_id(value: &[u8]) -> String {
    let mut i = 0;
    let mut depth = 0usize;
    while i < value.len() {
        match value[i] {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let start = i.min(value.len());
    let end = value[start..]
        .iter()
        .position(|&b| matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n' | b'('))
        .map_or(value.len(), |p| start + p);
    String::from_utf8_lossy(&value[start..end]).into_owned()
}

/// `message` without the `Authentication-Results` fields whose authserv-id is ours
/// (ASCII case-insensitive), or `None` when there is none.
pub fn strip(message: &[u8], our_authserv_id: &str) -> Option<Vec<u8>> {
    let end = header_len(message);
    let head = &message[..end];
    let mut out = Vec::with_capacity(message.len());
    let mut changed = false;
    let mut i = 0;
    while i < head.len() {
        // One field with its continuation lines.
        let mut j = i;
        loop {
            j = memchr::memchr(b'\n', &head[j..]).map_or(head.len(), |k| j + k + 1);
            if j >= head.len() || !matches!(head[j], b' ' | b'\t') {
                break;
            }
        }
        let field = &head[i..j];
        i = j;
        if let Some(colon) = memchr::memchr(b':', field) {
            let name = String::from_utf8_lossy(&field[..colon]);
            if name.trim().eq_ignore_ascii_case("authentication-results")
                && authserv_id(&field[colon + 1..]).eq_ignore_ascii_case(our_authserv_id)
            {
                changed = true;
                continue;
            }
        }
        out.extend_from_slice(field);
    }
    if !changed {
        return None;
    }
    out.extend_from_slice(&message[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_removes_only_fields_claiming_our_id() {
        let msg = b"Received: x\r\n\
Authentication-Results: gw.example.org; smime=pass\r\n\
Authentication-Results: (forged) GW.Example.Org;\r\n\tsmime=pass\r\n\
Authentication-Results: mx.other.example; dkim=pass\r\n\
Authentication-Results: gw.example.org.evil; spf=pass\r\n\
Subject: hi\r\n\r\nAuthentication-Results: gw.example.org; body stays\r\n";
        let out = strip(msg, "gw.example.org").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "Received: x\r\n\
Authentication-Results: mx.other.example; dkim=pass\r\n\
Authentication-Results: gw.example.org.evil; spf=pass\r\n\
Subject: hi\r\n\r\nAuthentication-Results: gw.example.org; body stays\r\n"
        );
        assert!(strip(b"Subject: x\r\n\r\nbody", "gw.example.org").is_none());
    }

    #[test]
    fn authserv_id_skips_nested_comments() {
        assert_eq!(authserv_id(b" (a (b) c) host.example; x"), "host.example");
        assert_eq!(authserv_id(b"host.example;"), "host.example");
        assert_eq!(authserv_id(b"   "), "");
    }

    #[test]
    fn values_and_comments_cannot_break_the_field() {
        assert_eq!(value("alice@example.org"), "alice@example.org");
        assert_eq!(value("CN=A \"B\", O=C"), "\"CN=A \\\"B\\\", O=C\"");
        assert_eq!(value("x\r\nInjected: 1"), "\"x??Injected: 1\"");
        assert_eq!(comment("a (b) \\ c\r\n"), "a \\(b\\) \\\\ c??");
    }

    #[test]
    fn result_names_are_rfc_7281s() {
        let all = [
            (AuthResult::None, "none"),
            (AuthResult::Pass, "pass"),
            (AuthResult::Fail, "fail"),
            (AuthResult::Policy, "policy"),
            (AuthResult::Neutral, "neutral"),
            (AuthResult::TempError, "temperror"),
            (AuthResult::PermError, "permerror"),
        ];
        for (r, s) in all {
            assert_eq!(r.to_string(), s);
        }
    }
}
