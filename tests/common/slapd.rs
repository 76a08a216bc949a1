//! A real OpenLDAP `slapd` (Debian's /usr/sbin/slapd) for the directory tests: its own
//! `slapd.conf` (mdb backend; core, cosine and inetorgperson schemas, the last holding
//! `userSMIMECertificate`) in a temp dir, loaded with `slapadd` from the test's LDIF, listening on
//! 127.0.0.1 free ports (`ldap://`, and `ldaps://` plus StartTLS when given a TLS leaf). Only the
//! service bind DN may read entries (anonymous: nothing), so a lookup that finds something has
//! bound. slapd runs in the foreground (`-d 256`: one stats line per operation in `log()`) and is
//! killed on Drop. Every wait is bounded.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

use super::gateway::free_port;
use super::pki::Leaf;

pub const BASE: &str = "dc=example,dc=org";
/// The service account cachet binds as.
pub const BIND_DN: &str = "cn=cachet,dc=example,dc=org";
pub const BIND_PW: &str = "directory-secret-5f2c";
/// The rootdn, for `modify`.
const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
const ADMIN_PW: &str = "admin-secret-91ab";

/// How long slapd gets to start listening.
const READY: Duration = Duration::from_secs(20);

pub struct Slapd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub ldap_port: u16,
    /// 0 without TLS.
    pub ldaps_port: u16,
    starts: u32,
}

/// One LDIF entry under [`BASE`]: an inetOrgPerson `cn=<cn>` with `mail` and any binary
/// attributes (written base64, `attr:: ...`).
pub fn person(cn: &str, mail: &str, binary: &[(&str, &[u8])]) -> String {
    let mut s = format!(
        "dn: cn={cn},{BASE}\nobjectClass: inetOrgPerson\ncn: {cn}\nsn: {cn}\nmail: {mail}\n"
    );
    for (attr, bytes) in binary {
        s.push_str(&format!(
            "{attr}:: {}\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ));
    }
    s.push('\n');
    s
}

impl Slapd {
    /// Start slapd with `entries` (LDIF, e.g. from [`person`]) below the base and the service
    /// account; with `tls`, also ldaps:// and StartTLS presenting that leaf.
    pub async fn start(entries: &str, tls: Option<&Leaf>) -> Slapd {
        let dir = tempfile::Builder::new()
            .prefix("cachet-slapd-")
            .tempdir()
            .expect("slapd tempdir");
        let mut s = Slapd {
            dir,
            child: None,
            ldap_port: 0,
            ldaps_port: 0,
            starts: 0,
        };
        s.write_config(tls);
        let ldif = format!(
            "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: {BIND_DN}\nobjectClass: person\nobjectClass: simpleSecurityObject\ncn: cachet\nsn: cachet\nuserPassword: {BIND_PW}\n\n{entries}"
        );
        std::fs::write(s.path("data.ldif"), ldif).unwrap();
        let out = Command::new("/usr/sbin/slapadd")
            .arg("-f")
            .arg(s.path("slapd.conf"))
            .arg("-l")
            .arg(s.path("data.ldif"))
            .output()
            .expect("run slapadd (Debian package slapd)");
        assert!(
            out.status.success(),
            "slapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Ports are picked free, then bound by slapd: another process may take one in between,
        // so a start that fails to bind is retried on new ports.
        for attempt in 1..=3 {
            s.ldap_port = free_port();
            s.ldaps_port = if tls.is_some() { free_port() } else { 0 };
            match s.spawn().await {
                Ok(()) => return s,
                Err(e) if attempt < 3 => eprintln!("slapd start {attempt} failed, retrying: {e}"),
                Err(e) => panic!("slapd did not start: {e}\n{}", s.log()),
            }
        }
        unreachable!()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self, tls: Option<&Leaf>) {
        let d = self.dir.path().display();
        std::fs::create_dir_all(self.path("db")).unwrap();
        let mut conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {d}/slapd.pid\n"
        );
        if let Some(leaf) = tls {
            std::fs::write(self.path("server.crt"), &leaf.cert_pem).unwrap();
            std::fs::write(self.path("server.key"), &leaf.key_pem).unwrap();
            conf.push_str(&format!(
                "TLSCertificateFile {d}/server.crt\nTLSCertificateKeyFile {d}/server.key\n"
            ));
        }
        conf.push_str(&format!(
            "database mdb\nmaxsize 33554432\nsuffix \"{BASE}\"\nrootdn \"{ADMIN_DN}\"\nrootpw {ADMIN_PW}\n\
             directory {d}/db\n\
             access to attrs=userPassword by anonymous auth by * none\n\
             access to * by dn.exact=\"{BIND_DN}\" read by * none\n"
        ));
        std::fs::write(self.path("slapd.conf"), conf).unwrap();
    }

    async fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = std::fs::File::create(self.path(&format!("slapd.{}.log", self.starts))).unwrap();
        let mut urls = format!("ldap://127.0.0.1:{}/", self.ldap_port);
        if self.ldaps_port != 0 {
            urls.push_str(&format!(" ldaps://127.0.0.1:{}/", self.ldaps_port));
        }
        let child = Command::new("/usr/sbin/slapd")
            .arg("-f")
            .arg(self.path("slapd.conf"))
            .arg("-h")
            .arg(&urls)
            .args(["-d", "256"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn /usr/sbin/slapd: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                self.child = None;
                return Err(format!("slapd exited: {status}"));
            }
            let up = |port: u16| port == 0 || TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(self.ldap_port) && up(self.ldaps_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!("slapd not listening within {READY:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `ldap://127.0.0.1:<port>` (plain; StartTLS when configured with TLS).
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    /// `ldaps://127.0.0.1:<port>`.
    pub fn ldaps_url(&self) -> String {
        assert!(self.ldaps_port != 0, "slapd started without TLS");
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    /// Apply an LDIF change (`changetype: modify` ...) as the rootdn with `ldapmodify`.
    pub fn modify(&self, ldif: &str) {
        let path = self.path("change.ldif");
        std::fs::write(&path, ldif).unwrap();
        let out = Command::new("ldapmodify")
            .args([
                "-x",
                "-H",
                &self.url(),
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PW,
                "-f",
            ])
            .arg(&path)
            .output()
            .expect("run ldapmodify (Debian package ldap-utils)");
        assert!(
            out.status.success(),
            "ldapmodify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// DNs matching `filter` as sent verbatim (no escaping), searched as the service account
    /// with `ldapsearch`: what an unescaped filter would have found.
    pub fn search_dns(&self, filter: &str) -> Vec<String> {
        let out = Command::new("ldapsearch")
            .args([
                "-x",
                "-LLL",
                "-H",
                &self.url(),
                "-D",
                BIND_DN,
                "-w",
                BIND_PW,
                "-b",
                BASE,
            ])
            .arg(filter)
            .arg("dn")
            .output()
            .expect("run ldapsearch (Debian package ldap-utils)");
        assert!(
            out.status.success(),
            "ldapsearch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("dn: ").map(str::to_string))
            .collect()
    }

    /// Everything slapd logged (one stats line per connection and operation).
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.path(&format!("slapd.{n}.log"))).unwrap_or_default()
            })
            .collect()
    }

    /// Kill slapd and reap it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The temp dir holding config, database and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("===== slapd log =====\n{}", self.log());
        }
    }
}
