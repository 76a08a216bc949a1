//! The SMTP session driven over an in-memory stream (`tokio::io::duplex`), as the listener
//! drives it over TCP: command sequences, pipelining, STARTTLS (the caller's second session over
//! the same stream, as after a handshake), AUTH PLAIN/LOGIN and DATA bytes.
//!
//! Input: one flags byte, then the client's bytes.
//! - bits 0-1: the peer: 0/1 `127.0.0.1` (relay_networks), 2 `10.1.2.3` (a `[[submitter]]` with
//!   a required tenant header), 3 `192.0.2.1` (an outsider);
//! - bit 2: the session starts as if TLS were already up (AUTH is offered only then);
//! - bits 3-7: how the client's bytes are split into writes (0: one write; n: 2^(n%12) bytes).
//!
//! Oracles: every reply line is `DDD` + `-` or SP + text + CRLF; every message queued has CRLF
//! line ends only (no smuggled bare LF reaches the spool).

use cachet::metrics::Metrics;
use cachet::runtime::Runtime;
use cachet::session::{Ending, Session, SessionCtx};
use cachet::spool::{Queue, Spool};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

struct World {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    ctx: Arc<SessionCtx>,
    queued: Mutex<mpsc::UnboundedReceiver<String>>,
    _shutdown: watch::Sender<bool>,
}

/// `relay` / `secret`, PBKDF2 with one iteration (the fuzzer must not wait 100k rounds).
fn users_line() -> String {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    let salt = b"fuzz-salt-16byte";
    let mut out = [0u8; 32];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        // The users file refuses lines below 600,000 iterations (issue 9); each AUTH the fuzzer
        // sends costs one such derivation, as it does for a real client.
        std::num::NonZeroU32::new(600_000).unwrap(),
        salt,
        b"secret",
        &mut out,
    );
    format!(
        "relay:$pbkdf2-sha256$600000${}${}\n",
        B64.encode(salt),
        B64.encode(out)
    )
}

/// The gateway configuration every session runs with: TLS (so STARTTLS is offered), AUTH users,
/// a rule that refuses at RCPT, a submitter with a tenant header.
const CONFIG: &str = r#"
[server]
hostname = "gw.test"
relay_networks = ["127.0.0.0/8"]
local_domains = ["example.org"]
max_message_size = "64KiB"
max_recipients = 4
max_errors = 40
idle_timeout = "60s"
tls_cert = "tls.crt"
tls_key = "tls.key"
auth_users = "users"

[spool]
dir = "spool"

[upstream]
url = "file://out"

[certificates]
dir = "certs"

[[rule]]
name = "partners"
to = ["*@partner.example"]
encrypt = "required"

[[submitter]]
name = "tenant"
networks = ["10.0.0.0/8"]
require_header = { name = "X-Tenant", value = "t1" }
senders = ["*@tenant.example"]
"#;

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = crate::scratch_dir();
        let p = dir.path();
        let cert = rcgen::generate_simple_self_signed(vec!["gw.test".to_string()]).unwrap();
        std::fs::write(p.join("tls.crt"), cert.cert.pem()).unwrap();
        std::fs::write(p.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
        std::fs::write(p.join("users"), users_line()).unwrap();
        std::fs::create_dir_all(p.join("certs")).unwrap();
        std::fs::write(p.join("cachet.toml"), CONFIG).unwrap();
        let runtime = Runtime::load(&p.join("cachet.toml")).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(runtime.tls.is_some() && runtime.users.is_some());
        let spool = Spool::open(&p.join("spool")).unwrap();
        let (qtx, qrx) = mpsc::unbounded_channel();
        let (stx, srx) = watch::channel(false);
        let ctx = Arc::new(SessionCtx {
            runtime: Arc::new(arc_swap::ArcSwap::from_pointee(runtime)),
            spool,
            queued: qtx,
            shutdown: srx,
            metrics: Arc::new(Metrics::default()),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        World {
            _dir: dir,
            rt,
            ctx,
            queued: Mutex::new(qrx),
            _shutdown: stx,
        }
    })
}

/// One conversation; see the module header for the input format.
pub fn smtp_session(data: &[u8]) {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let w = world();
    let peer: SocketAddr = match flags & 3 {
        0 | 1 => "127.0.0.1:40000",
        2 => "10.1.2.3:40000",
        _ => "192.0.2.1:40000",
    }
    .parse()
    .unwrap();
    let tls = flags & 4 != 0;
    let chunk = match flags >> 3 {
        0 => input.len().max(1),
        n => 1usize << (n % 12),
    };
    let out = w.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let ctx = w.ctx.clone();
        let serve = async move {
            let mut stream = server;
            let mut tls = tls;
            let mut greet = true;
            loop {
                let session = Session::new(ctx.clone(), peer, tls);
                match session.run(stream, greet).await {
                    Ok(Ending::StartTls(s)) if !tls => {
                        // As after the handshake: a fresh session, no second banner.
                        stream = s;
                        tls = true;
                        greet = false;
                    }
                    Ok(Ending::StartTls(_)) => panic!("STARTTLS accepted inside TLS"),
                    Ok(Ending::Closed) | Err(_) => break,
                }
            }
        };
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let write = async {
            for piece in input.chunks(chunk) {
                if wr.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            let _ = wr.shutdown().await;
        };
        let read = async {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let ((), (), out) = tokio::join!(serve, write, read);
        out
    });
    check_replies(&out);
    // Whatever was queued has CRLF line ends only; then it goes, so the spool stays small.
    let mut queued = w.queued.lock().unwrap();
    while let Ok(id) = queued.try_recv() {
        let bytes = w
            .ctx
            .spool
            .read_data(Queue::Incoming, &id)
            .expect("queued message");
        assert!(
            !crate::has_bare_newline(&bytes),
            "queued message {id} has a bare CR or LF"
        );
        w.ctx.spool.remove_blocking(Queue::Incoming, &id).unwrap();
    }
}

/// Every line the server wrote is a well-formed reply line.
fn check_replies(out: &[u8]) {
    assert!(
        out.is_empty() || out.ends_with(b"\r\n"),
        "reply not ended by CRLF"
    );
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let ok = line.len() >= 5
            && line[..3].iter().all(u8::is_ascii_digit)
            && matches!(line[3], b' ' | b'-')
            && line.ends_with(b"\r")
            && !line[..line.len() - 1].contains(&b'\r');
        assert!(
            ok,
            "malformed reply line {:?}",
            String::from_utf8_lossy(line)
        );
    }
}
