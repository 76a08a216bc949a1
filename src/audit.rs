//! The audit trail (`log.audit_file`): one JSON line per relayed copy (a recipient group) with the
//! decision that shaped it — rule, policy version, signer and recipient certificate fingerprints,
//! algorithms — and what the upstream said. Never message content, never secrets.

use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

pub struct Audit {
    file: Mutex<std::fs::File>,
}

#[derive(Serialize)]
pub struct Record<'a> {
    pub time: String,
    pub queue_id: &'a str,
    pub message_id: Option<&'a str>,
    pub sender: &'a str,
    /// Who submitted it: the `[[submitter]]` name, `relay_networks` or `auth:USER`.
    pub submitter: Option<&'a str>,
    pub recipients: &'a [String],
    pub rule: Option<&'a str>,
    pub policy_version: &'a str,
    pub signer: Option<&'a str>,
    pub encrypted_to: &'a [String],
    pub algorithm: Option<&'a str>,
    /// One upstream reply per recipient, in order.
    pub replies: Vec<String>,
}

impl Audit {
    pub fn open(path: &Path) -> Result<Audit, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Audit {
            file: Mutex::new(file),
        })
    }

    /// Appends one line (a single `write` on an O_APPEND file, so lines never interleave).
    pub fn record(&self, r: &Record) {
        let mut line = match serde_json::to_vec(r) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        if let Err(e) = self.file.lock().unwrap().write_all(&line) {
            tracing::error!(error = %e, "audit log write failed");
        }
    }
}

pub use crate::date::now_rfc3339;
