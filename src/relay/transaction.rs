//! One transaction on an open connection: MAIL, RCPT for each recipient (one refused recipient
//! does not abort the others), DATA with the message dot-stuffed, each step under a deadline.
//!
//! When the next hop offers PIPELINING (RFC 2920), MAIL, the RCPTs and DATA go in one write and
//! their replies are read in order afterwards: two round trips per message instead of three plus
//! one per recipient. Every reply of the group is still checked (RFC 2920 §3.1): a refused MAIL or
//! no accepted recipient means no message, and a DATA that was accepted anyway gets a lone dot.
//! Without PIPELINING the same steps run one command at a time (a group of one).

use super::MailParams;
use super::outcome::{
    Broken, ConnError, Outcome, classify, classify_error, conn, describe_after, remote_reply,
};
use crate::reply::{self, Failure, Scope};
use mail_send::SmtpClient;
use smtp_proto::{Response, response::parser::ResponseReceiver};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Any stream a connection may run over (TCP, TLS), boxed so the pool holds one type.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
/// An open SMTP connection to the next hop.
pub(super) type Client = SmtpClient<Box<dyn Io>>;

/// An open connection and what its EHLO offered that a transaction uses.
pub(super) struct Conn {
    pub(super) client: Client,
    /// The next hop offered PIPELINING (RFC 2920).
    pub(super) pipelining: bool,
}

/// Most commands written before their replies are read: bounds what is in flight each way, so
/// neither side can block writing while the other does too (a copy with many recipients goes
/// in several groups).
const GROUP: usize = 32;

/// The replies to what was written, in order. Keeps bytes that arrived together with an earlier
/// reply (mail-send's `read` starts afresh each time and would drop them).
struct Replies {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    parser: ResponseReceiver,
}

impl Replies {
    fn new() -> Replies {
        Replies {
            buf: vec![0; 4096],
            start: 0,
            end: 0,
            parser: ResponseReceiver::default(),
        }
    }

    /// The next reply, which must come within `c.timeout`.
    async fn next(&mut self, c: &mut Client) -> Result<Response<String>, mail_send::Error> {
        let within = c.timeout;
        tokio::time::timeout(within, async {
            loop {
                if self.start < self.end {
                    let mut bytes = self.buf[self.start..self.end].iter();
                    let parsed = self.parser.parse(&mut bytes);
                    self.start = self.end - bytes.len();
                    match parsed {
                        Ok(r) => {
                            self.parser.reset();
                            return Ok(r);
                        }
                        Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                        Err(_) => return Err(mail_send::Error::UnparseableReply),
                    }
                }
                let n = c.stream.read(&mut self.buf).await?;
                if n == 0 {
                    // mail-send's word for a read that ended before a whole reply came.
                    return Err(mail_send::Error::UnparseableReply);
                }
                (self.start, self.end) = (0, n);
            }
        })
        .await
        .map_err(|_| mail_send::Error::Timeout)?
    }

    /// Bytes arrived that no command asked for: the connection is out of step.
    fn stray(&self) -> bool {
        self.start < self.end
    }
}

/// The command a reply answers, for the queue and the log.
fn command_name(i: usize, rcpts: usize) -> &'static str {
    match i {
        0 => "MAIL FROM",
        i if i <= rcpts => "RCPT TO",
        _ => "DATA",
    }
}

/// MAIL, RCPT for each recipient (one refused recipient does not abort the others), DATA.
/// Returns one outcome per recipient and whether the connection may be pooled again.
pub(super) async fn transaction(
    link: &mut Conn,
    sender: &str,
    rcpts: &[String],
    message: &[u8],
    params: MailParams,
) -> Result<(Vec<Outcome>, bool), Broken> {
    let group = if link.pipelining { GROUP } else { 1 };
    let c = &mut link.client;
    let n = rcpts.len();
    // Commands by index: 0 MAIL, 1..=n RCPT, n + 1 DATA.
    let total = n + 2;
    let broken = |e: &mail_send::Error, i: usize| {
        let e = classify_error(e, describe_after(e, command_name(i, n)));
        if i == 0 {
            Broken::AtMail(e)
        } else {
            Broken::Later(e)
        }
    };
    let mut replies = Replies::new();
    let (mut sent, mut answered) = (0, 0);
    let mut refused_mail: Option<Outcome> = None;
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(n);
    let mut data: Option<Response<String>> = None;
    // A 421 anywhere means the upstream closes the connection: do not pool it.
    let mut reusable = true;
    // Nothing will be delivered (MAIL refused, or no recipient accepted): send nothing more.
    let mut doomed = false;
    while answered < total {
        if answered == sent {
            if doomed {
                break;
            }
            let mut out = Vec::with_capacity(64 * group.min(total - sent));
            while sent < total && sent - answered < group {
                match sent {
                    0 => mail_command(&mut out, sender, params),
                    i if i <= n => {
                        out.extend_from_slice(b"RCPT TO:<");
                        out.extend_from_slice(rcpts[i - 1].as_bytes());
                        out.extend_from_slice(b">\r\n");
                    }
                    _ => out.extend_from_slice(b"DATA\r\n"),
                }
                sent += 1;
            }
            write_within(&mut c.stream, &out, c.timeout)
                .await
                .map_err(|e| broken(&io_error(e), answered))?;
        }
        let r = replies.next(c).await.map_err(|e| broken(&e, answered))?;
        match answered {
            0 if r.code == 421 => {
                // The upstream is closing this connection (an idle pooled one, or it is
                // shutting down) before anything of this message was taken.
                return Err(Broken::AtMail(ConnError(Failure::remote(
                    remote_reply(&r),
                    Scope::Message,
                ))));
            }
            0 if r.code / 100 != 2 => {
                refused_mail = Some(classify(&r, Scope::Message));
                doomed = true;
            }
            0 => {}
            i if i <= n => {
                reusable &= r.code != 421;
                outcomes.push((r.code / 100 != 2).then(|| classify(&r, Scope::Recipient)));
                if i == n && outcomes.iter().all(Option::is_some) {
                    doomed = true;
                }
            }
            _ => data = Some(r),
        }
        answered += 1;
    }
    if let Some(o) = refused_mail {
        let reusable = reusable && finish_refused(c, &mut replies, data.as_ref()).await;
        return Ok((vec![o; n], reusable));
    }
    if doomed {
        let reusable = reusable && finish_refused(c, &mut replies, data.as_ref()).await;
        return Ok((outcomes.into_iter().flatten().collect(), reusable));
    }
    let r = data.expect("DATA is sent and answered unless the transaction is doomed");
    if r.code != 354 {
        let o = classify(&r, Scope::Message);
        let reusable = reusable && r.code != 421 && !replies.stray() && reset(c).await;
        return Ok((fill(outcomes, &o), reusable));
    }
    write_data(&mut c.stream, message, c.timeout)
        .await
        .map_err(|e| {
            Broken::Later(if e.kind() == std::io::ErrorKind::TimedOut {
                conn(
                    reply::NEXT_HOP_TIMEOUT,
                    format!("upstream timed out during DATA: {e}"),
                )
            } else {
                conn(
                    reply::NEXT_HOP_CONNECTION,
                    format!("connection failure during DATA: {e}"),
                )
            })
        })?;
    let r = replies.next(c).await.map_err(|e| {
        Broken::Later(match e {
            mail_send::Error::Timeout => {
                conn(reply::NEXT_HOP_TIMEOUT, "upstream timed out after DATA")
            }
            e => classify_error(&e, describe_after(&e, "the end of DATA")),
        })
    })?;
    let o = classify(&r, Scope::Message);
    Ok((
        fill(outcomes, &o),
        reusable && r.code != 421 && !replies.stray(),
    ))
}

/// `MAIL FROM:<sender>` with the parameters carried through, and its CRLF.
fn mail_command(out: &mut Vec<u8>, sender: &str, params: MailParams) {
    out.extend_from_slice(b"MAIL FROM:<");
    out.extend_from_slice(sender.as_bytes());
    out.push(b'>');
    if params.body_8bit {
        out.extend_from_slice(b" BODY=8BITMIME");
    }
    if params.smtputf8 {
        out.extend_from_slice(b" SMTPUTF8");
    }
    out.extend_from_slice(b"\r\n");
}

/// The accepted recipients get the message's outcome; the refused keep their own.
fn fill(outcomes: Vec<Option<Outcome>>, o: &Outcome) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|x| x.unwrap_or_else(|| o.clone()))
        .collect()
}

/// Ends a transaction in which nothing is delivered; true when the connection is still in step.
/// A pipelined DATA the upstream accepted regardless gets a lone dot (RFC 2920 §3.1: an empty
/// message it must refuse, having no recipient); otherwise RSET.
async fn finish_refused(
    c: &mut Client,
    replies: &mut Replies,
    data: Option<&Response<String>>,
) -> bool {
    if data.is_some_and(|r| r.code == 421) || replies.stray() {
        return false;
    }
    if data.is_some_and(|r| r.code == 354) {
        if write_within(&mut c.stream, b".\r\n", c.timeout)
            .await
            .is_err()
        {
            return false;
        }
        return matches!(replies.next(c).await, Ok(r) if r.code != 421) && !replies.stray();
    }
    reset(c).await
}

/// A failed write of commands, in mail-send's terms (what `classify_error` judges).
fn io_error(e: std::io::Error) -> mail_send::Error {
    if e.kind() == std::io::ErrorKind::TimedOut {
        mail_send::Error::Timeout
    } else {
        mail_send::Error::Io(e)
    }
}

/// RSET after a refused transaction; true when the connection is still in step (a pooled
/// connection whose RSET reply never came would hand that late reply to the next MAIL).
pub(super) async fn reset(c: &mut Client) -> bool {
    matches!(c.cmd(b"RSET\r\n").await, Ok(r) if r.code / 100 == 2)
}

/// One write of message data, which must make progress within `timeout`.
pub(super) async fn write_within<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, async {
        w.write_all(bytes).await?;
        w.flush().await
    })
    .await
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no progress within {}s", timeout.as_secs()),
        )
    })?
}

/// Writes the message dot-stuffed (RFC 5321 §4.5.2): the runs between the dots to double are
/// written straight from `message` in pieces of at most [`DATA_PIECE`] (a sealed message has
/// no line that starts with a dot, so it goes without a copy and without a pass per line);
/// short runs are gathered into one buffer. The final `.<CRLF>` goes in the same write as the
/// message's last bytes (no Nagle/delayed-ACK stall on the last segment). Each write must be
/// accepted within `timeout`.
pub(super) async fn write_data<W: AsyncWrite + Unpin>(
    w: &mut W,
    message: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    let mut out = Gather {
        w,
        buf: Vec::new(),
        timeout,
    };
    let mut from = 0;
    // Each dot that starts a line (at offset 0 or after a LF) is written twice: the run up to
    // and including the dot, then the dot again as the start of the next run.
    let line_dots = (message.first() == Some(&b'.'))
        .then_some(0)
        .into_iter()
        .chain(memchr::memmem::find_iter(message, b"\n.").map(|i| i + 1));
    for dot in line_dots {
        out.put(&message[from..=dot]).await?;
        from = dot;
    }
    let rest = &message[from..];
    // The last bytes travel with the terminator.
    let keep = rest.len().min(TAIL_WITH_END);
    out.put(&rest[..rest.len() - keep]).await?;
    out.buf.extend_from_slice(&rest[rest.len() - keep..]);
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.buf.extend_from_slice(b"\r\n");
    }
    out.buf.extend_from_slice(b".\r\n");
    write_within(out.w, &out.buf, timeout).await
}

/// The most of the message handed to the stream in one write (each write has its deadline).
const DATA_PIECE: usize = 64 * 1024;
/// Runs shorter than this are copied into the gathering buffer rather than written alone (a
/// text with a leading dot every few lines still goes in writes of up to 64 KiB).
const GATHER_BELOW: usize = 16 * 1024;
/// How much of the message's end is copied to go in one write with `.<CRLF>`.
const TAIL_WITH_END: usize = 1024;

/// The writer of [`write_data`]: short runs gathered, long ones written where they lie.
struct Gather<'a, W> {
    w: &'a mut W,
    buf: Vec<u8>,
    timeout: Duration,
}

impl<W: AsyncWrite + Unpin> Gather<'_, W> {
    async fn put(&mut self, run: &[u8]) -> std::io::Result<()> {
        if run.len() < GATHER_BELOW {
            self.buf.extend_from_slice(run);
            if self.buf.len() >= DATA_PIECE {
                write_within(self.w, &self.buf, self.timeout).await?;
                self.buf.clear();
            }
            return Ok(());
        }
        if !self.buf.is_empty() {
            write_within(self.w, &self.buf, self.timeout).await?;
            self.buf.clear();
        }
        for piece in run.chunks(DATA_PIECE) {
            write_within(self.w, piece, self.timeout).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Records each write the stream is handed.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// RFC 5321 §4.5.2 the plain way: a line at a time, a dot added before a leading dot.
    fn reference(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in message.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        if !message.is_empty() && !message.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    async fn written(message: &[u8]) -> Vec<Vec<u8>> {
        let mut w = Writes::default();
        write_data(&mut w, message, Duration::from_secs(5))
            .await
            .unwrap();
        w.0
    }

    #[tokio::test]
    async fn data_is_dot_stuffed_as_line_by_line_would() {
        let long_line = format!(".{}\r\n", "x".repeat(70_000));
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b".".to_vec(),
            b"..\r\n".to_vec(),
            b"Subject: x\r\n\r\n.hidden\r\n..\r\n...\r\nend\r\n".to_vec(),
            b"no final line break".to_vec(),
            b"a\n.b\r.c\r\n.\r\n".to_vec(),
            // Dots among long runs: pieces written where they lie, short ones gathered.
            [
                long_line.as_bytes(),
                b".\r\n",
                "y".repeat(200_000).as_bytes(),
                b"\r\n.z\r\n",
            ]
            .concat(),
            // Many short lines with dots: everything through the gathering buffer.
            b".a\r\nb\r\n".repeat(30_000),
        ];
        for m in cases {
            let got = written(&m).await.concat();
            assert_eq!(
                got,
                reference(&m),
                "{:?}",
                String::from_utf8_lossy(&m[..m.len().min(40)])
            );
        }
    }

    #[tokio::test]
    async fn a_text_with_many_leading_dots_is_gathered_into_large_writes() {
        let m = b".a\r\nb\r\n".repeat(30_000); // 210,000 octets, 30,000 dots to double
        let lens: Vec<usize> = written(&m).await.iter().map(Vec::len).collect();
        assert_eq!(lens.iter().sum::<usize>(), 240_000 + 3);
        assert!(lens.len() <= 4, "{lens:?}");
    }

    #[tokio::test]
    async fn a_message_without_leading_dots_goes_in_pieces_with_the_end_in_the_last() {
        let m = "QUJD".repeat(50_000).into_bytes(); // 200,000 octets, no line break
        let writes = written(&m).await;
        // The first 198,976 octets as they lie, in pieces of at most 64 KiB; the last 1,024
        // with CRLF and the terminating dot in one write.
        let lens: Vec<usize> = writes.iter().map(Vec::len).collect();
        assert_eq!(lens, [65_536, 65_536, 65_536, 2_368, 1_024 + 2 + 3]);
        assert_eq!(writes[4][..1_024], m[m.len() - 1_024..]);
        assert!(writes[4].ends_with(b"\r\n.\r\n"));
    }
}
