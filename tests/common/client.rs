//! A raw SMTP test client over tokio (plaintext, STARTTLS or implicit TLS against a given CA) for protocol
//! tests that need byte-level control (bare LF smuggling, pipelining), plus `python_send`, which sends with
//! Python's smtplib as an independent real client. Every read has a timeout.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::pki;

/// A reply: the code and the full text of all its lines (codes included, lines joined with `\n`).
pub type Reply = (u16, String);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("timed out: {what}"))
}

/// A raw SMTP client connection.
pub struct SmtpClient {
    io: BufReader<Box<dyn Io>>,
    /// Whether the connection is inside TLS now.
    pub tls: bool,
    /// Timeout for each read and write.
    pub timeout: Duration,
}

impl SmtpClient {
    /// Open a plaintext TCP connection. The greeting is not read: call `read_reply` for it.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<SmtpClient> {
        let timeout = Duration::from_secs(10);
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out("connect"))??;
        Ok(SmtpClient {
            io: BufReader::new(Box::new(stream)),
            tls: false,
            timeout,
        })
    }

    /// Open an implicit-TLS connection trusting only the CA in `ca_pem_path`, checking `server_name`
    /// (`localhost` or `127.0.0.1`). The greeting is not read.
    pub async fn connect_tls(
        addr: SocketAddr,
        ca_pem_path: &Path,
        server_name: &str,
    ) -> std::io::Result<SmtpClient> {
        let timeout = Duration::from_secs(10);
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out("connect"))??;
        let connector = TlsConnector::from(pki::client_config_from_file(ca_pem_path));
        let tls = tokio::time::timeout(
            timeout,
            connector.connect(pki::server_name(server_name), stream),
        )
        .await
        .map_err(|_| timed_out("TLS handshake"))??;
        Ok(SmtpClient {
            io: BufReader::new(Box::new(tls)),
            tls: true,
            timeout,
        })
    }

    /// Connect, read the greeting (must be 220) and send EHLO (must be 250); returns the EHLO reply.
    pub async fn connect_ehlo(addr: SocketAddr) -> std::io::Result<(SmtpClient, Reply)> {
        let mut c = SmtpClient::connect(addr).await?;
        let greeting = c.read_reply().await?;
        if greeting.0 != 220 {
            return Err(std::io::Error::other(format!("greeting: {}", greeting.1)));
        }
        let ehlo = c.cmd("EHLO client.test").await?;
        Ok((c, ehlo))
    }

    /// Read one (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> std::io::Result<Reply> {
        let mut lines: Vec<String> = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = tokio::time::timeout(self.timeout, self.io.read_until(b'\n', &mut buf))
                .await
                .map_err(|_| timed_out(&format!("reply (so far: {lines:?})")))??;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("connection closed (reply so far: {lines:?})"),
                ));
            }
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let last = line.len() < 4 || line.as_bytes()[3] != b'-';
            lines.push(line);
            if last {
                break;
            }
        }
        let code = lines[0]
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad reply: {lines:?}"),
                )
            })?;
        Ok((code, lines.join("\n")))
    }

    /// Send raw bytes as they are (no CRLF added, no dot-stuffing).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let io = self.io.get_mut();
        tokio::time::timeout(self.timeout, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .map_err(|_| timed_out("write"))?
    }

    /// Send `line` followed by CRLF.
    pub async fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        self.send_raw(format!("{line}\r\n").as_bytes()).await
    }

    /// Send a command line and read its reply.
    pub async fn cmd(&mut self, line: &str) -> std::io::Result<Reply> {
        self.send_line(line).await?;
        self.read_reply().await
    }

    /// Send STARTTLS (must get 220), then handshake trusting only the CA in `ca_pem_path`, checking
    /// `server_name`. EHLO again afterwards yourself.
    pub async fn starttls(
        &mut self,
        ca_pem_path: &Path,
        server_name: &str,
    ) -> std::io::Result<Reply> {
        let reply = self.cmd("STARTTLS").await?;
        if reply.0 != 220 {
            return Err(std::io::Error::other(format!(
                "STARTTLS refused: {}",
                reply.1
            )));
        }
        self.upgrade(ca_pem_path, server_name).await?;
        Ok(reply)
    }

    /// Start a TLS handshake on the current connection now (after a 220 to STARTTLS sent by hand).
    pub async fn upgrade(&mut self, ca_pem_path: &Path, server_name: &str) -> std::io::Result<()> {
        let placeholder: Box<dyn Io> = Box::new(tokio::io::duplex(1).0);
        let plain = std::mem::replace(&mut self.io, BufReader::new(placeholder)).into_inner();
        let connector = TlsConnector::from(pki::client_config_from_file(ca_pem_path));
        let tls = tokio::time::timeout(
            self.timeout,
            connector.connect(pki::server_name(server_name), plain),
        )
        .await
        .map_err(|_| timed_out("TLS handshake"))??;
        self.io = BufReader::new(Box::new(tls));
        self.tls = true;
        Ok(())
    }

    /// MAIL, RCPT for each recipient, DATA, the dot-stuffed `data` (CRLF appended if missing) and `.`.
    /// Returns the first reply that is not a success: MAIL's, the last RCPT's when none was accepted, DATA's;
    /// otherwise the reply after the final dot. Rejected recipients are skipped like a real client does.
    pub async fn send_message(
        &mut self,
        from: &str,
        to: &[&str],
        data: &[u8],
    ) -> std::io::Result<Reply> {
        let reply = self.cmd(&format!("MAIL FROM:<{from}>")).await?;
        if reply.0 != 250 {
            return Ok(reply);
        }
        let mut accepted = 0;
        let mut last = reply;
        for rcpt in to {
            last = self.cmd(&format!("RCPT TO:<{rcpt}>")).await?;
            if last.0 == 250 || last.0 == 251 {
                accepted += 1;
            }
        }
        if accepted == 0 {
            self.cmd("RSET").await?;
            return Ok(last);
        }
        let reply = self.cmd("DATA").await?;
        if reply.0 != 354 {
            return Ok(reply);
        }
        let mut body = dot_stuff(data);
        body.extend_from_slice(b".\r\n");
        self.send_raw(&body).await?;
        self.read_reply().await
    }

    /// QUIT and read the 221 (errors ignored).
    pub async fn quit(mut self) {
        let _ = self.cmd("QUIT").await;
    }
}

/// Dot-stuff `data` (RFC 5321 §4.5.2): a `.` at the start of a line (after CRLF) is doubled; a CRLF is
/// appended when `data` does not end with one. Bare LF / CR are left as they are.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut at_line_start = true;
    for (i, &b) in data.iter().enumerate() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n' && i > 0 && data[i - 1] == b'\r';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

const PYTHON_SEND: &str = r#"
import smtplib, ssl, sys
host, port, frm, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
to = sys.argv[5:]
msg = sys.stdin.buffer.read()
try:
    with smtplib.SMTP(host, port, local_hostname="python.test", timeout=20) as s:
        s.ehlo()
        if ca:
            s.starttls(context=ssl.create_default_context(cafile=ca))
            s.ehlo()
        refused = s.sendmail(frm, to, msg)
        if refused:
            print("refused recipients: %r" % (refused,), file=sys.stderr)
            sys.exit(3)
except Exception as e:
    print("%s: %s" % (type(e).__name__, e), file=sys.stderr)
    sys.exit(2)
"#;

/// Send `msg` (bytes as they are; smtplib dot-stuffs and adds the final CRLF if missing) from `from` to `to`
/// with Python's smtplib, upgrading with STARTTLS and verifying against `starttls_ca` when given.
/// `Err` carries smtplib's error text (e.g. `SMTPDataError: (451, b'4.3.0 ...')`).
pub async fn python_send(
    addr: SocketAddr,
    from: &str,
    to: &[&str],
    msg: &[u8],
    starttls_ca: Option<&Path>,
) -> Result<(), String> {
    use std::process::Stdio;
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c")
        .arg(PYTHON_SEND)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(from)
        .arg(
            starttls_ca
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )
        .args(to)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("spawn python3: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin");
    let msg = msg.to_vec();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&msg).await;
    });
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| "python smtplib timed out".to_string())?
        .map_err(|e| format!("python3: {e}"))?;
    let _ = writer.await;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "python smtplib failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}
