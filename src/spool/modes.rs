//! File modes for what holds plaintext or secrets: the spool is created 0700 (directories) and
//! 0600 (files) whatever the umask, and `cachet check` warns about a spool, key directory, users
//! file, TLS key or password file that other local users can read ([`exposed`]).
//!
//! "Others" means the world bits: group access is left to the operator (a deployment may share a
//! group with a backup job on purpose).

use crate::config::{Config, ConfigError};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Spool directories: the gateway's user only.
pub const DIR_MODE: u32 = 0o700;
/// Spool files (message data, envelopes): the gateway's user only.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) as 0700, or tightens an existing one to 0700. The umask
/// can only remove bits from a requested mode, so the final `set_permissions` is what makes the
/// mode exact.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| io::Error::new(e.kind(), format!("chmod 700 {}: {e}", dir.display())))?;
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), old_mode = format!("{mode:o}"), "spool directory was readable by others; now 0700");
        }
    }
    Ok(())
}

/// Tightens every regular file directly in `dir` that group or others could access to 0600
/// (files queued by an older version under the default umask). Best effort: a file that cannot
/// be changed is logged and left alone.
pub fn tighten_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut fixed = 0usize;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || meta.permissions().mode() & 0o077 == 0 {
            continue;
        }
        match fs::set_permissions(entry.path(), fs::Permissions::from_mode(FILE_MODE)) {
            Ok(()) => fixed += 1,
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot make spool file private")
            }
        }
    }
    if fixed > 0 {
        tracing::warn!(dir = %dir.display(), files = fixed, "spool files were readable by others; now 0600");
    }
}

/// Whether a local user other than the owner (and its group) can read `path`: the world-read bit,
/// or for a directory also world-search (files inside can be opened by name). `false` when the
/// path does not exist (nothing to read yet; the spool is created private).
pub fn readable_by_others(path: &Path) -> bool {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => meta.permissions().mode() & 0o005 != 0,
        Ok(meta) => meta.permissions().mode() & 0o004 != 0,
        Err(_) => false,
    }
}

/// Warnings for `cachet check`: each configured path that holds plaintext mail or a secret and
/// that others can read, as `file: key: message`.
pub fn exposed(config: &Config) -> Vec<ConfigError> {
    let mut paths: Vec<(&str, &Path)> = vec![("spool.dir", &config.spool.dir)];
    if let Some(keys) = &config.keys {
        paths.push(("keys.dir", &keys.dir));
        if let Some(p) = &keys.p12_password_file {
            paths.push(("keys.p12_password_file", p));
        }
        if let Some(p) = &keys.passphrase_file {
            paths.push(("keys.passphrase_file", p));
        }
        if let Some(t) = &keys.pkcs11 {
            paths.push(("keys.pkcs11.pin_file", &t.pin_file));
        }
    }
    if let Some(p) = &config.server.auth_users {
        paths.push(("server.auth_users", p));
    }
    if let Some(p) = &config.server.tls_key {
        paths.push(("server.tls_key", p));
    }
    if let Some(p) = &config.upstream.password_file {
        paths.push(("upstream.password_file", p));
    }
    paths
        .into_iter()
        .filter(|(_, p)| readable_by_others(p))
        .map(|(key, p)| {
            let mode = fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0);
            let fix = if p.is_dir() { "chmod 700" } else { "chmod 600" };
            ConfigError {
                file: config.path.clone(),
                line: None,
                key: key.to_string(),
                message: format!(
                    "warning: {} is readable by other users (mode {mode:o}); {fix} it",
                    p.display()
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn world_bits_decide_what_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        fs::write(&file, b"x").unwrap();
        for (mode, exposed) in [(0o600, false), (0o640, false), (0o644, true), (0o604, true)] {
            chmod(&file, mode);
            assert_eq!(readable_by_others(&file), exposed, "file mode {mode:o}");
        }
        for (mode, exposed) in [(0o700, false), (0o750, false), (0o701, true), (0o755, true)] {
            chmod(dir.path(), mode);
            assert_eq!(readable_by_others(dir.path()), exposed, "dir mode {mode:o}");
        }
        assert!(!readable_by_others(&dir.path().join("missing")));
    }

    #[test]
    fn private_dir_creates_and_tightens_to_0700() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("a/b");
        private_dir(&new).unwrap();
        assert_eq!(
            fs::metadata(&new).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        chmod(&new, 0o755);
        private_dir(&new).unwrap();
        assert_eq!(
            fs::metadata(&new).unwrap().permissions().mode() & 0o7777,
            0o700
        );
    }
}
