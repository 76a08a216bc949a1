//! Connections to the next hop: connect, greeting, EHLO, STARTTLS (never falling back to
//! plaintext), AUTH, and a pool of idle connections reused for later copies, bounded by
//! `upstream.max_connections`.

use super::MailParams;
use super::outcome::{Broken, ConnError, Outcome, classify_error, conn, describe, remote_reply};
use super::transaction::{Client, Conn, transaction};
use crate::reply::{self};
use mail_send::Credentials;
use mail_send::SmtpClient;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

pub(super) struct Idle {
    pub(super) conn: Conn,
    pub(super) since: Instant,
    pub(super) eight_bit: bool,
    pub(super) smtputf8: bool,
}

pub(super) const IDLE_MAX: Duration = Duration::from_secs(30);

pub(super) struct SmtpUpstream {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) implicit_tls: bool,
    /// None = plaintext (`tls = "none"`).
    pub(super) tls: Option<TlsConnector>,
    pub(super) credentials: Option<Credentials<String>>,
    pub(super) helo: String,
    pub(super) timeout: Duration,
    /// `upstream.pipelining`: may pipeline when the upstream offers it.
    pub(super) pipelining: bool,
    pub(super) slots: Semaphore,
    pub(super) idle: Mutex<Vec<Idle>>,
}

impl SmtpUpstream {
    pub(super) async fn deliver(
        &self,
        sender: &str,
        rcpts: &[String],
        message: &[u8],
        params: MailParams,
    ) -> Vec<Outcome> {
        let _slot = self.slots.acquire().await.expect("semaphore never closed");
        // A pooled connection may have been closed by the upstream meanwhile: one fresh retry.
        for attempt in 0..2 {
            let (mut conn, reused) = match self.checkout(params).await {
                Ok(c) => c,
                Err(ConnError(f)) => return vec![Outcome::Failed(f); rcpts.len()],
            };
            match transaction(&mut conn, sender, rcpts, message, params).await {
                Ok((outcomes, reusable)) => {
                    if reusable {
                        self.idle.lock().unwrap().push(Idle {
                            conn,
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

    async fn checkout(&self, params: MailParams) -> Result<(Conn, bool), ConnError> {
        loop {
            let idle = self.idle.lock().unwrap().pop();
            match idle {
                Some(i)
                    if i.since.elapsed() < IDLE_MAX
                        && (!params.body_8bit || i.eight_bit)
                        && (!params.smtputf8 || i.smtputf8) =>
                {
                    return Ok((i.conn, true));
                }
                Some(_) => continue,
                None => break,
            }
        }
        Ok((self.connect(params).await?, false))
    }

    async fn connect(&self, params: MailParams) -> Result<Conn, ConnError> {
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
        Ok(Conn {
            client,
            pipelining: self.pipelining && caps.has_capability(smtp_proto::EXT_PIPELINING),
        })
    }
}

pub(super) async fn greeting<T: AsyncRead + AsyncWrite + Unpin>(
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
