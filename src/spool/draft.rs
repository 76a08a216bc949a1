//! A message being received: written to tmp/ as it arrives, committed into incoming/ before
//! the session answers `250` ([`Draft::commit`]).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use super::{Envelope, MessageLock, Queue, Spool, file, modes, new_id};

impl Spool {
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
}

/// A message being received. Dropped without [`Draft::commit`], its file is removed.
pub struct Draft {
    pub(super) spool: Spool,
    pub id: String,
    pub(super) path: PathBuf,
    /// A plain file written on the blocking pool: `tokio::fs::File` would keep a buffer as large as
    /// the largest write for as long as the draft is open, per session (500 slow clients x 256 KiB).
    /// `None` after a write whose blocking task died: every later write or commit fails.
    pub(super) file: Option<File>,
    pub(super) size: u64,
    /// CRC-32 of everything written, recorded in the envelope (damage detection).
    crc: crc32fast::Hasher,
    /// The message's last bytes ([`Draft::write_last`]), written by the commit in the same trip
    /// to the blocking pool.
    pub(super) tail: Vec<u8>,
    /// The length of the reused file's zeroed space ([`file::blank`]): the commit cuts what
    /// the message did not fill.
    pub(super) kept: u64,
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
