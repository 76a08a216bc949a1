//! The relay: hands sealed copies to the upstream and classifies each recipient's outcome once,
//! where it happens (STYLE habit 5): delivered, temporary (retry later) or permanent (bounce).
//! Unknown failures are temporary. A TLS failure never falls back to plaintext.
//!
//! `smtp://` uses STARTTLS, `smtps://` implicit TLS, `file://` writes `.eml` files (demo, tests).
//! Upstream connections are pooled and reused (several messages per connection) up to
//! `upstream.max_connections`. Secrets touched: the upstream password (read at load).
//!
//! Every network wait has a deadline of `upstream.timeout`: the connect, the TLS handshake, the
//! greeting, each command's reply (mail-send bounds those), each write of the message during
//! DATA (progress, not the whole transfer: a large message on a slow link is fine, a peer that
//! stopped reading is not) and the reply after the final dot. A timeout is temporary.

pub mod tls;

use crate::config::{UpstreamConfig, UpstreamTarget, UpstreamTls};
use crate::reply::{self, Failure, Reply, Scope};
use mail_send::Credentials;
use mail_send::SmtpClient;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// One recipient's result: the next hop's reply, or the failure classified where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Reply),
    Failed(Failure),
}

/// MAIL FROM parameters carried through from the inbound transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct MailParams {
    pub smtputf8: bool,
    pub body_8bit: bool,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Client = SmtpClient<Box<dyn Io>>;

struct Idle {
    client: Client,
    since: Instant,
    eight_bit: bool,
    smtputf8: bool,
}

const IDLE_MAX: Duration = Duration::from_secs(30);

pub struct Relay {
    target: Target,
}

enum Target {
    Smtp(SmtpUpstream),
    File(PathBuf),
}

struct SmtpUpstream {
    host: String,
    port: u16,
    implicit_tls: bool,
    /// None = plaintext (`tls = "none"`).
    tls: Option<TlsConnector>,
    credentials: Option<Credentials<String>>,
    helo: String,
    timeout: Duration,
    slots: Semaphore,
    idle: Mutex<Vec<Idle>>,
}

/// A connection-level failure: every recipient of the copy gets the same outcome.
struct ConnError(Failure);

/// Where in a transaction a connection failed.
enum Broken {
    /// At MAIL FROM: nothing of this message reached the upstream.
    AtMail(ConnError),
    Later(ConnError),
}

/// A failure of the connection itself (every recipient of the copy): `public` for the world,
/// `private` for the log.
fn conn(public: Reply, private: impl Into<String>) -> ConnError {
    ConnError(Failure::new(public, Scope::Message, private))
}

/// A mail-send error (outside MAIL/RCPT/DATA replies, which [`classify`] judges), classified:
/// always temporary, since nothing final was said about the recipients; TLS, timeouts and
/// broken connections get our public text and keep the details private.
fn classify_error(e: &mail_send::Error, private: String) -> ConnError {
    match e {
        mail_send::Error::Tls(_) | mail_send::Error::InvalidTLSName => {
            conn(reply::NEXT_HOP_TLS, private)
        }
        mail_send::Error::Timeout => conn(reply::NEXT_HOP_TIMEOUT, private),
        _ => conn(reply::NEXT_HOP_CONNECTION, private),
    }
}

fn describe(e: &mail_send::Error) -> String {
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
fn describe_after(e: &mail_send::Error, command: &str) -> String {
    format!("{} (after {command})", describe(e))
}

/// The next hop's reply as a [`Reply`], with its enhanced status code when it sent one.
fn remote_reply(r: &smtp_proto::Response<String>) -> Reply {
    let status = (r.esc[0] != 0).then(|| format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2]));
    Reply::remote(r.code, status, r.message.clone())
}

/// A reply to a transaction command: 2xx delivered, anything else failed for `scope`.
fn classify(r: &smtp_proto::Response<String>, scope: Scope) -> Outcome {
    match r.code {
        200..=299 => Outcome::Delivered(remote_reply(r)),
        _ => Outcome::Failed(Failure::remote(remote_reply(r), scope)),
    }
}

impl Relay {
    pub fn new(cfg: &UpstreamConfig) -> Result<Relay, String> {
        let target = match &cfg.target {
            UpstreamTarget::File(dir) => Target::File(dir.clone()),
            UpstreamTarget::Smtp {
                host,
                port,
                implicit_tls,
            } => {
                let tls = match cfg.tls {
                    UpstreamTls::None => None,
                    mode => Some(TlsConnector::from(tls::client_config(
                        cfg.ca_file.as_deref(),
                        mode == UpstreamTls::Insecure,
                    )?)),
                };
                let credentials = match (&cfg.username, &cfg.password_file) {
                    (Some(u), Some(f)) => {
                        let pw = std::fs::read_to_string(f)
                            .map_err(|e| format!("{}: {e}", f.display()))?;
                        Some(Credentials::new(
                            u.clone(),
                            pw.trim_end_matches(['\r', '\n']).to_string(),
                        ))
                    }
                    _ => None,
                };
                Target::Smtp(SmtpUpstream {
                    host: host.clone(),
                    port: *port,
                    implicit_tls: *implicit_tls,
                    tls,
                    credentials,
                    helo: cfg.helo_name.clone(),
                    timeout: cfg.timeout,
                    slots: Semaphore::new(cfg.max_connections),
                    idle: Mutex::new(Vec::new()),
                })
            }
        };
        Ok(Relay { target })
    }

    /// Delivers one copy; returns one outcome per recipient, in order.
    pub async fn deliver(
        &self,
        id: &str,
        sender: &str,
        recipients: &[String],
        message: &[u8],
        params: MailParams,
    ) -> Vec<Outcome> {
        match &self.target {
            Target::File(dir) => {
                let r = write_outbox(dir, id, sender, recipients, message).await;
                let o = match r {
                    Ok(name) => {
                        Outcome::Delivered(Reply::owned(250, "2.0.0", format!("written to {name}")))
                    }
                    Err(e) => Outcome::Failed(Failure::new(
                        reply::OUTBOX_FAILED,
                        Scope::Message,
                        format!("outbox write failed: {e}"),
                    )),
                };
                vec![o; recipients.len()]
            }
            Target::Smtp(up) => up.deliver(sender, recipients, message, params).await,
        }
    }
}

/// `file://` upstream: `<dir>/<id>-<n>.eml`, written to a temp name, fsync'd and renamed, with
/// the envelope in `X-Cachet-Envelope-*` lines of a sidecar `.env` file.
async fn write_outbox(
    dir: &std::path::Path,
    id: &str,
    sender: &str,
    rcpts: &[String],
    msg: &[u8],
) -> std::io::Result<String> {
    let dir = dir.to_path_buf();
    let id = id.to_string();
    let env = format!("from: {sender}\nto: {}\n", rcpts.join(", "));
    let msg = msg.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        std::fs::create_dir_all(&dir)?;
        let mut n = 0;
        let name = loop {
            let name = format!("{id}-{n}.eml");
            if !dir.join(&name).exists() {
                break name;
            }
            n += 1;
        };
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&msg)?;
        f.sync_all()?;
        std::fs::write(dir.join(format!("{name}.env")), env)?;
        std::fs::rename(&tmp, dir.join(&name))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(name)
    })
    .await
    .map_err(std::io::Error::other)?
}

impl SmtpUpstream {
    async fn deliver(
        &self,
        sender: &str,
        rcpts: &[String],
        message: &[u8],
        params: MailParams,
    ) -> Vec<Outcome> {
        let _slot = self.slots.acquire().await.expect("semaphore never closed");
        // A pooled connection may have been closed by the upstream meanwhile: one fresh retry.
        for attempt in 0..2 {
            let (mut client, reused) = match self.checkout(params).await {
                Ok(c) => c,
                Err(ConnError(f)) => return vec![Outcome::Failed(f); rcpts.len()],
            };
            match transaction(&mut client, sender, rcpts, message, params).await {
                Ok((outcomes, reusable)) => {
                    if reusable {
                        self.idle.lock().unwrap().push(Idle {
                            client,
                            since: Instant::now(),
                            eight_bit: params.body_8bit,
                            smtputf8: params.smtputf8,
                        });
                    }
                    return outcomes;
                }
                // A pooled connection the upstream closed meanwhile fails at MAIL, before
                // anything of this message was sent: try once more on a fresh one. A failure
                // later (after DATA) is never retried here, or the message could go twice.
                Err(Broken::AtMail(_)) if reused && attempt == 0 => continue,
                Err(Broken::AtMail(ConnError(f)) | Broken::Later(ConnError(f))) => {
                    return vec![Outcome::Failed(f); rcpts.len()];
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn checkout(&self, params: MailParams) -> Result<(Client, bool), ConnError> {
        loop {
            let idle = self.idle.lock().unwrap().pop();
            match idle {
                Some(i)
                    if i.since.elapsed() < IDLE_MAX
                        && (!params.body_8bit || i.eight_bit)
                        && (!params.smtputf8 || i.smtputf8) =>
                {
                    return Ok((i.client, true));
                }
                Some(_) => continue,
                None => break,
            }
        }
        Ok((self.connect(params).await?, false))
    }

    async fn connect(&self, params: MailParams) -> Result<Client, ConnError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| {
                conn(
                    reply::NEXT_HOP_TIMEOUT,
                    format!("connection to {addr} timed out"),
                )
            })?
            .map_err(|e| {
                conn(
                    reply::NEXT_HOP_CONNECTION,
                    format!("connection to {addr} failed: {e}"),
                )
            })?;
        let _ = tcp.set_nodelay(true);
        let plain = SmtpClient {
            stream: tcp,
            timeout: self.timeout,
        };
        let mut client: Client = if self.implicit_tls {
            let connector = self
                .tls
                .as_ref()
                .expect("smtps:// always has TLS (checked at load)");
            let c = plain
                .into_tls(connector, &self.host)
                .await
                .map_err(|e| classify_error(&e, describe(&e)))?;
            SmtpClient {
                stream: Box::new(c.stream),
                timeout: self.timeout,
            }
        } else {
            let mut plain = plain;
            greeting(&mut plain).await?;
            match &self.tls {
                None => SmtpClient {
                    stream: Box::new(plain.stream),
                    timeout: self.timeout,
                },
                Some(connector) => {
                    let caps = plain
                        .ehlo(&self.helo)
                        .await
                        .map_err(|e| classify_error(&e, describe(&e)))?;
                    if !caps.has_capability(smtp_proto::EXT_START_TLS) {
                        return Err(conn(
                            reply::NEXT_HOP_TLS,
                            format!("{addr} does not offer STARTTLS; not sending in plaintext"),
                        ));
                    }
                    let c = plain
                        .start_tls(connector, &self.host)
                        .await
                        .map_err(|e| classify_error(&e, describe(&e)))?;
                    SmtpClient {
                        stream: Box::new(c.stream),
                        timeout: self.timeout,
                    }
                }
            }
        };
        if self.implicit_tls {
            greeting(&mut client).await?;
        }
        let caps = client
            .ehlo(&self.helo)
            .await
            .map_err(|e| classify_error(&e, describe(&e)))?;
        if params.body_8bit && !caps.has_capability(smtp_proto::EXT_8BIT_MIME) {
            return Err(conn(
                reply::NEXT_HOP_NO_8BITMIME,
                "upstream does not offer 8BITMIME",
            ));
        }
        if params.smtputf8 && !caps.has_capability(smtp_proto::EXT_SMTP_UTF8) {
            return Err(conn(
                reply::NEXT_HOP_NO_SMTPUTF8,
                "upstream does not offer SMTPUTF8",
            ));
        }
        if let Some(creds) = &self.credentials {
            client
                .authenticate(creds, &caps)
                .await
                .map_err(|e| match e {
                    mail_send::Error::AuthenticationFailed(r) => conn(
                        reply::NEXT_HOP_AUTH,
                        format!("upstream authentication failed: {}", remote_reply(&r)),
                    ),
                    e => conn(
                        reply::NEXT_HOP_AUTH,
                        format!("upstream authentication failed: {}", describe(&e)),
                    ),
                })?;
        }
        Ok(client)
    }
}

async fn greeting<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<T>,
) -> Result<(), ConnError> {
    // mail-send's read() has no deadline of its own (its cmd() and ehlo() do).
    let r = tokio::time::timeout(c.timeout, c.read())
        .await
        .map_err(|_| {
            conn(
                reply::NEXT_HOP_TIMEOUT,
                "upstream sent no greeting (timed out)",
            )
        })?
        .map_err(|e| classify_error(&e, describe(&e)))?;
    if r.code / 100 != 2 {
        // A refusal before any transaction says nothing final about these recipients: the
        // next hop's reply stays public, but is always temporary here.
        return Err(conn(
            reply::NEXT_HOP_CONNECTION,
            format!("upstream greeting: {}", remote_reply(&r)),
        ));
    }
    Ok(())
}

/// MAIL, RCPT for each recipient (one refused recipient does not abort the others), DATA.
async fn transaction(
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
async fn reset(c: &mut Client) -> bool {
    matches!(c.cmd(b"RSET\r\n").await, Ok(r) if r.code / 100 == 2)
}

/// One write of message data, which must make progress within `timeout`.
async fn write_within<W: AsyncWrite + Unpin>(
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
async fn write_data<W: AsyncWrite + Unpin>(
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
