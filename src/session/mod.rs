//! The inbound SMTP session (RFC 5321): one task per connection, generic over the stream so the
//! whole conversation is unit-tested with in-memory bytes (STYLE habit 8).
//!
//! Commands are parsed with `smtp-proto` from lines we frame ourselves: a line must end in CRLF,
//! a bare CR or LF closes the session with `521 5.5.2` (smuggling defence), and DATA is framed by
//! [`data::DataReader`]. Replies are batched while pipelined commands remain in the buffer
//! (RFC 2920) and flushed before we would block. STARTTLS returns the raw stream to the caller
//! after discarding anything pipelined behind it (CVE-2011-0411); the caller runs a fresh session
//! over TLS. DATA streams into a spool draft; `250` only after [`crate::spool::Draft::commit`].
//!
//! Replies produced here: every constant in [`crate::reply`], plus policy refusals at RCPT.

pub mod auth;
pub mod data;

use crate::policy::submitter::{Client, ClientCert, Grant};
use crate::reply::{self, Reply};
use crate::runtime::Runtime;
use crate::spool::{Envelope, Spool};
use arc_swap::ArcSwap;
use data::{DataReader, Feed};
use smtp_proto::{Error as ProtoError, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8, Request};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; extensions need more).
pub const MAX_LINE: usize = 4096;
const READ_CHUNK: usize = 64 * 1024;
/// DATA goes to the spool file in writes of about this size. Every session in DATA holds up to
/// this much (500 slow clients x 256 KiB was 125 MiB of the RSS); larger writes gain nothing on
/// the blocking pool.
const DATA_FLUSH: usize = 64 * 1024;
/// How much of a message the end-of-DATA policy check reads (the header is in there).
const HEAD_MAX: usize = 64 * 1024;

/// What every session shares.
pub struct SessionCtx {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub spool: Spool,
    /// Tells the scheduler a message was queued.
    pub queued: mpsc::UnboundedSender<String>,
    /// Flips to true when the gateway is stopping.
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// How a session ended.
pub enum Ending<S> {
    Closed,
    /// The client asked for STARTTLS and got `220`; upgrade `S` and run a new session.
    StartTls(S),
}

struct Transaction {
    sender: String,
    smtputf8: bool,
    body_8bit: bool,
    recipients: Vec<String>,
    /// Who the client is allowed to be (`None`: it may not relay; RCPT says so).
    grant: Option<Grant>,
}

/// One SMTP conversation's state.
pub struct Session {
    ctx: Arc<SessionCtx>,
    runtime: Arc<Runtime>,
    peer: SocketAddr,
    tls: bool,
    helo: Option<String>,
    tx: Option<Transaction>,
    errors: u32,
    out: Vec<u8>,
    /// The AUTH identity, once authenticated (RFC 4954); relaying is then allowed from anywhere.
    authenticated: Option<String>,
    /// An AUTH exchange waiting for the client's next line.
    auth: Option<AuthStep>,
    /// The TLS client certificate presented on this connection, if any.
    client_cert: Option<ClientCert>,
}

enum AuthStep {
    Plain,
    LoginUser,
    LoginPass(String),
}

enum Step {
    Continue,
    Close,
    Data,
    StartTls,
    /// Check these credentials (CPU work: on the blocking pool).
    Verify(String, String),
    /// Answer RCPT TO for this address (may await a directory lookup, bounded by its timeout).
    Rcpt(String),
}

impl Session {
    pub fn new(ctx: Arc<SessionCtx>, peer: SocketAddr, tls: bool) -> Session {
        let runtime = ctx.runtime.load_full();
        Session {
            ctx,
            runtime,
            peer,
            tls,
            helo: None,
            tx: None,
            errors: 0,
            out: Vec::new(),
            authenticated: None,
            auth: None,
            client_cert: None,
        }
    }

    /// The certificate the client presented in the TLS handshake (set by the listener).
    pub fn with_client_cert(mut self, cert: Option<ClientCert>) -> Session {
        self.client_cert = cert;
        self
    }

    /// Who this client may send as, from what is known now (IP, AUTH user, TLS certificate).
    fn grant(&self) -> Option<Grant> {
        self.runtime.config.submitters.resolve(&Client {
            ip: self.peer.ip(),
            user: self.authenticated.as_deref(),
            cert: self.client_cert.as_ref(),
        })
    }

    /// Runs the conversation. `greet` is false after STARTTLS (no second banner, RFC 3207 §4.2).
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        mut stream: S,
        greet: bool,
    ) -> io::Result<Ending<S>> {
        let mut shutdown = self.ctx.shutdown.clone();
        if greet {
            let banner = Reply::owned(
                220,
                "2.0.0",
                format!("{} ESMTP cachet", self.runtime.config.server.hostname),
            );
            banner.write_to(&mut self.out);
        }
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut start = 0usize;
        loop {
            // Handle every complete line already buffered (pipelining), then flush.
            loop {
                let pending = &buf[start..];
                let (line_len, bare) = match find_crlf(pending) {
                    LineEnd::Found(n) => (n, false),
                    LineEnd::Bare => (0, true),
                    LineEnd::Incomplete => break,
                };
                if bare {
                    self.reply(reply::BARE_NEWLINE);
                    self.ctx.metrics.refused("bare_newline");
                    self.send(&mut stream).await?;
                    return Ok(Ending::Closed);
                }
                let line = buf[start..start + line_len].to_vec();
                start += line_len;
                let step = match self.auth.take() {
                    Some(pending) => self.auth_continue(pending, &line),
                    None => self.command(&line),
                };
                match step {
                    Step::Continue => {}
                    Step::Verify(user, pass) => self.verify(user, pass).await,
                    Step::Rcpt(address) => {
                        let r = self.rcpt(&address).await;
                        self.reply(r);
                    }
                    Step::Close => {
                        self.send(&mut stream).await?;
                        let _ = stream.shutdown().await;
                        return Ok(Ending::Closed);
                    }
                    Step::StartTls => {
                        // CVE-2011-0411: nothing sent before the handshake may be acted on.
                        self.send(&mut stream).await?;
                        return Ok(Ending::StartTls(stream));
                    }
                    Step::Data => {
                        buf.drain(..start);
                        start = 0;
                        match self.receive_data(&mut stream, &mut buf).await? {
                            Step::Close => {
                                self.send(&mut stream).await?;
                                return Ok(Ending::Closed);
                            }
                            _ => continue,
                        }
                    }
                }
                if self.errors > self.runtime.config.server.max_errors {
                    self.reply(reply::TOO_MANY_ERRORS);
                    self.send(&mut stream).await?;
                    return Ok(Ending::Closed);
                }
            }
            buf.drain(..start);
            start = 0;
            if buf.len() > MAX_LINE {
                self.reply(reply::LINE_TOO_LONG);
                self.send(&mut stream).await?;
                return Ok(Ending::Closed);
            }
            if !self.out.is_empty() {
                self.send(&mut stream).await?;
                self.out.clear();
            }
            if *shutdown.borrow() {
                self.reply(reply::SHUTTING_DOWN);
                self.send(&mut stream).await?;
                return Ok(Ending::Closed);
            }
            let n = tokio::select! {
                r = read_more(&mut stream, &mut buf, self.runtime.config.server.idle_timeout) => r?,
                _ = shutdown.changed() => None,
            };
            match n {
                Some(0) => return Ok(Ending::Closed),
                Some(_) => {}
                None if *shutdown.borrow() => continue,
                None => {
                    self.reply(reply::IDLE_TIMEOUT);
                    self.send(&mut stream).await?;
                    return Ok(Ending::Closed);
                }
            }
        }
    }

    /// Writes and flushes the batched replies within `server.idle_timeout`: a client that stops
    /// reading (its window full) must not hold a connection slot for ever.
    async fn send<S: AsyncWrite + Unpin>(&self, stream: &mut S) -> io::Result<()> {
        let limit = self.runtime.config.server.idle_timeout;
        let write = async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read our replies within server.idle_timeout",
            )),
        }
    }

    fn reply(&mut self, r: Reply) {
        if r.code >= 400 {
            self.errors += 1;
        }
        r.write_to(&mut self.out);
    }

    fn command(&mut self, line: &[u8]) -> Step {
        // smtp-proto wraps SIZE numbers past usize::MAX (a huge SIZE became a small one): read
        // the digits ourselves first.
        if line.len() > 4
            && line[..4].eq_ignore_ascii_case(b"MAIL")
            && declared_size(line)
                .is_some_and(|n| n > self.runtime.config.server.max_message_size as u128)
        {
            self.ctx.metrics.refused("size");
            self.reply(reply::SIZE_INVALID);
            return Step::Continue;
        }
        let parsed = Request::parse(&mut line.iter());
        let req = match parsed {
            Ok(r) => r,
            Err(e) => {
                let r = match e {
                    ProtoError::UnknownCommand => reply::SYNTAX_ERROR,
                    ProtoError::InvalidSenderAddress | ProtoError::InvalidRecipientAddress => {
                        reply::BAD_ADDRESS
                    }
                    ProtoError::UnsupportedParameter { .. }
                    | ProtoError::InvalidParameter { .. } => reply::BAD_PARAMETER,
                    ProtoError::SyntaxError { syntax } => {
                        Reply::owned(501, "5.5.4", format!("Syntax: {syntax}"))
                    }
                    _ => reply::SYNTAX_ERROR,
                };
                self.reply(r);
                return Step::Continue;
            }
        };
        match req {
            Request::Ehlo { host } => {
                self.helo = Some(host.into_owned());
                self.tx = None;
                self.ehlo_reply();
            }
            Request::Helo { host } => {
                self.helo = Some(host.into_owned());
                self.tx = None;
                let r = Reply::owned(250, "", self.runtime.config.server.hostname.clone());
                self.reply(r);
            }
            Request::Mail { from } => {
                let r = self.mail(from.address.as_ref(), from.flags, from.size);
                self.reply(r);
            }
            // Answered in `run`: the policy check may wait for a directory lookup.
            Request::Rcpt { to } => return Step::Rcpt(to.address.into_owned()),
            Request::Data => match &self.tx {
                Some(tx) if !tx.recipients.is_empty() => return Step::Data,
                Some(_) => self.reply(reply::NEED_RCPT),
                None => self.reply(reply::NEED_MAIL),
            },
            Request::Rset => {
                self.tx = None;
                self.reply(reply::RESET);
            }
            Request::Noop { .. } => self.reply(reply::OK),
            Request::Quit => {
                self.reply(reply::BYE);
                return Step::Close;
            }
            Request::Vrfy { .. } => self.reply(reply::VRFY_REFUSED),
            Request::Expn { .. } => self.reply(reply::EXPN_REFUSED),
            Request::Help { .. } => self.reply(reply::HELP),
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                return self.auth_start(mechanism, initial_response.as_ref());
            }
            Request::StartTls => {
                if self.tls {
                    self.reply(reply::TLS_ALREADY);
                } else if self.runtime.tls.is_none() {
                    self.reply(reply::TLS_UNAVAILABLE);
                } else {
                    self.reply(reply::READY_TLS);
                    return Step::StartTls;
                }
            }
            _ => self.reply(reply::NOT_IMPLEMENTED),
        }
        Step::Continue
    }

    fn ehlo_reply(&mut self) {
        let cfg = &self.runtime.config.server;
        let mut lines = vec![
            cfg.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if !self.tls && self.runtime.tls.is_some() {
            lines.push("STARTTLS".into());
        }
        if self.tls && self.runtime.users.is_some() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
    }

    fn gate(&self) -> Option<Reply> {
        if self.helo.is_none() {
            return Some(reply::NEED_HELO);
        }
        if self.runtime.config.server.require_tls && !self.tls {
            return Some(reply::TLS_REQUIRED);
        }
        None
    }

    fn mail(&mut self, address: &str, flags: u64, size: usize) -> Reply {
        if let Some(r) = self.gate() {
            return r;
        }
        if self.tx.is_some() {
            return reply::NESTED_MAIL;
        }
        let smtputf8 = flags & MAIL_SMTPUTF8 != 0;
        if !address.is_ascii() && !smtputf8 {
            return reply::SMTPUTF8_NEEDED;
        }
        if !address.is_empty() && !plain_address(address) {
            tracing::warn!(client = %self.peer, sender = %address.escape_debug(), "sender address refused: not a plain address");
            self.ctx.metrics.refused("address_form");
            return reply::ADDRESS_FORM;
        }
        if size as u64 > self.runtime.config.server.max_message_size {
            self.ctx.metrics.refused("size");
            return reply::MESSAGE_TOO_BIG;
        }
        let grant = self.grant();
        // The envelope sender must be one the client may use; `<>` (a bounce) is always allowed.
        if let Some(g) = &grant
            && !address.is_empty()
            && !self.runtime.config.submitters.allows(g, address)
        {
            tracing::warn!(client = %self.peer, submitter = %g.name, sender = %address, "sender not allowed for this submitter");
            self.ctx.metrics.refused("sender_not_allowed");
            return reply::SENDER_NOT_ALLOWED;
        }
        self.tx = Some(Transaction {
            sender: address.to_string(),
            smtputf8,
            body_8bit: flags & MAIL_BODY_8BITMIME != 0,
            recipients: Vec::new(),
            grant,
        });
        reply::SENDER_OK
    }

    async fn rcpt(&mut self, address: &str) -> Reply {
        if let Some(r) = self.gate() {
            return r;
        }
        let cfg = &self.runtime.config.server;
        let Some(tx) = &self.tx else {
            return reply::NEED_MAIL;
        };
        if address.is_empty() || !address.contains('@') {
            return reply::BAD_ADDRESS;
        }
        if !address.is_ascii() && !tx.smtputf8 {
            return reply::SMTPUTF8_NEEDED;
        }
        if !plain_address(address) {
            tracing::warn!(client = %self.peer, rcpt = %address.escape_debug(), "recipient address refused: not a plain address");
            self.ctx.metrics.refused("address_form");
            return reply::ADDRESS_FORM;
        }
        // Never an open relay: only clients with a grant — relay networks, authenticated
        // users, [[submitter]] entries (RFC 5321 §3.6.2).
        if tx.grant.is_none() {
            tracing::warn!(client = %self.peer, rcpt = address, "relay denied");
            self.ctx.metrics.refused("relay_denied");
            return reply::RELAY_DENIED;
        }
        // The same recipient twice is delivered once (as Postfix does); still 250.
        if tx
            .recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(address))
        {
            return reply::RECIPIENT_OK;
        }
        if tx.recipients.len() >= cfg.max_recipients {
            return reply::TOO_MANY_RECIPIENTS;
        }
        // A recipient that must be encrypted: ask the directories now (bounded by their timeout,
        // answer cached), so a missing certificate is refused during SMTP.
        let (policy, stores) = (&self.runtime.config.policy, &self.runtime.stores);
        if crate::pipeline::rcpt_needs_lookup(policy, stores, &tx.sender, address) {
            let runtime = self.runtime.clone();
            runtime
                .stores
                .prefetch(&[address.to_string()], &self.ctx.metrics)
                .await;
        }
        let Some(tx) = &self.tx else {
            return reply::NEED_MAIL;
        };
        if let Some(refusal) = crate::pipeline::rcpt_check(
            &self.runtime.config.policy,
            &self.runtime.stores,
            &tx.sender,
            address,
        ) {
            tracing::info!(client = %self.peer, sender = %tx.sender, rcpt = address, reply = %refusal, "recipient refused by policy");
            self.ctx.metrics.refused("policy");
            return refusal;
        }
        if let Some(tx) = &mut self.tx {
            tx.recipients.push(address.to_string());
        }
        reply::RECIPIENT_OK
    }

    async fn verify(&mut self, user: String, pass: String) {
        let rt = self.runtime.clone();
        let who = user.clone();
        let ok = tokio::task::spawn_blocking(move || {
            rt.users.as_ref().is_some_and(|u| u.verify(&who, &pass))
        })
        .await
        .unwrap_or(false);
        // `user` as a str value, not `%user`: both log formats quote and escape it (CR, LF).
        if ok {
            tracing::info!(client = %self.peer, user = user.as_str(), "authenticated");
            self.authenticated = Some(user);
            self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
        } else {
            tracing::warn!(client = %self.peer, user = user.as_str(), "authentication failed");
            self.ctx.metrics.refused("auth_failed");
            self.reply(Reply::new(
                535,
                "5.7.8",
                "Authentication credentials invalid",
            ));
        }
    }

    fn auth_start(&mut self, mechanism: u64, initial: &str) -> Step {
        let r = if self.runtime.users.is_none() {
            reply::NOT_IMPLEMENTED
        } else if !self.tls {
            Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            )
        } else if self.authenticated.is_some() {
            Reply::new(503, "5.5.1", "Already authenticated")
        } else if self.tx.is_some() {
            reply::BAD_SEQUENCE
        } else if mechanism == smtp_proto::AUTH_PLAIN {
            if initial.is_empty() || initial == "=" {
                self.auth = Some(AuthStep::Plain);
                Reply::new(334, "", "")
            } else {
                return self.plain(initial);
            }
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            if initial.is_empty() {
                self.auth = Some(AuthStep::LoginUser);
                Reply::new(334, "", "VXNlcm5hbWU6")
            } else {
                return self.auth_continue(AuthStep::LoginUser, initial.as_bytes());
            }
        } else {
            Reply::new(504, "5.5.4", "Unrecognized authentication mechanism")
        };
        self.reply(r);
        Step::Continue
    }

    fn plain(&mut self, b64: &str) -> Step {
        match auth::decode_plain(b64) {
            Some((user, pass)) => Step::Verify(user, pass),
            None => {
                self.reply(Reply::new(501, "5.5.2", "Cannot decode AUTH response"));
                Step::Continue
            }
        }
    }

    /// The client's line during an AUTH exchange (base64, or `*` to cancel).
    fn auth_continue(&mut self, step: AuthStep, line: &[u8]) -> Step {
        let text = String::from_utf8_lossy(line).trim_end().to_string();
        if text == "*" {
            self.reply(Reply::new(501, "5.0.0", "Authentication canceled"));
            return Step::Continue;
        }
        let undecodable = Reply::new(501, "5.5.2", "Cannot decode AUTH response");
        match step {
            AuthStep::Plain => self.plain(&text),
            AuthStep::LoginUser => {
                match auth::decode_text(&text) {
                    Some(user) => {
                        self.auth = Some(AuthStep::LoginPass(user));
                        self.reply(Reply::new(334, "", "UGFzc3dvcmQ6"));
                    }
                    None => self.reply(undecodable),
                }
                Step::Continue
            }
            AuthStep::LoginPass(user) => match auth::decode_text(&text) {
                Some(pass) => Step::Verify(user, pass),
                None => {
                    self.reply(undecodable);
                    Step::Continue
                }
            },
        }
    }

    /// DATA: 354, stream into a spool draft, commit, 250. Leftover pipelined bytes stay in `buf`.
    async fn receive_data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut Vec<u8>,
    ) -> io::Result<Step> {
        let tx = self.tx.take().expect("DATA only with a transaction");
        let mut draft = match self.ctx.spool.draft().await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e, "cannot create spool file");
                // Read nothing: the client must not send data after a non-354 reply.
                self.reply(reply::spool_failure(&e));
                return Ok(Step::Continue);
            }
        };
        self.reply(reply::START_DATA);
        self.send(stream).await?;
        self.out.clear();

        let max = self.runtime.config.server.max_message_size;
        let mut reader = DataReader::new();
        let mut body: Vec<u8> = Vec::with_capacity(DATA_FLUSH + READ_CHUNK);
        let mut too_big = false;
        // The first failed spool write (a full disk: 452, not 451): the rest of DATA is read and
        // dropped, and the reply says why.
        let mut write_error: Option<io::Error> = None;
        let mut total: u64 = 0;
        if let Some(d) = &mut draft {
            let received = self.received_header(d.id.as_str(), &tx);
            if let Err(e) = d.write(received.as_bytes()).await {
                tracing::error!(error = %e, "spool write failed");
                write_error = Some(e);
            }
        }
        // The first bytes of the message, for the end-of-DATA checks on From: (who may send as
        // whom, and whether a required signature is possible).
        let mut head: Vec<u8> = Vec::new();
        loop {
            let before = body.len();
            let feed = reader.feed(buf, &mut body);
            let consumed = match feed {
                Feed::End { consumed } => consumed,
                _ => buf.len(),
            };
            total += (body.len() - before) as u64;
            if head.len() < HEAD_MAX {
                let take = (HEAD_MAX - head.len()).min(body.len() - before);
                head.extend_from_slice(&body[before..before + take]);
            }
            if total > max {
                too_big = true;
            }
            if too_big || write_error.is_some() {
                body.clear();
            } else if body.len() >= DATA_FLUSH || matches!(feed, Feed::End { .. }) {
                if let Some(d) = &mut draft
                    && let Err(e) = d.write(&body).await
                {
                    tracing::error!(error = %e, "spool write failed");
                    write_error = Some(e);
                }
                body.clear();
            }
            match feed {
                Feed::BareNewline => {
                    tracing::warn!(client = %self.peer, "bare CR or LF in DATA; closing");
                    self.ctx.metrics.refused("bare_newline");
                    self.reply(reply::BARE_NEWLINE);
                    return Ok(Step::Close);
                }
                Feed::End { .. } => {
                    buf.drain(..consumed);
                    break;
                }
                Feed::More => {
                    buf.clear();
                    match read_more(stream, buf, self.runtime.config.server.idle_timeout).await? {
                        Some(0) => return Ok(Step::Close),
                        Some(_) => {}
                        None => {
                            self.reply(reply::IDLE_TIMEOUT);
                            return Ok(Step::Close);
                        }
                    }
                }
            }
        }
        if too_big {
            self.ctx.metrics.refused("size");
            self.reply(reply::MESSAGE_TOO_BIG);
            return Ok(Step::Continue);
        }
        let draft = draft.expect("created above");
        if let Some(e) = write_error {
            self.reply(reply::spool_failure(&e));
            return Ok(Step::Continue);
        }
        if let Some(refusal) = self.submitter_check(&tx, &head) {
            self.reply(refusal);
            return Ok(Step::Continue);
        }
        if self.runtime.config.policy.any_sign_required()
            && let Some(refusal) = crate::pipeline::data_check(
                &self.runtime.config.policy,
                &self.runtime.stores,
                &tx.sender,
                &tx.recipients,
                &head,
            )
        {
            tracing::info!(client = %self.peer, sender = %tx.sender, reply = %refusal, "message refused by policy");
            self.ctx.metrics.refused("policy");
            self.reply(refusal);
            return Ok(Step::Continue);
        }
        let mut env = Envelope::new(
            tx.sender.clone(),
            tx.recipients.clone(),
            self.peer.ip().to_string(),
            self.helo.clone().unwrap_or_default(),
        );
        env.smtputf8 = tx.smtputf8;
        env.body_8bit = tx.body_8bit;
        if let Some(g) = &tx.grant {
            env.submitter = Some(g.name.clone());
            env.remove_headers = g.require_header.iter().map(|h| h.name.clone()).collect();
        }
        match draft.commit(env).await {
            Ok(id) => {
                tracing::info!(queue_id = %id, sender = %tx.sender, recipients = tx.recipients.len(), size = total, client = %self.peer, tls = self.tls, "accepted");
                self.ctx.metrics.accepted();
                let _ = self.ctx.queued.send(id.clone());
                self.reply(reply::queued(&id));
            }
            Err(e) => {
                tracing::error!(error = %e, "spool commit failed");
                self.reply(reply::spool_failure(&e));
            }
        }
        Ok(Step::Continue)
    }

    /// End of DATA: every `From:` address must be one this client may use, and a submitter
    /// that must prove its tenant carries the required header. Refused here, never signed.
    fn submitter_check(&self, tx: &Transaction, head: &[u8]) -> Option<Reply> {
        let grant = tx.grant.as_ref()?;
        let authors = crate::pipeline::headers::authors(head);
        let subs = &self.runtime.config.submitters;
        if let Some(bad) = authors.iter().find(|a| !subs.allows(grant, a)) {
            tracing::warn!(client = %self.peer, submitter = %grant.name, sender = %tx.sender, from = %bad.escape_debug(), "From: address not allowed for this submitter");
            self.ctx.metrics.refused("from_not_allowed");
            return Some(reply::FROM_NOT_ALLOWED);
        }
        if let Some(req) = &grant.require_header
            && !crate::pipeline::headers::has_field(head, &req.name, &req.value)
        {
            tracing::warn!(client = %self.peer, submitter = %grant.name, header = %req.name, "required submitter header missing or wrong");
            self.ctx.metrics.refused("submitter_header");
            return Some(reply::SUBMITTER_HEADER_MISSING);
        }
        None
    }

    /// RFC 5321 §4.4 trace header. No DNS lookups: the client is named by HELO and IP.
    fn received_header(&self, id: &str, tx: &Transaction) -> String {
        // RFC 3848 / RFC 6531 "with" keywords.
        let with = format!(
            "{}SMTP{}{}",
            if tx.smtputf8 { "UTF8" } else { "E" },
            if self.tls { "S" } else { "" },
            if self.authenticated.is_some() {
                "A"
            } else {
                ""
            }
        );
        let helo: String = self
            .helo
            .as_deref()
            .unwrap_or("unknown")
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        let for_clause = match tx.recipients.as_slice() {
            [one] => format!("\r\n\tfor <{one}>"),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ([{}])\r\n\tby {} (cachet) with {with} id {id}{for_clause};\r\n\t{}\r\n",
            self.peer.ip(),
            self.runtime.config.server.hostname,
            crate::date::rfc5322(std::time::SystemTime::now())
        )
    }
}

/// The number in a `SIZE=` parameter of a MAIL command, read without overflow
/// (`u128::MAX` for absurdly long numbers). `None` when there is none.
fn declared_size(line: &[u8]) -> Option<u128> {
    let text = std::str::from_utf8(line).ok()?;
    let params = &text[text.rfind('>')? + 1..];
    let value = params.split_ascii_whitespace().find_map(|p| {
        p.get(..5)
            .filter(|k| k.eq_ignore_ascii_case("SIZE="))
            .map(|_| &p[5..])
    })?;
    if value.len() > 30 {
        return Some(u128::MAX);
    }
    value.parse::<u128>().ok().or(Some(u128::MAX))
}

/// True for an address that reads the same to every party: one `@`, a dot-atom local part
/// (RFC 5322 §3.2.3 atext, UTF-8 allowed for SMTPUTF8) and a domain or address literal. The
/// parser has already removed quotes from a quoted local part, so what could only be written
/// quoted (spaces, `<`, `>`, `"`, `\`, control characters, a second `@`) is refused: the policy
/// must judge exactly the string the upstream receives.
pub fn plain_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    if address.len() > 254 || local.is_empty() || local.len() > 64 || domain.is_empty() {
        return false;
    }
    // Non-ASCII (SMTPUTF8, RFC 6532 UTF8-non-ascii) but never a control or a space of any kind.
    let utf8 = |c: char| !c.is_ascii() && !c.is_control() && !c.is_whitespace();
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || utf8(c);
    let dot_atom = |s: &str, ok: &dyn Fn(char) -> bool| {
        !s.starts_with('.')
            && !s.ends_with('.')
            && !s.contains("..")
            && s.chars().all(|c| c == '.' || ok(c))
    };
    if !dot_atom(local, &atext) {
        return false;
    }
    if let Some(lit) = domain.strip_prefix('[') {
        return lit.strip_suffix(']').is_some_and(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_hexdigit() || ".:".contains(c) || c.is_ascii_alphanumeric())
        });
    }
    // Labels of letters, digits and hyphens (or U-label characters), never starting or ending
    // with a hyphen (RFC 5321 §4.1.2 sub-domain).
    dot_atom(domain, &|c: char| {
        c.is_ascii_alphanumeric() || c == '-' || utf8(c)
    }) && domain
        .split('.')
        .all(|l| !l.starts_with('-') && !l.ends_with('-'))
}

enum LineEnd {
    Found(usize),
    Bare,
    Incomplete,
}

/// Finds the end of the first line: must be CRLF; a lone CR or LF is `Bare`.
fn find_crlf(buf: &[u8]) -> LineEnd {
    match memchr::memchr2(b'\r', b'\n', buf) {
        None => LineEnd::Incomplete,
        Some(i) if buf[i] == b'\n' => LineEnd::Bare,
        Some(i) => match buf.get(i + 1) {
            None => LineEnd::Incomplete,
            Some(b'\n') => LineEnd::Found(i + 2),
            Some(_) => LineEnd::Bare,
        },
    }
}

/// Reads more bytes; `None` on idle timeout.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    idle: std::time::Duration,
) -> io::Result<Option<usize>> {
    buf.reserve(READ_CHUNK);
    match tokio::time::timeout(idle, stream.read_buf(buf)).await {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests;
