//! Helpers for tests/compose.rs: the docker / compose CLIs, the demo stack's lifetime (always
//! `down -v`, even when the test panics), a tiny blocking SMTP client and the `openssl cms` check.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Straight to fd 2: libtest captures `eprintln!` of passing tests, and a skip must be seen.
pub fn loud(lines: &str) {
    let bar = "#".repeat(90);
    let _ = std::io::stderr().write_all(format!("\n{bar}\n{lines}\n{bar}\n\n").as_bytes());
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The docker CLI plus whichever compose tool this machine has (`docker compose` or the older
/// `docker-compose`).
pub struct Docker {
    compose: Vec<String>,
}

impl Docker {
    /// The engine and a compose tool, or `None` after a LOUD skip message. With `CI=true` a missing
    /// engine is a failure, never a skip.
    pub fn find() -> Option<Docker> {
        let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
        let mut problem = match Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
        {
            Err(e) => Some(format!("no `docker` command ({e})")),
            Ok(o) if !o.status.success() => Some(format!(
                "the Docker engine does not answer: {}",
                text(&o).trim()
            )),
            Ok(_) => None,
        };
        let mut compose = Vec::new();
        if problem.is_none() {
            let v2 = Command::new("docker").args(["compose", "version"]).output();
            let v1 = Command::new("docker-compose").arg("version").output();
            if v2.map(|o| o.status.success()).unwrap_or(false) {
                compose = vec!["docker".to_string(), "compose".to_string()];
            } else if v1.map(|o| o.status.success()).unwrap_or(false) {
                compose = vec!["docker-compose".to_string()];
            } else {
                problem = Some("neither `docker compose` nor `docker-compose` works".to_string());
            }
        }
        match problem {
            None => Some(Docker { compose }),
            Some(p) if ci => {
                panic!("compose test: CI=true but {p}; the compose test must run in CI")
            }
            Some(p) => {
                loud(&format!(
                    "## SKIPPED: tests/compose.rs (docker-compose deployment test) did NOT run:\n## {p}.\n\
                     ## It runs wherever a Docker engine exists, and is never skipped with CI=true."
                ));
                None
            }
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "docker {} failed: {}",
            args.join(" "),
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

/// True when the binary knows `serve`, i.e. it is the real gateway and not the crate's stub.
pub fn binary_has_serve(bin: &str) -> bool {
    match Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => text(&o).contains("serve"),
        Err(_) => false,
    }
}

/// One message file the sink stored.
pub struct Mail {
    pub name: String,
    pub path: PathBuf,
    pub text: String,
}

/// The demo stack (gateway + sink) under a private project name. Dropping it runs `down -v`.
pub struct Stack<'a> {
    docker: &'a Docker,
    pub project: String,
    pub image: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    pub demo: PathBuf,
    work: PathBuf,
    copies: std::cell::Cell<u32>,
}

impl<'a> Stack<'a> {
    pub fn up(docker: &'a Docker, bin: &str, work: &Path) -> Stack<'a> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let pid = std::process::id();
        let image = format!("cachet:compose-test-{pid}");

        let t = Instant::now();
        let o = Command::new("sh")
            .arg(repo.join("docker/build-image.sh"))
            .arg(bin)
            .env("CACHET_IMAGE", &image)
            .stdin(Stdio::null())
            .output()
            .expect("run docker/build-image.sh");
        assert!(
            o.status.success(),
            "docker/build-image.sh failed: {}",
            text(&o)
        );
        eprintln!(
            "compose test: image {image} built in {:.1}s",
            t.elapsed().as_secs_f64()
        );

        let demo = work.join("demo");
        let o = Command::new("sh")
            .arg(repo.join("docker/demo/setup.sh"))
            .arg(&demo)
            .env("CACHET_IMAGE", &image)
            .stdin(Stdio::null())
            .output()
            .expect("run docker/demo/setup.sh");
        assert!(
            o.status.success(),
            "docker/demo/setup.sh failed: {}",
            text(&o)
        );

        let stack = Stack {
            docker,
            project: format!("cachettest{pid}"),
            image: image.clone(),
            files: vec![
                repo.join("docker/docker-compose.yml"),
                repo.join("docker/docker-compose.demo.yml"),
            ],
            env: vec![
                ("CACHET_IMAGE".into(), image),
                ("CACHET_DEMO_DIR".into(), demo.display().to_string()),
                // loopback only, any free host port (read back with `port`)
                // A fixed free port: an ephemeral one ("127.0.0.1:") changes when the container
                // restarts, and the restart test must keep talking to the same address.
                (
                    "CACHET_SMTP_PUBLISH".into(),
                    format!("127.0.0.1:{}", free_loopback_port()),
                ),
                ("RUST_LOG".into(), "debug".into()),
            ],
            demo,
            work: work.to_path_buf(),
            copies: std::cell::Cell::new(0),
        };
        // `stack` exists before `up`, so a failing `up` is torn down too.
        let t = Instant::now();
        stack.compose_ok(&["up", "-d", "--no-build"]);
        eprintln!(
            "compose test: `up -d` took {:.1}s",
            t.elapsed().as_secs_f64()
        );
        stack
    }

    fn compose_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.docker.compose[0]);
        c.args(&self.docker.compose[1..])
            .arg("-p")
            .arg(&self.project);
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        c.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn compose(&self, args: &[&str]) -> Output {
        self.compose_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run compose")
    }

    pub fn compose_ok(&self, args: &[&str]) -> String {
        let o = self.compose(args);
        assert!(
            o.status.success(),
            "compose {} failed: {}",
            args.join(" "),
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// The container id of a service.
    pub fn container(&self, service: &str) -> String {
        let id = self.compose_ok(&["ps", "-q", service]);
        assert!(!id.is_empty(), "no container for service {service}");
        id.lines().next().unwrap().to_string()
    }

    pub fn inspect(&self, id: &str, format: &str) -> String {
        self.docker.run_ok(&["inspect", "--format", format, id])
    }

    /// Wait until Docker's HEALTHCHECK says healthy.
    pub fn wait_health(&self, id: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.inspect(
                id,
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
            );
            if s.ends_with(" healthy") {
                return;
            }
            if Instant::now() > deadline {
                let health = self.inspect(id, "{{json .State.Health}}");
                panic!("container {id} not healthy after {timeout:?}: {s}; health log: {health}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Wait until a service's logs (`compose logs`) contain `needle`.
    pub fn wait_log(&self, service: &str, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = text(&self.compose(&["logs", "--no-color", service]));
            if logs.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{service} did not log {needle:?} within {timeout:?}:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `host:port` that a service's container port is published on.
    pub fn published_port(&self, service: &str, port: u16) -> String {
        let out = self.compose_ok(&["port", service, &port.to_string()]);
        let line = out.lines().next().unwrap_or("").trim().to_string();
        assert!(
            line.contains(':'),
            "no published port for {service}:{port}: {out:?}"
        );
        line.replace("0.0.0.0:", "127.0.0.1:")
    }

    /// `sh -c SCRIPT` in a service's container with `input` on stdin; returns its output.
    pub fn exec_stdin(&self, service: &str, script: &str, input: &[u8]) -> String {
        let mut child = self
            .compose_cmd(&["exec", "-T", service, "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("compose exec");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input)
            .expect("write stdin");
        let o = child.wait_with_output().expect("compose exec");
        assert!(o.status.success(), "exec in {service} failed: {}", text(&o));
        text(&o)
    }

    /// Every message in the sink's outbox volume right now (copied out with `docker cp`).
    pub fn outbox(&self) -> Vec<Mail> {
        let n = self.copies.get() + 1;
        self.copies.set(n);
        let dir = self.work.join(format!("outbox-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let sink = self.container("sink");
        self.docker.run_ok(&[
            "cp",
            &format!("{sink}:/var/spool/outbox/."),
            &dir.display().to_string(),
        ]);
        let mut mails: Vec<Mail> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().map(|x| x == "eml").unwrap_or(false))
            .map(|path| Mail {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                text: String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned(),
                path,
            })
            .collect();
        mails.sort_by(|a, b| a.name.cmp(&b.name));
        mails
    }

    pub fn wait_outbox(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.outbox();
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "sink has {} messages, wanted {n}, after {timeout:?}",
                m.len()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Wait until every token was found in a message that arrived signed by alice and encrypted to
    /// bob (`skip`: messages present before, like the sink probe). Duplicates are allowed.
    pub fn wait_tokens(&self, tokens: &[String], skip: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut checked: std::collections::HashMap<String, Result<String, String>> =
            Default::default();
        loop {
            let mails = self.outbox();
            for m in mails.iter().skip(skip) {
                checked
                    .entry(m.name.clone())
                    .or_insert_with(|| verify_smime(&self.demo, &m.path));
            }
            let missing: Vec<&String> = tokens
                .iter()
                .filter(|t| {
                    !checked
                        .values()
                        .any(|r| matches!(r, Ok(p) if p.contains(t.as_str())))
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let bad: Vec<String> = checked
                    .iter()
                    .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
                    .collect();
                panic!(
                    "{} of {} accepted messages never arrived signed+encrypted within {timeout:?}: {missing:?}\n\
                     messages that failed the S/MIME check: {bad:#?}",
                    missing.len(),
                    tokens.len()
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl Drop for Stack<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.compose(&["logs", "--no-color", "--tail", "200"]);
            let ps = self.compose(&["ps"]);
            eprintln!(
                "---- compose ps ----\n{}\n---- compose logs ----\n{}",
                text(&ps),
                text(&logs)
            );
        }
        let o = self.compose(&["down", "-v", "--remove-orphans", "-t", "10"]);
        if !o.status.success() {
            eprintln!("compose test: `down -v` failed: {}", text(&o));
        }
        let _ = self.docker.run(&["image", "rm", "-f", &self.image]);
    }
}

/// Send one message; returns the reply to the end of DATA (or the first refusal).
pub fn smtp_send(addr: &str, from: &str, to: &str, message: &str) -> Result<String, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut w = stream.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(stream);
    let reply = |r: &mut BufReader<TcpStream>| -> Result<String, String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err(format!("connection closed after {all:?}"));
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(all);
            }
        }
    };
    let expect = |got: String, code: &str| {
        if got.starts_with(code) {
            Ok(got)
        } else {
            Err(got)
        }
    };
    expect(reply(&mut r)?, "220")?;
    for (cmd, code) in [
        ("EHLO client.demo.test".to_string(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_string(), "354"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let got = reply(&mut r)?;
        if !got.starts_with(code) {
            return Ok(got); // a refusal is an answer, not an I/O error
        }
    }
    let mut data = String::new();
    for line in message.split_inclusive("\r\n") {
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
    }
    if !data.ends_with("\r\n") {
        data.push_str("\r\n");
    }
    data.push_str(".\r\n");
    w.write_all(data.as_bytes()).map_err(|e| e.to_string())?;
    let end = reply(&mut r)?;
    let _ = w.write_all(b"QUIT\r\n");
    let _ = reply(&mut r);
    Ok(end)
}

fn openssl(args: &[&str]) -> Result<(), String> {
    let o = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args[..2].join(" "),
            text(&o).trim()
        ))
    }
}

/// Decrypt with bob's key and verify alice's signature against the demo CA (either nesting order);
/// returns the innermost content. Both layers are required.
pub fn verify_smime(demo: &Path, mail: &Path) -> Result<String, String> {
    let s = |p: PathBuf| p.display().to_string();
    let (recip, key, ca) = (
        s(demo.join("recipients/bob@demo.test.pem")),
        s(demo.join("private/bob@demo.test.key")),
        s(demo.join("trust/ca.pem")),
    );
    let mid = s(mail.with_extension("mid"));
    let out = s(mail.with_extension("plain"));
    let m = s(mail.to_path_buf());
    let decrypt = |i: &str, o: &str| {
        openssl(&[
            "cms", "-decrypt", "-in", i, "-recip", &recip, "-inkey", &key, "-out", o,
        ])
    };
    let verify = |i: &str, o: &str| {
        openssl(&[
            "cms",
            "-verify",
            "-in",
            i,
            "-CAfile",
            &ca,
            "-purpose",
            "smimesign",
            "-out",
            o,
        ])
    };
    let first = decrypt(&m, &mid).and_then(|_| verify(&mid, &out));
    if let Err(e1) = first {
        verify(&m, &mid)
            .and_then(|_| decrypt(&mid, &out))
            .map_err(|e2| format!("decrypt+verify: {e1}; verify+decrypt: {e2}"))?;
    }
    std::fs::read(&out)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| e.to_string())
}

/// A TCP port free on loopback right now.
fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
