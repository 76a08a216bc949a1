//! The spool: where stages meet, and the only place a message lives between `250` and delivery.
//!
//! On disk (under `[spool] dir`), a message is two files, and the directory holding its envelope
//! is its state (the Postfix lesson):
//!
//! ```text
//! tmp/          drafts being received and envelope rewrites in progress (cleared at start)
//! data/ID       the message bytes, written once, never changed; also the message's lock (below)
//! incoming/ID   envelope of a message not yet attempted — renamed in last: the commit marker
//! deferred/ID   envelope waiting for its next attempt (next_attempt inside)
//! hold/ID       envelope held by policy or by an operator (`cachet queue hold`)
//! corrupt/ID    an envelope that could not be read; kept for a human, never deleted
//! ```
//!
//! Commit (before the session answers `250`): fsync the data file, rename it into data/, write the
//! envelope to tmp/, fsync, rename it into incoming/, fsync both directories. After `kill -9`,
//! recovery is "scan the directories": every envelope in incoming/ or deferred/ is delivered again
//! (duplicates are possible, losses are not). Envelope rewrites go tmp/ -> target dir by rename;
//! a crash between the rename and the unlink of the old copy leaves two copies, and the higher
//! `seq` wins. The envelope is JSON so `cachet queue show` and a human can read it.
//!
//! Damage (issue 14): an envelope that does not parse (or names another message), or whose data
//! file is missing, or whose data file no longer matches the length and SHA-256 the envelope
//! recorded at commit, moves to corrupt/ with one log line ([`Spool::quarantine`]); its data file
//! stays for a human. Envelopes from before the digest existed are checked for a data file only.
//! A data file without an envelope in any queue was never acknowledged (a crash between the two
//! renames of the commit) or was already delivered (a crash between the two unlinks of a
//! removal): it is removed at start, with one log line. Errors that say nothing about the files
//! (`EMFILE`, `ENFILE`, `ENOMEM`, `EIO` on a read) are temporary: the message stays where it is
//! and is tried again later. If a commit fails (a full disk), whatever it already wrote is
//! removed, so nothing half-written is left for the scheduler or a restart to find.
//!
//! Who may rewrite an envelope: whoever holds the message lock, an exclusive `flock(2)` on
//! `data/ID` ([`Spool::try_lock`], [`MessageLock`]). The scheduler takes it (without waiting) for
//! a whole delivery attempt, from reading the envelope to writing its new state; `cachet queue
//! hold|release|retry|delete` takes it too, waiting for an attempt in flight to end. So an
//! operator's rewrite and a delivery never interleave, and two copies with equal `seq` cannot
//! arise (the alternative, comparing `seq` before every rename, still loses one side's changes).
//! The lock dies with the process (no stale lock files after `kill -9`); a human moving files by
//! hand bypasses it, as with Postfix.
//!
//! Modes: the spool holds plaintext, so directories are 0700 and files 0600 whatever the umask
//! (created with explicit modes; existing ones are tightened by [`Spool::open`]).

pub mod admin;
mod envelope;
pub mod modes;
pub use envelope::{Direction, Envelope, RcptStatus, Recipient};

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// What [`Spool::scan`] found in the live queues.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Readable envelopes with their data file, the newest copy of each.
    pub found: Vec<(Queue, Envelope)>,
    /// Envelopes that could not be read for a reason that says nothing about the file (too many
    /// open files, ...): left in place, to be tried again later.
    pub unread: Vec<(Queue, String)>,
}

/// Why a message's data cannot be used for a delivery attempt.
#[derive(Debug)]
pub enum DataError {
    /// Missing, or not what was committed: the message belongs in corrupt/.
    Damaged(String),
    /// Could not be read now (too many open files, ...): try again later.
    Io(io::Error),
}

/// Lowercase hex of a digest.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A queue: the directory an envelope is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Queue {
    Incoming,
    Deferred,
    Hold,
    Corrupt,
}

impl Queue {
    pub const ALL: [Queue; 4] = [
        Queue::Incoming,
        Queue::Deferred,
        Queue::Hold,
        Queue::Corrupt,
    ];

    pub fn dir_name(self) -> &'static str {
        match self {
            Queue::Incoming => "incoming",
            Queue::Deferred => "deferred",
            Queue::Hold => "hold",
            Queue::Corrupt => "corrupt",
        }
    }
}

/// Handle on a spool directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

static ID_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new queue ID: time in microseconds, a per-process counter and the pid, in hex.
/// Sortable by arrival, unique across restarts and processes sharing a spool.
pub fn new_id() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let n = ID_COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
    format!("{micros:013X}{n:04X}{:05X}", std::process::id() & 0xFFFFF)
}

/// IDs are used as file names: accept only what [`new_id`] makes.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The spool's subdirectories.
const SUBDIRS: [&str; 6] = ["tmp", "data", "incoming", "deferred", "hold", "corrupt"];

/// Creates a file for writing, readable by the gateway's user only.
fn create_private(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(modes::FILE_MODE)
        .open(path)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Spool {
    /// Opens (creating if needed) the spool at `root` and clears leftovers in tmp/.
    /// Drafts in tmp/ were never acknowledged with `250`, so removing them loses nothing.
    /// Directories become 0700 and files 0600, however they were created before.
    pub fn open(root: &Path) -> io::Result<Spool> {
        modes::private_dir(root)?;
        for sub in SUBDIRS {
            modes::private_dir(&root.join(sub))?;
        }
        let spool = Spool {
            root: root.to_path_buf(),
        };
        for entry in fs::read_dir(root.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        for sub in SUBDIRS {
            modes::tighten_files(&root.join(sub));
        }
        spool.remove_orphan_data()?;
        Ok(spool)
    }

    /// Removes data files that no queue has an envelope for. Only at start, before any session
    /// runs: a live commit has its data file in data/ a moment before its envelope.
    fn remove_orphan_data(&self) -> io::Result<()> {
        for id in self.ids_in("data")? {
            let owned = Queue::ALL
                .iter()
                .any(|q| self.envelope_path(*q, &id).symlink_metadata().is_ok());
            if !owned {
                match fs::remove_file(self.data_path(&id)) {
                    Ok(()) => tracing::warn!(
                        queue_id = %id,
                        "data file without an envelope removed (never acknowledged, or already delivered)"
                    ),
                    Err(e) => {
                        tracing::warn!(queue_id = %id, error = %e, "data file without an envelope could not be removed")
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens an existing spool without touching tmp/ (for the queue CLI beside a live gateway).
    pub fn attach(root: &Path) -> io::Result<Spool> {
        if !root.join("incoming").is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a cachet spool", root.display()),
            ));
        }
        Ok(Spool {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn envelope_path(&self, q: Queue, id: &str) -> PathBuf {
        self.root.join(q.dir_name()).join(id)
    }

    pub fn data_path(&self, id: &str) -> PathBuf {
        self.root.join("data").join(id)
    }

    /// Starts receiving a message: bytes go straight to tmp/ (memory stays bounded).
    pub async fn draft(&self) -> io::Result<Draft> {
        let id = new_id();
        let path = self.root.join("tmp").join(format!("{id}.data"));
        let file = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(modes::FILE_MODE)
                    .open(&path)
            })
            .await
            .map_err(io::Error::other)??
        };
        Ok(Draft {
            spool: self.clone(),
            id,
            path,
            file: Some(file),
            size: 0,
            digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
        })
    }

    /// Writes `env` durably into queue `to`; if `from` differs, removes the old copy afterwards.
    pub async fn save(&self, env: &mut Envelope, to: Queue, from: Option<Queue>) -> io::Result<()> {
        env.seq = env.seq.saturating_add(1);
        let this = self.clone();
        let env = env.clone();
        tokio::task::spawn_blocking(move || this.save_blocking(&env, to, from))
            .await
            .map_err(io::Error::other)?
    }

    /// The caller holds the message lock (or the message is new and nobody else knows its ID).
    /// On failure (a full disk) nothing changed on disk: the old envelope is still in place.
    pub fn save_blocking(&self, env: &Envelope, to: Queue, from: Option<Queue>) -> io::Result<()> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.env{}", env.id, env.seq));
        let written = (|| {
            let mut f = create_private(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(env).map_err(io::Error::other)?)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, self.envelope_path(to, &env.id))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fsync_dir(&self.root.join(to.dir_name()))?;
        if let Some(from) = from.filter(|&f| f != to) {
            match fs::remove_file(self.envelope_path(from, &env.id)) {
                Ok(()) => fsync_dir(&self.root.join(from.dir_name()))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Commits a message built in memory (a DSN): data then envelope, both durable.
    pub async fn inject(&self, mut env: Envelope, data: Vec<u8>) -> io::Result<String> {
        let mut draft = self.draft().await?;
        env.id = draft.id.clone();
        draft.write(&data).await?;
        draft.commit(env).await
    }

    /// Reads an envelope from queue `q`. `Ok(None)` when it is not there (moved by an operator).
    pub fn load(&self, q: Queue, id: &str) -> io::Result<Option<Envelope>> {
        match fs::read(self.envelope_path(q, id)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("envelope {id}: {e}"))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finds a message in any queue.
    pub fn find(&self, id: &str) -> io::Result<Option<(Queue, Envelope)>> {
        if !valid_id(id) {
            return Ok(None);
        }
        for q in [Queue::Incoming, Queue::Deferred, Queue::Hold] {
            if let Some(env) = self.load(q, id)? {
                return Ok(Some((q, env)));
            }
        }
        Ok(None)
    }

    /// Removes a finished message: envelope first (so a crash leaves an orphan data file, never
    /// an envelope without data), then the data.
    pub fn remove_blocking(&self, q: Queue, id: &str) -> io::Result<()> {
        match fs::remove_file(self.envelope_path(q, id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let _ = fs::remove_file(self.data_path(id));
        Ok(())
    }

    pub async fn remove(&self, q: Queue, id: &str) -> io::Result<()> {
        let this = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || this.remove_blocking(q, &id))
            .await
            .map_err(io::Error::other)?
    }

    /// IDs in queue `q`, oldest first.
    pub fn ids(&self, q: Queue) -> io::Result<Vec<String>> {
        self.ids_in(q.dir_name())
    }

    /// Valid IDs among the file names in spool subdirectory `sub`, sorted.
    fn ids_in(&self, sub: &str) -> io::Result<Vec<String>> {
        let mut ids: Vec<String> = fs::read_dir(self.root.join(sub))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| valid_id(n))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every readable envelope in the live queues. Damaged ones (unparsable, or without their
    /// data file) move to corrupt/ with one log line each; envelopes that cannot be read for a
    /// passing reason are reported in `unread` and left alone. Duplicates left by a crash during
    /// a move are resolved by `seq`.
    pub fn scan(&self, queues: &[Queue]) -> io::Result<Scanned> {
        let mut found: std::collections::HashMap<String, (Queue, Envelope)> = Default::default();
        let mut unread = Vec::new();
        for &q in queues {
            for id in self.ids(q)? {
                let env = match self.load(q, &id) {
                    // An envelope naming another message is as unreadable as a torn one.
                    Ok(Some(env)) if env.id != id => {
                        self.quarantine(
                            q,
                            &id,
                            &format!("unreadable envelope: it names another message, {}", env.id),
                        );
                        continue;
                    }
                    Ok(Some(env)) => env,
                    Ok(None) => continue,
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        self.quarantine(q, &id, &format!("unreadable envelope: {e}"));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(queue_id = %id, queue = q.dir_name(), error = %e, "cannot read the envelope now; will try again");
                        unread.push((q, id));
                        continue;
                    }
                };
                match fs::symlink_metadata(self.data_path(&id)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.quarantine(q, &id, "data file missing");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(queue_id = %id, queue = q.dir_name(), error = %e, "cannot look at the data file now; will try again");
                        unread.push((q, id));
                        continue;
                    }
                }
                match found.get(&id) {
                    Some((_, old)) if old.seq >= env.seq => {
                        let _ = fs::remove_file(self.envelope_path(q, &id));
                    }
                    Some((old_q, _)) => {
                        let _ = fs::remove_file(self.envelope_path(*old_q, &id));
                        found.insert(id, (q, env));
                    }
                    None => {
                        found.insert(id, (q, env));
                    }
                }
            }
        }
        let mut found: Vec<_> = found.into_values().collect();
        found.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        Ok(Scanned { found, unread })
    }

    /// Moves a damaged message's envelope from `q` to corrupt/, with one log line saying why.
    /// The data file (if any) stays in data/ for a human; nothing is deleted.
    pub fn quarantine(&self, q: Queue, id: &str, reason: &str) {
        match fs::rename(
            self.envelope_path(q, id),
            self.envelope_path(Queue::Corrupt, id),
        ) {
            Ok(()) => {
                let _ = fsync_dir(&self.root.join(Queue::Corrupt.dir_name()));
                tracing::error!(queue_id = %id, queue = q.dir_name(), reason, "damaged message moved to corrupt/");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(queue_id = %id, queue = q.dir_name(), reason, error = %e, "damaged message could not be moved to corrupt/")
            }
        }
    }

    /// The message bytes, checked against what the envelope recorded at commit (length and
    /// SHA-256; envelopes without a digest are not checked). Reads and hashes on the blocking
    /// pool.
    pub async fn read_checked(&self, env: &Envelope) -> Result<Vec<u8>, DataError> {
        let this = self.clone();
        let (id, size, sha) = (env.id.clone(), env.size, env.data_sha256.clone());
        tokio::task::spawn_blocking(move || this.read_checked_blocking(&id, size, sha.as_deref()))
            .await
            .map_err(|e| DataError::Io(io::Error::other(e)))?
    }

    fn read_checked_blocking(
        &self,
        id: &str,
        size: u64,
        sha256: Option<&str>,
    ) -> Result<Vec<u8>, DataError> {
        let data = match fs::read(self.data_path(id)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DataError::Damaged("data file missing".into()));
            }
            Err(e) => return Err(DataError::Io(e)),
        };
        // Envelopes written before the digest existed (or by hand) are taken as they are.
        if let Some(want) = sha256 {
            if data.len() as u64 != size {
                return Err(DataError::Damaged(format!(
                    "data file is {} bytes, the envelope says {size}",
                    data.len()
                )));
            }
            let got = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data).as_ref());
            if !got.eq_ignore_ascii_case(want) {
                return Err(DataError::Damaged(
                    "data file does not match the SHA-256 the envelope recorded".into(),
                ));
            }
        }
        Ok(data)
    }

    /// Counts per queue, for metrics.
    pub fn counts(&self) -> Vec<(Queue, usize)> {
        Queue::ALL
            .iter()
            .map(|&q| (q, self.ids(q).map(|v| v.len()).unwrap_or(0)))
            .collect()
    }

    /// True when a file can be created and synced in tmp/ (health check).
    pub fn writable(&self) -> bool {
        let probe = self
            .root
            .join("tmp")
            .join(format!(".probe-{}", std::process::id()));
        let ok = create_private(&probe)
            .and_then(|mut f| f.write_all(b"ok").and_then(|_| f.sync_all()))
            .is_ok();
        let _ = fs::remove_file(&probe);
        ok
    }
}

/// The right to rewrite one message's envelope: an exclusive `flock(2)` on `data/ID`, released
/// when this is dropped (or the process dies). See the module header.
#[derive(Debug)]
pub struct MessageLock {
    _file: File,
}

/// What [`Spool::try_lock`] found.
#[derive(Debug)]
pub enum TryLock {
    Locked(MessageLock),
    /// Another process or task holds it (an operator action, a delivery attempt).
    Busy,
    /// No data file: the message is gone (deleted, delivered) or corrupt.
    Gone,
}

impl Spool {
    /// Takes the message lock without waiting.
    pub fn try_lock(&self, id: &str) -> io::Result<TryLock> {
        if !valid_id(id) {
            return Ok(TryLock::Gone);
        }
        let file = match File::open(self.data_path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TryLock::Gone),
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(TryLock::Busy),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        // Deleted while we waited for the lock: the lock is on an unlinked file, worth nothing.
        if !self.data_path(id).is_file() {
            return Ok(TryLock::Gone);
        }
        Ok(TryLock::Locked(MessageLock { _file: file }))
    }

    /// Takes the message lock, waiting up to `patience` for a delivery attempt in flight to end
    /// (every network wait of an attempt has a deadline, so it does end). `Ok(None)`: no data file.
    pub fn lock_waiting(
        &self,
        id: &str,
        patience: std::time::Duration,
    ) -> io::Result<Option<MessageLock>> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match self.try_lock(id)? {
                TryLock::Locked(l) => return Ok(Some(l)),
                TryLock::Gone => return Ok(None),
                TryLock::Busy if std::time::Instant::now() >= deadline => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "message {id} is still being delivered after {}s; try again later",
                            patience.as_secs()
                        ),
                    ));
                }
                TryLock::Busy => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
}

/// A message being received. Dropped without [`Draft::commit`], its file is removed.
pub struct Draft {
    spool: Spool,
    pub id: String,
    path: PathBuf,
    /// A plain file written on the blocking pool: `tokio::fs::File` would keep a buffer as large as
    /// the largest write for as long as the draft is open, per session (500 slow clients x 256 KiB).
    /// `None` after a write whose blocking task died: every later write or commit fails.
    file: Option<File>,
    size: u64,
    /// SHA-256 of everything written, recorded in the envelope (damage detection).
    digest: aws_lc_rs::digest::Context,
}

impl Draft {
    /// Appends `bytes`; returns once they are written (not yet synced). The copy handed to the
    /// blocking pool is freed as soon as it is written.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.size += bytes.len() as u64;
        self.digest.update(bytes);
        let mut file = self.file.take().ok_or_else(draft_broken)?;
        let bytes = bytes.to_vec();
        let (file, written) = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&bytes);
            (file, r)
        })
        .await
        .map_err(io::Error::other)?;
        self.file = Some(file);
        written
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the message durable and queued; only after this returns may the session say `250`.
    /// On failure (a full disk) nothing of the message is left: no data file without an
    /// envelope, no envelope the scheduler could pick up after the client was told `4xx`.
    pub async fn commit(self, env: Envelope) -> io::Result<String> {
        Ok(self.commit_inner(env, false).await?.0.id)
    }

    /// Commits like [`Draft::commit`], holding the message lock from before the envelope
    /// appears in incoming/ until the returned [`MessageLock`] is dropped: the scheduler (which
    /// also scans incoming/) cannot start a delivery meanwhile. The inbound session uses it to
    /// judge a message it already made durable before answering (reject removes it, hold moves
    /// it). Returns the envelope as written.
    pub async fn commit_locked(self, env: Envelope) -> io::Result<(Envelope, MessageLock)> {
        let (env, lock) = self.commit_inner(env, true).await?;
        Ok((env, lock.expect("asked for")))
    }

    async fn commit_inner(
        mut self,
        mut env: Envelope,
        lock: bool,
    ) -> io::Result<(Envelope, Option<MessageLock>)> {
        let file = self.file.take().ok_or_else(draft_broken)?;
        env.id = self.id.clone();
        env.size = self.size;
        env.data_sha256 = Some(hex(self.digest.clone().finish().as_ref()));
        env.seq = 1;
        let spool = self.spool.clone();
        let path = self.path.clone();
        let id = self.id.clone();
        let (written, held) =
            tokio::task::spawn_blocking(move || -> io::Result<(Envelope, Option<MessageLock>)> {
                file.sync_all()?;
                drop(file);
                // flock(2) locks the file, not the name: taken on tmp/, it holds on data/ID.
                let held = if lock {
                    let f = File::open(&path)?;
                    f.lock()?;
                    Some(MessageLock { _file: f })
                } else {
                    None
                };
                fs::rename(&path, spool.data_path(&id))?;
                let committed = fsync_dir(&spool.root.join("data"))
                    .and_then(|()| spool.save_blocking(&env, Queue::Incoming, None));
                if committed.is_err() {
                    // Envelope first, as in a removal: never an envelope without its data.
                    let _ = fs::remove_file(spool.envelope_path(Queue::Incoming, &id));
                    let _ = fs::remove_file(spool.data_path(&id));
                }
                committed.map(|()| (env, held))
            })
            .await
            .map_err(io::Error::other)??;
        self.path = PathBuf::new();
        Ok((written, held))
    }
}

fn draft_broken() -> io::Error {
    io::Error::other("an earlier write to this spool file failed")
}

impl Drop for Draft {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(sender: &str, rcpts: &[&str]) -> Envelope {
        Envelope::new(
            sender.into(),
            rcpts.iter().map(|r| r.to_string()).collect(),
            "127.0.0.1".into(),
            "client".into(),
        )
    }

    #[tokio::test]
    async fn commit_makes_data_and_envelope_durable() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut d = spool.draft().await.unwrap();
        d.write(b"Subject: hi\r\n\r\nbody\r\n").await.unwrap();
        let id = d.commit(env("a@x", &["b@y"])).await.unwrap();
        assert_eq!(
            std::fs::read(spool.data_path(&id)).unwrap(),
            b"Subject: hi\r\n\r\nbody\r\n"
        );
        let (q, e) = spool.find(&id).unwrap().unwrap();
        assert_eq!(q, Queue::Incoming);
        assert_eq!(e.recipients[0].address, "b@y");
        assert_eq!(e.size, 21);
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[tokio::test]
    async fn dropped_draft_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut d = spool.draft().await.unwrap();
        d.write(b"x").await.unwrap();
        drop(d);
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
        assert!(spool.scan(&Queue::ALL).unwrap().found.is_empty());
    }

    #[tokio::test]
    async fn scan_keeps_newest_copy_and_quarantines_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut d = spool.draft().await.unwrap();
        d.write(b"x\r\n").await.unwrap();
        let id = d.commit(env("a@x", &["b@y"])).await.unwrap();
        // Simulate a crash between rename into deferred/ and unlink from incoming/.
        let (_, mut e) = spool.find(&id).unwrap().unwrap();
        e.seq += 1;
        e.attempts = 1;
        std::fs::write(
            dir.path().join("deferred").join(&id),
            serde_json::to_vec(&e).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("incoming").join("GARBAGE1"), b"{not json").unwrap();
        let found = spool
            .scan(&[Queue::Incoming, Queue::Deferred])
            .unwrap()
            .found;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Queue::Deferred);
        assert_eq!(found[0].1.attempts, 1);
        assert!(!dir.path().join("incoming").join(&id).exists());
        assert!(dir.path().join("corrupt").join("GARBAGE1").exists());
    }

    #[tokio::test]
    async fn data_is_checked_against_the_envelope_and_orphans_go_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut d = spool.draft().await.unwrap();
        d.write(b"Subject: hi\r\n\r\nbody\r\n").await.unwrap();
        let id = d.commit(env("a@x", &["b@y"])).await.unwrap();
        let (_, e) = spool.find(&id).unwrap().unwrap();
        assert_eq!(spool.read_checked(&e).await.unwrap().len(), 21);
        // Same length, other bytes: only the digest can tell.
        std::fs::write(spool.data_path(&id), b"Subject: ho\r\n\r\nbody\r\n").unwrap();
        assert!(matches!(
            spool.read_checked(&e).await,
            Err(DataError::Damaged(r)) if r.contains("SHA-256")
        ));
        std::fs::write(spool.data_path(&id), b"short").unwrap();
        assert!(matches!(
            spool.read_checked(&e).await,
            Err(DataError::Damaged(r)) if r.contains("5 bytes")
        ));
        std::fs::remove_file(spool.data_path(&id)).unwrap();
        assert!(matches!(
            spool.read_checked(&e).await,
            Err(DataError::Damaged(r)) if r.contains("missing")
        ));
        // A data file no queue knows is removed when the spool is opened; one in corrupt/ stays.
        std::fs::write(spool.data_path("ORPHAN1"), b"x").unwrap();
        std::fs::write(spool.data_path("KEPT1"), b"x").unwrap();
        std::fs::write(dir.path().join("corrupt").join("KEPT1"), b"{").unwrap();
        Spool::open(dir.path()).unwrap();
        assert!(!spool.data_path("ORPHAN1").exists());
        assert!(spool.data_path("KEPT1").exists());
    }

    #[test]
    fn ids_are_unique_and_file_safe() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(valid_id(&a));
        assert!(!valid_id("../etc"));
    }
}
