//! The real `cachet` binary as a child process: writes a TOML config (defaults + whatever the test gives) and
//! any extra files into a temp dir, spawns `cachet serve --config <file>`, waits until it is ready, and offers
//! `kill_9`, `restart`, `sighup`. stdout/stderr go to files in the temp dir and are printed when a test panics
//! (on Drop). Relative paths in the config resolve from the temp dir (the config's folder).
//!
//! Ready means `GET /healthz` on the admin listener answers 200: cachet binds it after the SMTP listeners and
//! answers 200 only while they run and the spool is writable. The SMTP port itself is never probed, because a
//! probe connection holds one of `max_connections` until the gateway notices it closed, and a test counting
//! slots would see one too few (issue 9). Only without an `[admin] listen` does the harness fall back to
//! connecting to the SMTP port.
//!
//! Ports are picked free (bind `:0`, release) before the gateway binds them, so another process can take one
//! in between; when the gateway then exits with `cannot listen on`, the harness picks new ports for the keys
//! it chose itself and starts again (a test that set a port keeps it, and sees the failure).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::TestPki;
use super::upstream::{Upstream, UpstreamTls};

/// A free 127.0.0.1 port: bind :0, read the port, release it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// Quote a string as a TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The config to write: sections of `key = raw TOML value`, in order, plus raw TOML appended verbatim.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    sections: Vec<(String, Vec<(String, String)>)>,
    raw: String,
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Also listen for implicit TLS (`listen_tls`) on a free port (needs `with_tls`).
    smtps: bool,
    /// Also listen for inbound mail (`[inbound] listen`) on a free port (the test sets the rest
    /// of `[inbound]`).
    inbound: bool,
    /// Extra environment for the child process.
    env: Vec<(String, String)>,
    /// Run this program (and leading arguments) instead of the cachet binary: the harness self-test uses a
    /// stand-in gateway to prove the process handling.
    program: Option<Vec<String>>,
    /// `(section, key)` of the listen addresses the harness picked itself (a free port), which it may pick
    /// again when another process took the port before the gateway bound it. A test's own `set` removes it.
    picked: Vec<(String, String)>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig::new()
    }
}

impl GatewayConfig {
    /// Defaults: `[server]` (listen filled in at start), `[spool]` with 1s/2s retries, `[upstream]` delivering
    /// to `file://<dir>/outbox` with no `tls` key (set a real upstream with `upstream()`).
    pub fn new() -> GatewayConfig {
        let mut c = GatewayConfig {
            sections: Vec::new(),
            raw: String::new(),
            files: Vec::new(),
            smtps: false,
            inbound: false,
            env: vec![],
            program: None,
            picked: Vec::new(),
        };
        c.set("server", "hostname", &toml_str("cachet.test"));
        c.set("server", "relay_networks", r#"["127.0.0.0/8", "::1/128"]"#);
        // The organisation's own domains: the test senders' domains (signing and the
        // relay_networks default depend on it).
        c.set(
            "server",
            "local_domains",
            r#"["example.org", "x.test", "smime.example", "demo.test"]"#,
        );
        c.set("server", "max_message_size", &toml_str("10MiB"));
        c.set("spool", "dir", &toml_str("spool"));
        c.set("spool", "retry", r#"["1s", "2s"]"#);
        c.set("spool", "max_age", &toml_str("1h"));
        c.set("upstream", "url", &toml_str("file://{DIR}/outbox"));
        // Tests run in parallel: the admin listener gets its own free port too.
        c.set(
            "admin",
            "listen",
            &toml_str(&format!("127.0.0.1:{}", free_port())),
        );
        c.picked.push(("admin".into(), "listen".into()));
        c
    }

    /// Relay to `upstream`: its URL, `tls = "verify"` (or `"none"` for a plaintext upstream) and its trusted
    /// test CA copied to `upstream-ca.pem`.
    pub fn upstream(mut self, upstream: &Upstream) -> Self {
        self.set("upstream", "url", &toml_str(&upstream.url()));
        if upstream.tls_mode() == UpstreamTls::None {
            self.set("upstream", "tls", &toml_str("none"));
            self.unset("upstream", "ca_file");
        } else {
            self.set("upstream", "tls", &toml_str("verify"));
            self.set("upstream", "ca_file", &toml_str("upstream-ca.pem"));
            self.files.push((
                "upstream-ca.pem".into(),
                upstream.pki().ca_pem.clone().into_bytes(),
            ));
        }
        self
    }

    /// Offer STARTTLS with `pki`'s server certificate (`server.crt` / `server.key` in the temp dir).
    pub fn with_tls(mut self, pki: &TestPki) -> Self {
        self.set("server", "tls_cert", &toml_str("server.crt"));
        self.set("server", "tls_key", &toml_str("server.key"));
        self.files.push((
            "server.crt".into(),
            pki.server.cert_pem.clone().into_bytes(),
        ));
        self.files
            .push(("server.key".into(), pki.server.key_pem.clone().into_bytes()));
        self
    }

    /// Also listen for implicit TLS on a free port (`[server] listen_tls`); see `Gateway::smtps_addr`.
    pub fn with_smtps(mut self) -> Self {
        self.smtps = true;
        self
    }

    /// Also listen for inbound mail on a free port (`[inbound] listen`, a list like `[server]
    /// listen`); give the rest of `[inbound]` with `set`/`with`. See `Gateway::inbound_addr`.
    pub fn with_inbound(mut self) -> Self {
        self.inbound = true;
        self
    }

    /// Set `key = value` in `[section]` (value is raw TOML: quote strings with `toml_str`). Replaces an
    /// existing key; creates the section when missing. `{DIR}` in the value becomes the temp dir.
    pub fn set(&mut self, section: &str, key: &str, value: &str) -> &mut Self {
        let idx = match self.sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                self.sections.push((section.to_string(), Vec::new()));
                self.sections.len() - 1
            }
        };
        self.picked.retain(|(s, k)| !(s == section && k == key));
        let keys = &mut self.sections[idx].1;
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.to_string(),
            None => keys.push((key.to_string(), value.to_string())),
        }
        self
    }

    /// Builder form of `set`.
    pub fn with(mut self, section: &str, key: &str, value: &str) -> Self {
        self.set(section, key, value);
        self
    }

    /// Remove `key` from `[section]` (e.g. to test a default).
    pub fn unset(&mut self, section: &str, key: &str) -> &mut Self {
        if let Some((_, keys)) = self.sections.iter_mut().find(|(s, _)| s == section) {
            keys.retain(|(k, _)| k != key);
        }
        self
    }

    /// Drop a whole section (write it yourself with `raw` if you like).
    pub fn without_section(mut self, section: &str) -> Self {
        self.sections.retain(|(s, _)| s != section);
        self
    }

    /// Append raw TOML verbatim after the sections (new sections, arrays of tables, deliberate errors).
    /// `{DIR}` becomes the temp dir.
    pub fn raw(mut self, toml: &str) -> Self {
        self.raw.push_str(toml);
        if !self.raw.ends_with('\n') {
            self.raw.push('\n');
        }
        self
    }

    /// Write an extra file (relative to the temp dir) before starting, e.g. keys or certificates.
    pub fn file(mut self, rel: impl AsRef<Path>, contents: impl Into<Vec<u8>>) -> Self {
        self.files
            .push((rel.as_ref().to_path_buf(), contents.into()));
        self
    }

    /// Set an environment variable for the gateway process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Run `argv` (program and leading arguments) instead of the cachet binary; `serve --config <file>` is
    /// still appended.
    pub fn program(mut self, argv: &[&str]) -> Self {
        self.program = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }

    /// The TOML text, with `{DIR}` replaced by `dir`.
    pub fn render(&self, dir: &Path) -> String {
        let mut out = String::new();
        for (section, keys) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        out.push_str(&self.raw);
        out.replace("{DIR}", &dir.display().to_string())
    }

    /// Fill in free ports for `listen` (and `listen_tls`) unless the test set them, write the files and the
    /// config into `dir`; returns the config path.
    pub fn write_to(&mut self, dir: &Path) -> PathBuf {
        if !self.has("server", "listen") {
            self.pick_port("server", "listen");
        }
        if self.smtps && !self.has("server", "listen_tls") {
            self.pick_port("server", "listen_tls");
        }
        if self.inbound && !self.has("inbound", "listen") {
            self.pick_port("inbound", "listen");
        }
        for (rel, contents) in &self.files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create dir for config file");
            }
            // Like a careful operator: keys and secrets readable by the gateway's user only.
            replace_file(&path, contents, 0o600);
        }
        std::fs::create_dir_all(dir.join("outbox")).expect("outbox dir");
        let path = dir.join("cachet.toml");
        replace_file(&path, self.render(dir).as_bytes(), 0o644);
        path
    }

    /// Set a listen key to a free 127.0.0.1 port (`[admin] listen` is one address, the SMTP keys are lists)
    /// and remember that the harness chose it.
    fn pick_port(&mut self, section: &str, key: &str) {
        let addr = toml_str(&format!("127.0.0.1:{}", free_port()));
        let value = if section == "server" || section == "inbound" {
            format!("[{addr}]")
        } else {
            addr
        };
        self.set(section, key, &value);
        self.picked.push((section.to_string(), key.to_string()));
    }

    /// Pick new free ports for every listen key the harness chose.
    fn repick_ports(&mut self) {
        for (section, key) in std::mem::take(&mut self.picked) {
            self.pick_port(&section, &key);
        }
    }

    /// Whether `logs` say the gateway could not bind an address the harness picked
    /// (`cannot listen on 127.0.0.1:PORT: ...` or `... (admin): ...`).
    fn picked_port_failed(&self, logs: &str) -> bool {
        logs.lines()
            .filter_map(|l| l.split_once("cannot listen on ").map(|x| x.1))
            .filter_map(|rest| rest.split([' ', '(']).next())
            .map(|addr| addr.trim_end_matches(':'))
            .any(|addr| {
                self.picked.iter().any(|(section, key)| {
                    self.get(section, key)
                        .is_some_and(|v| v.contains(&format!("\"{addr}\"")))
                })
            })
    }

    fn has(&self, section: &str, key: &str) -> bool {
        self.get(section, key).is_some()
    }

    /// The raw TOML value of `key` in `[section]`.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .iter()
            .find(|(s, _)| s == section)?
            .1
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first address of `[server] <key>` (a TOML array of "ip:port" strings).
    fn first_addr(&self, key: &str) -> Option<SocketAddr> {
        self.first_addr_in("server", key)
    }

    /// The first address of `[section] <key>` (a TOML array of "ip:port" strings).
    fn first_addr_in(&self, section: &str, key: &str) -> Option<SocketAddr> {
        let v = self.get(section, key)?;
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()?
            .remove("v")?;
        parsed.as_array()?.first()?.as_str()?.parse().ok()
    }
}

/// Write `path` by rename, never in place: a reload running meanwhile (`rewrite_config` then
/// SIGHUP, in a storm) reads the old file or the new one, never half of one.
fn replace_file(path: &Path, contents: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// True when the file at `p` holds anything but zeros: a draft or a message, not one of the
/// emptied queue files the spool keeps in tmp/ for reuse (truncated, or zeroed with their
/// length kept).
pub fn holds_bytes(p: &Path) -> bool {
    std::fs::read(p).is_ok_and(|b| b.iter().any(|&x| x != 0))
}

/// Every regular file under `dir`, recursively, sorted; empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// `cachet` with the given arguments (the binary Cargo built for these tests).
pub fn cachet_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cachet"))
}

/// A `server.auth_users` line for `user`, made by `cachet passwd` (the password on stdin).
pub fn users_line(user: &str, password: &str) -> String {
    use std::io::Write;
    let mut child = cachet_command()
        .args(["passwd", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "cachet passwd {user}");
    String::from_utf8(out.stdout).unwrap()
}

/// A running gateway process; killed on drop, with its logs printed when the test is panicking.
pub struct Gateway {
    dir: tempfile::TempDir,
    config: GatewayConfig,
    config_path: PathBuf,
    addr: SocketAddr,
    smtps_addr: Option<SocketAddr>,
    child: Option<Child>,
    /// How many times the process was started (log files are `stdout.N.log` / `stderr.N.log`).
    starts: u32,
    /// How long `start`/`restart` wait until the gateway is ready.
    pub ready_timeout: Duration,
}

/// How many times `try_start` picks new ports when the ones it chose were taken before the gateway bound them.
const PORT_ATTEMPTS: u32 = 3;

/// One readiness probe: `/healthz` answers 200 on the admin listener, or (without one) the SMTP port accepts.
async fn probe_ready(admin: Option<SocketAddr>, smtp: SocketAddr) -> bool {
    let timeout = Duration::from_secs(5);
    match admin {
        Some(admin) => matches!(http_get(admin, "/healthz", timeout).await, Ok((200, _))),
        None => matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(smtp)).await,
            Ok(Ok(_))
        ),
    }
}

/// Returns once `child` has exited (std keeps its status for the next `try_wait`).
async fn exited(child: &mut Child) {
    while let Ok(None) = child.try_wait() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` on an HTTP/1.1 listener such as the admin one: (status code, body). Every step is bounded by
/// `timeout`.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("GET {path} on {addr}"),
            )
        })??;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

impl Gateway {
    /// Write the config into a fresh temp dir, spawn `cachet serve`, wait until the port accepts (panics with
    /// the logs otherwise).
    pub async fn start(config: GatewayConfig) -> Gateway {
        match Gateway::try_start(config).await {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like `start`, but returns the failure (with the logs) instead of panicking, e.g. for a bad config.
    pub async fn try_start(mut config: GatewayConfig) -> Result<Gateway, String> {
        let dir = tempfile::Builder::new()
            .prefix("cachet-gw-")
            .tempdir()
            .expect("gateway tempdir");
        let config_path = config.write_to(dir.path());
        let addr = config
            .first_addr("listen")
            .expect("[server] listen must hold an ip:port");
        let smtps_addr = config.first_addr("listen_tls");
        let mut gw = Gateway {
            dir,
            config,
            config_path,
            addr,
            smtps_addr,
            child: None,
            starts: 0,
            ready_timeout: Duration::from_secs(30),
        };
        let mut attempt = 1;
        loop {
            let result = gw.spawn_and_wait().await;
            let lost_a_port = result.is_err()
                && gw.child.is_none()
                && gw.config.picked_port_failed(&gw.start_logs(gw.starts));
            if lost_a_port && attempt < PORT_ATTEMPTS {
                gw.config.repick_ports();
                // Someone took a port between `free_port` and the bind: not the gateway's fault. This
                // start's log files are written again by the next one.
                eprintln!(
                    "cachet harness: a picked port was taken, starting again on new ports:\n{}",
                    gw.start_logs(gw.starts)
                );
                gw.config_path = gw.config.write_to(gw.dir.path());
                gw.addr = gw.config.first_addr("listen").expect("picked listen");
                gw.smtps_addr = gw.config.first_addr("listen_tls");
                gw.starts -= 1;
                attempt += 1;
                continue;
            }
            return match result {
                Ok(()) => Ok(gw),
                Err(e) => {
                    let logs = gw.logs();
                    gw.kill_9();
                    Err(format!("{e}\n{logs}"))
                }
            };
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.starts += 1;
        let out =
            std::fs::File::create(self.dir.path().join(format!("stdout.{}.log", self.starts)))
                .unwrap();
        let err =
            std::fs::File::create(self.dir.path().join(format!("stderr.{}.log", self.starts)))
                .unwrap();
        let mut cmd = match &self.config.program {
            Some(argv) => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
            None => cachet_command(),
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("RUST_BACKTRACE", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,cachet=debug");
        }
        for (k, v) in &self.config.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", env!("CARGO_BIN_EXE_cachet")))?;
        self.child = Some(child);
        let admin = self.admin_addr_if_set();
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .unwrap()
                .try_wait()
                .map_err(|e| e.to_string())?
            {
                self.child = None;
                return Err(format!(
                    "cachet exited before listening on {}: {status}",
                    self.addr
                ));
            }
            // One probe is bounded too, so a hung gateway ends in the error below, not a hung test; a
            // gateway that exits meanwhile ends the probe at once (the top of the loop reports it).
            let ready = tokio::select! {
                ready = probe_ready(admin, self.addr) => ready,
                () = exited(self.child.as_mut().unwrap()) => false,
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let how = match admin {
                    Some(admin) => format!("/healthz on {admin} did not answer 200"),
                    None => format!("nothing listened on {}", self.addr),
                };
                return Err(format!(
                    "cachet was not ready within {:?}: {how}",
                    self.ready_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The SMTP (plaintext / STARTTLS) address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// One message over a fresh session; asserts `250` and returns the queue ID.
    pub async fn send_ok(&self, from: &str, to: &[&str], msg: &[u8]) -> String {
        let (mut c, _) = super::client::SmtpClient::connect_ehlo(self.addr())
            .await
            .expect("connect to the gateway");
        let r = c
            .send_message(from, to, msg)
            .await
            .expect("SMTP conversation");
        assert_eq!(r.0, 250, "{r:?}\n{}", self.logs());
        c.quit().await;
        r.1.rsplit(' ').next().unwrap_or_default().to_string()
    }

    /// Waits (20 s at most) until `up` received exactly `n` messages; shows the logs if not.
    pub async fn expect_upstream(&self, up: &Upstream, n: usize) -> Vec<super::upstream::Received> {
        let got = up.wait_for(n, Duration::from_secs(20)).await;
        assert_eq!(
            got.len(),
            n,
            "upstream received {} of {n}\n{}",
            got.len(),
            self.logs()
        );
        got
    }

    /// The admin listener (`/metrics`, `/healthz`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr_if_set()
            .expect("admin.listen (ip:port) is set by GatewayConfig::new")
    }

    /// The admin listener when the config has one (`[admin] listen = "ip:port"`).
    fn admin_addr_if_set(&self) -> Option<SocketAddr> {
        self.config
            .get("admin", "listen")?
            .trim_matches('"')
            .parse()
            .ok()
    }

    /// `GET path` on the admin listener: (status code, body); panics when it does not answer within 20 s.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr(), path, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("admin listener: {e}\n{}", self.logs()))
    }

    /// Runs `cachet <args...> --config <this gateway's config>` and returns (success, stdout+stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = cachet_command()
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run cachet");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The `[inbound]` listener (`GatewayConfig::with_inbound`, or a `listen` the test set).
    pub fn inbound_addr(&self) -> SocketAddr {
        self.config
            .first_addr_in("inbound", "listen")
            .expect("[inbound] listen must hold an ip:port")
    }

    /// The implicit-TLS address when started `with_smtps`.
    pub fn smtps_addr(&self) -> Option<SocketAddr> {
        self.smtps_addr
    }
    /// The temp dir (the config's folder; relative paths resolve from here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
    /// The spool dir (`[spool] dir` is `spool` unless overridden).
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
    /// The default `file://` upstream folder.
    pub fn outbox_dir(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }
    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the process and reap it (no chance to clean up: the crash test).
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send a signal by name (`HUP`, `TERM`, ...) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("gateway not running");
        let status = Command::new("kill")
            .arg("-s")
            .arg(name)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} {pid} failed");
    }

    /// SIGHUP (reload the config).
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// SIGTERM and wait up to `timeout` for a clean exit; returns the exit status (`None` if it had to be
    /// killed).
    pub async fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.kill_9();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kill (if running) and start again on the same config, spool and ports; waits until it listens.
    pub async fn restart(&mut self) {
        self.kill_9();
        if let Err(e) = self.spawn_and_wait().await {
            panic!("restart failed: {e}\n{}", self.logs());
        }
    }

    /// Rewrite the config file from an edited `GatewayConfig` (listen ports and temp dir stay), e.g. before
    /// `sighup()`.
    pub fn rewrite_config(&mut self, edit: impl FnOnce(&mut GatewayConfig)) {
        edit(&mut self.config);
        self.config_path = self.config.write_to(self.dir.path());
    }

    /// Every regular file under the spool dir, recursively, sorted (for crash and recovery assertions).
    pub fn spool_files(&self) -> Vec<PathBuf> {
        files_under(&self.spool_dir())
    }

    /// The messages the default `file://` upstream wrote so far: (path, bytes), sorted by path.
    pub fn outbox_messages(&self) -> Vec<(PathBuf, Vec<u8>)> {
        files_under(&self.outbox_dir())
            .into_iter()
            .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
            .collect()
    }

    /// Wait until the outbox holds at least `n` files or `timeout` passed; returns what is there either way.
    pub async fn wait_outbox(&self, n: usize, timeout: Duration) -> Vec<(PathBuf, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.outbox_messages();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the logs contain `needle` or `timeout` passed; returns whether they do.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the process printed so far, every start, stdout and stderr.
    pub fn logs(&self) -> String {
        (1..=self.starts).map(|n| self.start_logs(n)).collect()
    }

    /// What start `n` (from 1) printed, stdout and stderr.
    fn start_logs(&self, n: u32) -> String {
        let mut out = String::new();
        for stream in ["stdout", "stderr"] {
            let path = self.dir.path().join(format!("{stream}.{n}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            out.push_str(&format!("----- cachet {stream} (start {n}) -----\n{text}"));
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill_9();
        if std::thread::panicking() {
            eprintln!(
                "===== cachet config {} =====\n{}",
                self.config_path.display(),
                self.config.render(self.dir.path())
            );
            eprintln!("{}", self.logs());
        }
    }
}
