//! The message lock: the right to rewrite one message's envelope, an exclusive `flock(2)` on
//! its queue file ([`MessageLock`], [`Spool::try_lock`]). See the module header of `spool`.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::Mutex;

use super::{INLINE_READ_MAX, Queue, Spool, file, valid_id};

/// The right to rewrite one message's envelope: an exclusive `flock(2)` on its queue file,
/// released when this is dropped (or the process dies). See the module header.
#[derive(Debug)]
pub struct MessageLock {
    pub(super) file: File,
    /// The queue the file was in when the lock was taken. Only the holder can move it; the
    /// holder reads through the lock before it moves the file (a delivery attempt, the
    /// inbound judgement), by name after.
    pub(super) queue: Queue,
    /// What follows the header (data, then records) and the data length, when
    /// [`Spool::load_held`] read the file whole (a small one): the data for
    /// [`Spool::read_checked`], which takes it. Nobody else writes the file meanwhile: only the
    /// lock's holder may, and only records after the data.
    pub(super) whole: Mutex<Option<(u64, Vec<u8>)>>,
}

impl MessageLock {
    pub(super) fn new(file: File, queue: Queue) -> Self {
        MessageLock {
            file,
            queue,
            whole: Mutex::new(None),
        }
    }

    /// The locked queue file, when it is message's file in queue `q`: read through it, an
    /// attempt opens the file once instead of three times (lock, envelope, data).
    pub(super) fn file_in(&self, q: Queue) -> Option<&File> {
        (self.queue == q).then_some(&self.file)
    }

    /// The locked file's header and records. A file of at most [`INLINE_READ_MAX`] is read
    /// whole, in one system call, and kept for [`Spool::read_checked`]; a larger one as
    /// [`file::read`] does (header and records only).
    pub(super) fn read(&self) -> io::Result<file::Parsed> {
        let len = self.file.metadata()?.len();
        if len > INLINE_READ_MAX {
            return file::read(&self.file);
        }
        let (parsed, rest) = file::read_whole(&self.file, len)?;
        *self.whole.lock().unwrap_or_else(|e| e.into_inner()) = Some((parsed.size, rest));
        Ok(parsed)
    }

    /// What [`MessageLock::read`] kept, if it is still there (taken once).
    pub(super) fn take_whole(&self, q: Queue) -> Option<(u64, Vec<u8>)> {
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
