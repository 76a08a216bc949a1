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
mod envelope;
pub mod file;
pub mod inflow;
pub mod modes;
pub use envelope::{Direction, Envelope, RcptStatus, Recipient};

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::hex::lower as hex;

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

/// Queue files of delivered messages, emptied and kept in tmp/ for the next drafts.
///
/// Creating a file allocates an inode, and on ext4 without a journal that means skipping every
/// inode freed in the last 30 seconds (`recently_deleted`): under sustained load thousands,
/// ~9% of the gateway's CPU per message in the profile. A delivered message's file is instead
/// renamed to `tmp/free-N` and emptied (no message bytes stay behind: [`file::blank`] zeroes a
/// small one and keeps its blocks, truncates a large one), and the next draft is written into
/// it where it is (the commit cuts it to its new length and renames it into incoming/ as
/// always). A delivery attempt empties the file through the descriptor of its message lock
/// and releases the lock before listing it ([`Spool::remove_locked`]); a file emptied by
/// someone else may still be locked by an attempt, and waits its turn. At most
/// [`RECYCLED_MAX`] wait; tmp/ is cleared at start.
#[derive(Debug, Default)]
struct Recycled {
    /// Oldest first: the oldest is the likeliest to be unlocked already.
    free: Mutex<std::collections::VecDeque<Free>>,
    names: AtomicU32,
}

const RECYCLED_MAX: usize = 64;

/// An emptied queue file waiting in tmp/ for a draft.
#[derive(Debug)]
struct Free {
    path: PathBuf,
    /// The length it kept, all zeros ([`file::blank`]).
    kept: u64,
    /// Emptied through the message lock, which was released before the file was listed: no
    /// lock to probe for ([`Spool::remove_locked`]).
    unlocked: bool,
}

/// What an envelope recorded at commit to check its message data against.
struct Recorded {
    size: u64,
    crc32: Option<u32>,
    /// An older version's record (before `data_crc32`).
    sha256: Option<String>,
}

impl Recorded {
    fn of(env: &Envelope) -> Self {
        Recorded {
            size: env.size,
            crc32: env.data_crc32,
            sha256: env.data_sha256.clone(),
        }
    }

    fn checked(&self) -> bool {
        self.crc32.is_some() || self.sha256.is_some()
    }

    /// `Err` names what does not match (the reason logged with the move to corrupt/).
    fn check(&self, data: &[u8]) -> Result<(), String> {
        if let Some(want) = self.crc32
            && crc32fast::hash(data) != want
        {
            return Err("message data does not match the CRC-32 the envelope recorded".into());
        }
        if let Some(want) = &self.sha256 {
            let got = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref());
            if !got.eq_ignore_ascii_case(want) {
                return Err("message data does not match the SHA-256 the envelope recorded".into());
            }
        }
        Ok(())
    }
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

/// Group commit of one directory's fsync: every caller returns only after an fsync of the
/// directory that *started* after the caller asked (so after its rename), but concurrent
/// callers share one. Under load, twenty sessions committing at once cost one or two directory
/// fsyncs instead of twenty; alone, a caller pays exactly one, as before. Never skipped: no
/// session answers `250` before its rename is durable.
#[derive(Debug)]
struct DirSync {
    path: PathBuf,
    state: Mutex<SyncState>,
    done: Condvar,
    /// The directory, opened by the first fsync and kept open: no `open`/`close` per fsync. The
    /// gateway keeps its spool for its lifetime, as Postfix keeps its queue directory.
    dir: std::sync::OnceLock<File>,
}

#[derive(Debug, Default)]
struct SyncState {
    /// An fsync is running.
    running: bool,
    /// The callers who asked since the running fsync started: the next fsync serves them.
    next: Arc<Batch>,
}

/// The callers one fsync serves, and its result once it ran.
#[derive(Debug, Default)]
struct Batch {
    result: std::sync::OnceLock<Result<(), (io::ErrorKind, String)>>,
}

impl DirSync {
    fn new(path: PathBuf) -> Self {
        DirSync {
            path,
            state: Mutex::default(),
            done: Condvar::new(),
            dir: std::sync::OnceLock::new(),
        }
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mine = st.next.clone();
        loop {
            if let Some(result) = mine.result.get() {
                return result
                    .clone()
                    .map_err(|(kind, msg)| io::Error::new(kind, msg));
            }
            if !st.running {
                // Our batch has not run and nothing runs: lead it. Every caller that joined it
                // renamed before this fsync starts.
                st.running = true;
                let batch = std::mem::take(&mut st.next);
                drop(st);
                let result = self
                    .opened()
                    .and_then(File::sync_all)
                    .map_err(|e| (e.kind(), e.to_string()));
                let _ = batch.result.set(result);
                st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.running = false;
                self.done.notify_all();
                continue;
            }
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The directory's kept descriptor (only the running fsync's leader calls this).
    fn opened(&self) -> io::Result<&File> {
        if let Some(f) = self.dir.get() {
            return Ok(f);
        }
        let f = File::open(&self.path)?;
        Ok(self.dir.get_or_init(|| f))
    }
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

    /// Starts receiving a message: bytes go straight to tmp/ (memory stays bounded), after room
    /// for the header, which the commit writes.
    pub async fn draft(&self) -> io::Result<Draft> {
        let id = new_id();
        // An emptied file of a delivered message: opened where the caller is (no inode to
        // allocate, so no trip to the blocking pool); otherwise a new file on the pool.
        if let Some((path, file, kept)) = self.reuse() {
            return Ok(self.new_draft(id, path, file, kept));
        }
        let (path, file) = {
            let path = self.root.join("tmp").join(&id);
            tokio::task::spawn_blocking(move || {
                // Readable too: a commit's message lock is read through (the inbound judgement).
                let f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(modes::FILE_MODE)
                    .open(&path)?;
                Ok::<_, io::Error>((path, f))
            })
            .await
            .map_err(io::Error::other)??
        };
        Ok(self.new_draft(id, path, file, 0))
    }

    fn new_draft(&self, id: String, path: PathBuf, file: File, kept: u64) -> Draft {
        Draft {
            spool: self.clone(),
            id,
            path,
            file: Some(file),
            size: 0,
            crc: crc32fast::Hasher::new(),
            tail: Vec::new(),
            kept,
        }
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

    /// Removes a finished message (in the gateway, its emptied file waits for a next draft).
    pub fn remove_blocking(&self, q: Queue, id: &str) -> io::Result<()> {
        self.remove_through(q, id, None)
    }

    /// Removes message `id` from queue `q`; `held` is its message lock on that file, or `None`.
    /// With the lock, the file is emptied through the lock's descriptor and listed for reuse
    /// once the lock is released: no second `open`, and the next draft need not probe the lock.
    fn remove_through(&self, q: Queue, id: &str, held: Option<MessageLock>) -> io::Result<()> {
        let path = self.queue_path(q, id);
        // Only a lock on this very file empties it; any lock is held until the removal is done.
        let through = held.as_ref().filter(|l| l.queue == q);
        if let Some(r) = &self.recycled
            && r.free.lock().unwrap_or_else(|e| e.into_inner()).len() < RECYCLED_MAX
        {
            let n = r.names.fetch_add(1, Ordering::Relaxed);
            let free = self.root.join("tmp").join(format!("free-{n}"));
            match fs::rename(&path, &free) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            // Out of the queue either way; only an emptied file may be reused. A lock's file
            // opened read-only (a read-only spool seen by `try_lock`) cannot be emptied through.
            let through_lock = through.map(|l| file::blank(&l.file));
            let unlocked = matches!(through_lock, Some(Ok(_)));
            let emptied = match through_lock {
                Some(Ok(kept)) => Ok(kept),
                _ => fs::OpenOptions::new()
                    .write(true)
                    .open(&free)
                    .and_then(|f| file::blank(&f)),
            };
            // Closing the lock's descriptor releases the lock, before the file is listed.
            drop(held);
            match emptied {
                Ok(kept) => r
                    .free
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(Free {
                        path: free,
                        kept,
                        unlocked,
                    }),
                Err(_) => {
                    let _ = fs::remove_file(&free);
                }
            }
            return Ok(());
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// An emptied file in tmp/ for a new draft, if one is waiting and nobody holds it.
    fn reuse(&self) -> Option<(PathBuf, File, u64)> {
        let recycled = self.recycled.as_ref()?;
        let free = recycled
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()?;
        let f = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&free.path)
        {
            Ok(f) => f,
            Err(_) => {
                let _ = fs::remove_file(&free.path);
                return None;
            }
        };
        if free.unlocked {
            return Some((free.path, f, free.kept));
        }
        // Still locked by the attempt that emptied it: the new message would look locked.
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                recycled
                    .free
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(free);
                return None;
            }
            Err(fs::TryLockError::Error(_)) => {
                let _ = fs::remove_file(&free.path);
                return None;
            }
        }
        match f.unlock() {
            Ok(()) => Some((free.path, f, free.kept)),
            Err(_) => {
                let _ = fs::remove_file(&free.path);
                None
            }
        }
    }

    pub async fn remove(&self, q: Queue, id: &str) -> io::Result<()> {
        let this = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || this.remove_blocking(q, &id))
            .await
            .map_err(io::Error::other)?
    }

    /// Removes message `id` of `size` octets (its envelope's) from queue `q`: a message of at
    /// most [`INLINE_READ_MAX`] where the caller is (a rename and, for a reused file, zeroing
    /// its blocks in place: no block is freed, nothing waits for the disk), a larger one on the
    /// blocking pool like [`Spool::remove`]. The delivered message's last trip to the pool saved.
    pub async fn remove_sized(&self, q: Queue, id: &str, size: u64) -> io::Result<()> {
        if size <= INLINE_READ_MAX {
            return self.remove_blocking(q, id);
        }
        self.remove(q, id).await
    }

    /// [`Spool::remove_sized`] by the holder of the message's lock, which this consumes: the
    /// file is emptied through the lock's descriptor (no second `open`) and the lock released
    /// before the file is listed for reuse (the next draft need not probe it).
    pub async fn remove_locked(
        &self,
        q: Queue,
        id: &str,
        size: u64,
        held: MessageLock,
    ) -> io::Result<()> {
        if size <= INLINE_READ_MAX {
            return self.remove_through(q, id, Some(held));
        }
        let this = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || this.remove_through(q, &id, Some(held)))
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

    /// The message bytes, checked against what the envelope recorded at commit (length and
    /// CRC-32, or an older version's SHA-256; envelopes with neither are not checked). A
    /// message of at most [`INLINE_READ_MAX`] is read and checked where the caller is (a
    /// page-cache read of a few microseconds, as the envelope's own load is); a larger one on
    /// the blocking pool. Read inline through `held`'s file when it is the message's lock in
    /// `q`.
    pub async fn read_checked(
        &self,
        q: Queue,
        env: &Envelope,
        held: Option<&MessageLock>,
    ) -> Result<Vec<u8>, DataError> {
        if env.size <= INLINE_READ_MAX {
            if let Some(whole) = held.and_then(|l| l.take_whole(q)) {
                return checked_whole(whole, &Recorded::of(env));
            }
            if let Some(f) = held.and_then(|l| l.file_in(q)) {
                return read_checked_from(f, &Recorded::of(env));
            }
            return self.read_checked_blocking(q, &env.id, &Recorded::of(env));
        }
        let this = self.clone();
        let (id, recorded) = (env.id.clone(), Recorded::of(env));
        tokio::task::spawn_blocking(move || this.read_checked_blocking(q, &id, &recorded))
            .await
            .map_err(|e| DataError::Io(io::Error::other(e)))?
    }

    fn read_checked_blocking(
        &self,
        q: Queue,
        id: &str,
        recorded: &Recorded,
    ) -> Result<Vec<u8>, DataError> {
        let f = match File::open(self.queue_path(q, id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DataError::Damaged("queue file missing".into()));
            }
            Err(e) => return Err(DataError::Io(e)),
        };
        read_checked_from(&f, recorded)
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

/// The message bytes of the open queue file `f`, checked against `recorded`.
fn read_checked_from(f: &File, recorded: &Recorded) -> Result<Vec<u8>, DataError> {
    let (stored, _) = file::extent(f).map_err(damaged_or_io)?;
    size_matches(stored, recorded)?;
    let mut data = vec![0; stored as usize];
    f.read_exact_at(&mut data, file::HEADER_LEN)
        .map_err(DataError::Io)?;
    recorded.check(&data).map_err(DataError::Damaged)?;
    Ok(data)
}

/// [`read_checked_from`] of a file already read whole ([`MessageLock::read`]): `stored`
/// octets of data at the front of `rest` (the records after them are cut off), the same checks.
fn checked_whole(
    (stored, mut rest): (u64, Vec<u8>),
    recorded: &Recorded,
) -> Result<Vec<u8>, DataError> {
    size_matches(stored, recorded)?;
    rest.truncate(stored as usize);
    recorded.check(&rest).map_err(DataError::Damaged)?;
    Ok(rest)
}

fn damaged_or_io(e: io::Error) -> DataError {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            DataError::Damaged(e.to_string())
        }
        _ => DataError::Io(e),
    }
}

/// Envelopes written by hand (no check recorded) are taken as they are.
fn size_matches(stored: u64, recorded: &Recorded) -> Result<(), DataError> {
    let size = recorded.size;
    if recorded.checked() && stored != size {
        return Err(DataError::Damaged(format!(
            "message data is {stored} bytes, the envelope says {size}"
        )));
    }
    Ok(())
}

/// The right to rewrite one message's envelope: an exclusive `flock(2)` on its queue file,
/// released when this is dropped (or the process dies). See the module header.
#[derive(Debug)]
pub struct MessageLock {
    file: File,
    /// The queue the file was in when the lock was taken. Only the holder can move it; the
    /// holder reads through the lock before it moves the file (a delivery attempt, the
    /// inbound judgement), by name after.
    queue: Queue,
    /// What follows the header (data, then records) and the data length, when
    /// [`Spool::load_held`] read the file whole (a small one): the data for
    /// [`Spool::read_checked`], which takes it. Nobody else writes the file meanwhile: only the
    /// lock's holder may, and only records after the data.
    whole: Mutex<Option<(u64, Vec<u8>)>>,
}

impl MessageLock {
    fn new(file: File, queue: Queue) -> Self {
        MessageLock {
            file,
            queue,
            whole: Mutex::new(None),
        }
    }

    /// The locked queue file, when it is message's file in queue `q`: read through it, an
    /// attempt opens the file once instead of three times (lock, envelope, data).
    fn file_in(&self, q: Queue) -> Option<&File> {
        (self.queue == q).then_some(&self.file)
    }

    /// The locked file's header and records. A file of at most [`INLINE_READ_MAX`] is read
    /// whole, in one system call, and kept for [`Spool::read_checked`]; a larger one as
    /// [`file::read`] does (header and records only).
    fn read(&self) -> io::Result<file::Parsed> {
        let len = self.file.metadata()?.len();
        if len > INLINE_READ_MAX {
            return file::read(&self.file);
        }
        let (parsed, rest) = file::read_whole(&self.file, len)?;
        *self.whole.lock().unwrap_or_else(|e| e.into_inner()) = Some((parsed.size, rest));
        Ok(parsed)
    }

    /// What [`MessageLock::read`] kept, if it is still there (taken once).
    fn take_whole(&self, q: Queue) -> Option<(u64, Vec<u8>)> {
        self.file_in(q)?;
        self.whole.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// What [`Spool::try_lock`] found.
#[derive(Debug)]
pub enum TryLock {
    Locked(MessageLock),
    /// Another process or task holds it (an operator action, a delivery attempt).
    Busy,
    /// No queue file in incoming/, deferred/ or hold/: the message is gone (deleted,
    /// delivered) or corrupt.
    Gone,
}

impl Spool {
    /// Takes the message lock without waiting. The lock is on the file, wherever a lock holder
    /// moves it; if it moved while we waited, we look again.
    pub fn try_lock(&self, id: &str) -> io::Result<TryLock> {
        use std::os::unix::fs::MetadataExt;
        if !valid_id(id) {
            return Ok(TryLock::Gone);
        }
        for _ in 0..3 {
            let mut opened = None;
            for q in [Queue::Incoming, Queue::Deferred, Queue::Hold] {
                match open_for_lock(&self.queue_path(q, id)) {
                    Ok(f) => {
                        opened = Some((q, f));
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let Some((q, file)) = opened else {
                return Ok(TryLock::Gone);
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Ok(TryLock::Busy),
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
            // Still there under that name? A lock on a file since unlinked is worth nothing.
            let ours = file.metadata()?;
            match fs::symlink_metadata(self.queue_path(q, id)) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {
                    return Ok(TryLock::Locked(MessageLock::new(file, q)));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(TryLock::Gone)
    }

    /// Takes the message lock, waiting up to `patience` for a delivery attempt in flight to end
    /// (every network wait of an attempt has a deadline, so it does end). `Ok(None)`: no queue
    /// file.
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

/// A queue file opened to lock: readable and, where the spool allows it, writable (the
/// holder empties a delivered message's file through it, [`Spool::remove_locked`]).
fn open_for_lock(path: &Path) -> io::Result<File> {
    match fs::OpenOptions::new().read(true).write(true).open(path) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            File::open(path)
        }
        r => r,
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
    /// CRC-32 of everything written, recorded in the envelope (damage detection).
    crc: crc32fast::Hasher,
    /// The message's last bytes ([`Draft::write_last`]), written by the commit in the same trip
    /// to the blocking pool.
    tail: Vec<u8>,
    /// The length of the reused file's zeroed space ([`file::blank`]): the commit cuts what
    /// the message did not fill.
    kept: u64,
}

impl Draft {
    /// Appends `bytes`; returns once they are written (not yet synced). The copy handed to the
    /// blocking pool is freed as soon as it is written.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        debug_assert!(self.tail.is_empty(), "write after write_last");
        // At its offset (after room for the header): no file position to seek first.
        let at = file::HEADER_LEN + self.size;
        self.size += bytes.len() as u64;
        self.crc.update(bytes);
        let file = self.file.take().ok_or_else(draft_broken)?;
        let bytes = bytes.to_vec();
        let (file, written) = tokio::task::spawn_blocking(move || {
            let r = file.write_all_at(&bytes, at);
            (file, r)
        })
        .await
        .map_err(io::Error::other)?;
        self.file = Some(file);
        written
    }

    /// The message's last bytes, kept for the commit to write: one trip to the blocking pool
    /// for the end of the message and its commit instead of two (a small message's only write).
    /// Nothing may be written after them.
    pub fn write_last(&mut self, bytes: Vec<u8>) {
        self.size += bytes.len() as u64;
        self.crc.update(&bytes);
        self.tail = bytes;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the message durable and queued; only after this returns may the session say `250`.
    /// On failure (a full disk) nothing of the message is left: no queue file the scheduler
    /// could pick up after the client was told `4xx`.
    pub async fn commit(self, env: Envelope) -> io::Result<String> {
        Ok(self.commit_inner(env, false).await?.0.id)
    }

    /// Commits like [`Draft::commit`], holding the message lock from before the message
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
        env.data_crc32 = Some(self.crc.clone().finalize());
        env.data_sha256 = None;
        env.seq = 1;
        let spool = self.spool.clone();
        let path = self.path.clone();
        let id = self.id.clone();
        let size = self.size;
        let tail = std::mem::take(&mut self.tail);
        let kept = self.kept;
        let (written, held) =
            tokio::task::spawn_blocking(move || -> io::Result<(Envelope, Option<MessageLock>)> {
                let queued = spool.queue_path(Queue::Incoming, &id);
                let committed = (|| {
                    // The message's last bytes and the first record in one write; with the
                    // header too when the last bytes are the whole message (a small one).
                    let header = file::header(size);
                    let record = file::record(&env)?;
                    let at = file::HEADER_LEN + size - tail.len() as u64;
                    if at == file::HEADER_LEN {
                        file::write_parts_at(&file, &[&header, &tail, &record], 0)?;
                    } else {
                        file::write_parts_at(&file, &[&tail, &record], at)?;
                        file.write_all_at(&header, 0)?;
                    }
                    let end = file::HEADER_LEN + size + record.len() as u64;
                    if kept > end {
                        file.set_len(end)?;
                    }
                    file.sync_all()?;
                    // flock(2) locks the file, not the name: taken on tmp/, it holds in incoming/.
                    let held = if lock {
                        file.lock()?;
                        Some(MessageLock::new(file, Queue::Incoming))
                    } else {
                        drop(file);
                        None
                    };
                    fs::rename(&path, &queued)?;
                    spool.incoming_sync.sync()?;
                    Ok(held)
                })();
                match committed {
                    Ok(held) => Ok((env, held)),
                    Err(e) => {
                        let _ = fs::remove_file(&queued);
                        let _ = fs::remove_file(&path);
                        Err(e)
                    }
                }
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
