//! The spool: where stages meet, and the only place a message lives between `250` and delivery.
//!
//! On disk (under `[spool] dir`), a message is one queue file, and the directory holding it is
//! its state (the Postfix lesson):
//!
//! ```text
//! tmp/          drafts being received (cleared at start)
//! incoming/ID   a message not yet attempted: renamed in from tmp/, the commit marker
//! deferred/ID   waiting for its next attempt (next_attempt inside)
//! hold/ID       held by policy or by an operator (`cachet queue hold`)
//! corrupt/ID    a queue file that could not be read; kept for a human, never deleted
//! ```
//!
//! The queue file ([`file`]) holds the message bytes and, after them, the envelope as records
//! appended in place: the newest complete record is the envelope. So a message costs one file
//! created and one unlinked, and a deferral appends a record and renames the file, where two
//! files (data and envelope) were created, rewritten and unlinked before.
//!
//! Commit (before the session answers `250`): write the header and the first envelope record
//! behind the data, fsync the file, rename it from tmp/ into incoming/, fsync incoming/ (one
//! directory fsync serves every commit that renamed before it started: group commit, see
//! [`DirSync`]). After `kill -9`, recovery is "scan the directories": every queue file in
//! incoming/ or deferred/ is delivered again (duplicates are possible, losses are not). A
//! rewrite appends a record and fsyncs the file, then renames it if the queue changes and fsyncs
//! both directories; a crash during the append leaves an incomplete record that readers skip.
//! The envelope is JSON so `cachet queue show` and a human can read it.
//!
//! Damage (issue 14): a queue file whose header or envelope records do not parse (or whose
//! envelope names another message), or whose data is cut short, or no longer matches the
//! length and CRC-32 the envelope recorded at commit, moves to corrupt/ with one log line
//! ([`Spool::quarantine`]). Errors that say nothing about the files (`EMFILE`, `ENFILE`,
//! `ENOMEM`, `EIO` on a read) are temporary: the message stays where it is and is tried again
//! later. If a commit fails (a full disk), whatever it already wrote is removed, so nothing
//! half-written is left for the scheduler or a restart to find.
//!
//! Spools written by an older cachet (data/ID plus a JSON envelope file in the queue
//! directories) are converted when the gateway opens them ([`Spool::open`]): each pair becomes
//! one queue file (written in tmp/, renamed over the old envelope, then data/ID removed).
//!
//! Who may rewrite an envelope: whoever holds the message lock, an exclusive `flock(2)` on the
//! queue file ([`Spool::try_lock`], [`MessageLock`]); `flock` follows the file through renames.
//! The scheduler takes it (without waiting) for a whole delivery attempt, from reading the
//! envelope to writing its new state; `cachet queue hold|release|retry|delete` takes it too,
//! waiting for an attempt in flight to end. So an operator's rewrite and a delivery never
//! interleave. The lock dies with the process (no stale lock files after `kill -9`); a human
//! moving files by hand bypasses it, as with Postfix.
//!
//! Modes: the spool holds plaintext, so directories are 0700 and files 0600 whatever the umask
//! (created with explicit modes; existing ones are tightened by [`Spool::open`]).

pub mod admin;
mod check;
mod dirsync;
mod draft;
mod envelope;
pub mod file;
pub mod inflow;
mod lock;
pub mod modes;
mod recycle;
pub use draft::Draft;
pub use envelope::{Direction, Envelope, RcptStatus, Recipient};
pub use lock::{MessageLock, TryLock};

use dirsync::DirSync;
use recycle::Recycled;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// Group commit of incoming/'s fsync, shared by every clone (every session).
    incoming_sync: Arc<DirSync>,
    /// Emptied queue files of delivered messages, reused for new drafts (gateway only: `None`
    /// for the queue CLI). See [`Recycled`].
    recycled: Option<Arc<Recycled>>,
    /// Arrival pacing between the sessions and the scheduler ([`inflow`]).
    in_flow: Arc<inflow::InFlow>,
}

/// Messages up to this size are read and checked by [`Spool::read_checked`] without a trip to
/// the blocking pool: a read from the page cache and a CRC-32 of at most this much stay well
/// under 100 microseconds, the most an async thread should go without yielding (an older
/// envelope's SHA-256 of 128 KiB, about 70 us here, still does).
pub const INLINE_READ_MAX: u64 = 128 * 1024;

static ID_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new queue ID: time in microseconds, a per-process counter and the pid, in hex.
/// Sortable by arrival, unique across restarts and processes sharing a spool.
pub fn new_id() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let n = ID_COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
    format!("{micros:013X}{n:04X}{:05X}", pid() & 0xFFFFF)
}

/// This process's id, asked of the kernel once (`getpid` is a system call per message
/// otherwise; cachet never forks).
fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// IDs are used as file names: accept only what [`new_id`] makes.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The spool's subdirectories. `data/` belongs to the layout before queue files: it is only
/// looked at (converted, then emptied) when it exists.
const SUBDIRS: [&str; 5] = ["tmp", "incoming", "deferred", "hold", "corrupt"];
const OLD_DATA_DIR: &str = "data";

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
    /// Directories become 0700 and files 0600, however they were created before. A spool of
    /// the older two-file layout is converted (see the module header).
    pub fn open(root: &Path) -> io::Result<Spool> {
        modes::private_dir(root)?;
        for sub in SUBDIRS {
            modes::private_dir(&root.join(sub))?;
        }
        let mut spool = Spool::at(root);
        spool.recycled = Some(Arc::new(Recycled::default()));
        for entry in fs::read_dir(root.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        for sub in SUBDIRS.iter().chain([&OLD_DATA_DIR]) {
            modes::tighten_files(&root.join(sub));
        }
        if root.join(OLD_DATA_DIR).is_dir() {
            modes::private_dir(&root.join(OLD_DATA_DIR))?;
            spool.convert_old_layout()?;
        }
        Ok(spool)
    }

    fn at(root: &Path) -> Spool {
        Spool {
            root: root.to_path_buf(),
            incoming_sync: Arc::new(DirSync::new(root.join(Queue::Incoming.dir_name()))),
            recycled: None,
            in_flow: Arc::default(),
        }
    }

    /// The older layout: data/ID beside a JSON envelope in a queue directory. Each live pair
    /// becomes one queue file (an envelope without its data is left to the scan, which moves it
    /// to corrupt/ as unreadable); data files no live envelope names (never acknowledged, or already delivered) are removed, except
    /// those of messages in corrupt/, kept for a human. Only at start, before any session runs.
    fn convert_old_layout(&self) -> io::Result<()> {
        let old_data = |id: &str| self.root.join(OLD_DATA_DIR).join(id);
        for q in [Queue::Incoming, Queue::Deferred, Queue::Hold] {
            for id in self.ids(q)? {
                // Only a pair is converted: a file without data/ID is the scan's to judge (an
                // old envelope whose data is gone is "not a queue file" there, and goes to
                // corrupt/ like any other unreadable file).
                let data = match fs::read(old_data(&id)) {
                    Ok(d) => d,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let path = self.queue_path(q, &id);
                let Ok(old) = fs::read(&path) else { continue };
                if old.starts_with(file::MAGIC) {
                    continue;
                }
                let tmp = self.root.join("tmp").join(&id);
                let mut f = create_private(&tmp)?;
                // The old envelope's bytes as they are: a damaged one is found by the scan.
                f.write_all(&file::compose(&data, &old))?;
                f.sync_all()?;
                drop(f);
                fs::rename(&tmp, &path)?;
                fsync_dir(&self.root.join(q.dir_name()))?;
                fs::remove_file(old_data(&id))?;
                tracing::info!(queue_id = %id, queue = q.dir_name(), "converted to a queue file");
            }
        }
        for id in self.ids_in(OLD_DATA_DIR)? {
            if self
                .queue_path(Queue::Corrupt, &id)
                .symlink_metadata()
                .is_ok()
            {
                continue;
            }
            match fs::remove_file(old_data(&id)) {
                Ok(()) => tracing::warn!(
                    queue_id = %id,
                    "data file without an envelope removed (never acknowledged, or already delivered)"
                ),
                Err(e) => {
                    tracing::warn!(queue_id = %id, error = %e, "data file without an envelope could not be removed")
                }
            }
        }
        // Empty now (unless corrupt/ messages keep data there): gone, so later starts skip
        // the conversion instead of looking for a data file per queued message.
        let _ = fs::remove_dir(self.root.join(OLD_DATA_DIR));
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
        Ok(Spool::at(root))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The queue file of message `id` in queue `q`.
    pub fn queue_path(&self, q: Queue, id: &str) -> PathBuf {
        self.root.join(q.dir_name()).join(id)
    }

    /// Arrival pacing: sessions ask before DATA, the scheduler gives as it starts on messages.
    pub fn in_flow(&self) -> &inflow::InFlow {
        &self.in_flow
    }

    /// Writes `env` durably as the message's envelope and moves the message from queue `from`
    /// to `to` (if they differ).
    pub async fn save(&self, env: &mut Envelope, to: Queue, from: Queue) -> io::Result<()> {
        env.seq = env.seq.saturating_add(1);
        let this = self.clone();
        let env = env.clone();
        tokio::task::spawn_blocking(move || this.save_blocking(&env, to, from))
            .await
            .map_err(io::Error::other)?
    }

    /// The caller holds the message lock. On failure (a full disk) before the rename, the old
    /// envelope still stands.
    pub fn save_blocking(&self, env: &Envelope, to: Queue, from: Queue) -> io::Result<()> {
        let path = self.queue_path(from, &env.id);
        let f = fs::OpenOptions::new().read(true).write(true).open(&path)?;
        let end = file::read(&f)?.end;
        file::append(&f, end, &file::record(env)?)?;
        drop(f);
        if from != to {
            fs::rename(&path, self.queue_path(to, &env.id))?;
            fsync_dir(&self.root.join(to.dir_name()))?;
            fsync_dir(&self.root.join(from.dir_name()))?;
        }
        Ok(())
    }

    /// Commits a message built in memory (a DSN): data then envelope, both durable.
    pub async fn inject(&self, mut env: Envelope, data: Vec<u8>) -> io::Result<String> {
        let mut draft = self.draft().await?;
        env.id = draft.id.clone();
        draft.write_last(data);
        draft.commit(env).await
    }

    /// Reads an envelope from queue `q`. `Ok(None)` when it is not there (moved by an operator).
    pub fn load(&self, q: Queue, id: &str) -> io::Result<Option<Envelope>> {
        self.load_held(q, id, None)
    }

    /// [`Spool::load`], through the file of `held` when it is the message's lock on its file
    /// in `q` (no second open).
    pub fn load_held(
        &self,
        q: Queue,
        id: &str,
        held: Option<&MessageLock>,
    ) -> io::Result<Option<Envelope>> {
        let parsed = match held.filter(|l| l.file_in(q).is_some()) {
            Some(lock) => lock.read(),
            None => match File::open(self.queue_path(q, id)) {
                Ok(f) => file::read(&f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        parsed
            .map(|p| Some(p.envelope))
            .map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => {
                    io::Error::new(io::ErrorKind::InvalidData, format!("queue file {id}: {e}"))
                }
                _ => e,
            })
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

    /// Every readable envelope in the live queues. Damaged queue files (unparsable, data cut
    /// short) move to corrupt/ with one log line each; files that cannot be read for a passing
    /// reason are reported in `unread` and left alone. A message found in two queues (moved by
    /// hand) is taken from the copy with the higher `seq`.
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
                        tracing::warn!(queue_id = %id, queue = q.dir_name(), error = %e, "cannot read the queue file now; will try again");
                        unread.push((q, id));
                        continue;
                    }
                };
                match found.get(&id) {
                    Some((_, old)) if old.seq >= env.seq => {
                        let _ = fs::remove_file(self.queue_path(q, &id));
                    }
                    Some((old_q, _)) => {
                        let _ = fs::remove_file(self.queue_path(*old_q, &id));
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

    /// Moves a damaged message's queue file from `q` to corrupt/, with one log line saying why.
    /// Nothing is deleted.
    pub fn quarantine(&self, q: Queue, id: &str, reason: &str) {
        match fs::rename(self.queue_path(q, id), self.queue_path(Queue::Corrupt, id)) {
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

    /// The message bytes of `id` in queue `q`, unchecked (for `cachet queue show` and tests).
    pub fn read_data(&self, q: Queue, id: &str) -> io::Result<Vec<u8>> {
        let f = File::open(self.queue_path(q, id))?;
        let (size, _) = file::extent(&f)?;
        let mut data = vec![0; size as usize];
        f.read_exact_at(&mut data, file::HEADER_LEN)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::lower as hex;

    fn env(sender: &str, rcpts: &[&str]) -> Envelope {
        Envelope::new(
            sender.into(),
            rcpts.iter().map(|r| r.to_string()).collect(),
            "127.0.0.1".into(),
            "client".into(),
        )
    }

    async fn committed(spool: &Spool, body: &[u8]) -> String {
        let mut d = spool.draft().await.unwrap();
        d.write(body).await.unwrap();
        d.commit(env("a@x", &["b@y"])).await.unwrap()
    }

    fn tmp_is_empty(dir: &Path) -> bool {
        tmp_files(dir).is_empty()
    }

    /// Commits the next message and checks it went into the reused file `ino`, whole.
    async fn next_in(spool: &Spool, ino: u64) -> String {
        use std::os::unix::fs::MetadataExt;
        let next = committed(spool, b"Subject: next\r\n\r\n").await;
        let path = spool.queue_path(Queue::Incoming, &next);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino, "reused");
        assert_eq!(
            spool.read_data(Queue::Incoming, &next).unwrap(),
            b"Subject: next\r\n\r\n"
        );
        next
    }

    /// The files in tmp/ (drafts, and emptied files waiting for reuse).
    fn tmp_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    #[tokio::test]
    async fn commit_makes_one_durable_queue_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = committed(&spool, b"Subject: hi\r\n\r\nbody\r\n").await;
        assert_eq!(
            spool.read_data(Queue::Incoming, &id).unwrap(),
            b"Subject: hi\r\n\r\nbody\r\n"
        );
        let raw = std::fs::read(spool.queue_path(Queue::Incoming, &id)).unwrap();
        assert!(raw.starts_with(file::MAGIC));
        let (q, e) = spool.find(&id).unwrap().unwrap();
        assert_eq!(q, Queue::Incoming);
        assert_eq!(e.recipients[0].address, "b@y");
        assert_eq!(e.size, 21);
        assert!(tmp_is_empty(dir.path()));
        assert!(!dir.path().join("data").exists(), "no data/ in a new spool");
    }

    #[tokio::test]
    async fn a_removal_by_size_empties_small_files_for_reuse_and_large_ones_too() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let big_body = vec![b'x'; INLINE_READ_MAX as usize + 1];
        for body in [&b"Subject: s\r\n\r\nx\r\n"[..], &big_body[..]] {
            let id = committed(&spool, body).await;
            let e = spool.find(&id).unwrap().unwrap().1;
            spool
                .remove_sized(Queue::Incoming, &id, e.size)
                .await
                .unwrap();
            assert!(
                spool.find(&id).unwrap().is_none(),
                "{} octets: gone",
                body.len()
            );
            // Removing it again (a second attempt after a crash) is not an error.
            spool
                .remove_sized(Queue::Incoming, &id, e.size)
                .await
                .unwrap();
            let free: Vec<_> = tmp_files(dir.path())
                .iter()
                .map(|f| std::fs::read(f).unwrap())
                .collect();
            // The draft of this message took the file the last removal kept: the one left is
            // this message's own.
            assert_eq!(
                free.len(),
                1,
                "{} octets: its file kept for reuse",
                body.len()
            );
            assert!(
                free.iter().all(|f| f.iter().all(|&b| b == 0)),
                "{} octets: what is kept for reuse holds no message bytes",
                body.len()
            );
        }
    }

    #[tokio::test]
    async fn the_last_bytes_are_written_by_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        // Written in two pieces (each at its own offset), then the last bytes handed to the
        // commit.
        let mut d = spool.draft().await.unwrap();
        d.write(b"Subject: two parts\r\n").await.unwrap();
        d.write(b"\r\n").await.unwrap();
        d.write_last(b"the tail\r\n".to_vec());
        let mut e = env("a@x", &["b@y"]);
        let id = d.commit(e.clone()).await.unwrap();
        e = spool.find(&id).unwrap().unwrap().1;
        assert_eq!(e.size, 32);
        assert_eq!(
            spool.read_checked(Queue::Incoming, &e, None).await.unwrap(),
            b"Subject: two parts\r\n\r\nthe tail\r\n",
            "length and digest as recorded"
        );
        // Only last bytes (a small message), in a file emptied by a larger one before it.
        let big = committed(&spool, &vec![b'x'; 20_000]).await;
        spool.remove(Queue::Incoming, &big).await.unwrap();
        let mut d = spool.draft().await.unwrap();
        d.write_last(b"Subject: small\r\n\r\nx\r\n".to_vec());
        let id = d.commit(env("a@x", &["b@y"])).await.unwrap();
        let e = spool.find(&id).unwrap().unwrap().1;
        assert_eq!(
            spool.read_checked(Queue::Incoming, &e, None).await.unwrap(),
            b"Subject: small\r\n\r\nx\r\n"
        );
        let raw = std::fs::metadata(spool.queue_path(Queue::Incoming, &id)).unwrap();
        assert!(
            raw.len() < 20_000,
            "nothing of the larger message left behind"
        );
    }

    #[tokio::test]
    async fn dropped_draft_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut d = spool.draft().await.unwrap();
        d.write(b"x").await.unwrap();
        drop(d);
        assert!(tmp_is_empty(dir.path()));
        assert!(spool.scan(&Queue::ALL).unwrap().found.is_empty());
    }

    #[tokio::test]
    async fn rewrites_append_records_and_a_torn_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = committed(&spool, b"Subject: hi\r\n\r\nbody\r\n").await;
        let (_, mut e) = spool.find(&id).unwrap().unwrap();
        e.attempts = 1;
        spool
            .save(&mut e, Queue::Deferred, Queue::Incoming)
            .await
            .unwrap();
        assert!(!spool.queue_path(Queue::Incoming, &id).exists());
        let path = spool.queue_path(Queue::Deferred, &id);
        let two = std::fs::read(&path).unwrap();
        // A crash in the middle of the next append: the record is cut, the last whole one stands.
        e.attempts = 2;
        let rec = file::record(&e).unwrap();
        let mut torn = two.clone();
        torn.extend_from_slice(&rec[..rec.len() / 2]);
        std::fs::write(&path, &torn).unwrap();
        let (q, back) = spool.find(&id).unwrap().unwrap();
        assert_eq!((q, back.attempts, back.seq), (Queue::Deferred, 1, 2));
        // The next rewrite goes over the torn tail, so it is the one read back.
        e.attempts = 3;
        spool
            .save(&mut e, Queue::Deferred, Queue::Deferred)
            .await
            .unwrap();
        assert_eq!(spool.find(&id).unwrap().unwrap().1.attempts, 3);
        let three = std::fs::read(&path).unwrap();
        assert_eq!(three.len(), two.len() + file::record(&e).unwrap().len());
        assert_eq!(spool.read_data(Queue::Deferred, &id).unwrap().len(), 21);
    }

    #[tokio::test]
    async fn scan_keeps_newest_copy_and_quarantines_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = committed(&spool, b"x\r\n").await;
        // The same message in two queues (copied by hand): the higher seq wins.
        let (_, mut e) = spool.find(&id).unwrap().unwrap();
        let deferred = spool.queue_path(Queue::Deferred, &id);
        std::fs::copy(spool.queue_path(Queue::Incoming, &id), &deferred).unwrap();
        e.seq += 1;
        e.attempts = 1;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&deferred)
            .unwrap();
        f.write_all(&file::record(&e).unwrap()).unwrap();
        std::fs::write(dir.path().join("incoming").join("GARBAGE1"), b"{not json").unwrap();
        let found = spool
            .scan(&[Queue::Incoming, Queue::Deferred])
            .unwrap()
            .found;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Queue::Deferred);
        assert_eq!(found[0].1.attempts, 1);
        assert!(!spool.queue_path(Queue::Incoming, &id).exists());
        assert!(dir.path().join("corrupt").join("GARBAGE1").exists());
    }

    #[tokio::test]
    async fn data_is_checked_against_the_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = committed(&spool, b"Subject: hi\r\n\r\nbody\r\n").await;
        let (q, e) = spool.find(&id).unwrap().unwrap();
        assert_eq!(spool.read_checked(q, &e, None).await.unwrap().len(), 21);
        let path = spool.queue_path(q, &id);
        let good = std::fs::read(&path).unwrap();
        // Same length, other bytes: only the digest can tell.
        let at = file::HEADER_LEN as usize + 10;
        let mut flipped = good.clone();
        flipped[at] ^= 0x01;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(
            spool.read_checked(q, &e, None).await,
            Err(DataError::Damaged(r)) if r.contains("CRC-32")
        ));
        // A message queued by an older version carries a SHA-256 instead: still checked.
        let data = b"Subject: hi\r\n\r\nbody\r\n";
        let older = Envelope {
            data_crc32: None,
            data_sha256: Some(hex(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                data,
            )
            .as_ref())),
            ..e.clone()
        };
        assert!(matches!(
            spool.read_checked(q, &older, None).await,
            Err(DataError::Damaged(r)) if r.contains("SHA-256")
        ));
        std::fs::write(&path, &good).unwrap();
        assert_eq!(spool.read_checked(q, &older, None).await.unwrap(), data);
        // Neither recorded (an envelope written by hand): taken as it is.
        let unchecked = Envelope {
            data_sha256: None,
            ..older.clone()
        };
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(
            spool.read_checked(q, &unchecked, None).await.unwrap().len(),
            21
        );
        std::fs::write(&path, &good[..at]).unwrap();
        assert!(matches!(
            spool.read_checked(q, &e, None).await,
            Err(DataError::Damaged(r)) if r.contains("cut short")
        ));
        let err = spool.load(q, &id).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("cut short"), "{err}");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            spool.read_checked(q, &e, None).await,
            Err(DataError::Damaged(r)) if r.contains("missing")
        ));
    }

    /// A spool of the older layout (data/ID beside a JSON envelope) is converted at open: live
    /// pairs become queue files, an envelope without data goes to corrupt/, orphan data files go,
    /// data of messages already in corrupt/ stays.
    #[test]
    fn the_older_two_file_layout_is_converted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        Spool::open(dir.path()).unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("data")).unwrap();
        let mut old = env("a@x", &["b@y"]);
        old.id = "OLD1".into();
        old.attempts = 2;
        std::fs::write(root.join("data/OLD1"), b"Subject: old\r\n\r\nbody\r\n").unwrap();
        std::fs::write(
            root.join("deferred/OLD1"),
            serde_json::to_vec_pretty(&old).unwrap(),
        )
        .unwrap();
        old.id = "NODATA1".into();
        std::fs::write(
            root.join("incoming/NODATA1"),
            serde_json::to_vec_pretty(&old).unwrap(),
        )
        .unwrap();
        std::fs::write(root.join("data/ORPHAN1"), b"x").unwrap();
        std::fs::write(root.join("data/KEPT1"), b"x").unwrap();
        std::fs::write(root.join("corrupt/KEPT1"), b"{").unwrap();
        let spool = Spool::open(root).unwrap();
        let (q, e) = spool.find("OLD1").unwrap().unwrap();
        assert_eq!((q, e.attempts), (Queue::Deferred, 2));
        assert_eq!(
            spool.read_data(q, "OLD1").unwrap(),
            b"Subject: old\r\n\r\nbody\r\n"
        );
        assert!(!root.join("data/OLD1").exists());
        // An old envelope without its data is no queue file: the scan sends it to corrupt/.
        assert!(spool.scan(&[Queue::Incoming]).unwrap().found.is_empty());
        assert!(root.join("corrupt/NODATA1").exists());
        assert!(!root.join("data/ORPHAN1").exists());
        assert!(root.join("data/KEPT1").exists());
        // Opening again changes nothing; data/ stays while it holds what corrupt/ needs.
        Spool::open(root).unwrap();
        assert_eq!(spool.find("OLD1").unwrap().unwrap().1.attempts, 2);
        assert!(root.join("data/KEPT1").exists());
        std::fs::remove_file(root.join("corrupt/KEPT1")).unwrap();
        Spool::open(root).unwrap();
        assert!(!root.join("data").exists(), "an emptied data/ is removed");
    }

    #[tokio::test]
    async fn the_lock_follows_the_file_between_queues() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = committed(&spool, b"x\r\n").await;
        let TryLock::Locked(lock) = spool.try_lock(&id).unwrap() else {
            panic!("not locked")
        };
        let (_, mut e) = spool.find(&id).unwrap().unwrap();
        spool
            .save(&mut e, Queue::Hold, Queue::Incoming)
            .await
            .unwrap();
        assert!(matches!(spool.try_lock(&id).unwrap(), TryLock::Busy));
        drop(lock);
        assert!(matches!(spool.try_lock(&id).unwrap(), TryLock::Locked(_)));
        spool.remove(Queue::Hold, &id).await.unwrap();
        assert!(matches!(spool.try_lock(&id).unwrap(), TryLock::Gone));
    }

    /// An attempt reads the envelope and the data through the file it locked: the same bytes
    /// as by name, with no second open (so even with the name gone, which a lock holder never
    /// does, they are read), and by name for another queue.
    #[tokio::test]
    async fn a_held_lock_is_read_through() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = committed(&spool, b"Subject: held\r\n\r\nbody\r\n").await;
        let TryLock::Locked(lock) = spool.try_lock(&id).unwrap() else {
            panic!("not locked")
        };
        let q = Queue::Incoming;
        let by_name = spool.load(q, &id).unwrap().unwrap();
        let held = spool.load_held(q, &id, Some(&lock)).unwrap().unwrap();
        assert_eq!(held.id, by_name.id);
        assert_eq!(held.data_crc32, by_name.data_crc32);
        let data = spool.read_checked(q, &held, Some(&lock)).await.unwrap();
        assert_eq!(data, b"Subject: held\r\n\r\nbody\r\n");
        std::fs::remove_file(spool.queue_path(q, &id)).unwrap();
        assert!(spool.load(q, &id).unwrap().is_none());
        assert_eq!(
            spool.load_held(q, &id, Some(&lock)).unwrap().unwrap().id,
            id
        );
        assert_eq!(
            spool.read_checked(q, &held, Some(&lock)).await.unwrap(),
            data
        );
        assert!(matches!(
            spool.read_checked(q, &held, None).await,
            Err(DataError::Damaged(_))
        ));
        // A lock from another queue is not used for this one.
        assert!(
            spool
                .load_held(Queue::Deferred, &id, Some(&lock))
                .unwrap()
                .is_none()
        );
    }

    /// Through a held lock, the data is checked whichever way it is read: from the whole file
    /// the envelope's load read (taken once), or from the file again when that copy is gone.
    /// Damage found either way is the same damage.
    #[tokio::test]
    async fn data_read_through_a_lock_is_checked_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body = b"Subject: held\r\n\r\nbody\r\n";
        let id = committed(&spool, body).await;
        let q = Queue::Incoming;
        let path = spool.queue_path(q, &id);
        let TryLock::Locked(lock) = spool.try_lock(&id).unwrap() else {
            panic!("not locked")
        };
        let env = spool.load_held(q, &id, Some(&lock)).unwrap().unwrap();
        assert!(lock.whole.lock().unwrap().is_some(), "read whole");
        assert_eq!(
            spool.read_checked(q, &env, Some(&lock)).await.unwrap(),
            body
        );
        assert!(lock.whole.lock().unwrap().is_none(), "taken");
        assert_eq!(
            spool.read_checked(q, &env, Some(&lock)).await.unwrap(),
            body
        );
        // One octet of the data changed on disk, the envelope intact.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[file::HEADER_LEN as usize] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let env = spool.load_held(q, &id, Some(&lock)).unwrap().unwrap();
        let Err(DataError::Damaged(from_whole)) = spool.read_checked(q, &env, Some(&lock)).await
        else {
            panic!("damage not found in the whole file")
        };
        let Err(DataError::Damaged(from_file)) = spool.read_checked(q, &env, Some(&lock)).await
        else {
            panic!("damage not found in the file")
        };
        assert_eq!(from_whole, from_file);
        assert!(from_whole.contains("CRC-32"), "{from_whole}");
    }

    /// The lock a commit hands back reads the message it committed, in a new file and in a
    /// reused one (the inbound session judges the message through it before answering).
    #[tokio::test]
    async fn a_commits_lock_reads_what_it_committed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut inodes = Vec::new();
        for body in [
            &b"Subject: first\r\n\r\nnew file\r\n"[..],
            b"Subject: second\r\n\r\nreused\r\n",
        ] {
            let mut d = spool.draft().await.unwrap();
            d.write(body).await.unwrap();
            let (e, lock) = d.commit_locked(env("a@x", &["b@y"])).await.unwrap();
            let path = spool.queue_path(Queue::Incoming, &e.id);
            inodes.push(std::fs::metadata(path).unwrap().ino());
            let read = spool.read_checked(Queue::Incoming, &e, Some(&lock)).await;
            assert_eq!(read.unwrap(), body);
            drop(lock);
            spool.remove(Queue::Incoming, &e.id).await.unwrap();
        }
        assert_eq!(
            inodes[0], inodes[1],
            "the second message reused the first's file"
        );
    }

    /// Reused files hold messages of every length: longer than the last (the zeroed space
    /// grows), shorter (cut), and after a message too large to keep the blocks of (truncated,
    /// then grown again). Each reads back whole and checks.
    #[tokio::test]
    async fn reused_files_fit_each_next_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let big = vec![b'b'; (file::BLANK_MAX + 1) as usize];
        let sizes: [&[u8]; 5] = [b"short\r\n", &[b'l'; 5000], b"s\r\n", &big, &[b'm'; 3000]];
        for body in sizes {
            let id = committed(&spool, body).await;
            let e = spool.load(Queue::Incoming, &id).unwrap().unwrap();
            assert_eq!(
                spool.read_checked(Queue::Incoming, &e, None).await.unwrap(),
                body
            );
            let len = std::fs::metadata(spool.queue_path(Queue::Incoming, &id))
                .unwrap()
                .len();
            assert_eq!(
                len,
                file::HEADER_LEN + e.size + file::record(&e).unwrap().len() as u64
            );
            spool.remove(Queue::Incoming, &id).await.unwrap();
            for f in tmp_files(dir.path()) {
                let kept = std::fs::metadata(&f).unwrap().len();
                assert!(kept <= file::BLANK_MAX, "{} kept {kept} bytes", f.display());
                assert!(std::fs::read(&f).unwrap().iter().all(|&b| b == 0));
            }
        }
    }

    /// A delivered message's file is emptied and reused for the next draft, never while its
    /// message lock is still held; the CLI's spool handle (attach) does not recycle.
    #[tokio::test]
    async fn delivered_files_are_emptied_and_reused_once_unlocked() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = committed(&spool, b"Subject: secret\r\n\r\nsecret body\r\n").await;
        let ino = std::fs::metadata(spool.queue_path(Queue::Incoming, &id))
            .unwrap()
            .ino();
        let TryLock::Locked(lock) = spool.try_lock(&id).unwrap() else {
            panic!("not locked")
        };
        spool.remove(Queue::Incoming, &id).await.unwrap();
        assert!(spool.find(&id).unwrap().is_none());
        let free = tmp_files(dir.path());
        assert_eq!(free.len(), 1, "{free:?}");
        // Emptied: zeros where the message was (a filesystem with zero ranges keeps the
        // length and the blocks; others truncate to nothing).
        let left = std::fs::read(&free[0]).unwrap();
        assert!(left.iter().all(|&b| b == 0), "message bytes left behind");
        // Locked still: a new draft gets a new file.
        let busy = committed(&spool, b"x\r\n").await;
        let busy_ino = std::fs::metadata(spool.queue_path(Queue::Incoming, &busy))
            .unwrap()
            .ino();
        assert_ne!(busy_ino, ino);
        drop(lock);
        let next = next_in(&spool, ino).await;
        let path = spool.queue_path(Queue::Incoming, &next);
        // Cut to its own length: header, data, one record, nothing of the zeroed space.
        let e = spool.load(Queue::Incoming, &next).unwrap().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            file::HEADER_LEN + e.size + file::record(&e).unwrap().len() as u64
        );
        assert!(matches!(spool.try_lock(&next).unwrap(), TryLock::Locked(_)));
        // The CLI removes for good.
        let cli = Spool::attach(dir.path()).unwrap();
        cli.remove_blocking(Queue::Incoming, &next).unwrap();
        assert!(!path.exists());
        assert!(tmp_is_empty(dir.path()));
    }

    /// The holder of a message's lock removes it through the lock's descriptor: the file is
    /// emptied, the lock released, and the next draft takes the file without probing the lock.
    /// A small message is removed where the caller is, a large one on the blocking pool; both
    /// ways the file waits in tmp/ holding zeros only, and the message reused in it is
    /// lockable (nobody holds the old lock).
    #[tokio::test]
    async fn the_lock_holder_removes_through_its_lock() {
        use std::os::unix::fs::MetadataExt;
        for size in [200, INLINE_READ_MAX as usize + 1] {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(dir.path()).unwrap();
            let mut body = b"Subject: secret\r\n\r\n".to_vec();
            body.resize(size, b's');
            let id = committed(&spool, &body).await;
            let path = spool.queue_path(Queue::Incoming, &id);
            let ino = std::fs::metadata(&path).unwrap().ino();
            let TryLock::Locked(lock) = spool.try_lock(&id).unwrap() else {
                panic!("not locked")
            };
            spool
                .remove_locked(Queue::Incoming, &id, size as u64, lock)
                .await
                .unwrap();
            assert!(!path.exists());
            assert!(spool.find(&id).unwrap().is_none());
            let free = tmp_files(dir.path());
            assert_eq!(free.len(), 1, "{size} octets: {free:?}");
            assert!(
                std::fs::read(&free[0]).unwrap().iter().all(|&b| b == 0),
                "{size} octets: message bytes left behind"
            );
            {
                let listed = spool.recycled.as_ref().unwrap().free.lock().unwrap();
                assert!(
                    listed.len() == 1 && listed[0].unlocked,
                    "{size} octets: {listed:?}"
                );
            }
            // Released: the next message is written into the same file and can be locked.
            let next = next_in(&spool, ino).await;
            assert!(matches!(spool.try_lock(&next).unwrap(), TryLock::Locked(_)));
            assert!(tmp_is_empty(dir.path()));
        }
    }

    /// Concurrent commits share directory fsyncs and every one of them returns only after one.
    #[test]
    fn group_commit_serves_every_caller() {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(DirSync::new(dir.path().to_path_buf()));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let sync = sync.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        sync.sync().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // A failing fsync (no such directory) reaches its caller, each time it is asked.
        let missing = DirSync::new(dir.path().join("missing"));
        assert!(missing.sync().is_err());
        assert!(missing.sync().is_err());
        assert!(sync.sync().is_ok());
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
