//! The certificate database under [`super::CertStore`]: one SQLite file (`certificates.store`)
//! that holds every recipient certificate cachet knows, whatever brought it: a file of
//! `certificates.dir` (synced at load and reload, [`sync`]), `cachet certs import` (imported), or
//! a verified signature on inbound mail ([`harvest`]).
//!
//! Why SQLite: lookups are one indexed query (`addresses` by address), so a store of 1,000,000
//! certificates costs no memory beyond SQLite's page cache, and start-up does not parse them;
//! the file is crash-safe (WAL, `synchronous = FULL`: a harvested certificate is on disk when
//! `harvest` returns); and `cachet certs approve|remove|import` write from another process while
//! the gateway runs, which sees the change at its next lookup (no reload).
//!
//! On disk (`<store>`, `<store>-wal`, `<store>-shm`), tables:
//! - `certs`: one row per certificate (by SHA-256 fingerprint): the DER, flags for each source
//!   (`imported`, `harvested`; file links live in `file_certs`), `pending` (harvested without a
//!   path to a trust anchor) and `approved` (an operator vouches for this one certificate), the
//!   CA certificates the harvested message carried (`chain`), SMIMECapabilities and the
//!   signingTime they came with, first and last seen, and the `problem` found when it was last
//!   checked (what `cachet check` reports; lookups always validate again).
//! - `addresses`: (rfc822Name, cert) pairs, the lookup index.
//! - `files` / `file_certs`: each file of the directory with its size and mtime (change
//!   detection without reading it) and the certificates it holds.
//! - `meta`: the schema version, the directory synced last, a hash of the trust anchors and
//!   intermediates the stored problems were computed with.
//!
//! Connections: a small pool ([`Pool`]); lookups run on async tasks and on the blocking pool, each
//! takes a connection for one query. Readers never wait for writers (WAL). What a lookup found
//! is kept per address until the database is written ([`watch`], `CertStore`'s `Recent`).

pub mod admin;
pub mod harvest;
pub mod sync;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::capability::Capability;

/// Connections kept open when idle; more are opened under load and closed afterwards.
const IDLE_CONNECTIONS: usize = 4;
/// How long a writer waits for another process's write to finish (SQLite `busy_timeout`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Page cache per connection, KiB (SQLite's `cache_size` in negative form): bounds memory
/// whatever the size of the store.
const CACHE_KIB: i64 = 4096;

const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certs(
    id INTEGER PRIMARY KEY,
    fingerprint BLOB NOT NULL UNIQUE,
    der BLOB NOT NULL,
    is_ca INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    imported INTEGER NOT NULL DEFAULT 0,
    harvested INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0,
    approved INTEGER NOT NULL DEFAULT 0,
    chain BLOB,
    capabilities TEXT,
    signing_time INTEGER,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    problem TEXT
);
CREATE INDEX IF NOT EXISTS certs_ok ON certs(not_after) WHERE problem IS NULL;
CREATE INDEX IF NOT EXISTS certs_problem ON certs(not_after) WHERE problem IS NOT NULL;
CREATE INDEX IF NOT EXISTS certs_ca ON certs(is_ca) WHERE is_ca = 1;
CREATE INDEX IF NOT EXISTS certs_pending ON certs(pending) WHERE pending = 1;
CREATE INDEX IF NOT EXISTS certs_last_seen ON certs(last_seen);
CREATE TABLE IF NOT EXISTS addresses(
    address TEXT NOT NULL,
    cert INTEGER NOT NULL,
    PRIMARY KEY(address, cert)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS addresses_cert ON addresses(cert);
CREATE TABLE IF NOT EXISTS files(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    problem TEXT
);
CREATE INDEX IF NOT EXISTS files_problem ON files(name) WHERE problem IS NOT NULL;
CREATE TABLE IF NOT EXISTS file_certs(
    file INTEGER NOT NULL,
    cert INTEGER NOT NULL,
    PRIMARY KEY(file, cert)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS file_certs_cert ON file_certs(cert);
";

/// A few open connections to one database file, handed out one query at a time.
pub struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// A private temporary database (`CertStore::load`, `from_certs`): removed on drop.
    temporary: bool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("path", &self.path).finish()
    }
}

/// A connection borrowed from the [`Pool`]; goes back when dropped.
pub struct Conn<'a> {
    conn: Option<Connection>,
    pool: &'a Pool,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(c);
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if self.temporary {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl Pool {
    /// Open (creating it and its directory when missing) the database at `path` and bring its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<Pool, String> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.exists()
        {
            crate::spool::modes::private_dir(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let pool = Pool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            temporary: false,
        };
        pool.init()?;
        Ok(pool)
    }

    /// A private database in the temporary directory, removed when the pool is dropped.
    pub fn temporary() -> Result<Pool, String> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "cachet-certs-{}-{}-{nanos}.sqlite",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let pool = Pool {
            path,
            idle: Mutex::new(Vec::new()),
            temporary: true,
        };
        pool.init()?;
        Ok(pool)
    }

    fn init(&self) -> Result<(), String> {
        let c = self.get()?;
        c.execute_batch(SCHEMA).map_err(|e| self.error(e))?;
        let version: Option<String> = c
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.error(e))?;
        match version.as_deref() {
            None => {
                c.execute(
                    "INSERT INTO meta(key, value) VALUES('schema', ?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(|e| self.error(e))?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(format!(
                    "{}: certificate store schema version {other}, this cachet reads version {SCHEMA_VERSION}",
                    self.path.display()
                ));
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Public certificates, but the harvest record says who wrote to whom: 0600 (the
            // WAL files were created before the database had its mode; later ones copy it).
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An SQLite error as a sentence naming the file.
    pub fn error(&self, e: rusqlite::Error) -> String {
        format!("certificate store {}: {e}", self.path.display())
    }

    /// A connection: an idle one, or a new one.
    pub fn get(&self) -> Result<Conn<'_>, String> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(Conn {
                conn: Some(c),
                pool: self,
            });
        }
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| self.error(e))?;
        c.busy_timeout(BUSY_TIMEOUT).map_err(|e| self.error(e))?;
        // WAL: readers (lookups) never wait for a writer (a harvest, the CLI); FULL: a commit
        // is on disk when it returns (the harvest promise). Temporary stores need neither.
        let sync = if self.temporary { "OFF" } else { "FULL" };
        c.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA cache_size = -{CACHE_KIB};"
        ))
        .map_err(|e| self.error(e))?;
        Ok(Conn {
            conn: Some(c),
            pool: self,
        })
    }
}

/// Unix seconds.
pub fn secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The time at unix seconds `s`.
pub fn time(s: i64) -> SystemTime {
    if s >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
    }
}

/// Capabilities as stored: `oid` or `oid:hexparams`, comma-separated, in the sender's order.
pub fn encode_capabilities(caps: &[Capability]) -> String {
    caps.iter()
        .map(|c| match &c.parameters {
            Some(p) => format!("{}:{}", c.oid, super::hex(p)),
            None => c.oid.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The inverse of [`encode_capabilities`]; entries that do not parse are skipped.
pub fn decode_capabilities(s: &str) -> Vec<Capability> {
    s.split(',')
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let (oid, params) = match e.split_once(':') {
                Some((o, p)) => (o, Some(unhex(p)?)),
                None => (e, None),
            };
            Some(Capability {
                oid: const_oid::ObjectIdentifier::new(oid).ok()?,
                parameters: params,
            })
        })
        .collect()
}

/// Bytes of a hex string; `None` when it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// CA certificates stored with a harvested certificate: each as a 4-byte big-endian length and
/// the DER.
pub fn encode_chain(certs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in certs {
        out.extend_from_slice(&(c.len() as u32).to_be_bytes());
        out.extend_from_slice(c);
    }
    out
}

/// The inverse of [`encode_chain`]; a truncated tail is ignored.
pub fn decode_chain(mut b: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let Some(c) = b.get(4..4 + n) else { break };
        out.push(rustls_pki_types::CertificateDer::from(c.to_vec()));
        b = &b[4 + n..];
    }
    out
}

/// SHA-256 of `der`, the key of `certs`.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Insert the certificate unless present (by fingerprint) and file it under each address;
/// returns its row id and whether it was new.
pub fn upsert_cert(
    c: &Connection,
    der: &[u8],
    info: &super::validate::CertInfo,
    seen: i64,
) -> rusqlite::Result<(i64, bool)> {
    let fp = fingerprint(der);
    if let Some(id) = c
        .prepare_cached("SELECT id FROM certs WHERE fingerprint = ?1")?
        .query_row([&fp[..]], |r| r.get::<_, i64>(0))
        .optional()?
    {
        return Ok((id, false));
    }
    c.prepare_cached(
        "INSERT INTO certs(fingerprint, der, is_ca, not_after, first_seen, last_seen)
         VALUES(?1, ?2, ?3, ?4, ?5, ?5)",
    )?
    .execute(params![
        &fp[..],
        der,
        info.is_ca,
        secs(info.not_after),
        seen
    ])?;
    let id = c.last_insert_rowid();
    if !info.is_ca {
        let mut ins =
            c.prepare_cached("INSERT OR IGNORE INTO addresses(address, cert) VALUES(?1, ?2)")?;
        for e in &info.emails {
            ins.execute(params![e, id])?;
        }
    }
    Ok((id, true))
}

/// Delete certificate `id` if nothing holds it any more (no file, not imported, not harvested).
pub fn collect_garbage(c: &Connection, id: i64) -> rusqlite::Result<bool> {
    let n = c
        .prepare_cached(
            "DELETE FROM certs WHERE id = ?1 AND imported = 0 AND harvested = 0
             AND NOT EXISTS (SELECT 1 FROM file_certs WHERE cert = ?1)",
        )?
        .execute([id])?;
    if n > 0 {
        c.prepare_cached("DELETE FROM addresses WHERE cert = ?1")?
            .execute([id])?;
    }
    Ok(n > 0)
}
