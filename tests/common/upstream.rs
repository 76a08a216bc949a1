//! A recording upstream SMTP server on 127.0.0.1 (pure tokio + tokio-rustls) for the gateway to relay to.
//! It records every accepted message byte for byte and every command line per connection, speaks STARTTLS,
//! implicit TLS or plaintext, and replays scripted faults (greeting / MAIL / RCPT / end of DATA): replies,
//! a silent or stalled peer, a TCP reset in the middle of DATA, a TLS handshake that fails or presents an
//! untrusted certificate, replies sent one byte at a time. `Fault::after(n)` lets the first `n` attempts
//! through (a fault in the middle of a run). Every DATA transfer is kept, complete or cut off
//! (`data_attempts`), so a test can check what any attempt put on the wire.
//! End of DATA is strictly `<CRLF>.<CRLF>` and dot-unstuffing is done exactly once (RFC 5321 §4.5.2).
//! Like a strict real server, it refuses `BODY=8BITMIME` when it does not offer 8BITMIME (555) and a
//! non-ASCII address in a transaction without `SMTPUTF8` (553 5.6.7).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

use super::pki::TestPki;

/// How the upstream offers TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plaintext greeting, STARTTLS advertised in EHLO (the default; `smtp://`).
    Starttls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
    /// No TLS at all; STARTTLS is not advertised and answered 502.
    None,
}

/// Where a scripted fault applies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The 220 greeting; a fault here is sent instead of 220 and the connection is closed.
    Greeting,
    /// The reply to `MAIL FROM`.
    Mail,
    /// The reply to `RCPT TO` for this address (compared case-insensitively, without angle brackets).
    Rcpt(String),
    /// The reply to any `RCPT TO` without a more specific `Rcpt(addr)` fault.
    AnyRcpt,
    /// The reply to `DATA` itself (instead of 354); a `Stall` here comes after the 354, while the
    /// client sends the message (a peer that stopped reading).
    Data,
    /// The reply after the final `.` (the message is then not recorded).
    DataEnd,
    /// The TLS handshake (after STARTTLS's 220, or at once for implicit TLS):
    /// [`Action::HandshakeFailure`], [`Action::UntrustedCertificate`] or `Disconnect`.
    Handshake,
}

/// What a scripted fault does at its stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reply `code text` instead of the normal reply. A 421 then closes the connection (RFC 5321 §3.8).
    Reply(u16, String),
    /// Close the connection without replying (at `DataEnd`: after reading the whole message).
    Disconnect,
    /// Wait this long, then behave normally (a slow upstream, for timeouts and crash-midway tests).
    Delay(Duration),
    /// Stop reading and replying for this long, then close without a word (a hung peer). At `Data`:
    /// after the 354, so the client's writes of the message stall once the socket buffers are full.
    Stall(Duration),
    /// At `Data`: the 354, then read this many bytes of the message and reset the connection (TCP RST,
    /// `SO_LINGER` 0): a peer that crashed in the middle of the transfer.
    ResetAfter(usize),
    /// At `Handshake`: answer the ClientHello with a fatal `handshake_failure` alert (RFC 8446 §6.2:
    /// no protocol or cipher suite in common) and close.
    HandshakeFailure,
    /// At `Handshake`: present a certificate from a CA nobody trusts (a certificate swapped mid-run).
    UntrustedCertificate,
    /// Send this and every later reply of the connection one byte at a time, this long apart (at
    /// `Greeting`: the whole session crawls). The session otherwise goes on normally.
    Trickle(Duration),
}

/// A fault for the first `times` attempts at a stage (or always when `None`), then normal behaviour.
#[derive(Clone, Debug)]
pub struct Fault {
    pub action: Action,
    /// Remaining attempts that get the fault; `None` = always.
    pub times: Option<u32>,
    /// Attempts at this stage that still pass untouched before the fault starts.
    pub skip: u32,
}

impl Fault {
    /// Reply `code text` (e.g. `421`, `"4.3.2 try later"`) to the first `k` attempts, then behave normally.
    pub fn times(k: u32, code: u16, text: &str) -> Fault {
        Fault {
            action: Action::Reply(code, text.to_string()),
            times: Some(k),
            skip: 0,
        }
    }
    /// Reply `code text` to every attempt.
    pub fn always(code: u16, text: &str) -> Fault {
        Fault {
            action: Action::Reply(code, text.to_string()),
            times: None,
            skip: 0,
        }
    }
    /// Drop the connection without a reply, `times` times (`None` = always).
    pub fn disconnect(times: Option<u32>) -> Fault {
        Fault {
            action: Action::Disconnect,
            times,
            skip: 0,
        }
    }
    /// Stall `delay` before the normal reply, `times` times (`None` = always).
    pub fn delay(times: Option<u32>, delay: Duration) -> Fault {
        Fault {
            action: Action::Delay(delay),
            times,
            skip: 0,
        }
    }
    /// Go silent for `duration` (neither read nor reply), then close; `times` times (`None` = always).
    pub fn stall(times: Option<u32>, duration: Duration) -> Fault {
        Fault {
            action: Action::Stall(duration),
            times,
            skip: 0,
        }
    }
    /// At `Data`: read `bytes` of the message, then reset the connection; `times` times.
    pub fn reset_after(times: Option<u32>, bytes: usize) -> Fault {
        Fault {
            action: Action::ResetAfter(bytes),
            times,
            skip: 0,
        }
    }
    /// At `Handshake`: a fatal `handshake_failure` alert instead of a ServerHello; `times` times.
    pub fn handshake_failure(times: Option<u32>) -> Fault {
        Fault {
            action: Action::HandshakeFailure,
            times,
            skip: 0,
        }
    }
    /// At `Handshake`: present an untrusted certificate; `times` times.
    pub fn untrusted_certificate(times: Option<u32>) -> Fault {
        Fault {
            action: Action::UntrustedCertificate,
            times,
            skip: 0,
        }
    }
    /// Send replies one byte per `per_byte` from this stage on; `times` times.
    pub fn trickle(times: Option<u32>, per_byte: Duration) -> Fault {
        Fault {
            action: Action::Trickle(per_byte),
            times,
            skip: 0,
        }
    }
    /// Let the first `n` attempts at the stage pass untouched, then apply the fault.
    pub fn after(mut self, n: u32) -> Fault {
        self.skip = n;
        self
    }
}

/// One message the upstream accepted (250 after DATA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Reverse path without angle brackets; empty for the null sender `<>`.
    pub mail_from: String,
    /// Accepted recipients (faulted ones are left out), without angle brackets, in RCPT order.
    pub rcpt_to: Vec<String>,
    /// Exactly the message bytes after dot-unstuffing, without the final `.CRLF`.
    pub data: Vec<u8>,
    /// Whether the message came over TLS (implicit or after STARTTLS).
    pub tls: bool,
}

impl Received {
    /// `data` without the topmost `Received:` header field (with its folded lines), when the message starts
    /// with one: the trace field the gateway prepends, so the rest can be compared byte for byte.
    pub fn data_without_first_received(&self) -> Vec<u8> {
        strip_first_received(&self.data)
    }
}

/// One DATA transfer as it went over the wire, whether or not it completed: what a test checks to
/// know that no attempt, not even one cut off, carried a message in a form it must never have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataAttempt {
    /// Recipients accepted in this transaction.
    pub rcpt_to: Vec<String>,
    /// The message bytes read (dot-unstuffed), all of them or as far as the transfer got.
    pub data: Vec<u8>,
    /// Whether the final `.` arrived.
    pub complete: bool,
    /// Whether the transfer was inside TLS.
    pub tls: bool,
}

/// `data` without its first header field when that field is `Received:` (case-insensitive), folded
/// continuation lines (starting with space or tab) included; otherwise `data` unchanged.
pub fn strip_first_received(data: &[u8]) -> Vec<u8> {
    if data.len() < 9 || !data[..9].eq_ignore_ascii_case(b"received:") {
        return data.to_vec();
    }
    let mut pos = 0;
    loop {
        match data[pos..].iter().position(|&b| b == b'\n') {
            None => return Vec::new(),
            Some(i) => pos += i + 1,
        }
        if !matches!(data.get(pos), Some(b' ') | Some(b'\t')) {
            return data[pos..].to_vec();
        }
    }
}

/// One command line as the upstream saw it (without CRLF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub line: String,
    /// Whether the line arrived inside TLS.
    pub tls: bool,
    /// Whether more of the client's bytes were already waiting when this line was read: the
    /// client sent what follows without waiting for this line's reply (PIPELINING).
    pub more: bool,
}

/// Options for [`Upstream::start`].
#[derive(Clone)]
pub struct UpstreamOptions {
    pub tls: UpstreamTls,
    /// Present a certificate from a separate CA that nobody trusts (`ca_path()` still names the trusted CA).
    pub untrusted_cert: bool,
    /// Answer `530 5.7.0` to MAIL until TLS is up (Starttls mode).
    pub require_tls: bool,
    /// `(user, password)`: advertise `AUTH PLAIN LOGIN` (in TLS, or always in plaintext mode) and answer
    /// `530 5.7.0` to MAIL until the client authenticated with exactly these.
    pub auth: Option<(String, String)>,
    /// Faults in force from the start; change them later with [`Upstream::faults`].
    pub faults: Vec<(Stage, Fault)>,
    /// Bind this address instead of 127.0.0.1:0 (e.g. to come back on the same port after `stop`).
    pub bind: Option<SocketAddr>,
    /// Reuse this PKI (its CA is the trusted one) instead of generating a new one.
    pub pki: Option<Arc<TestPki>>,
    /// Hostname in the greeting and EHLO reply.
    pub hostname: String,
    /// Close the connection after each accepted message (250 after DATA), as servers with a
    /// one-message-per-connection limit do: the client's next message needs a new connection.
    pub close_after_message: bool,
    /// Idle timeout per read; the connection is dropped after it.
    pub idle_timeout: Duration,
    /// Advertise 8BITMIME (the default). Without it, `MAIL ... BODY=8BITMIME` gets `555 5.5.4`.
    pub eight_bit_mime: bool,
    /// Advertise PIPELINING (the default; RFC 2920).
    pub pipelining: bool,
    /// Answer 354 to DATA even when no recipient was accepted, and refuse the (empty) message
    /// after the dot: the server RFC 2920 §3.1 warns pipelining clients about.
    pub data_without_recipients: bool,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            tls: UpstreamTls::Starttls,
            untrusted_cert: false,
            require_tls: false,
            auth: None,
            faults: Vec::new(),
            bind: None,
            pki: None,
            hostname: "upstream.test".to_string(),
            close_after_message: false,
            idle_timeout: Duration::from_secs(30),
            eight_bit_mime: true,
            pipelining: true,
            data_without_recipients: false,
        }
    }
}

impl UpstreamOptions {
    pub fn starttls() -> Self {
        Self::default()
    }
    pub fn implicit_tls() -> Self {
        UpstreamOptions {
            tls: UpstreamTls::Implicit,
            ..Self::default()
        }
    }
    pub fn plain() -> Self {
        UpstreamOptions {
            tls: UpstreamTls::None,
            ..Self::default()
        }
    }
    /// Add a fault in force from the start.
    pub fn fault(mut self, stage: Stage, fault: Fault) -> Self {
        self.faults.push((stage, fault));
        self
    }
    /// Present a certificate that does not chain to the trusted test CA.
    pub fn untrusted(mut self) -> Self {
        self.untrusted_cert = true;
        self
    }
    /// Do not offer 8BITMIME (a 7-bit-only upstream).
    pub fn without_8bitmime(mut self) -> Self {
        self.eight_bit_mime = false;
        self
    }
    /// Do not offer PIPELINING (every command waits for its reply).
    pub fn without_pipelining(mut self) -> Self {
        self.pipelining = false;
        self
    }
}

/// A cloneable, mutable handle on the fault script of a running upstream.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<HashMap<Stage, Fault>>>);

impl Faults {
    /// Set (or replace) the fault for `stage`.
    pub fn set(&self, stage: Stage, fault: Fault) {
        let stage = normalise(stage);
        self.0.lock().unwrap().insert(stage, fault);
    }
    /// Remove the fault for `stage`.
    pub fn remove(&self, stage: Stage) {
        self.0.lock().unwrap().remove(&normalise(stage));
    }
    /// Remove every fault.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
    /// Take one attempt at `stage`: the fault reply if one is in force (and count it down).
    fn take(&self, stage: &Stage) -> Option<Action> {
        let mut map = self.0.lock().unwrap();
        let fault = map.get_mut(stage)?;
        if fault.skip > 0 {
            fault.skip -= 1;
            return None;
        }
        match &mut fault.times {
            None => Some(fault.action.clone()),
            Some(0) => None,
            Some(n) => {
                *n -= 1;
                Some(fault.action.clone())
            }
        }
    }

    /// Attempts left for the fault at `stage` (`Some(None)` = always; `None` = no fault set).
    pub fn remaining(&self, stage: Stage) -> Option<Option<u32>> {
        self.0
            .lock()
            .unwrap()
            .get(&normalise(stage))
            .map(|f| f.times)
    }
}

fn normalise(stage: Stage) -> Stage {
    match stage {
        Stage::Rcpt(a) => Stage::Rcpt(
            a.trim_matches(|c| c == '<' || c == '>')
                .to_ascii_lowercase(),
        ),
        s => s,
    }
}

#[derive(Default)]
struct Record {
    received: Vec<Received>,
    data_attempts: Vec<DataAttempt>,
    connections: Vec<Vec<Seen>>,
    /// Bytes the client pipelined after STARTTLS before the handshake, per connection (a client bug).
    pipelined_after_starttls: usize,
    /// Users that authenticated successfully, in order.
    authenticated: Vec<String>,
    /// Connections whose session has ended (either side closed, or the idle timeout): the moment a test can
    /// know a pooled client connection has gone stale.
    closed: usize,
}

struct Shared {
    opts: UpstreamOptions,
    faults: Faults,
    record: Mutex<Record>,
    acceptor: TlsAcceptor,
    /// For `Action::UntrustedCertificate`: a certificate from a CA nobody trusts (made on first use).
    untrusted_acceptor: std::sync::OnceLock<TlsAcceptor>,
}

/// A running recording upstream; stops (all its tasks aborted) when dropped.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    pki: Arc<TestPki>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Upstream {
    /// Bind 127.0.0.1:0 (or `opts.bind`) and start serving on the current tokio runtime.
    pub async fn start(opts: UpstreamOptions) -> Upstream {
        let pki = opts
            .pki
            .clone()
            .unwrap_or_else(|| Arc::new(TestPki::new("cachet test upstream CA")));
        let server_config = if opts.untrusted_cert {
            TestPki::new("cachet UNTRUSTED CA").server_config()
        } else {
            pki.server_config()
        };
        let bind = opts.bind.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("upstream bind {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let faults = Faults::default();
        for (stage, fault) in &opts.faults {
            faults.set(stage.clone(), fault.clone());
        }
        let shared = Arc::new(Shared {
            opts,
            faults,
            record: Mutex::new(Record::default()),
            acceptor: TlsAcceptor::from(server_config),
            untrusted_acceptor: std::sync::OnceLock::new(),
        });
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let shared = shared.clone();
            let tasks = tasks.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let index = {
                        let mut rec = shared.record.lock().unwrap();
                        rec.connections.push(Vec::new());
                        rec.connections.len() - 1
                    };
                    let shared = shared.clone();
                    let handle = tokio::spawn(async move {
                        let _ = serve(shared.clone(), stream, index).await;
                        shared.record.lock().unwrap().closed += 1;
                    });
                    tasks.lock().unwrap().push(handle.abort_handle());
                }
            })
        };
        tasks.lock().unwrap().push(accept.abort_handle());
        Upstream {
            addr,
            shared,
            pki,
            tasks,
        }
    }

    /// The listening address (always 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The TLS mode this upstream runs in.
    pub fn tls_mode(&self) -> UpstreamTls {
        self.shared.opts.tls
    }
    /// The URL to put in the gateway's `[upstream] url` (`smtp://` or `smtps://`).
    pub fn url(&self) -> String {
        match self.shared.opts.tls {
            UpstreamTls::Implicit => format!("smtps://{}", self.addr),
            _ => format!("smtp://{}", self.addr),
        }
    }
    /// Like `url()` but naming `host` (e.g. `localhost`, also in the certificate) instead of 127.0.0.1.
    pub fn url_with_host(&self, host: &str) -> String {
        let scheme = if self.shared.opts.tls == UpstreamTls::Implicit {
            "smtps"
        } else {
            "smtp"
        };
        format!("{scheme}://{host}:{}", self.addr.port())
    }
    /// The trusted test PKI (its CA signed the server cert unless `untrusted_cert`).
    pub fn pki(&self) -> &Arc<TestPki> {
        &self.pki
    }
    /// PEM file of the trusted test CA (for `[upstream] ca_file` or a client).
    pub fn ca_path(&self) -> std::path::PathBuf {
        self.pki.ca_path()
    }
    /// The mutable fault script.
    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }
    /// Every accepted message so far, in order of acceptance.
    pub fn received(&self) -> Vec<Received> {
        self.shared.record.lock().unwrap().received.clone()
    }
    /// Every DATA transfer so far, complete or cut off (by a fault or the client), in order.
    pub fn data_attempts(&self) -> Vec<DataAttempt> {
        self.shared.record.lock().unwrap().data_attempts.clone()
    }
    /// How many TCP connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.record.lock().unwrap().connections.len()
    }
    /// How many connections have ended so far (closed by either side or by the idle timeout).
    pub fn closed_connections(&self) -> usize {
        self.shared.record.lock().unwrap().closed
    }
    /// Every command line seen, per connection, in order (DATA content is not included).
    pub fn commands(&self) -> Vec<Vec<Seen>> {
        self.shared.record.lock().unwrap().connections.clone()
    }
    /// Every `MAIL FROM` line seen, in order, with its parameters (`BODY=8BITMIME`, `SMTPUTF8`).
    pub fn mail_commands(&self) -> Vec<String> {
        let rec = self.shared.record.lock().unwrap();
        rec.connections
            .iter()
            .flatten()
            .filter(|s| s.line.len() >= 5 && s.line[..5].eq_ignore_ascii_case("MAIL "))
            .map(|s| s.line.clone())
            .collect()
    }
    /// Users that authenticated successfully (`UpstreamOptions::auth`), in order.
    pub fn authenticated(&self) -> Vec<String> {
        self.shared.record.lock().unwrap().authenticated.clone()
    }
    /// Per connection, the command lines that arrived outside TLS (to assert nothing but EHLO and STARTTLS
    /// went in the clear).
    pub fn plaintext_commands(&self) -> Vec<Vec<String>> {
        let rec = self.shared.record.lock().unwrap();
        rec.connections
            .iter()
            .map(|c| {
                c.iter()
                    .filter(|s| !s.tls)
                    .map(|s| s.line.clone())
                    .collect()
            })
            .collect()
    }
    /// How many connections sent bytes after STARTTLS before the TLS handshake (those bytes were discarded).
    pub fn pipelined_after_starttls(&self) -> usize {
        self.shared.record.lock().unwrap().pipelined_after_starttls
    }
    /// Wait until at least `n` messages were accepted or `timeout` passed; returns what was received either way.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    /// Wait until at least `n` connections were accepted or `timeout` passed; returns the count.
    pub async fn wait_for_connections(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.connections();
            if got >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    /// Wait until at least `n` connections have ended or `timeout` passed; returns the count.
    pub async fn wait_for_closed(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.closed_connections();
            if got >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    /// Stop listening and drop every open connection (the port is then free to bind again).
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; be generous).
const MAX_LINE: usize = 4096;
/// Largest message recorded.
const MAX_DATA: usize = 64 * 1024 * 1024;

/// What is left to do after a fault.
enum Outcome {
    /// No fault (or only a delay): give the normal reply.
    Proceed,
    /// The fault reply was sent; wait for the next command.
    Replied,
    /// Close the connection.
    Close,
}

struct Conn {
    io: BufReader<Box<dyn Io>>,
    tls: bool,
    index: usize,
    shared: Arc<Shared>,
    /// A second handle on the TCP socket, to reset it (`Action::ResetAfter`) whatever `io` wraps.
    socket: Option<std::net::TcpStream>,
    /// `Action::Trickle`: send replies one byte per this long.
    trickle: Option<Duration>,
}

impl Conn {
    async fn reply(&mut self, code: u16, text: &str) -> std::io::Result<()> {
        let mut out = String::new();
        let lines: Vec<&str> = text.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.push_str(&format!("{code}{sep}{line}\r\n"));
        }
        match self.trickle {
            None => {
                self.io.get_mut().write_all(out.as_bytes()).await?;
                self.io.get_mut().flush().await
            }
            Some(per_byte) => {
                for (i, byte) in out.bytes().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(per_byte).await;
                    }
                    self.io.get_mut().write_all(&[byte]).await?;
                    self.io.get_mut().flush().await?;
                }
                Ok(())
            }
        }
    }

    /// Reset the connection (RST instead of FIN): `SO_LINGER` 0 on the socket, then every handle
    /// on it is dropped by the caller returning `Outcome::Close`.
    fn reset(&mut self) {
        self.log("<fault: connection reset>");
        if let Some(socket) = self.socket.take()
            && let Ok(s) = TcpStream::from_std(socket)
        {
            let _ = s.set_zero_linger();
        }
    }

    /// Read one line including its terminator (LF or CRLF); `None` at EOF or idle timeout.
    async fn read_line(&mut self, max: usize) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let idle = self.shared.opts.idle_timeout;
        let n = tokio::time::timeout(
            idle,
            (&mut self.io).take(max as u64).read_until(b'\n', &mut buf),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"))??;
        Ok(if n == 0 { None } else { Some(buf) })
    }

    /// Carry out a fault (if any) and tell the caller what is left to do.
    async fn fault(&mut self, action: Option<Action>) -> std::io::Result<Outcome> {
        match action {
            None => Ok(Outcome::Proceed),
            Some(Action::Reply(code, text)) => {
                self.reply(code, &text).await?;
                Ok(if code == 421 {
                    Outcome::Close
                } else {
                    Outcome::Replied
                })
            }
            Some(Action::Disconnect) => {
                self.log("<fault: disconnect>");
                let _ = self.io.get_mut().shutdown().await;
                Ok(Outcome::Close)
            }
            Some(Action::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(Outcome::Proceed)
            }
            Some(Action::Stall(d)) => {
                self.log("<fault: stall>");
                tokio::time::sleep(d).await;
                Ok(Outcome::Close)
            }
            Some(Action::Trickle(d)) => {
                self.log("<fault: trickle>");
                self.trickle = Some(d);
                Ok(Outcome::Proceed)
            }
            Some(Action::ResetAfter(_)) => {
                self.reset();
                Ok(Outcome::Close)
            }
            // Only meaningful at `Handshake` (see `upgrade`); elsewhere the peer just goes away.
            Some(Action::HandshakeFailure | Action::UntrustedCertificate) => {
                let _ = self.io.get_mut().shutdown().await;
                Ok(Outcome::Close)
            }
        }
    }

    fn log(&self, line: &str) {
        self.log_seen(line, false);
    }

    /// Log a command line just read, noting whether more had already arrived behind it.
    fn log_command(&self, line: &str) {
        self.log_seen(line, !self.io.buffer().is_empty());
    }

    fn log_seen(&self, line: &str, more: bool) {
        let mut rec = self.shared.record.lock().unwrap();
        rec.connections[self.index].push(Seen {
            line: line.to_string(),
            tls: self.tls,
            more,
        });
    }

    async fn upgrade(&mut self) -> std::io::Result<()> {
        if !self.io.buffer().is_empty() {
            // CVE-2011-0411: anything pipelined after STARTTLS must be discarded, never executed.
            let junk = String::from_utf8_lossy(self.io.buffer()).into_owned();
            self.log(&format!("<pipelined after STARTTLS, discarded: {junk:?}>"));
            self.shared.record.lock().unwrap().pipelined_after_starttls += 1;
        }
        let plain = std::mem::replace(
            &mut self.io,
            BufReader::new(Box::new(tokio::io::duplex(1).0)),
        );
        let mut stream = plain.into_inner();
        let mut acceptor = self.shared.acceptor.clone();
        match self.shared.faults.take(&Stage::Handshake) {
            None => {}
            Some(Action::HandshakeFailure) => {
                self.log("<fault: handshake failure>");
                // Read (some of) the ClientHello first, as a real server would.
                let mut hello = [0u8; 512];
                let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut hello)).await;
                // A TLS 1.2 record: alert, fatal (2), handshake_failure (40).
                stream
                    .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
                    .await?;
                let _ = stream.shutdown().await;
                return Err(std::io::Error::other("scripted handshake failure"));
            }
            Some(Action::UntrustedCertificate) => {
                self.log("<fault: untrusted certificate>");
                acceptor = self
                    .shared
                    .untrusted_acceptor
                    .get_or_init(|| {
                        TlsAcceptor::from(TestPki::new("cachet UNTRUSTED CA").server_config())
                    })
                    .clone();
            }
            Some(other) => {
                self.stream_back(stream);
                return match self.fault(Some(other)).await? {
                    Outcome::Proceed => Err(std::io::Error::other(
                        "this fault does nothing at the handshake",
                    )),
                    _ => Err(std::io::Error::other("scripted fault at the handshake")),
                };
            }
        }
        let tls = acceptor.accept(stream).await?;
        self.io = BufReader::new(Box::new(tls));
        self.tls = true;
        Ok(())
    }

    /// Put the plain stream back (a fault at the handshake acts on it like anywhere else).
    fn stream_back(&mut self, stream: Box<dyn Io>) {
        self.io = BufReader::new(stream);
    }
}

/// Pull the address out of `FROM:<a> params` / `TO:<a>`: text between the first `<` and its `>`.
fn path_arg(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    let start = rest.find('<')?;
    let end = rest[start..].find('>')? + start;
    Some(rest[start + 1..end].to_string())
}

/// Strip a case-insensitive prefix.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

async fn serve(shared: Arc<Shared>, stream: TcpStream, index: usize) -> std::io::Result<()> {
    let mode = shared.opts.tls;
    let host = shared.opts.hostname.clone();
    // A second handle on the socket, for `Action::ResetAfter`.
    let std_stream = stream.into_std()?;
    let socket = std_stream.try_clone().ok();
    let stream = TcpStream::from_std(std_stream)?;
    let mut conn = Conn {
        io: BufReader::new(Box::new(stream)),
        tls: false,
        index,
        shared: shared.clone(),
        socket,
        trickle: None,
    };
    if mode == UpstreamTls::Implicit {
        conn.upgrade().await?;
    }
    if let Some(action) = shared.faults.take(&Stage::Greeting) {
        // Any greeting fault ends the connection (after a delay or with a trickle: a normal
        // session goes on; a stall is a peer that never greets).
        let delayed = matches!(action, Action::Delay(_) | Action::Trickle(_));
        conn.fault(Some(action)).await?;
        if !delayed {
            return Ok(());
        }
    }
    conn.reply(220, &format!("{host} ESMTP cachet test upstream"))
        .await?;

    let mut ehlo = false;
    let mut authed = false;
    let mut mail_from: Option<String> = None;
    // The current transaction's MAIL carried SMTPUTF8 (RFC 6531).
    let mut utf8 = false;
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        let Some(raw) = conn.read_line(MAX_LINE).await? else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&raw).into_owned();
        conn.log_command(text.trim_end_matches(['\r', '\n']));
        if !raw.ends_with(b"\r\n") {
            conn.reply(500, "5.5.2 command line must end with CRLF")
                .await?;
            continue;
        }
        let line = text.trim_end_matches(['\r', '\n']);
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let rest = line.get(verb.len()..).unwrap_or("");
        match verb.as_str() {
            "EHLO" => {
                ehlo = true;
                mail_from = None;
                rcpts.clear();
                let mut caps = vec![
                    format!("{host} greets {}", rest.trim()),
                    "ENHANCEDSTATUSCODES".into(),
                    format!("SIZE {MAX_DATA}"),
                ];
                if shared.opts.pipelining {
                    caps.push("PIPELINING".into());
                }
                if shared.opts.eight_bit_mime {
                    caps.push("8BITMIME".into());
                }
                if mode == UpstreamTls::Starttls && !conn.tls {
                    caps.push("STARTTLS".into());
                }
                if shared.opts.auth.is_some() && (conn.tls || mode == UpstreamTls::None) {
                    caps.push("AUTH PLAIN LOGIN".into());
                }
                caps.push("SMTPUTF8".into());
                conn.reply(250, &caps.join("\n")).await?;
            }
            "HELO" => {
                ehlo = true;
                mail_from = None;
                rcpts.clear();
                conn.reply(250, &host).await?;
            }
            "STARTTLS" => {
                if mode != UpstreamTls::Starttls || conn.tls {
                    conn.reply(502, "5.5.1 STARTTLS not available").await?;
                    continue;
                }
                conn.reply(220, "2.0.0 ready to start TLS").await?;
                conn.upgrade().await?;
                ehlo = false;
                authed = false;
                mail_from = None;
                rcpts.clear();
            }
            "MAIL" => {
                if !ehlo {
                    conn.reply(503, "5.5.1 EHLO first").await?;
                } else if mail_from.is_some() {
                    conn.reply(503, "5.5.1 nested MAIL").await?;
                } else if shared.opts.require_tls && !conn.tls {
                    conn.reply(530, "5.7.0 must issue STARTTLS first").await?;
                } else if shared.opts.auth.is_some() && !authed {
                    conn.reply(530, "5.7.0 authentication required").await?;
                } else if let Some(from) =
                    strip_prefix_ci(rest.trim_start(), "FROM:").and_then(path_arg)
                {
                    let params = rest.to_ascii_uppercase();
                    let params = params.rsplit('>').next().unwrap_or("");
                    let wants_utf8 = params.split_whitespace().any(|p| p == "SMTPUTF8");
                    let wants_8bit = params.split_whitespace().any(|p| p == "BODY=8BITMIME");
                    if wants_8bit && !shared.opts.eight_bit_mime {
                        conn.reply(555, "5.5.4 BODY=8BITMIME not supported here")
                            .await?;
                        continue;
                    }
                    if !from.is_ascii() && !wants_utf8 {
                        conn.reply(553, "5.6.7 non-ASCII address needs SMTPUTF8")
                            .await?;
                        continue;
                    }
                    match conn.fault(shared.faults.take(&Stage::Mail)).await? {
                        Outcome::Close => return Ok(()),
                        Outcome::Replied => {}
                        Outcome::Proceed => {
                            mail_from = Some(from);
                            utf8 = wants_utf8;
                            conn.reply(250, "2.1.0 sender ok").await?;
                        }
                    }
                } else {
                    conn.reply(501, "5.5.4 syntax: MAIL FROM:<address>").await?;
                }
            }
            "RCPT" => {
                if mail_from.is_none() {
                    conn.reply(503, "5.5.1 MAIL first").await?;
                } else if let Some(to) =
                    strip_prefix_ci(rest.trim_start(), "TO:").and_then(path_arg)
                {
                    if !to.is_ascii() && !utf8 {
                        conn.reply(553, "5.6.7 non-ASCII address needs SMTPUTF8")
                            .await?;
                        continue;
                    }
                    let fault = shared
                        .faults
                        .take(&Stage::Rcpt(to.to_ascii_lowercase()))
                        .or_else(|| shared.faults.take(&Stage::AnyRcpt));
                    match conn.fault(fault).await? {
                        Outcome::Close => return Ok(()),
                        Outcome::Replied => {}
                        Outcome::Proceed => {
                            rcpts.push(to);
                            conn.reply(250, "2.1.5 recipient ok").await?;
                        }
                    }
                } else {
                    conn.reply(501, "5.5.4 syntax: RCPT TO:<address>").await?;
                }
            }
            "DATA" => {
                if mail_from.is_none() {
                    conn.reply(503, "5.5.1 MAIL first").await?;
                    continue;
                }
                if rcpts.is_empty() {
                    if shared.opts.data_without_recipients {
                        // Take the message first, then refuse it: the transaction is over.
                        conn.reply(354, "end data with <CR><LF>.<CR><LF>").await?;
                        let (data, _) = read_data(&mut conn, None).await?;
                        conn.log(&format!("<{} bytes of message data>", data.len()));
                        mail_from = None;
                    }
                    conn.reply(554, "5.5.1 no valid recipients").await?;
                    continue;
                }
                let fault = shared.faults.take(&Stage::Data);
                if let Some(Action::ResetAfter(n)) = fault {
                    // The 354, part of the message, then a reset: a peer that died mid-transfer.
                    conn.reply(354, "end data with <CR><LF>.<CR><LF>").await?;
                    let (data, complete) = read_data(&mut conn, Some(n)).await?;
                    conn.log(&format!(
                        "<{} bytes of message data, then reset>",
                        data.len()
                    ));
                    shared
                        .record
                        .lock()
                        .unwrap()
                        .data_attempts
                        .push(DataAttempt {
                            rcpt_to: rcpts.clone(),
                            data,
                            complete,
                            tls: conn.tls,
                        });
                    conn.reset();
                    return Ok(());
                }
                if let Some(Action::Stall(d)) = fault {
                    // The 354, then not a byte read: the client's writes fill the buffers and stop.
                    conn.reply(354, "end data with <CR><LF>.<CR><LF>").await?;
                    conn.fault(Some(Action::Stall(d))).await?;
                    return Ok(());
                }
                match conn.fault(fault).await? {
                    Outcome::Close => return Ok(()),
                    Outcome::Replied => continue,
                    Outcome::Proceed => {}
                }
                conn.reply(354, "end data with <CR><LF>.<CR><LF>").await?;
                let (data, complete) = read_data(&mut conn, None).await?;
                shared
                    .record
                    .lock()
                    .unwrap()
                    .data_attempts
                    .push(DataAttempt {
                        rcpt_to: rcpts.clone(),
                        data: data.clone(),
                        complete,
                        tls: conn.tls,
                    });
                if !complete {
                    return Ok(());
                }
                conn.log(&format!("<{} bytes of message data>", data.len()));
                let from = mail_from.take().unwrap_or_default();
                let to = std::mem::take(&mut rcpts);
                match conn.fault(shared.faults.take(&Stage::DataEnd)).await? {
                    Outcome::Close => return Ok(()),
                    Outcome::Replied => continue,
                    Outcome::Proceed => {}
                }
                let n = {
                    let mut rec = shared.record.lock().unwrap();
                    rec.received.push(Received {
                        mail_from: from,
                        rcpt_to: to,
                        data,
                        tls: conn.tls,
                    });
                    rec.received.len()
                };
                conn.reply(250, &format!("2.0.0 queued as U{n}")).await?;
                if shared.opts.close_after_message {
                    conn.log("<closing: one message per connection>");
                    let _ = conn.io.get_mut().shutdown().await;
                    return Ok(());
                }
            }
            "AUTH" => {
                let Some((user, pass)) = shared.opts.auth.clone() else {
                    conn.reply(502, "5.5.1 AUTH not available").await?;
                    continue;
                };
                if authed || mail_from.is_some() || !ehlo {
                    conn.reply(503, "5.5.1 bad sequence of commands").await?;
                    continue;
                }
                let Some(got) = auth_exchange(&mut conn, rest.trim()).await? else {
                    return Ok(());
                };
                if got == (user.clone(), pass) {
                    authed = true;
                    shared.record.lock().unwrap().authenticated.push(user);
                    conn.reply(235, "2.7.0 authentication successful").await?;
                } else {
                    conn.reply(535, "5.7.8 authentication credentials invalid")
                        .await?;
                }
            }
            "RSET" => {
                mail_from = None;
                rcpts.clear();
                conn.reply(250, "2.0.0 reset").await?;
            }
            "NOOP" => conn.reply(250, "2.0.0 ok").await?,
            "QUIT" => {
                conn.reply(221, "2.0.0 bye").await?;
                let _ = conn.io.get_mut().shutdown().await;
                return Ok(());
            }
            "VRFY" => conn.reply(252, "2.1.5 cannot verify").await?,
            _ => conn.reply(502, "5.5.2 command not implemented").await?,
        }
    }
}

/// Run an AUTH PLAIN / LOGIN exchange (RFC 4954, RFC 4616) after `AUTH <args>`; returns (user, password)
/// as sent (empty strings when undecodable), or `None` at EOF.
async fn auth_exchange(conn: &mut Conn, args: &str) -> std::io::Result<Option<(String, String)>> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode =
        |s: &str| String::from_utf8(b64.decode(s.trim()).unwrap_or_default()).unwrap_or_default();
    let mut parts = args.split_whitespace();
    let mechanism = parts.next().unwrap_or("").to_ascii_uppercase();
    let initial = parts.next().map(str::to_string);
    async fn ask(conn: &mut Conn, prompt: &str) -> std::io::Result<Option<String>> {
        conn.reply(334, prompt).await?;
        let Some(line) = conn.read_line(MAX_LINE).await? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        conn.log(&text);
        Ok(Some(text))
    }
    match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(r) => r,
                None => match ask(conn, "").await? {
                    Some(r) => r,
                    None => return Ok(None),
                },
            };
            let decoded = decode(&response);
            let mut fields = decoded.split('\0').skip(1);
            let user = fields.next().unwrap_or("").to_string();
            let pass = fields.next().unwrap_or("").to_string();
            Ok(Some((user, pass)))
        }
        "LOGIN" => {
            let user = match initial {
                Some(u) => decode(&u),
                None => match ask(conn, "VXNlcm5hbWU6").await? {
                    Some(u) => decode(&u),
                    None => return Ok(None),
                },
            };
            let Some(pass) = ask(conn, "UGFzc3dvcmQ6").await? else {
                return Ok(None);
            };
            Ok(Some((user, decode(&pass))))
        }
        _ => Ok(Some((String::new(), String::new()))),
    }
}

/// Read message data up to `<CRLF>.<CRLF>`, dot-unstuffing once. A line ending in a bare LF is kept as is and
/// never ends the data, nor does a `.` line that follows it. Returns the data and whether the final `.` came:
/// not at EOF, nor once `limit` bytes were read (then the data ends there, possibly mid-line).
async fn read_data(conn: &mut Conn, limit: Option<usize>) -> std::io::Result<(Vec<u8>, bool)> {
    let mut data = Vec::new();
    // True at the start of DATA and after every CRLF: only there is a line start per RFC 5321 §4.5.2.
    let mut at_line_start = true;
    loop {
        if limit.is_some_and(|n| data.len() >= n) {
            return Ok((data, false));
        }
        let max = limit.map_or(MAX_DATA + 8, |n| n - data.len());
        let Some(line) = conn.read_line(max).await? else {
            return Ok((data, false));
        };
        if at_line_start && line == b".\r\n" {
            return Ok((data, true));
        }
        if at_line_start && line.first() == Some(&b'.') {
            data.extend_from_slice(&line[1..]);
        } else {
            data.extend_from_slice(&line);
        }
        at_line_start = line.ends_with(b"\r\n");
        if data.len() > MAX_DATA {
            return Err(std::io::Error::other(
                "message too large for the test upstream",
            ));
        }
    }
}
