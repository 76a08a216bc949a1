//! Strict DATA framing (RFC 5321 §4.1.1.4, §4.5.2): only `<CRLF>.<CRLF>` ends the message, a bare
//! CR or bare LF anywhere is an error (the SMTP-smuggling defence of Postfix's
//! `smtpd_forbid_bare_newline`), and dot-unstuffing happens exactly once.
//! A pure state machine over byte slices, so it is tested without sockets.

use memchr::memchr2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (also the start of the message).
    LineStart,
    /// Inside a line.
    Mid,
    /// Saw `\r` (held back), waiting for `\n`.
    Cr,
    /// A line began with `.` (held back).
    Dot,
    /// Saw `.\r` at the start of a line: `\n` ends the message.
    DotCr,
}

/// What a call to [`DataReader::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// All input consumed; the message goes on.
    More,
    /// The end-of-data line was found; `consumed` bytes of the input belonged to the message
    /// and its terminator (what follows is the next pipelined command).
    End { consumed: usize },
    /// A bare CR or LF: the session must refuse the message and close.
    BareNewline,
}

pub struct DataReader {
    state: State,
}

impl Default for DataReader {
    fn default() -> Self {
        Self::new()
    }
}

impl DataReader {
    pub fn new() -> Self {
        DataReader {
            state: State::LineStart,
        }
    }

    /// Consumes `input`, appending unstuffed message bytes (CRLF line ends kept) to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::LineStart => {
                    if input[i] == b'.' {
                        self.state = State::Dot;
                        i += 1;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        self.state = State::DotCr;
                        i += 1;
                    } else {
                        // A stuffed dot: drop it, keep the rest of the line.
                        self.state = State::Mid;
                    }
                }
                State::DotCr => {
                    return if input[i] == b'\n' {
                        Feed::End { consumed: i + 1 }
                    } else {
                        Feed::BareNewline
                    };
                }
                State::Cr => {
                    if input[i] != b'\n' {
                        return Feed::BareNewline;
                    }
                    out.extend_from_slice(b"\r\n");
                    self.state = State::LineStart;
                    i += 1;
                }
                State::Mid => match memchr2(b'\r', b'\n', &input[i..]) {
                    None => {
                        out.extend_from_slice(&input[i..]);
                        i = input.len();
                    }
                    Some(off) => {
                        out.extend_from_slice(&input[i..i + off]);
                        if input[i + off] == b'\n' {
                            return Feed::BareNewline;
                        }
                        self.state = State::Cr;
                        i += off + 1;
                    }
                },
            }
        }
        Feed::More
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of every size from 1 up, checking the result never depends on
    /// where TCP happened to split the stream.
    fn run(input: &[u8]) -> (Vec<u8>, Feed) {
        let mut reference = None;
        for chunk in 1..=input.len().max(1) {
            let mut r = DataReader::new();
            let mut out = Vec::new();
            let mut result = Feed::More;
            let mut offset = 0;
            for piece in input.chunks(chunk) {
                match r.feed(piece, &mut out) {
                    Feed::More => offset += piece.len(),
                    Feed::End { consumed } => {
                        result = Feed::End {
                            consumed: offset + consumed,
                        };
                        break;
                    }
                    Feed::BareNewline => {
                        result = Feed::BareNewline;
                        break;
                    }
                }
            }
            let got = (out, result);
            match &reference {
                None => reference = Some(got),
                Some(r) if result == Feed::BareNewline => {
                    assert_eq!(r.1, Feed::BareNewline, "chunk {chunk}")
                }
                Some(r) => assert_eq!(r, &got, "chunk size {chunk} changed the result"),
            }
        }
        reference.unwrap()
    }

    #[test]
    fn plain_message_ends_at_crlf_dot_crlf() {
        let (out, end) = run(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(end, Feed::End { consumed: 23 });
    }

    #[test]
    fn empty_message() {
        assert_eq!(run(b".\r\n"), (Vec::new(), Feed::End { consumed: 3 }));
    }

    #[test]
    fn dot_unstuffing_happens_once() {
        let (out, _) = run(b"..\r\n...x\r\n.a\r\n.\r\n");
        assert_eq!(out, b".\r\n..x\r\na\r\n");
    }

    #[test]
    fn smuggling_variants_are_refused() {
        for bad in [
            &b"a\r\n\n.\r\nMAIL FROM:<x>\r\n"[..],
            b"a\n.\n",
            b"a\r\n.\n",
            b"a\n.\r\n",
            b"a\r.\r\n",
            b"a\r\n.\r\r\n",
            b"a\rb\r\n.\r\n",
        ] {
            assert_eq!(
                run(bad).1,
                Feed::BareNewline,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unterminated_message_wants_more() {
        let (out, end) = run(b"line\r\n.\r");
        assert_eq!((out.as_slice(), end), (&b"line\r\n"[..], Feed::More));
    }
}
