//! Delivery status notifications (RFC 3464 `multipart/report`, RFC 3463 status codes): built when
//! recipients fail permanently or expire, and injected into the spool as a new message from `<>`
//! (so a bounce is never bounced).
//!
//! Internationalised mail (RFC 6533): a DSN to a sender who used SMTPUTF8 is relayed with
//! SMTPUTF8 (its address may need it) and uses `message/global-delivery-status` and
//! `message/global-headers`, which may carry UTF-8; any other DSN whose bytes are 8-bit (the
//! original's headers) asks for `BODY=8BITMIME`.

use crate::reply::Reply;
use crate::spool::{Envelope, Spool};
use std::fmt::Write;

/// A recipient that failed, with the public reply (the next hop's, or ours from `reply.rs`).
/// Private reasons never reach a bounce.
pub struct Failure<'a> {
    pub recipient: &'a str,
    pub reply: &'a Reply,
}

/// The RFC 3463 status for the report: the reply's enhanced code, or one by class.
fn status_of(reply: &Reply) -> String {
    if reply.status.is_empty() {
        if reply.is_permanent() {
            "5.0.0"
        } else {
            "4.0.0"
        }
        .into()
    } else {
        reply.status.to_string()
    }
}

/// Whether the DSN for `env` goes out as internationalised mail: its sender used SMTPUTF8, or
/// has an address that needs it.
fn utf8_dsn(env: &Envelope) -> bool {
    env.smtputf8 || !env.sender.is_ascii()
}

/// Builds the DSN message for `env` (the original envelope) from `hostname`.
pub fn build(hostname: &str, env: &Envelope, original: &[u8], failures: &[Failure]) -> Vec<u8> {
    let global = utf8_dsn(env);
    let (status_type, headers_type) = if global {
        ("message/global-delivery-status", "message/global-headers")
    } else {
        ("message/delivery-status", "text/rfc822-headers")
    };
    let boundary = format!("{}/{}", env.id, hostname);
    let date = crate::date::rfc5322(std::time::SystemTime::now());
    // A damaged envelope may claim any arrival time: clamp it to the last second a date can
    // name (9999-12-31T23:59:59Z) rather than overflow.
    let arrival = crate::date::rfc5322(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(env.received.min(253_402_300_799)),
    );
    let mut m = String::new();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is the mail system at host {hostname}.\r\n\
         \r\n\
         Your message (queue ID {id}) could not be delivered to one or more\r\n\
         recipients. It has been returned below.\r\n\
         \r\n",
        sender = env.sender,
        id = env.id,
    );
    for f in failures {
        let _ = write!(
            m,
            "<{}>: {}\r\n",
            f.recipient,
            f.reply.to_string().replace(['\r', '\n'], " ")
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: {status_type}\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Cachet-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        id = env.id
    );
    for f in failures {
        let status = status_of(f.reply);
        // RFC 6533 §3: a non-ASCII address is of type utf-8 (only in the global form).
        let addr_type = if global && !f.recipient.is_ascii() {
            "utf-8"
        } else {
            "rfc822"
        };
        let _ = write!(
            m,
            "\r\nFinal-Recipient: {addr_type}; {}\r\nAction: failed\r\nStatus: {status}\r\nDiagnostic-Code: smtp; {}\r\n",
            f.recipient,
            f.reply.to_string().replace(['\r', '\n'], " ")
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Type: {headers_type}\r\n\r\n"
    );
    let mut out = m.into_bytes();
    // RFC 3462: the headers of the original, enough to identify it, without its content.
    out.extend_from_slice(crate::message::head(original));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Queues a DSN to the original sender. Nothing for `<>` senders or for bounces themselves.
pub async fn send(
    spool: &Spool,
    hostname: &str,
    env: &Envelope,
    original: &[u8],
    failures: &[Failure<'_>],
) -> Option<String> {
    if env.sender.is_empty() || env.is_bounce || failures.is_empty() {
        return None;
    }
    let bytes = build(hostname, env, original, failures);
    let mut dsn = Envelope::new(
        String::new(),
        vec![env.sender.clone()],
        "127.0.0.1".into(),
        hostname.into(),
    );
    dsn.is_bounce = true;
    dsn.smtputf8 = utf8_dsn(env);
    dsn.body_8bit = !bytes.is_ascii();
    match spool.inject(dsn, bytes).await {
        Ok(id) => {
            tracing::info!(queue_id = %env.id, dsn_id = %id, sender = %env.sender, "bounce queued");
            Some(id)
        }
        Err(e) => {
            tracing::error!(queue_id = %env.id, error = %e, "could not queue bounce");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_is_a_multipart_report_with_per_recipient_status() {
        let mut env = Envelope::new(
            "alice@example.org".into(),
            vec!["bob@x.example".into()],
            "127.0.0.1".into(),
            "h".into(),
        );
        env.id = "ABC123".into();
        let original = b"Subject: hello\r\nMessage-ID: <m1@x>\r\n\r\nsecret body\r\n";
        let dsn = build(
            "gw.example",
            &env,
            original,
            &[Failure {
                recipient: "bob@x.example",
                reply: &Reply::remote(550, Some("5.1.1".into()), "no such user".into()),
            }],
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("To: <alice@example.org>"));
        assert!(text.contains(
            "Final-Recipient: rfc822; bob@x.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"));
        assert!(text.contains("Subject: hello\r\nMessage-ID: <m1@x>\r\n"));
        assert!(!text.contains("secret body"), "a DSN carries headers only");
        assert!(text.ends_with("--\r\n"));
    }

    #[test]
    fn dsn_to_an_smtputf8_sender_uses_the_global_types() {
        let mut env = Envelope::new(
            "j\u{f6}rg@example.org".into(),
            vec!["b\u{e9}a@x.example".into()],
            "127.0.0.1".into(),
            "h".into(),
        );
        env.id = "ABC124".into();
        env.smtputf8 = true;
        let dsn = build(
            "gw.example",
            &env,
            "Subject: gr\u{fc}\u{df}e\r\n\r\nbody\r\n".as_bytes(),
            &[Failure {
                recipient: "b\u{e9}a@x.example",
                reply: &Reply::remote(550, Some("5.1.1".into()), "no such user".into()),
            }],
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Content-Type: message/global-delivery-status\r\n"));
        assert!(text.contains("Content-Type: message/global-headers\r\n"));
        assert!(text.contains("Final-Recipient: utf-8; b\u{e9}a@x.example\r\n"));
        assert!(text.contains("To: <j\u{f6}rg@example.org>"));
    }

    #[test]
    fn status_is_the_replys_own_or_one_by_class() {
        let no_status = |code| Reply {
            code,
            status: "".into(),
            text: "x".into(),
        };
        assert_eq!(status_of(&no_status(421)), "4.0.0");
        assert_eq!(status_of(&no_status(554)), "5.0.0");
        assert_eq!(status_of(&Reply::remote(421, None, "busy".into())), "4.0.0");
        assert_eq!(
            status_of(&Reply::remote(554, Some("5.7.1".into()), "rejected".into())),
            "5.7.1"
        );
        assert_eq!(status_of(&crate::reply::expired(60, None)), "4.4.7");
    }

    #[test]
    fn a_bounce_shows_public_replies_only() {
        let mut env = Envelope::new(
            "alice@example.org".into(),
            vec!["bob@x.example".into()],
            "127.0.0.1".into(),
            "h".into(),
        );
        env.id = "ABC125".into();
        // What sealing records when a key operation fails: the private reason stays out.
        let failure = crate::reply::Failure::new(
            crate::reply::SMIME_FAILED,
            crate::reply::Scope::Message,
            "S/MIME: cannot read /etc/cachet/keys/alice@example.org.pem",
        );
        let text = String::from_utf8(build(
            "gw.example",
            &env,
            b"Subject: x\r\n\r\nbody\r\n",
            &[Failure {
                recipient: "bob@x.example",
                reply: &failure.reply,
            }],
        ))
        .unwrap();
        assert!(text.contains("Status: 5.7.5\r\n"), "{text}");
        assert!(text.contains("S/MIME processing failed"), "{text}");
        assert!(
            !text.contains("/etc/cachet") && !text.contains(".pem"),
            "{text}"
        );
    }
}
