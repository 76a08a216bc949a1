//! SMTP AUTH (RFC 4954) for clients outside `relay_networks`: PLAIN and LOGIN, offered only over
//! TLS, checked against `server.auth_users` — a file of `user:$pbkdf2-sha256$ITER$SALT$HASH`
//! lines (`cachet passwd USER` prints one). Passwords are never logged; verification runs
//! PBKDF2-HMAC-SHA256 in constant time (aws-lc-rs) on the blocking pool.

use aws_lc_rs::pbkdf2;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

const ITERATIONS: u32 = 100_000;

struct Hash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// The loaded users file.
#[derive(Default)]
pub struct Users {
    users: HashMap<String, Hash>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Users({} entries)", self.users.len())
    }
}

impl Users {
    /// Parses the file; errors name the line.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || {
                format!(
                    "{}:{}: expected user:$pbkdf2-sha256$ITERATIONS$SALT$HASH (make one with `cachet passwd USER`)",
                    path.display(),
                    n + 1
                )
            };
            let (user, spec) = line.split_once(':').ok_or_else(bad)?;
            let parts: Vec<&str> = spec.split('$').collect();
            let [_, "pbkdf2-sha256", iter, salt, hash] = parts.as_slice() else {
                return Err(bad());
            };
            let iterations = iter
                .parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(bad)?;
            let salt = B64.decode(salt).map_err(|_| bad())?;
            let hash = B64.decode(hash).map_err(|_| bad())?;
            users.insert(
                user.to_string(),
                Hash {
                    iterations,
                    salt,
                    hash,
                },
            );
        }
        Ok(Users { users })
    }

    /// Constant-time check; unknown users cost the same as known ones.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(h) => pbkdf2::verify(
                pbkdf2::PBKDF2_HMAC_SHA256,
                h.iterations,
                &h.salt,
                password.as_bytes(),
                &h.hash,
            )
            .is_ok(),
            None => {
                let mut out = [0u8; 32];
                pbkdf2::derive(
                    pbkdf2::PBKDF2_HMAC_SHA256,
                    NonZeroU32::new(ITERATIONS).unwrap(),
                    b"cachet-dummy-salt",
                    password.as_bytes(),
                    &mut out,
                );
                false
            }
        }
    }
}

/// One users-file line for `user` with a fresh random salt.
pub fn hash_line(user: &str, password: &str) -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut salt)
        .expect("system RNG");
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(ITERATIONS).unwrap(),
        &salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "{user}:$pbkdf2-sha256${ITERATIONS}${}${}",
        B64.encode(salt),
        B64.encode(out)
    )
}

/// Decodes an AUTH PLAIN response (RFC 4616): `authzid NUL authcid NUL passwd`.
pub fn decode_plain(b64: &str) -> Option<(String, String)> {
    let raw = B64.decode(b64.trim()).ok()?;
    let mut parts = raw.split(|&b| b == 0);
    let authzid = parts.next()?;
    let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let pass = String::from_utf8(parts.next()?.to_vec()).ok()?;
    if parts.next().is_some() || (!authzid.is_empty() && authzid != user.as_bytes()) {
        return None;
    }
    Some((user, pass))
}

pub fn decode_text(b64: &str) -> Option<String> {
    String::from_utf8(B64.decode(b64.trim()).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_line_round_trips_and_rejects_wrong_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(
            &path,
            format!("# comment\n{}\n", hash_line("relay", "s3cret")),
        )
        .unwrap();
        let users = Users::load(&path).unwrap();
        assert!(users.verify("relay", "s3cret"));
        assert!(!users.verify("relay", "S3cret"));
        assert!(!users.verify("nobody", "s3cret"));
        std::fs::write(&path, "relay:plaintext\n").unwrap();
        assert!(
            Users::load(&path)
                .unwrap_err()
                .contains("users:1: expected")
        );
    }

    #[test]
    fn plain_decoding() {
        assert_eq!(
            decode_plain(&B64.encode(b"\0bob\0pw")),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(
            decode_plain(&B64.encode(b"bob\0bob\0pw")),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(decode_plain(&B64.encode(b"eve\0bob\0pw")), None);
        assert_eq!(decode_plain("!!"), None);
    }
}
