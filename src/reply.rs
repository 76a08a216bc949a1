//! Every SMTP reply cachet sends, in one place (STYLE habit 4).
//!
//! A [`Reply`] carries the basic code, the RFC 3463 enhanced status code and the public text.
//! Public text never names key paths, rule internals or config; private reasons go to the log.
//!
//! A [`Failure`] is the one failure type of the delivery path: the reply the world may see
//! (a client, a bounce), its [`Scope`], and a private reason for logs and `cachet queue show`.
//! Relay, pipeline and scheduler classify a failure once, where it happens, and hand it on; the
//! envelope keeps the public reply and the private reason apart, and a DSN shows only the
//! public reply.

use std::borrow::Cow;
use std::fmt;

/// One SMTP reply: `code status text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// RFC 3463 enhanced status code, e.g. "5.7.1"; empty when none is known.
    pub status: Cow<'static, str>,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, status: &'static str, text: &'static str) -> Self {
        Reply {
            code,
            status: Cow::Borrowed(status),
            text: Cow::Borrowed(text),
        }
    }

    pub fn owned(code: u16, status: &'static str, text: String) -> Self {
        Reply {
            code,
            status: Cow::Borrowed(status),
            text: Cow::Owned(text),
        }
    }

    /// A reply another server sent (the next hop's), kept as it came: its enhanced status
    /// code, or one by class when it gave none or an unreadable one (RFC 3463: X.0.0). Line
    /// breaks in the text become spaces, so it stays one line in a log, an envelope or a DSN.
    pub fn remote(code: u16, status: Option<String>, text: String) -> Self {
        let well_formed = |s: &String| {
            let p: Vec<&str> = s.split('.').collect();
            p.len() == 3
                && matches!(p[0], "2" | "4" | "5")
                && p.iter()
                    .all(|x| (1..=3).contains(&x.len()) && x.bytes().all(|b| b.is_ascii_digit()))
        };
        let status = status.filter(well_formed).unwrap_or_else(|| {
            match code {
                200..=299 => "2.0.0",
                500..=599 => "5.0.0",
                _ => "4.0.0",
            }
            .to_string()
        });
        Reply {
            code,
            status: Cow::Owned(status),
            text: Cow::Owned(text.replace(['\r', '\n'], " ")),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form (one line, CRLF) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "{self}\r\n");
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.status, self.text)
        }
    }
}

/// Where a failure applies; whether it may pass is the reply's class (4xx or 5xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This recipient only (the next hop refused RCPT, a policy decision for them).
    Recipient,
    /// The whole copy: every recipient of it gets the same failure (connection, TLS, DATA,
    /// sealing).
    Message,
}

/// A failure, classified once where it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What a client or a bounce shows: code, enhanced code, public text.
    pub reply: Reply,
    pub scope: Scope,
    /// What happened, for the log and `cachet queue show`; never in a bounce.
    pub private: String,
}

impl Failure {
    pub fn new(reply: Reply, scope: Scope, private: impl Into<String>) -> Failure {
        Failure {
            reply,
            scope,
            private: private.into(),
        }
    }

    /// A reply from the next hop for this recipient (or the message): public as it is.
    pub fn remote(reply: Reply, scope: Scope) -> Failure {
        Failure {
            private: String::new(),
            reply,
            scope,
        }
    }

    /// 4xx: try again later. Anything that is not a 5xx is temporary (unknown = temporary).
    pub fn is_temporary(&self) -> bool {
        !self.reply.is_permanent()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.private.is_empty() {
            write!(f, "{}", self.reply)
        } else {
            write!(f, "{} ({})", self.reply, self.private)
        }
    }
}

pub const OK: Reply = Reply::new(250, "2.0.0", "OK");
pub const SENDER_OK: Reply = Reply::new(250, "2.1.0", "Sender OK");
pub const RECIPIENT_OK: Reply = Reply::new(250, "2.1.5", "Recipient OK");
pub const START_DATA: Reply = Reply::new(354, "", "End data with <CR><LF>.<CR><LF>");
pub const BYE: Reply = Reply::new(221, "2.0.0", "Bye");
pub const READY_TLS: Reply = Reply::new(220, "2.0.0", "Ready to start TLS");
pub const RESET: Reply = Reply::new(250, "2.0.0", "Reset");
pub const VRFY_REFUSED: Reply = Reply::new(
    252,
    "2.5.0",
    "Cannot VRFY user, but will accept message and attempt delivery",
);
pub const EXPN_REFUSED: Reply = Reply::new(502, "5.5.1", "EXPN not available");
pub const HELP: Reply = Reply::new(214, "2.0.0", "See RFC 5321");

pub const SYNTAX_ERROR: Reply = Reply::new(500, "5.5.2", "Syntax error, command unrecognized");
pub const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.6", "Line too long");
pub const NOT_IMPLEMENTED: Reply = Reply::new(502, "5.5.1", "Command not implemented");
pub const BAD_SEQUENCE: Reply = Reply::new(503, "5.5.1", "Bad sequence of commands");
pub const NEED_HELO: Reply = Reply::new(503, "5.5.1", "Send EHLO/HELO first");
pub const NEED_MAIL: Reply = Reply::new(503, "5.5.1", "Need MAIL command first");
pub const NEED_RCPT: Reply = Reply::new(503, "5.5.1", "Need RCPT command first");
pub const NESTED_MAIL: Reply = Reply::new(503, "5.5.1", "Sender already specified");
pub const BAD_ADDRESS: Reply = Reply::new(501, "5.1.3", "Bad address syntax");
pub const BAD_PARAMETER: Reply = Reply::new(555, "5.5.4", "Unsupported MAIL/RCPT parameter");
pub const SMTPUTF8_NEEDED: Reply = Reply::new(
    553,
    "5.6.7",
    "Non-ASCII address requires SMTPUTF8 on MAIL FROM",
);
pub const TLS_ALREADY: Reply = Reply::new(503, "5.5.1", "TLS already active");
pub const TLS_UNAVAILABLE: Reply = Reply::new(454, "4.7.0", "TLS not available");
pub const TLS_REQUIRED: Reply = Reply::new(530, "5.7.0", "Must issue a STARTTLS command first");
pub const RELAY_DENIED: Reply = Reply::new(550, "5.7.1", "Relay access denied");
/// The greeting on the inbound listener for a client outside `inbound.relay_networks`
/// (RFC 5321 §3.1: 554 instead of 220); the connection is closed.
pub const INBOUND_CLIENT_REFUSED: Reply = Reply::new(
    554,
    "5.7.1",
    "Access denied: not an MTA allowed to hand mail in here",
);
/// A connection to the inbound listener after a reload removed `[inbound]` (the listener stays
/// bound until a restart): the MTA keeps the mail and tries again.
pub const INBOUND_UNAVAILABLE: Reply = Reply::new(
    421,
    "4.3.2",
    "Inbound service not available, try again later",
);
/// RCPT on the inbound listener for an address outside `server.local_domains`: the inbound side
/// is never a relay.
pub const INBOUND_NOT_LOCAL: Reply =
    Reply::new(550, "5.7.1", "Relay access denied: not a local recipient");
/// RFC 5321 addresses are judged and relayed as one string: anything that could be read two
/// ways (quoted local parts, spaces, angle brackets, control characters, two `@`) is refused.
pub const ADDRESS_FORM: Reply = Reply::new(
    553,
    "5.1.3",
    "Address not accepted: use a plain address without quotes, spaces or angle brackets",
);
pub const SENDER_NOT_ALLOWED: Reply =
    Reply::new(550, "5.7.1", "Sender address not allowed for this client");
pub const FROM_NOT_ALLOWED: Reply =
    Reply::new(550, "5.7.1", "From: address not allowed for this client");
pub const SUBMITTER_HEADER_MISSING: Reply = Reply::new(
    550,
    "5.7.1",
    "Message not accepted from this client: it does not carry the required tenant header",
);
pub const SIZE_INVALID: Reply = Reply::new(
    552,
    "5.3.4",
    "Declared SIZE exceeds fixed maximum message size",
);
pub const TOO_MANY_RECIPIENTS: Reply = Reply::new(452, "4.5.3", "Too many recipients");
pub const MESSAGE_TOO_BIG: Reply = Reply::new(
    552,
    "5.3.4",
    "Message size exceeds fixed maximum message size",
);
pub const BARE_NEWLINE: Reply = Reply::new(
    521,
    "5.5.2",
    "Bare <CR> or <LF> received; lines must end with <CR><LF>",
);
pub const SPOOL_FAILURE: Reply = Reply::new(
    451,
    "4.3.0",
    "Local error in processing, message not accepted; try again later",
);
/// The spool's file system is full (or over quota): RFC 3463 X.3.1 "mail system full". 452, as
/// RFC 5321 §4.2.2 lists it for "insufficient system storage"; the client keeps the message.
pub const INSUFFICIENT_STORAGE: Reply = Reply::new(
    452,
    "4.3.1",
    "Insufficient system storage, message not accepted; try again later",
);
pub const TOO_MANY_ERRORS: Reply = Reply::new(421, "4.7.0", "Too many errors, closing connection");
pub const IDLE_TIMEOUT: Reply = Reply::new(421, "4.4.2", "Idle timeout, closing connection");
pub const TOO_MANY_CONNECTIONS: Reply =
    Reply::new(421, "4.7.0", "Too many connections, try again later");
/// The gateway has no file descriptor left to serve another client (`EMFILE` / `ENFILE`).
pub const OUT_OF_RESOURCES: Reply = Reply::new(
    421,
    "4.3.2",
    "Out of system resources, closing connection; try again later",
);
pub const SHUTTING_DOWN: Reply = Reply::new(421, "4.3.2", "Service shutting down, try again later");

// Delivery: what a bounce or `cachet queue` shows when the next hop or sealing failed. The
// details (OS errors, TLS alerts, S/MIME errors) are the failure's private reason.
pub const NEXT_HOP_CONNECTION: Reply = Reply::new(
    451,
    "4.4.2",
    "Connection to the next hop failed; will retry",
);
pub const NEXT_HOP_TIMEOUT: Reply = Reply::new(451, "4.4.2", "The next hop timed out; will retry");
pub const NEXT_HOP_TLS: Reply = Reply::new(
    451,
    "4.7.5",
    "TLS with the next hop failed; will retry (never sent without it)",
);
pub const NEXT_HOP_AUTH: Reply = Reply::new(
    451,
    "4.7.0",
    "Authentication with the next hop failed; will retry",
);
pub const NEXT_HOP_NO_8BITMIME: Reply =
    Reply::new(554, "5.6.3", "The next hop does not support 8BITMIME");
pub const NEXT_HOP_NO_SMTPUTF8: Reply =
    Reply::new(553, "5.6.7", "The next hop does not support SMTPUTF8");
pub const OUTBOX_FAILED: Reply =
    Reply::new(451, "4.3.0", "Could not write the message; will retry");
pub const SMIME_TEMPORARY: Reply = Reply::new(
    451,
    "4.3.0",
    "S/MIME processing failed temporarily; will retry",
);
pub const SMIME_FAILED: Reply = Reply::new(554, "5.7.5", "S/MIME processing failed");
/// A recipient waits in the queue for a certificate's first revocation answer (hard mode).
pub const REVOCATION_PENDING: Reply = Reply::new(
    451,
    "4.7.0",
    "certificate revocation status not yet known; will retry",
);
pub const SEALING_ABORTED: Reply =
    Reply::new(451, "4.3.0", "Local error in processing; will retry");
pub const DATA_UNREADABLE: Reply = Reply::new(
    451,
    "4.3.0",
    "Local error reading the queued message; will retry",
);

// Inbound (mail the organisation receives, `pipeline::inbound`): what the internet-facing MTA
// hears at the end of DATA when a message is refused. One text for every decryption failure,
// whatever went wrong (no RecipientInfo for us, bad padding, bad tag, malformed structure): the
// reply must not tell a sender probing for a decryption oracle anything (RFC 3218).
/// `on_undecryptable = "reject"`: encrypted to a recipient we cannot decrypt for (RFC 3463 X.7.5
/// "cryptographic failure").
pub const INBOUND_UNDECRYPTABLE: Reply = Reply::new(
    550,
    "5.7.5",
    "Message could not be decrypted for its recipients",
);
/// The organisation's key cannot be reached now (a token that is gone or busy), or the crypto
/// library failed: the sending MTA keeps the message and tries again.
pub const INBOUND_TEMPORARY: Reply = Reply::new(
    451,
    "4.3.0",
    "S/MIME processing failed temporarily; try again later",
);
/// `[[inbound.rule]]` with `action = "reject"`, one text per requirement not met. The rule itself
/// (its globs, its position) stays private.
pub const INBOUND_NOT_SIGNED: Reply = Reply::new(
    550,
    "5.7.1",
    "Message refused: mail from this sender must be signed (S/MIME)",
);
pub const INBOUND_NO_VALID_SIGNATURE: Reply = Reply::new(
    550,
    "5.7.1",
    "Message refused: mail from this sender must carry a valid S/MIME signature",
);
pub const INBOUND_NOT_ENCRYPTED: Reply = Reply::new(
    550,
    "5.7.1",
    "Message refused: mail from this sender must be encrypted (S/MIME)",
);

/// A message that stayed in the queue for `max_age` without being delivered: RFC 3463 X.4.7
/// "delivery time expired", with the last public reply.
pub fn expired(max_age_secs: u64, last: Option<&str>) -> Reply {
    Reply::owned(
        550,
        "4.4.7",
        format!(
            "Message expired after {max_age_secs}s in the queue; last reply: {}",
            last.unwrap_or("no attempt succeeded")
        ),
    )
}

/// The reply for a spool write or commit that failed: `452 4.3.1` when the disk is full (or the
/// quota used up), `451 4.3.0` otherwise. Never `250`.
pub fn spool_failure(e: &std::io::Error) -> Reply {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => INSUFFICIENT_STORAGE,
        _ => SPOOL_FAILURE,
    }
}

/// `250 2.0.0 Ok: queued as ID`, the reply that promises durability.
pub fn queued(id: &str) -> Reply {
    Reply::owned(250, "2.0.0", format!("Ok: queued as {id}"))
}

/// A policy refusal at RCPT time (550 5.7.1 with a reason the sender understands).
pub fn policy_refused(text: String) -> Reply {
    Reply::owned(550, "5.7.1", text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn a_full_disk_is_452_other_spool_failures_451() {
        let full = Error::from_raw_os_error(28); // ENOSPC
        assert_eq!(spool_failure(&full).to_string().get(..9), Some("452 4.3.1"));
        let quota = Error::from_raw_os_error(122); // EDQUOT
        assert_eq!(spool_failure(&quota).code, 452);
        let other = Error::new(ErrorKind::PermissionDenied, "x");
        assert_eq!(
            spool_failure(&other).to_string().get(..9),
            Some("451 4.3.0")
        );
    }
}
