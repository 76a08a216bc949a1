//! Who signs and who gets which encrypted copy, read from the message header.
//!
//! - [`sender_address`]: the first From: address picks the signing key (issue 3: that is what the
//!   recipients' clients compare with the certificate; RFC 8550 §3).
//! - [`bcc_safe_groups`]: every RecipientInfo names its recipient's certificate, so a Bcc
//!   recipient must never share a copy with To/Cc recipients. Envelope recipients named in To or
//!   Cc share one copy; every other (blind) recipient gets a copy of their own. Each copy is a
//!   separate [`super::encrypt`] call, hence its own content key.
//!
//! Address parsing follows RFC 5322 §3.4 closely enough for routing: display names, quoted
//! strings, comments, angle addresses and groups; no decoding of encoded words is needed since
//! those only occur in display names.

use crate::store::normalize_address;

/// Values of every header field named `name` (case-insensitive), unfolded.
fn header_values(message: &[u8], name: &str) -> Vec<String> {
    let head_end = memchr::memmem::find(message, b"\r\n\r\n")
        .or_else(|| memchr::memmem::find(message, b"\n\n"))
        .unwrap_or(message.len());
    let head = String::from_utf8_lossy(&message[..head_end]);
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some(c) = current.as_mut() {
                c.push(' ');
                c.push_str(line.trim());
            }
            continue;
        }
        if let Some(c) = current.take() {
            out.push(c);
        }
        if let Some((n, v)) = line.split_once(':')
            && n.trim().eq_ignore_ascii_case(name)
        {
            current = Some(v.trim().to_string());
        }
    }
    out.extend(current);
    out
}

/// Addresses in an RFC 5322 address-list (§3.4), normalised (domain lower-cased).
pub fn parse_address_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = String::new();
    let (mut quoted, mut comment, mut angle) = (false, 0usize, false);
    let mut chars = value.chars();
    let mut flush = |token: &mut String| {
        let t = token.trim();
        if t.contains('@') {
            out.push(normalize_address(t));
        }
        token.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted || comment > 0 => {
                chars.next();
            }
            '"' if comment == 0 => quoted = !quoted,
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => comment -= 1,
            _ if quoted || comment > 0 => {}
            '<' => {
                // An angle address replaces whatever display name came before it.
                token.clear();
                angle = true;
            }
            '>' if angle => {
                angle = false;
                flush(&mut token);
            }
            // Group: "name: a@x, b@y;" -- the display name before ':' is not an address.
            ':' if !angle => token.clear(),
            ',' | ';' if !angle => flush(&mut token),
            c if c.is_whitespace() && !angle => {
                if !token.is_empty() && !token.ends_with(' ') {
                    token.push(' ');
                }
            }
            c => token.push(c),
        }
    }
    flush(&mut token);
    // A bare "a@x b@y" without commas is malformed; keep only tokens without spaces.
    out.retain(|a| !a.contains(' '));
    out
}

/// All addresses in every header field called `field` (e.g. "To", "Cc").
pub fn header_addresses(message: &[u8], field: &str) -> Vec<String> {
    header_values(message, field)
        .iter()
        .flat_map(|v| parse_address_list(v))
        .collect()
}

/// The first From: address: the identity that signs.
pub fn sender_address(message: &[u8]) -> Option<String> {
    header_addresses(message, "From").into_iter().next()
}

/// Split the envelope recipients into copies with no Bcc leak: those named in To/Cc together
/// (first group, if any), then one group per recipient not named there. Order is kept.
pub fn bcc_safe_groups(message: &[u8], envelope: &[String]) -> Vec<Vec<String>> {
    let mut visible = header_addresses(message, "To");
    visible.extend(header_addresses(message, "Cc"));
    let mut shared = Vec::new();
    let mut blind = Vec::new();
    for rcpt in envelope {
        if visible.contains(&normalize_address(rcpt)) {
            shared.push(rcpt.clone());
        } else {
            blind.push(vec![rcpt.clone()]);
        }
    }
    let mut groups = Vec::with_capacity(blind.len() + 1);
    if !shared.is_empty() {
        groups.push(shared);
    }
    groups.extend(blind);
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_in_their_rfc5322_shapes() {
        let cases: &[(&str, &[&str])] = &[
            ("bob@x.org", &["bob@x.org"]),
            (
                "Bob <bob@X.ORG>, carol@y.org",
                &["bob@x.org", "carol@y.org"],
            ),
            ("\"Doe, John\" <john@z.org>", &["john@z.org"]),
            ("\"a@b <fake@evil>\" <real@z.org>", &["real@z.org"]),
            ("john@z.org (John, the <boss@evil>)", &["john@z.org"]),
            (
                "friends: a@x.org, B <b@y.org>;, c@z.org",
                &["a@x.org", "b@y.org", "c@z.org"],
            ),
            ("undisclosed-recipients:;", &[]),
            ("", &[]),
        ];
        for (input, want) in cases {
            assert_eq!(parse_address_list(input), *want, "{input}");
        }
    }

    #[test]
    fn sender_is_first_from_address_folded_headers_unfolded() {
        let msg = b"Subject: x\r\nFrom: \"Alice\"\r\n <Alice@SMIME.example>\r\nTo: b@x\r\n\r\nFrom: body@not.me\r\n";
        assert_eq!(sender_address(msg).as_deref(), Some("Alice@smime.example"));
    }

    #[test]
    fn bcc_recipients_get_their_own_copy() {
        let msg = b"From: a@x.org\r\nTo: Bob <bob@x.org>\r\nCc: carol@Y.org\r\n\r\nhi\r\n";
        let env: Vec<String> = ["dave@z.org", "bob@x.org", "carol@y.org", "erin@z.org"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            bcc_safe_groups(msg, &env),
            vec![
                vec!["bob@x.org".to_string(), "carol@y.org".to_string()],
                vec!["dave@z.org".to_string()],
                vec!["erin@z.org".to_string()],
            ]
        );
        let only_bcc = bcc_safe_groups(b"To: list@x.org\r\n\r\n", &["a@b.c".to_string()]);
        assert_eq!(only_bcc, vec![vec!["a@b.c".to_string()]]);
    }
}
