//! `cachet-bench-sink`: the benchmark's final hop (bench/bench.py `--sink light`, the default).
//!
//! One process in place of the two the benchmark used to chain for it: a Postfix smtpd that
//! requires STARTTLS and proxies every message before-queue to Postfix's smtp-sink. Those two
//! spent ~2.2 ms of CPU per 100 KB S/MIME message on the same two cores as the gateway under
//! test (docs/performance.md, "A lighter final hop"), more than cachet itself, so the end-to-end
//! rates measured the harness. This sink does the same job on one thread: SMTP with PIPELINING,
//! STARTTLS through rustls (required on the `--tls` port, absent on the `--plain` port), and one
//! file per completed transaction in the format of `smtp-sink -d` (X-Client-Addr, X-Helo-Args,
//! X-Mail-Args and X-Rcpt-Args lines, then the message with LF line ends), written whole before
//! the transaction counts, so bench.py parses and verifies either sink's dumps the same way.
//! Unlike smtp-sink it removes dot-stuffing, so a dump holds exactly the message that was sent.
//!
//! Running counters: `mesg=N` lines appended to `--counter` every 50 ms while N changes (what
//! bench.py reads from `smtp-sink -c`).
//!
//! Usage: cachet-bench-sink --plain ADDR --tls ADDR --cert PEM --key PEM --dump DIR --counter FILE
//!
//! A measuring instrument, not part of the gateway: no limits beyond a 256 MiB message and a
//! 4 KiB command line, no authentication, loopback only by the caller's choice of address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

const MAX_LINE: usize = 4096;
const MAX_MESSAGE: usize = 256 << 20;

struct Shared {
    dump: PathBuf,
    completed: AtomicU64,
    next_conn: AtomicU64,
    tls: TlsAcceptor,
}

struct Args {
    plain: SocketAddr,
    tls: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    dump: PathBuf,
    counter: PathBuf,
}

fn usage(why: &str) -> ! {
    eprintln!(
        "cachet-bench-sink: {why}\nusage: cachet-bench-sink --plain ADDR --tls ADDR --cert PEM \
         --key PEM --dump DIR --counter FILE"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut plain = None;
    let mut tls = None;
    let mut cert = None;
    let mut key = None;
    let mut dump = None;
    let mut counter = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            usage(&format!("{flag} needs a value"))
        };
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .unwrap_or_else(|e| usage(&format!("{flag} {v}: {e}")))
        };
        match flag.as_str() {
            "--plain" => plain = Some(addr(&value)),
            "--tls" => tls = Some(addr(&value)),
            "--cert" => cert = Some(PathBuf::from(value)),
            "--key" => key = Some(PathBuf::from(value)),
            "--dump" => dump = Some(PathBuf::from(value)),
            "--counter" => counter = Some(PathBuf::from(value)),
            _ => usage(&format!("unknown option {flag}")),
        }
    }
    Args {
        plain: plain.unwrap_or_else(|| usage("--plain is required")),
        tls: tls.unwrap_or_else(|| usage("--tls is required")),
        cert: cert.unwrap_or_else(|| usage("--cert is required")),
        key: key.unwrap_or_else(|| usage("--key is required")),
        dump: dump.unwrap_or_else(|| usage("--dump is required")),
        counter: counter.unwrap_or_else(|| usage("--counter is required")),
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn main() {
    let args = parse_args();
    let tls = tls_acceptor(&args.cert, &args.key).unwrap_or_else(|e| usage(&e));
    let shared = Arc::new(Shared {
        dump: args.dump,
        completed: AtomicU64::new(0),
        next_conn: AtomicU64::new(0),
        tls,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let plain = TcpListener::bind(args.plain)
            .await
            .unwrap_or_else(|e| usage(&format!("bind {}: {e}", args.plain)));
        let tls = TcpListener::bind(args.tls)
            .await
            .unwrap_or_else(|e| usage(&format!("bind {}: {e}", args.tls)));
        tokio::spawn(accept(plain, false, shared.clone()));
        tokio::spawn(accept(tls, true, shared.clone()));
        counters(args.counter, shared).await
    })
}

/// Appends `mesg=N` to the counter file whenever N changed in the last 50 ms.
async fn counters(path: PathBuf, shared: Arc<Shared>) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| usage(&format!("{}: {e}", path.display())));
    let mut shown = u64::MAX;
    loop {
        let n = shared.completed.load(Ordering::Acquire);
        if n != shown {
            use std::io::Write;
            if let Err(e) = writeln!(file, "mesg={n}") {
                eprintln!("cachet-bench-sink: {}: {e}", path.display());
            }
            shown = n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn accept(listener: TcpListener, require_tls: bool, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = session(stream, peer, require_tls, shared).await {
                        eprintln!("cachet-bench-sink: {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("cachet-bench-sink: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What one transaction has collected so far.
#[derive(Default)]
struct Transaction {
    helo: String,
    mail: Option<String>,
    rcpts: Vec<String>,
    /// Messages completed on this connection, naming the dump files.
    done: u64,
}

impl Transaction {
    /// Forgets the envelope (after a message, RSET, EHLO, MAIL); keeps HELO and the count.
    fn reset(&mut self) {
        self.mail = None;
        self.rcpts.clear();
    }
}

enum Next {
    Quit,
    StartTls,
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    require_tls: bool,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut io = BufReader::with_capacity(64 * 1024, stream);
    io.get_mut().write_all(b"220 bench-sink ESMTP\r\n").await?;
    let mut tx = Transaction::default();
    match dialogue(&mut io, peer, conn, require_tls, false, &mut tx, &shared).await? {
        Next::Quit => Ok(()),
        Next::StartTls => {
            if !io.buffer().is_empty() {
                return Err(std::io::Error::other("data pipelined after STARTTLS"));
            }
            let tls = shared.tls.accept(io.into_inner()).await?;
            let mut io = BufReader::with_capacity(64 * 1024, tls);
            tx.helo.clear();
            dialogue(&mut io, peer, conn, false, true, &mut tx, &shared).await?;
            Ok(())
        }
    }
}

/// The command loop on one stream; replies are buffered while pipelined commands are waiting.
async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    peer: SocketAddr,
    conn: u64,
    offer_tls: bool,
    secured: bool,
    tx: &mut Transaction,
    shared: &Shared,
) -> std::io::Result<Next> {
    let mut line = Vec::with_capacity(256);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if io.buffer().is_empty() && !out.is_empty() {
            io.get_mut().write_all(&out).await?;
            out.clear();
        }
        line.clear();
        let n = (&mut *io)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(Next::Quit);
        }
        if line.last() != Some(&b'\n') {
            return Err(std::io::Error::other("command line too long"));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let verb = text
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let rest = text.get(verb.len()..).unwrap_or_default().trim();
        match verb.as_str() {
            "EHLO" | "HELO" => {
                tx.helo = rest.to_string();
                tx.reset();
                out.extend_from_slice(b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n");
                if offer_tls {
                    out.extend_from_slice(b"250-STARTTLS\r\n");
                }
                out.extend_from_slice(b"250 SIZE 268435456\r\n");
            }
            "STARTTLS" if offer_tls => {
                io.get_mut().write_all(&out).await?;
                io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
                return Ok(Next::StartTls);
            }
            // offered only before STARTTLS on the upstream port, where it is required
            "MAIL" | "RCPT" | "DATA" if offer_tls => {
                out.extend_from_slice(b"530 5.7.0 Must issue a STARTTLS command first\r\n");
            }
            "MAIL" => match strip_prefix_ci(rest, "FROM:") {
                Some(args) => {
                    tx.reset();
                    tx.mail = Some(args.trim().to_string());
                    out.extend_from_slice(b"250 2.1.0 Ok\r\n");
                }
                None => out.extend_from_slice(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
            },
            "RCPT" => match (strip_prefix_ci(rest, "TO:"), &tx.mail) {
                (Some(args), Some(_)) => {
                    tx.rcpts.push(args.trim().to_string());
                    out.extend_from_slice(b"250 2.1.5 Ok\r\n");
                }
                (None, _) => out.extend_from_slice(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
                (_, None) => out.extend_from_slice(b"503 5.5.1 Need MAIL command\r\n"),
            },
            "DATA" => {
                if tx.mail.is_none() || tx.rcpts.is_empty() {
                    out.extend_from_slice(b"503 5.5.1 Need RCPT command\r\n");
                    continue;
                }
                out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                io.get_mut().write_all(&out).await?;
                out.clear();
                let data = read_data(io).await?;
                tx.done += 1;
                let name = format!("{conn}.{}", tx.done);
                let file = dump_file(peer, tx, &data, secured);
                std::fs::write(shared.dump.join(&name), file)?;
                shared.completed.fetch_add(1, Ordering::Release);
                tx.reset();
                out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
            }
            "RSET" => {
                tx.reset();
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
            }
            "NOOP" => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            "QUIT" => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                io.get_mut().write_all(&out).await?;
                let _ = io.get_mut().shutdown().await;
                return Ok(Next::Quit);
            }
            _ => out.extend_from_slice(b"502 5.5.2 Command not recognized\r\n"),
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Reads DATA up to the terminating `.` line and consumes nothing past it (the client may
/// pipeline its next commands behind the message, RFC 2920). Returns the raw message (still
/// dot-stuffed, CRLF) behind a leading CRLF, which lets a message that is empty end with the same
/// "\r\n.\r\n" as any other.
async fn read_data<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> std::io::Result<Vec<u8>> {
    let mut data: Vec<u8> = Vec::with_capacity(16 * 1024);
    data.extend_from_slice(b"\r\n");
    loop {
        let old = data.len();
        let buf = io.fill_buf().await?;
        if buf.is_empty() {
            return Err(std::io::Error::other("connection closed in DATA"));
        }
        let n = buf.len();
        data.extend_from_slice(buf);
        let from = old.saturating_sub(4);
        if let Some(at) = memchr::memmem::find(&data[from..], b"\r\n.\r\n") {
            let end = from + at;
            io.consume(end + 5 - old);
            data.truncate(end + 2);
            return Ok(data);
        }
        io.consume(n);
        if data.len() > MAX_MESSAGE {
            return Err(std::io::Error::other("message larger than 256 MiB"));
        }
    }
}

/// The dump file: smtp-sink's X- lines, then the message (`data` as `read_data` returns it) with
/// LF line ends and dot-stuffing removed.
fn dump_file(peer: SocketAddr, tx: &Transaction, data: &[u8], secured: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(data.len() + 512);
    let proto = if secured { "ESMTPS" } else { "ESMTP" };
    f.extend_from_slice(
        format!(
            "X-Client-Addr: {}\nX-Client-Proto: {proto}\nX-Helo-Args: {}\nX-Mail-Args: {}\n",
            peer.ip(),
            tx.helo,
            tx.mail.as_deref().unwrap_or_default()
        )
        .as_bytes(),
    );
    for r in &tx.rcpts {
        f.extend_from_slice(format!("X-Rcpt-Args: {r}\n").as_bytes());
    }
    for line in data[2..].split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = line.strip_prefix(b".").unwrap_or(line);
        f.extend_from_slice(line);
        f.push(b'\n');
    }
    f
}
