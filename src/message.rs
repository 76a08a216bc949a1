//! Where a message's header section ends (RFC 5322 §2.1: at the first empty line), for the
//! whole gateway: the pipeline's header reads, the inbound Authentication-Results and From:
//! checks, the MIME splitter, DSNs and `cachet queue show` all ask this one function. Input is
//! CRLF (what the session spools); the inbound opener's split of decrypted content, which also
//! accepts bare LF from other clients, is its own.

/// The header section's end and the body's start: `(head_end, body_start)`. `head_end` is just
/// past the CRLF of the last field; `body_start` just past the empty line. A message that
/// starts with the empty line has no header section (`(0, 2)`); without an empty line there is
/// no body, and `None` lets the caller decide what the lone block is.
pub fn split(message: &[u8]) -> Option<(usize, usize)> {
    if message.starts_with(b"\r\n") {
        return Some((0, 2));
    }
    memchr::memmem::find(message, b"\r\n\r\n").map(|i| (i + 2, i + 4))
}

/// Offset of the body: just past the empty line, or the whole message when there is none.
pub fn header_len(message: &[u8]) -> usize {
    split(message).map_or(message.len(), |(_, body)| body)
}

/// The header section, fields with their final CRLF and without the empty line (the whole
/// message when there is no empty line).
pub fn head(message: &[u8]) -> &[u8] {
    &message[..split(message).map_or(message.len(), |(head, _)| head)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_first_empty_line() {
        let m = b"Subject: a\r\nTo: b\r\n\r\nbody\r\n\r\nmore\r\n";
        assert_eq!(split(m), Some((19, 21)));
        assert_eq!(head(m), b"Subject: a\r\nTo: b\r\n");
        assert_eq!(&m[header_len(m)..], b"body\r\n\r\nmore\r\n");
        // No header section at all.
        assert_eq!(split(b"\r\nbody"), Some((0, 2)));
        assert_eq!(head(b"\r\nbody"), b"");
        assert_eq!(header_len(b"\r\nbody"), 2);
        // No empty line: all header.
        assert_eq!(split(b"Subject: a\r\n"), None);
        assert_eq!(header_len(b"Subject: a\r\n"), 12);
        assert_eq!(head(b"Subject: a\r\n"), b"Subject: a\r\n");
    }
}
