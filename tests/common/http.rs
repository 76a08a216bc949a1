//! A tiny HTTP/1.1 server on `127.0.0.1:0` for the revocation tests: it serves CRLs (GET) and
//! canned OCSP responses (POST) from a path -> bytes map the test changes while it runs, and
//! counts the requests per path. One request per connection (`Connection: close`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    bodies: HashMap<String, Vec<u8>>,
    /// Answer these paths with `302 Found` to the given location.
    redirects: HashMap<String, String>,
    /// Answer these paths only after a pause (a slow CRL server).
    delays: HashMap<String, Duration>,
    hits: HashMap<String, usize>,
}

pub struct HttpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), serve(&mut conn, &s)).await;
                });
            }
        });
        HttpServer { addr, state, task }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.state
            .lock()
            .unwrap()
            .bodies
            .insert(path.to_string(), body.into());
    }

    /// Answer `path` with a redirect to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.state
            .lock()
            .unwrap()
            .redirects
            .insert(path.to_string(), location.to_string());
    }

    /// Answer `path` only `delay` after the request arrived.
    pub fn delay(&self, path: &str, delay: Duration) {
        self.state
            .lock()
            .unwrap()
            .delays
            .insert(path.to_string(), delay);
    }

    /// Requests seen for `path` (any method).
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(conn: &mut tokio::net::TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (body, delay, redirect) = {
        let mut st = state.lock().unwrap();
        *st.hits.entry(path.clone()).or_default() += 1;
        (
            st.bodies.get(&path).cloned(),
            st.delays.get(&path).copied(),
            st.redirects.get(&path).cloned(),
        )
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(location) = redirect {
        let r = format!(
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(r.as_bytes()).await?;
        return conn.shutdown().await;
    }
    let reply = match body {
        Some(b) => {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                b.len()
            )
            .into_bytes();
            r.extend_from_slice(&b);
            r
        }
        None => {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
    };
    conn.write_all(&reply).await?;
    conn.shutdown().await
}
