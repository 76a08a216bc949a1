//! Knowing without a query that the database may have changed: an inotify watch on the
//! directory that holds it. Every commit, by this process or another (`cachet certs import`,
//! `approve`, `remove`), writes `<store>-wal` (or the file itself: a checkpoint, a rollback
//! journal) before it returns, and the kernel queues the event inside that write, so a lookup
//! that starts after the other process's commit returned finds the event waiting. Asking costs
//! one non-blocking `read(2)`; a lookup in the database costs a read transaction (an `fcntl`
//! lock and unlock on the `-shm` file, an `fstat`) and the query (docs/performance.md).
//!
//! Whatever the watch cannot vouch for counts as a change: a full event queue, a removed
//! directory, a read error. No watch at all (inotify unavailable, out of watches) means the
//! caller queries every time, as before.

use inotify::{EventMask, Inotify, WatchMask};
use std::ffi::{OsStr, OsString};
use std::io::ErrorKind;
use std::path::Path;

pub struct Watch {
    inotify: Inotify,
    /// The database's file name; `<name>-wal` and `<name>-journal` are its too. `-shm` is left
    /// out: readers map and extend it, and no commit is only there.
    name: OsString,
    /// The directory's watch went away (`IN_IGNORED`): from now on always "changed".
    lost: bool,
}

impl Watch {
    /// A watch on the directory of the database at `db`; `None` when inotify cannot give one.
    pub fn new(db: &Path) -> Option<Watch> {
        let name = db.file_name()?.to_os_string();
        let dir = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let inotify = Inotify::init().ok()?;
        inotify
            .watches()
            .add(
                dir,
                WatchMask::MODIFY
                    | WatchMask::CREATE
                    | WatchMask::DELETE
                    | WatchMask::MOVED_FROM
                    | WatchMask::MOVED_TO
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF
                    | WatchMask::ONLYDIR,
            )
            .ok()?;
        Some(Watch {
            inotify,
            name,
            lost: false,
        })
    }

    /// Whether the database may have been written since the last call (draining the events
    /// queued meanwhile).
    pub fn changed(&mut self) -> bool {
        let mut changed = self.lost;
        let mut buf = [0u8; 4096];
        loop {
            let events = match self.inotify.read_events(&mut buf) {
                Ok(events) => events,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return changed,
                Err(_) => return true,
            };
            for e in events {
                if e.mask.contains(EventMask::Q_OVERFLOW)
                    || e.mask.contains(EventMask::DELETE_SELF)
                    || e.mask.contains(EventMask::MOVE_SELF)
                    || e.mask.contains(EventMask::IGNORED)
                {
                    self.lost |= !e.mask.contains(EventMask::Q_OVERFLOW);
                    changed = true;
                } else if e.name.is_some_and(|n| self.is_ours(n)) {
                    changed = true;
                }
            }
        }
    }

    fn is_ours(&self, file: &OsStr) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let (file, name) = (file.as_bytes(), self.name.as_bytes());
        file.strip_prefix(name)
            .is_some_and(|rest| matches!(rest, b"" | b"-wal" | b"-journal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_to_the_database_and_its_journals_are_changes_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("store.sqlite");
        std::fs::write(&db, b"x").unwrap();
        let mut w = Watch::new(&db).unwrap();
        assert!(!w.changed(), "nothing happened yet");
        std::fs::write(dir.path().join("other.sqlite-wal"), b"x").unwrap();
        std::fs::write(dir.path().join("store.sqlite-shm"), b"x").unwrap();
        std::fs::write(dir.path().join("store.sqlite.bak"), b"x").unwrap();
        assert!(!w.changed(), "not the database's files");
        for f in ["store.sqlite", "store.sqlite-wal", "store.sqlite-journal"] {
            std::fs::write(dir.path().join(f), b"y").unwrap();
            assert!(w.changed(), "{f}");
            assert!(!w.changed(), "{f}: drained");
        }
        std::fs::remove_file(dir.path().join("store.sqlite-wal")).unwrap();
        assert!(w.changed(), "removed");
        // The directory itself goes: every later question is answered "changed".
        let gone = dir.path().to_path_buf();
        drop(dir);
        assert!(!gone.exists());
        assert!(w.changed());
        assert!(w.changed(), "for good");
    }
}
