//! The spool: where stages meet, and the only place a message lives between `250` and delivery.
//!
//! On disk (under `[spool] dir`), a message is two files, and the directory holding its envelope
//! is its state (the Postfix lesson):
//!
//! ```text
//! tmp/          drafts being received and envelope rewrites in progress (cleared at start)
//! data/ID       the message bytes, written once, never changed
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

pub mod admin;
mod envelope;
pub use envelope::{Envelope, RcptStatus, Recipient};

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::io::AsyncWriteExt;

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
    pub fn open(root: &Path) -> io::Result<Spool> {
        for sub in ["tmp", "data", "incoming", "deferred", "hold", "corrupt"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let spool = Spool {
            root: root.to_path_buf(),
        };
        for entry in fs::read_dir(root.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(spool)
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
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(Draft {
            spool: self.clone(),
            id,
            path,
            file: Some(file),
            size: 0,
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

    pub fn save_blocking(&self, env: &Envelope, to: Queue, from: Option<Queue>) -> io::Result<()> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.env{}", env.id, env.seq));
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(env).map_err(io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, self.envelope_path(to, &env.id))?;
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

    pub async fn read_data(&self, id: &str) -> io::Result<Vec<u8>> {
        tokio::fs::read(self.data_path(id)).await
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
        let mut ids: Vec<String> = fs::read_dir(self.root.join(q.dir_name()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| valid_id(n))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every readable envelope in the live queues. Unreadable ones (and envelopes whose data file
    /// is gone) move to corrupt/ with a log line; nothing is deleted. Duplicates left by a crash
    /// during a move are resolved by `seq`.
    pub fn scan(&self, queues: &[Queue]) -> io::Result<Vec<(Queue, Envelope)>> {
        let mut found: std::collections::HashMap<String, (Queue, Envelope)> = Default::default();
        for &q in queues {
            for id in self.ids(q)? {
                let env = match self.load(q, &id) {
                    // An envelope naming another message is as unreadable as a torn one.
                    Ok(Some(env)) if env.id == id && self.data_path(&id).is_file() => env,
                    Ok(None) => continue,
                    Ok(Some(_)) | Err(_) => {
                        tracing::error!(queue_id = %id, queue = q.dir_name(), "unreadable envelope or missing data; moved to corrupt/");
                        let _ = fs::rename(
                            self.envelope_path(q, &id),
                            self.envelope_path(Queue::Corrupt, &id),
                        );
                        continue;
                    }
                };
                match found.get(&id) {
                    Some((old_q, old)) if old.seq >= env.seq => {
                        let _ = fs::remove_file(self.envelope_path(q, &id));
                        let _ = old_q;
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
        let mut out: Vec<_> = found.into_values().collect();
        out.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        Ok(out)
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
        let ok = File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok").and_then(|_| f.sync_all()))
            .is_ok();
        let _ = fs::remove_file(&probe);
        ok
    }
}

/// A message being received. Dropped without [`Draft::commit`], its file is removed.
pub struct Draft {
    spool: Spool,
    pub id: String,
    path: PathBuf,
    file: Option<tokio::fs::File>,
    size: u64,
}

impl Draft {
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.size += bytes.len() as u64;
        self.file
            .as_mut()
            .expect("draft file open until commit")
            .write_all(bytes)
            .await
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the message durable and queued; only after this returns may the session say `250`.
    pub async fn commit(mut self, mut env: Envelope) -> io::Result<String> {
        let mut file = self.file.take().expect("draft file open until commit");
        file.flush().await?;
        let file = file.into_std().await;
        env.id = self.id.clone();
        env.size = self.size;
        env.seq = 1;
        let spool = self.spool.clone();
        let path = self.path.clone();
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            file.sync_all()?;
            drop(file);
            fs::rename(&path, spool.data_path(&id))?;
            fsync_dir(&spool.root.join("data"))?;
            spool.save_blocking(&env, Queue::Incoming, None)
        })
        .await
        .map_err(io::Error::other)??;
        self.path = PathBuf::new();
        Ok(self.id.clone())
    }
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
        assert!(spool.scan(&Queue::ALL).unwrap().is_empty());
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
        let found = spool.scan(&[Queue::Incoming, Queue::Deferred]).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Queue::Deferred);
        assert_eq!(found[0].1.attempts, 1);
        assert!(!dir.path().join("incoming").join(&id).exists());
        assert!(dir.path().join("corrupt").join("GARBAGE1").exists());
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
