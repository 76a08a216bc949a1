//! What each reply or error of the next hop means, decided once (STYLE habit 5): delivered, or
//! a [`Failure`] with its public reply, scope and private reason. A failure of the connection
//! itself is always temporary: nothing final was said about the recipients.

use crate::reply::{self, Failure, Reply, Scope};

/// One recipient's result: the next hop's reply, or the failure classified where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Reply),
    Failed(Failure),
}

/// A connection-level failure: every recipient of the copy gets the same outcome.
pub(super) struct ConnError(pub(super) Failure);

/// Where in a transaction a connection failed.
pub(super) enum Broken {
    /// At MAIL FROM: nothing of this message reached the upstream.
    AtMail(ConnError),
    Later(ConnError),
}

/// A failure of the connection itself (every recipient of the copy): `public` for the world,
/// `private` for the log.
pub(super) fn conn(public: Reply, private: impl Into<String>) -> ConnError {
    ConnError(Failure::new(public, Scope::Message, private))
}

/// A mail-send error (outside MAIL/RCPT/DATA replies, which [`classify`] judges), classified:
/// always temporary, since nothing final was said about the recipients; TLS, timeouts and
/// broken connections get our public text and keep the details private.
pub(super) fn classify_error(e: &mail_send::Error, private: String) -> ConnError {
    match e {
        mail_send::Error::Tls(_) | mail_send::Error::InvalidTLSName => {
            conn(reply::NEXT_HOP_TLS, private)
        }
        mail_send::Error::Timeout => conn(reply::NEXT_HOP_TIMEOUT, private),
        _ => conn(reply::NEXT_HOP_CONNECTION, private),
    }
}

pub(super) fn describe(e: &mail_send::Error) -> String {
    match e {
        mail_send::Error::UnexpectedReply(r) => format!("{} {}", r.code, r.message),
        mail_send::Error::Tls(e) => format!("TLS failure: {e}"),
        mail_send::Error::Io(e) => format!("connection failure: {e}"),
        mail_send::Error::Timeout => "upstream timed out".into(),
        // mail-send's word for a read that ended (EOF) before a whole reply came.
        mail_send::Error::UnparseableReply => {
            "upstream closed the connection or sent no valid reply".into()
        }
        other => format!("{other:?}"),
    }
}

/// `describe`, naming the command whose reply never came: what the queue and a DSN show.
pub(super) fn describe_after(e: &mail_send::Error, command: &str) -> String {
    format!("{} (after {command})", describe(e))
}

/// The next hop's reply as a [`Reply`], with its enhanced status code when it sent one.
pub(super) fn remote_reply(r: &smtp_proto::Response<String>) -> Reply {
    let status = (r.esc[0] != 0).then(|| format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2]));
    Reply::remote(r.code, status, r.message.clone())
}

/// A reply to a transaction command: 2xx delivered, anything else failed for `scope`.
pub(super) fn classify(r: &smtp_proto::Response<String>, scope: Scope) -> Outcome {
    match r.code {
        200..=299 => Outcome::Delivered(remote_reply(r)),
        _ => Outcome::Failed(Failure::remote(remote_reply(r), scope)),
    }
}
