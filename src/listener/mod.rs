//! The listener: binds the SMTP sockets (plain with STARTTLS, and implicit TLS), enforces the
//! connection limit (`421 4.7.0` beyond it), and runs one [`Session`] task per connection,
//! upgrading to TLS when the session asks. Sockets are bound by the caller (tests bind
//! `127.0.0.1:0`); shutdown comes in through the session context's watch channel.
//!
//! A TLS handshake (implicit, or after STARTTLS) must finish within `server.idle_timeout`, at
//! most [`TLS_HANDSHAKE_MAX`]: a client that opens the socket and stays silent would otherwise
//! hold a connection slot for ever, and enough of them lock everyone out.
//!
//! Out of file descriptors (`EMFILE`/`ENFILE`, issue 14), `accept(2)` fails and the client would
//! wait in the kernel's accept queue until it gives up. The listener keeps one descriptor in
//! reserve (`/dev/null`): when accepting fails for lack of descriptors, it closes the reserve,
//! accepts the client with the descriptor that frees, answers `421 4.3.2`, closes, and takes the
//! reserve again (the trick nginx and libev use). Sessions and deliveries already running go on.
//!
//! Each listener has a direction: the outbound ones (`server.listen`, `server.listen_tls`) take
//! submissions, the `[inbound]` ones take mail for local recipients from the organisation's MTA;
//! the session is told which (`session/inbound.rs`). The caller gives each direction its own
//! connection limit, so a flood on one side cannot lock the other out.

use crate::tls;
pub use crate::tls::tls_acceptor;

use crate::reply;
use crate::session::{Ending, Session, SessionCtx};
use crate::spool::Direction;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// How long the listener pauses after an `accept(2)` failure it cannot answer (no reserve
/// descriptor to spend, or another error): enough not to spin, short for the clients waiting.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Whether an I/O error means the process (or the system) ran out of file descriptors.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
}

/// Upper bound on an inbound TLS handshake; a real client needs a few round trips.
pub const TLS_HANDSHAKE_MAX: Duration = Duration::from_secs(30);

/// Accepts connections until shutdown. `implicit_tls` listeners start TLS before the banner;
/// `direction` says which side the sessions serve.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<SessionCtx>,
    limit: Arc<Semaphore>,
    implicit_tls: bool,
    direction: Direction,
) {
    let mut shutdown = ctx.shutdown.clone();
    // The descriptor spent on telling a client `421` when there is none left (module header).
    let mut reserve = std::fs::File::open("/dev/null").ok();
    loop {
        let (mut stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) if out_of_descriptors(&e) && reserve.is_some() => {
                    drop(reserve.take());
                    // The client whose accept failed is still queued: this returns at once.
                    if let Ok(Ok((stream, peer))) =
                        tokio::time::timeout(ACCEPT_PAUSE, listener.accept()).await
                    {
                        refuse_out_of_descriptors(stream, peer, &ctx);
                    }
                    reserve = std::fs::File::open("/dev/null").ok();
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    if reserve.is_none() {
                        reserve = std::fs::File::open("/dev/null").ok();
                    }
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        if reserve.is_none() {
            reserve = std::fs::File::open("/dev/null").ok();
        }
        let _ = stream.set_nodelay(true);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, "too many connections");
            ctx.metrics.refused("too_many_connections");
            tokio::spawn(async move {
                let mut out = Vec::new();
                reply::TOO_MANY_CONNECTIONS.write_to(&mut out);
                let _ = stream.write_all(&out).await;
            });
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, peer, ctx, implicit_tls, direction).await {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Answers `421 4.3.2` to a client accepted with the reserve descriptor and closes at once, so
/// the descriptor is free again before the reserve is taken back. The reply is a few dozen bytes
/// into a fresh socket's empty send buffer: one non-blocking write, no task.
fn refuse_out_of_descriptors(stream: TcpStream, peer: std::net::SocketAddr, ctx: &SessionCtx) {
    use std::io::Write;
    tracing::warn!(client = %peer, "out of file descriptors; client refused with 421");
    ctx.metrics.refused("out_of_descriptors");
    let mut out = Vec::new();
    reply::OUT_OF_RESOURCES.write_to(&mut out);
    if let Ok(mut s) = stream.into_std() {
        let _ = s.write(&out);
    }
}

/// The server side of a TLS handshake, bounded (see the module header).
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    ctx: &SessionCtx,
) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let limit = ctx
        .runtime
        .load()
        .config
        .server
        .idle_timeout
        .min(TLS_HANDSHAKE_MAX);
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::info!(client = %peer, seconds = limit.as_secs_f32(), "TLS handshake timed out; connection closed");
            ctx.metrics.refused("tls_handshake_timeout");
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    ctx: Arc<SessionCtx>,
    implicit_tls: bool,
    direction: Direction,
) -> std::io::Result<()> {
    let acceptor = ctx.runtime.load().tls.clone();
    if implicit_tls {
        let Some(acceptor) = acceptor else {
            return Ok(());
        };
        let tls = handshake(&acceptor, stream, peer, &ctx).await?;
        let cert = peer_cert(&ctx, &tls);
        Session::new(ctx, peer, true)
            .with_client_cert(cert)
            .with_direction(direction)
            .run(tls, true)
            .await?;
        return Ok(());
    }
    match Session::new(ctx.clone(), peer, false)
        .with_direction(direction)
        .run(stream, true)
        .await?
    {
        Ending::Closed => Ok(()),
        Ending::StartTls(stream) => {
            let Some(acceptor) = acceptor else {
                return Ok(());
            };
            let tls = handshake(&acceptor, stream, peer, &ctx).await?;
            let cert = peer_cert(&ctx, &tls);
            // RFC 3207 §4.2: forget everything learned before TLS; the client says EHLO again.
            Session::new(ctx, peer, true)
                .with_client_cert(cert)
                .with_direction(direction)
                .run(tls, false)
                .await?;
            Ok(())
        }
    }
}

/// The client certificate of a finished handshake, judged against `server.tls_client_ca`.
fn peer_cert<S>(
    ctx: &SessionCtx,
    tls: &tokio_rustls::server::TlsStream<S>,
) -> Option<crate::policy::submitter::ClientCert> {
    let chain = tls.get_ref().1.peer_certificates()?;
    let rt = ctx.runtime.load();
    let cert = tls::describe(chain, &rt.tls_client_anchors)?;
    // What an operator copies into a [[submitter]] entry's tls_client.
    tracing::info!(
        fingerprint = %cert.fingerprint,
        subject = %cert.subject.escape_debug(),
        issuer = %cert.issuer.escape_debug(),
        chain_verified = cert.chain_verified,
        "TLS client certificate"
    );
    Some(cert)
}
