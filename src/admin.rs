//! The admin listener (default 127.0.0.1:9925, never public by default): `GET /metrics`
//! (Prometheus text) and `GET /healthz` (200 only while the SMTP listeners run and the spool is
//! writable). A deliberately tiny HTTP/1.1 responder: one request per connection, no bodies.

use crate::metrics::Metrics;
use crate::spool::Spool;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub spool: Spool,
    /// Set once the SMTP listeners are bound; cleared at shutdown.
    pub listening: Arc<AtomicBool>,
    /// Scrape-time gauges the runtime adds (certificate expiry).
    pub extra: Arc<dyn Fn() -> String + Send + Sync>,
}

impl Admin {
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let (mut stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                _ = shutdown.changed() => return,
            };
            let this = self.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/");
                let (status, ctype, body) = this.route(path).await;
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
            });
        }
    }

    async fn route(&self, path: &str) -> (&'static str, &'static str, String) {
        match path {
            "/metrics" => {
                let spool = self.spool.clone();
                let counts = tokio::task::spawn_blocking(move || spool.counts())
                    .await
                    .unwrap_or_default();
                let mut extra = String::from(
                    "# HELP cachet_queue_messages Messages in each spool queue.\n# TYPE cachet_queue_messages gauge\n",
                );
                for (q, n) in counts {
                    let _ = writeln!(
                        extra,
                        "cachet_queue_messages{{queue=\"{}\"}} {n}",
                        q.dir_name()
                    );
                }
                extra.push_str(&(self.extra)());
                (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    self.metrics.render(&extra),
                )
            }
            "/healthz" => {
                let spool = self.spool.clone();
                let writable = tokio::task::spawn_blocking(move || spool.writable())
                    .await
                    .unwrap_or(false);
                let listening = self.listening.load(Ordering::Relaxed);
                if writable && listening {
                    ("200 OK", "text/plain", "ok\n".into())
                } else {
                    let why = if !listening {
                        "not listening\n"
                    } else {
                        "spool not writable\n"
                    };
                    ("503 Service Unavailable", "text/plain", why.into())
                }
            }
            _ => ("404 Not Found", "text/plain", "not found\n".into()),
        }
    }
}

/// `GET /healthz` on `addr` with a 5 s budget; Ok when the answer is 200.
pub fn probe(addr: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(5);
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not ip:port"))?;
    let mut s =
        std::net::TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(out.lines().last().unwrap_or("no answer").to_string()),
    }
}
