//! `[keys]` and `[keys.pkcs11]`: where the organisation's signing (and decryption) keys are.
//! Only paths and values are checked here; the keys themselves are read by `store` when the
//! runtime loads (`cachet check` runs that too).

use super::problems::{Problems, bounded, existing_dir, existing_file};
use super::raw::RawKeys;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub dir: PathBuf,
    pub p12_password_file: Option<PathBuf>,
    /// Opens encrypted PKCS#8 key files (and PKCS#12 files without a password of their own).
    pub passphrase_file: Option<PathBuf>,
    pub pkcs11: Option<Pkcs11Config>,
}

/// `[keys.pkcs11]`: private keys on a PKCS#11 token.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 library (`.so`).
    pub module: PathBuf,
    /// Token label.
    pub token: String,
    pub pin_file: PathBuf,
    /// Most sessions open at once.
    pub sessions: usize,
}

pub(super) fn keys(k: RawKeys, base: &Path, p: &mut Problems) -> KeysConfig {
    KeysConfig {
        dir: existing_dir(base, &k.dir, "keys.dir", p),
        p12_password_file: k
            .p12_password_file
            .as_ref()
            .map(|v| existing_file(base, v, "keys.p12_password_file", p)),
        passphrase_file: k
            .passphrase_file
            .as_ref()
            .map(|v| existing_file(base, v, "keys.passphrase_file", p)),
        pkcs11: k.pkcs11.as_ref().map(|t| {
            let t = t.get_ref();
            bounded(p, "keys.pkcs11.sessions", t.sessions as u64);
            if t.token.get_ref().trim().is_empty() {
                p.at(
                    t.token.span(),
                    "keys.pkcs11.token",
                    "give the token's label",
                );
            }
            Pkcs11Config {
                module: existing_file(base, &t.module, "keys.pkcs11.module", p),
                token: t.token.get_ref().trim().to_string(),
                pin_file: existing_file(base, &t.pin_file, "keys.pkcs11.pin_file", p),
                sessions: t.sessions,
            }
        }),
    }
}
