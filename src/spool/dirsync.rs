//! Group commit of a directory's fsync ([`DirSync`]): concurrent commits share one.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

/// Group commit of one directory's fsync: every caller returns only after an fsync of the
/// directory that *started* after the caller asked (so after its rename), but concurrent
/// callers share one. Under load, twenty sessions committing at once cost one or two directory
/// fsyncs instead of twenty; alone, a caller pays exactly one, as before. Never skipped: no
/// session answers `250` before its rename is durable.
#[derive(Debug)]
pub(super) struct DirSync {
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
    pub(super) fn new(path: PathBuf) -> Self {
        DirSync {
            path,
            state: Mutex::default(),
            done: Condvar::new(),
            dir: std::sync::OnceLock::new(),
        }
    }

    pub(super) fn sync(&self) -> io::Result<()> {
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
    pub(super) fn opened(&self) -> io::Result<&File> {
        if let Some(f) = self.dir.get() {
            return Ok(f);
        }
        let f = File::open(&self.path)?;
        Ok(self.dir.get_or_init(|| f))
    }
}
