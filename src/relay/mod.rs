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
//!
//! Files: `pool.rs` (connecting, STARTTLS, AUTH, reusing idle connections), `transaction.rs`
//! (MAIL, RCPT, DATA on one connection, pipelined when the next hop offers PIPELINING),
//! `outcome.rs` (what each reply or error means, once), `outbox.rs` (`file://`).

mod outbox;
mod outcome;
mod pool;
pub mod tls;
mod transaction;

pub use outcome::Outcome;

use crate::config::{UpstreamConfig, UpstreamTarget, UpstreamTls};
use crate::reply::{self, Failure, Reply, Scope};
use mail_send::Credentials;
use outbox::write_outbox;
use pool::SmtpUpstream;
use std::path::PathBuf;
use std::sync::Mutex;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// MAIL FROM parameters carried through from the inbound transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct MailParams {
    pub smtputf8: bool,
    pub body_8bit: bool,
}

pub struct Relay {
    target: Target,
}

enum Target {
    Smtp(SmtpUpstream),
    File(PathBuf),
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
                    pipelining: cfg.pipelining,
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
