//! Queue files of delivered messages, emptied and reused for the next drafts: no inode
//! allocated per message ([`Recycled`]), and the removal of a delivered message, through its
//! message lock where the attempt holds one ([`Spool::remove_locked`]).

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{INLINE_READ_MAX, MessageLock, Queue, Spool, file};

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
pub(super) struct Recycled {
    /// Oldest first: the oldest is the likeliest to be unlocked already.
    pub(super) free: Mutex<std::collections::VecDeque<Free>>,
    pub(super) names: AtomicU32,
}

pub(super) const RECYCLED_MAX: usize = 64;

/// An emptied queue file waiting in tmp/ for a draft.
#[derive(Debug)]
pub(super) struct Free {
    pub(super) path: PathBuf,
    /// The length it kept, all zeros ([`file::blank`]).
    pub(super) kept: u64,
    /// Emptied through the message lock, which was released before the file was listed: no
    /// lock to probe for ([`Spool::remove_locked`]).
    pub(super) unlocked: bool,
}

impl Spool {
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
    pub(super) fn reuse(&self) -> Option<(PathBuf, File, u64)> {
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
        self.remove_by_size(q, id, size, None).await
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
        self.remove_by_size(q, id, size, Some(held)).await
    }

    /// [`Spool::remove_through`] where the caller is for a small message, on the blocking pool
    /// for a larger one.
    async fn remove_by_size(
        &self,
        q: Queue,
        id: &str,
        size: u64,
        held: Option<MessageLock>,
    ) -> io::Result<()> {
        if size <= INLINE_READ_MAX {
            return self.remove_through(q, id, held);
        }
        let this = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || this.remove_through(q, &id, held))
            .await
            .map_err(io::Error::other)?
    }
}
