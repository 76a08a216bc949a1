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
mod ehlo;
mod inbound;
mod login;
mod mail;
mod message;
mod rcpt;

use mail::declared_size;
pub use mail::plain_address;

use crate::policy::submitter::{Client, ClientCert, Grant};
use crate::reply::{self, Reply};
use crate::runtime::Runtime;
use crate::spool::{Direction, Envelope, Spool};
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
    /// Which listener the client came in on: outbound (submission: grants, AUTH, policy at
    /// RCPT) or inbound (`[inbound]`: relay_networks MTAs, local recipients only; `inbound.rs`).
    direction: Direction,
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
            direction: Direction::Outbound,
        }
    }

    /// Marks this session as one on the `[inbound]` listener (set by the listener).
    pub fn with_direction(mut self, direction: Direction) -> Session {
        self.direction = direction;
        self
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
        if let Some(refusal) = self.inbound_refusal() {
            self.reply(refusal);
            self.send(&mut stream).await?;
            let _ = stream.shutdown().await;
            return Ok(Ending::Closed);
        }
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
