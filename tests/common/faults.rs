//! Helpers for the fault tests (`tests/fault_*.rs`, issue 14): a small tmpfs that really fills up,
//! messages that carry a unique token (so duplicates and losses can be counted), and the gateway's
//! open file descriptors read from `/proc`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::upstream::Received;

/// A small tmpfs of its own, unmounted on drop (lazily when still busy): a file system that fills.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None`, with a loud line on stderr, when mounting is impossible here (not root).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("cachet-tmpfs-")
            .tempdir()
            .expect("tmpfs mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED (not a pass): cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED (not a pass): cannot run mount: {e}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Writes a filler file until the file system is full (ENOSPC), down to the last byte.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("create the filler file");
        let chunk = vec![0u8; 16 * 1024];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        while f.write(&[0u8]).map(|n| n > 0).unwrap_or(false) {}
    }

    /// Gives the space back.
    pub fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler file");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// A small message whose Subject is `token` (tokens identify messages at the upstream).
pub fn token_message(token: &str) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: b@x.example\r\nSubject: {token}\r\nMessage-ID: <{token}@example.org>\r\n\r\nbody of {token}\r\n"
    )
    .into_bytes()
}

/// Appends `lines` body lines of 64 bytes (62 digits and CRLF) to `message`: a size the spool
/// tests can steer to a page boundary.
pub fn pad_lines(message: &mut Vec<u8>, lines: usize) {
    for line in 0..lines {
        message.extend_from_slice(format!("{line:062}\r\n").as_bytes());
    }
}

/// The token (Subject) of a received message.
pub fn token_of(r: &Received) -> Option<String> {
    String::from_utf8_lossy(&r.data)
        .lines()
        .find_map(|l| l.strip_prefix("Subject: ").map(|s| s.trim().to_string()))
}

/// How many times each token arrived.
pub fn token_counts(got: &[Received]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in got {
        if let Some(t) = token_of(r) {
            *out.entry(t).or_insert(0) += 1;
        }
    }
    out
}

/// File names in `spool/<queue>`, sorted (empty when the directory is missing).
pub fn queue_ids(spool: &Path, queue: &str) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(spool.join(queue))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// How many file descriptors process `pid` has open right now.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

impl Tmpfs {
    /// Frees exactly `pages` 4 KiB pages of a full file system (room for a small file, not two).
    pub fn leave_pages(&self, pages: u64) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.filler())
            .expect("open the filler file");
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(pages * 4096))
            .expect("truncate the filler file");
    }
}
