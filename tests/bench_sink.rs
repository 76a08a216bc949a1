//! The benchmark's final hop (bench/sink.rs, `cachet-bench-sink`), on its own: what bench.py
//! relies on when it counts and verifies what arrived. Pipelined transactions (the next command
//! group behind the end of a message), dot-stuffing removed, a terminator split across writes,
//! the empty message, STARTTLS required on the upstream port and absent on the plain one, the
//! dump format of `smtp-sink -d` and the `mesg=N` counter. The benchmark run itself through this
//! sink is tests/bench_smoke.rs.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{SmtpClient, TestPki, free_port};

struct Sink {
    child: Child,
    dir: tempfile::TempDir,
    plain: SocketAddr,
    tls: SocketAddr,
    pki: TestPki,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sink {
    async fn start() -> Sink {
        let pki = TestPki::new("cachet bench sink test");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("dump")).expect("dump dir");
        let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cachet-bench-sink"))
            .arg("--plain")
            .arg(plain.to_string())
            .arg("--tls")
            .arg(tls.to_string())
            .arg("--cert")
            .arg(pki.cert_path())
            .arg("--key")
            .arg(pki.key_path())
            .arg("--dump")
            .arg(dir.path().join("dump"))
            .arg("--counter")
            .arg(dir.path().join("count.txt"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start cachet-bench-sink");
        let sink = Sink {
            child,
            dir,
            plain,
            tls,
            pki,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for addr in [plain, tls] {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "cachet-bench-sink does not listen on {addr}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        sink
    }

    fn dump(&self) -> PathBuf {
        self.dir.path().join("dump")
    }

    /// The last `mesg=N` the sink wrote, 0 before the first.
    fn counted(&self) -> u64 {
        let text = std::fs::read_to_string(self.dir.path().join("count.txt")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix("mesg="))
            .filter_map(|n| n.parse().ok())
            .next_back()
            .unwrap_or(0)
    }

    /// Waits until the counter says `n`, then returns the dump files by name.
    async fn wait_for(&self, n: u64) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.counted() < n {
            assert!(
                Instant::now() < deadline,
                "the counter says {} of {n} transactions",
                self.counted()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(self.counted(), n, "more transactions counted than sent");
        files(&self.dump())
    }
}

fn files(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("read dump dir")
        .map(|e| {
            let e = e.expect("dir entry");
            let text = std::fs::read_to_string(e.path()).expect("read dump file");
            (e.file_name().to_string_lossy().into_owned(), text)
        })
        .collect();
    out.sort();
    out
}

async fn reply_codes(c: &mut SmtpClient, n: usize) -> Vec<u16> {
    let mut codes = Vec::new();
    for _ in 0..n {
        codes.push(c.read_reply().await.expect("reply").0);
    }
    codes
}

#[tokio::test]
async fn plain_port_takes_pipelined_transactions_and_dumps_them_unstuffed() {
    let sink = Sink::start().await;
    let (mut c, ehlo) = SmtpClient::connect_ehlo(sink.plain).await.expect("connect");
    assert_eq!(ehlo.0, 250, "{}", ehlo.1);
    assert!(ehlo.1.contains("PIPELINING"), "{}", ehlo.1);
    assert!(
        !ehlo.1.contains("STARTTLS"),
        "the plain port offers no STARTTLS: {}",
        ehlo.1
    );

    c.send_raw(
        b"MAIL FROM:<a@x.test> SIZE=42\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n",
    )
    .await
    .unwrap();
    assert_eq!(reply_codes(&mut c, 4).await, [250, 250, 250, 354]);
    // the end of the first message, the whole next command group and its DATA in one write
    c.send_raw(
        b"Subject: one\r\n\r\n..leading dot\r\nlast line\r\n.\r\n\
          MAIL FROM:<d@x.test>\r\nRCPT TO:<e@y.test>\r\nDATA\r\n",
    )
    .await
    .unwrap();
    assert_eq!(reply_codes(&mut c, 4).await, [250, 250, 250, 354]);
    // an empty message
    c.send_raw(b".\r\n").await.unwrap();
    assert_eq!(reply_codes(&mut c, 1).await, [250]);
    // a terminator split across writes
    c.send_raw(b"MAIL FROM:<f@x.test>\r\nRCPT TO:<g@y.test>\r\nDATA\r\n")
        .await
        .unwrap();
    assert_eq!(reply_codes(&mut c, 3).await, [250, 250, 354]);
    for piece in [
        &b"Subject: three\r\n\r\nbody\r"[..],
        b"\n",
        b".",
        b"\r",
        b"\n",
    ] {
        c.send_raw(piece).await.unwrap();
    }
    assert_eq!(reply_codes(&mut c, 1).await, [250]);
    // commands that need a transaction first
    assert_eq!(c.cmd("RCPT TO:<h@y.test>").await.unwrap().0, 503);
    assert_eq!(c.cmd("DATA").await.unwrap().0, 503);
    c.quit().await;

    let got = sink.wait_for(3).await;
    // named CONNECTION.TRANSACTION (the readiness probes were connections too)
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let conn = names[0].split('.').next().unwrap();
    assert_eq!(
        names,
        [1, 2, 3].map(|t| format!("{conn}.{t}")),
        "one file per transaction"
    );
    let head = |mail: &str, rcpts: &[&str]| {
        let mut h = format!(
            "X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Helo-Args: client.test\n\
             X-Mail-Args: {mail}\n"
        );
        for r in rcpts {
            h.push_str(&format!("X-Rcpt-Args: {r}\n"));
        }
        h
    };
    assert_eq!(
        got[0].1,
        head("<a@x.test> SIZE=42", &["<b@y.test>", "<c@y.test>"])
            + "Subject: one\n\n.leading dot\nlast line\n"
    );
    assert_eq!(got[1].1, head("<d@x.test>", &["<e@y.test>"]));
    assert_eq!(
        got[2].1,
        head("<f@x.test>", &["<g@y.test>"]) + "Subject: three\n\nbody\n"
    );
}

#[tokio::test]
async fn upstream_port_requires_starttls_and_offers_it_once() {
    let sink = Sink::start().await;
    let (mut c, ehlo) = SmtpClient::connect_ehlo(sink.tls).await.expect("connect");
    assert!(ehlo.1.contains("STARTTLS"), "{}", ehlo.1);
    let refused = c.cmd("MAIL FROM:<a@x.test>").await.unwrap();
    assert_eq!(refused.0, 530, "MAIL before STARTTLS: {}", refused.1);
    c.starttls(&sink.pki.ca_path(), "127.0.0.1")
        .await
        .expect("STARTTLS with the test CA");
    let ehlo = c.cmd("EHLO client.test").await.unwrap();
    assert_eq!(ehlo.0, 250, "{}", ehlo.1);
    assert!(
        !ehlo.1.contains("STARTTLS"),
        "no STARTTLS inside TLS: {}",
        ehlo.1
    );
    let reply = c
        .send_message("a@x.test", &["b@y.test"], b"Subject: secured\r\n\r\n.x\r\n")
        .await
        .unwrap();
    assert_eq!(reply.0, 250, "{}", reply.1);
    c.quit().await;

    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].1,
        "X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTPS\nX-Helo-Args: client.test\n\
         X-Mail-Args: <a@x.test>\nX-Rcpt-Args: <b@y.test>\nSubject: secured\n\n.x\n"
    );
}
