//! One transaction on an open connection: MAIL, RCPT for each recipient (one refused recipient
//! does not abort the others), DATA with the message dot-stuffed, each step under a deadline.

use super::MailParams;
use super::outcome::{
    Broken, ConnError, Outcome, classify, classify_error, conn, describe_after, remote_reply,
};
use crate::reply::{self, Failure, Scope};
use mail_send::SmtpClient;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Any stream a connection may run over (TCP, TLS), boxed so the pool holds one type.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
/// An open SMTP connection to the next hop.
pub(super) type Client = SmtpClient<Box<dyn Io>>;

/// MAIL, RCPT for each recipient (one refused recipient does not abort the others), DATA.
pub(super) async fn transaction(
    c: &mut Client,
    sender: &str,
    rcpts: &[String],
    message: &[u8],
    params: MailParams,
) -> Result<(Vec<Outcome>, bool), Broken> {
    let later = |e: ConnError| Broken::Later(e);
    let broken = |e: &mail_send::Error, after: &str| classify_error(e, describe_after(e, after));
    let mut mail = format!("MAIL FROM:<{sender}>");
    if params.body_8bit {
        mail.push_str(" BODY=8BITMIME");
    }
    if params.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    mail.push_str("\r\n");
    let r = c
        .cmd(mail.as_bytes())
        .await
        .map_err(|e| Broken::AtMail(broken(&e, "MAIL FROM")))?;
    if r.code == 421 {
        // The upstream is closing this connection (an idle pooled one, or it is shutting down).
        return Err(Broken::AtMail(ConnError(Failure::remote(
            remote_reply(&r),
            Scope::Message,
        ))));
    }
    if r.code / 100 != 2 {
        let o = classify(&r, Scope::Message);
        return Ok((vec![o; rcpts.len()], reset(c).await));
    }
    // A 421 anywhere means the upstream closes the connection: do not pool it.
    let mut reusable = true;
    let mut outcomes = Vec::with_capacity(rcpts.len());
    for rcpt in rcpts {
        let r = c
            .cmd(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
            .await
            .map_err(|e| later(broken(&e, "RCPT TO")))?;
        reusable &= r.code != 421;
        outcomes.push(if r.code / 100 == 2 {
            None
        } else {
            Some(classify(&r, Scope::Recipient))
        });
    }
    if outcomes.iter().all(Option::is_some) {
        let reusable = reusable && reset(c).await;
        return Ok((outcomes.into_iter().flatten().collect(), reusable));
    }
    let r = c
        .cmd(b"DATA\r\n")
        .await
        .map_err(|e| later(broken(&e, "DATA")))?;
    if r.code != 354 {
        let o = classify(&r, Scope::Message);
        let reusable = r.code != 421 && reset(c).await;
        return Ok((
            outcomes
                .into_iter()
                .map(|x| x.unwrap_or_else(|| o.clone()))
                .collect(),
            reusable,
        ));
    }
    write_data(&mut c.stream, message, c.timeout)
        .await
        .map_err(|e| {
            later(if e.kind() == std::io::ErrorKind::TimedOut {
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
    let r = tokio::time::timeout(c.timeout, c.read())
        .await
        .map_err(|_| {
            later(conn(
                reply::NEXT_HOP_TIMEOUT,
                "upstream timed out after DATA",
            ))
        })?
        .map_err(|e| later(broken(&e, "the end of DATA")))?;
    let o = classify(&r, Scope::Message);
    let outcomes = outcomes
        .into_iter()
        .map(|x| x.unwrap_or_else(|| o.clone()))
        .collect();
    Ok((outcomes, reusable && r.code != 421))
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

/// Writes the message dot-stuffed (RFC 5321 §4.5.2) in large chunks, with the final
/// `.<CRLF>` in the same write as the last bytes (no Nagle/delayed-ACK stall on the last segment).
/// Each chunk must be accepted within `timeout`.
pub(super) async fn write_data<W: AsyncWrite + Unpin>(
    w: &mut W,
    message: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let mut out = Vec::with_capacity(CHUNK + 1024);
    let mut at_line_start = true;
    let mut rest = message;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        let line_end = memchr::memchr(b'\n', rest)
            .map(|i| i + 1)
            .unwrap_or(rest.len());
        out.extend_from_slice(&rest[..line_end]);
        at_line_start = rest[line_end - 1] == b'\n';
        rest = &rest[line_end..];
        if out.len() >= CHUNK {
            write_within(w, &out, timeout).await?;
            out.clear();
        }
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    write_within(w, &out, timeout).await
}
