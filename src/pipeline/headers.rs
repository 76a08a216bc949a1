//! What the pipeline needs from a message's header, read once per attempt with `mail-parser`:
//! the From: address (it picks the signing key: recipients' clients compare it with the
//! certificate), the To:/Cc: addresses (anyone else is a Bcc), Message-ID (audit log), and the
//! per-message triggers. [`strip_triggers`] removes the trigger header and subject tag before
//! anything is signed, judging the tag on the same decoded Subject text that raised it.

pub use crate::message::header_len;
use mail_parser::{HeaderValue, MessageParser};

#[derive(Debug, Default, Clone)]
pub struct Headers {
    /// The author's address, lowercased: only when the message has exactly one From: address
    /// (a message with several authors is never signed with any of their keys).
    pub from: Option<String>,
    /// Every address in every From: field, lowercased.
    pub authors: Vec<String>,
    /// Every To: and Cc: address, lowercased.
    pub visible: Vec<String>,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    /// The configured trigger header is present with value "yes" (or "true", "1").
    pub encrypt_header: bool,
}

fn addresses(v: Option<&mail_parser::Address>) -> Vec<String> {
    v.map(|a| {
        a.iter()
            .filter_map(|x| x.address())
            .map(|s| s.to_ascii_lowercase())
            .collect()
    })
    .unwrap_or_default()
}

pub fn read(message: &[u8], encrypt_header: Option<&str>) -> Headers {
    let head = &message[..header_len(message)];
    let Some(m) = MessageParser::default().parse_headers(head) else {
        return Headers::default();
    };
    let mut visible = addresses(m.to());
    visible.extend(addresses(m.cc()));
    let trigger = encrypt_header.is_some_and(|name| {
        m.headers().iter().any(|h| {
            h.name().eq_ignore_ascii_case(name)
                && match &h.value {
                    HeaderValue::Text(t) => {
                        matches!(t.trim().to_ascii_lowercase().as_str(), "yes" | "true" | "1")
                    }
                    _ => false,
                }
        })
    });
    let authors = authors_of(&m);
    Headers {
        from: match authors.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        },
        authors,
        visible,
        message_id: m.message_id().map(str::to_string),
        subject: m.subject().map(str::to_string),
        encrypt_header: trigger,
    }
}

/// Every address of every From: field (a second From: field counts: clients differ in which
/// one they show).
fn authors_of(m: &mail_parser::Message) -> Vec<String> {
    let mut out = Vec::new();
    for h in m.headers() {
        if matches!(h.name, mail_parser::HeaderName::From)
            && let HeaderValue::Address(a) = &h.value
        {
            out.extend(addresses(Some(a)));
        }
    }
    out
}

/// The From: addresses of a message head (the session's end-of-DATA check).
pub fn authors(message: &[u8]) -> Vec<String> {
    let head = &message[..header_len(message)];
    MessageParser::default()
        .parse_headers(head)
        .map(|m| authors_of(&m))
        .unwrap_or_default()
}

/// True when some header field `name` has exactly `value` (trimmed; ASCII case-insensitive).
pub fn has_field(message: &[u8], name: &str, value: &str) -> bool {
    let head = &message[..header_len(message)];
    fields(head).any(|field| {
        let Some(colon) = memchr::memchr(b':', field) else {
            return false;
        };
        let n = std::str::from_utf8(&field[..colon]).unwrap_or("");
        let v = String::from_utf8_lossy(&field[colon + 1..]);
        // Unfold (RFC 5322 §2.2.3) before comparing.
        let v: String = v.split(['\r', '\n']).collect::<Vec<_>>().join("");
        n.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
    })
}

/// The raw header fields of `head`, each with its continuation lines.
fn fields(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= head.len() {
            return None;
        }
        let mut j = i;
        loop {
            let nl = memchr::memchr(b'\n', &head[j..])
                .map(|k| j + k + 1)
                .unwrap_or(head.len());
            j = nl;
            if j >= head.len() || !(head[j] == b' ' || head[j] == b'\t') {
                break;
            }
        }
        let field = &head[i..j];
        i = j;
        Some(field)
    })
}

/// What [`rewrite_fields`] does with one header field.
enum Edit {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

/// Rewrites the header fields of `message` one by one (each with its continuation lines; `name`
/// trimmed, `colon` its offset in the field) and leaves the body untouched. `None` when nothing
/// changed (no copy made).
fn rewrite_fields(
    message: &[u8],
    mut edit: impl FnMut(&str, &[u8], Option<usize>) -> Edit,
) -> Option<Vec<u8>> {
    let end = header_len(message);
    let mut out = Vec::with_capacity(message.len());
    let mut changed = false;
    for field in fields(&message[..end]) {
        let colon = memchr::memchr(b':', field);
        let name = std::str::from_utf8(&field[..colon.unwrap_or(0)])
            .unwrap_or("")
            .trim();
        match edit(name, field, colon) {
            Edit::Keep => out.extend_from_slice(field),
            Edit::Drop => changed = true,
            Edit::Replace(new) => {
                out.extend_from_slice(&new);
                changed = true;
            }
        }
    }
    if !changed {
        return None;
    }
    out.extend_from_slice(&message[end..]);
    Some(out)
}

/// Removes every header field named in `names` (a submitter's tenant header). `None` when
/// there is nothing to remove (no copy made).
pub fn remove_fields(message: &[u8], names: &[String]) -> Option<Vec<u8>> {
    if names.is_empty() {
        return None;
    }
    rewrite_fields(message, |name, _, colon| {
        if colon.is_some() && names.iter().any(|x| x.eq_ignore_ascii_case(name)) {
            Edit::Drop
        } else {
            Edit::Keep
        }
    })
}

/// True when `subject` (the decoded text [`read`] returns) carries `tag`, case-insensitive
/// (ASCII). [`strip_triggers`] removes it with the same test on the same decoded form.
pub fn has_tag(subject: Option<&str>, tag: Option<&str>) -> bool {
    match (subject, tag) {
        (Some(s), Some(t)) => without_tag(s, t).is_some(),
        _ => false,
    }
}

/// `subject` without the first `tag` (ASCII case-insensitive) and one space after it, or
/// `None` when the tag is not there. Byte offsets survive `to_ascii_lowercase`, so the match
/// in the lowered copy cuts the original at the same char boundaries.
fn without_tag(subject: &str, tag: &str) -> Option<String> {
    if tag.is_empty() {
        return None;
    }
    let at = subject
        .to_ascii_lowercase()
        .find(&tag.to_ascii_lowercase())?;
    let mut after = at + tag.len();
    if subject[after..].starts_with(' ') {
        after += 1;
    }
    Some(format!("{}{}", &subject[..at], &subject[after..]))
}

/// The decoded text of one raw `Subject:` field (RFC 2047 encoded-words decoded, folding
/// removed), read by the same parser as [`read`].
fn decoded_subject(field: &[u8]) -> Option<String> {
    let mut block = field.to_vec();
    block.extend_from_slice(b"\r\n");
    MessageParser::default()
        .parse_headers(&block)?
        .subject()
        .map(str::to_string)
}

/// One raw Subject field without `tag`, or `None` when its decoded text does not carry it:
/// detection and removal look at the same decoded text, so an encoded tag
/// (`=?UTF-8?B?W3NlY3VyZV0gaGk=?=`) cannot raise encryption and still be relayed. A field
/// without encoded-words that holds the tag verbatim loses just those bytes (its folding is
/// kept); any other is rewritten from the decoded text by [`subject_field`].
fn strip_subject(field: &[u8], name_end: usize, tag: &str) -> Option<Vec<u8>> {
    let decoded = decoded_subject(field)?;
    let stripped = without_tag(&decoded, tag)?;
    let value = &field[name_end + 1..];
    if memchr::memmem::find(value, b"=?").is_none()
        && let Some(pos) = memchr::memmem::find(
            &value.to_ascii_lowercase(),
            tag.to_ascii_lowercase().as_bytes(),
        )
    {
        let at = name_end + 1 + pos;
        let mut after = at + tag.len();
        if field.get(after) == Some(&b' ') {
            after += 1;
        }
        let mut out = field[..at].to_vec();
        out.extend_from_slice(&field[after..]);
        return Some(out);
    }
    Some(subject_field(&field[..name_end], stripped.trim()))
}

/// `name: text` CRLF, folded below 78 columns (RFC 5322 §2.2.3). Printable ASCII that cannot
/// be mistaken for an encoded-word stays as it is; anything else becomes UTF-8 "B"
/// encoded-words of at most 36 octets each (60 characters, RFC 2047 §2 allows 75), split on
/// character boundaries, one per line (white space between encoded-words is not part of the
/// text, RFC 2047 §6.2).
fn subject_field(name: &[u8], text: &str) -> Vec<u8> {
    use base64::Engine;
    let mut out = name.to_vec();
    out.push(b':');
    let plain = !text.contains("=?")
        && text
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        && text.split(' ').all(|w| w.len() <= 70);
    if plain {
        let mut column = out.len();
        for (i, word) in text.split(' ').enumerate() {
            if i > 0 && column + 1 + word.len() > 78 {
                out.extend_from_slice(b"\r\n");
                column = 0;
            }
            out.push(b' ');
            out.extend_from_slice(word.as_bytes());
            column += 1 + word.len();
        }
    } else {
        let mut rest = text;
        let mut first = true;
        while !rest.is_empty() {
            let mut cut = rest.len().min(36);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (chunk, tail) = rest.split_at(cut);
            if !first {
                out.extend_from_slice(b"\r\n");
            }
            first = false;
            out.extend_from_slice(b" =?UTF-8?B?");
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(chunk)
                    .as_bytes(),
            );
            out.extend_from_slice(b"?=");
            rest = tail;
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Removes header fields named `header` and the first `tag` in each Subject: that carries it
/// (see [`strip_subject`]). Returns `None` when there is nothing to change (no copy made).
pub fn strip_triggers(message: &[u8], tag: Option<&str>, header: Option<&str>) -> Option<Vec<u8>> {
    rewrite_fields(message, |name, field, colon| {
        if header.is_some_and(|h| name.eq_ignore_ascii_case(h)) {
            Edit::Drop
        } else if let (true, Some(tag), Some(colon)) =
            (name.eq_ignore_ascii_case("subject"), tag, colon)
            && let Some(new) = strip_subject(field, colon, tag)
        {
            Edit::Replace(new)
        } else {
            Edit::Keep
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: from x\r\n\tby y\r\nFrom: \"Alice L.\" <Alice@Example.ORG>\r\nTo: bob@partner.example, \"C\" <carol@x.example>\r\nCc: <dave@y.example>\r\nSubject: [secure] quarterly\r\n numbers\r\nX-Cachet-Encrypt: yes\r\nMessage-ID: <m1@example.org>\r\n\r\nbody\r\nX-Cachet-Encrypt: yes\r\n";

    #[test]
    fn reads_addresses_ids_and_triggers() {
        let h = read(MSG, Some("x-cachet-encrypt"));
        assert_eq!(h.from.as_deref(), Some("alice@example.org"));
        assert_eq!(
            h.visible,
            ["bob@partner.example", "carol@x.example", "dave@y.example"]
        );
        assert_eq!(h.message_id.as_deref(), Some("m1@example.org"));
        assert!(h.encrypt_header);
        assert!(has_tag(h.subject.as_deref(), Some("[SECURE]")));
        assert!(!read(MSG, Some("X-Other")).encrypt_header);
    }

    #[test]
    fn several_authors_have_no_single_from() {
        let two_fields =
            b"From: a@example.org\r\nFrom: ceo@example.org\r\nTo: x@y.example\r\n\r\nhi\r\n";
        let h = read(two_fields, None);
        assert_eq!(h.authors, ["a@example.org", "ceo@example.org"]);
        assert_eq!(h.from, None);
        let list = b"From: a@example.org, CEO <Ceo@Example.org>\r\n\r\nhi\r\n";
        assert_eq!(authors(list), ["a@example.org", "ceo@example.org"]);
        assert_eq!(read(list, None).from, None);
        assert_eq!(read(MSG, None).from.as_deref(), Some("alice@example.org"));
    }

    #[test]
    fn tenant_header_is_found_and_removed() {
        let m = b"X-Tenant: abc\r\nX-MS-Exchange-CrossTenant-Id:\r\n  1234-ABCD\r\nSubject: s\r\n\r\nX-Tenant: body\r\n";
        assert!(has_field(m, "x-ms-exchange-crosstenant-id", "1234-abcd"));
        assert!(!has_field(m, "X-MS-Exchange-CrossTenant-Id", "1234"));
        assert!(!has_field(m, "X-Other", "abc"));
        let out = remove_fields(
            m,
            &["x-ms-exchange-crosstenant-id".into(), "X-Tenant".into()],
        )
        .unwrap();
        assert_eq!(out, b"Subject: s\r\n\r\nX-Tenant: body\r\n");
        assert!(remove_fields(m, &["X-None".into()]).is_none());
    }

    #[test]
    fn strips_tag_and_header_but_not_the_body() {
        let out = strip_triggers(MSG, Some("[secure]"), Some("X-Cachet-Encrypt")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Subject: quarterly\r\n numbers\r\n"),
            "{text}"
        );
        assert!(
            !text[..text.find("\r\n\r\n").unwrap()].contains("X-Cachet-Encrypt"),
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\nbody\r\nX-Cachet-Encrypt: yes\r\n"),
            "the body is never touched"
        );
        assert!(strip_triggers(MSG, Some("[other]"), Some("X-None")).is_none());
    }

    fn subject_after_strip(subject_field: &str) -> String {
        let msg =
            format!("From: a@example.org\r\n{subject_field}To: b@example.org\r\n\r\nbody\r\n");
        let tag = Some("[Secure]");
        let h = read(msg.as_bytes(), None);
        assert!(
            has_tag(h.subject.as_deref(), tag),
            "{subject_field:?} is detected"
        );
        let out = strip_triggers(msg.as_bytes(), tag, None).expect("changed");
        let after = read(&out, None);
        assert!(
            !has_tag(after.subject.as_deref(), tag),
            "{subject_field:?} is stripped"
        );
        assert!(out.ends_with(b"To: b@example.org\r\n\r\nbody\r\n"));
        for line in out.split(|&b| b == b'\n') {
            assert!(line.len() <= 78, "{:?}", String::from_utf8_lossy(line));
        }
        after.subject.unwrap_or_default()
    }

    #[test]
    fn detects_and_strips_the_tag_in_the_same_decoded_form() {
        let table: &[(&str, &str)] = &[
            ("Subject: [secure] hello\r\n", "hello"),
            ("Subject: =?UTF-8?B?W3NlY3VyZV0gaGVsbG8=?=\r\n", "hello"),
            ("Subject: =?utf-8?q?=5BSECURE=5D_hello?=\r\n", "hello"),
            (
                "Subject: =?UTF-8?B?W3NlY3VyZV0gR3LDvMOfZQ==?=\r\n",
                "Gr\u{fc}\u{df}e",
            ),
            (
                "Subject: =?ISO-8859-1?Q?Gr=FC=DFe?= [secure]\r\n",
                "Gr\u{fc}\u{df}e",
            ),
            (
                "Subject: =?UTF-8?Q?quarterly?=\r\n =?UTF-8?Q?_numbers_=5Bsecure=5D?=\r\n",
                "quarterly numbers",
            ),
            ("Subject: [Secure]\r\n\tfolded\r\n", "folded"),
        ];
        for (field, expected) in table {
            assert_eq!(subject_after_strip(field), *expected, "{field:?}");
        }
        // A long non-ASCII subject is re-encoded in encoded-words that fit the line limit.
        let long = "\u{fc}ber ".repeat(30);
        let field = format!(
            "Subject: =?UTF-8?B?{}?=\r\n",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("[secure] {long}")
            )
        );
        assert_eq!(subject_after_strip(&field), long.trim());
    }

    #[test]
    fn a_subject_without_the_tag_is_left_alone() {
        let msg = b"Subject: =?UTF-8?B?aGVsbG8=?=\r\n\r\nbody [secure]\r\n";
        assert!(!has_tag(
            read(msg, None).subject.as_deref(),
            Some("[secure]")
        ));
        assert!(strip_triggers(msg, Some("[secure]"), None).is_none());
    }
}
