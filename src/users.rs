//! The users file (`server.auth_users`) that SMTP AUTH checks against: lines of
//! `user:$pbkdf2-sha256$ITER$SALT$HASH` (`cachet passwd USER` prints one). Loaded with the
//! runtime (beside config and the stores, below the session that asks it); the SMTP side of
//! AUTH (PLAIN and LOGIN decoding, offered only over TLS) is `session::auth`.
//!
//! Secrets: passwords are never logged. Verification runs PBKDF2-HMAC-SHA256 with a constant-time
//! compare (aws-lc-rs) on the blocking pool. New lines get [`ITERATIONS`] (OWASP 2023); lines
//! below [`MIN_ITERATIONS`] are refused at load, naming file, line and user, so `cachet check`
//! lists them and a reload keeps the old users. An unknown user costs the same derivation as a
//! known one (against a dummy hash), so neither the reply nor the time says which users exist.

use aws_lc_rs::pbkdf2;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

/// PBKDF2-HMAC-SHA256 iterations for new lines: OWASP's 2023 recommendation.
pub const ITERATIONS: u32 = 600_000;
/// The floor for lines in the users file; anything cheaper is refused at load.
pub const MIN_ITERATIONS: u32 = 600_000;

/// One parsed `$pbkdf2-sha256$` hash.
struct Hash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl Hash {
    /// One PBKDF2 derivation and a constant-time compare: the only place a password is checked.
    fn matches(&self, password: &str) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

/// The loaded users file.
pub struct Users {
    users: HashMap<String, Hash>,
    /// Checked instead when the user is unknown, so that costs one derivation of the file's
    /// highest iteration count too. No password derives to its all-zero hash.
    dummy: Hash,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Users({} entries)", self.users.len())
    }
}

/// A problem with the users file: which line (none when the file cannot be read) and why.
/// The message never contains a hash or a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersError {
    pub line: Option<usize>,
    pub message: String,
}

impl Users {
    /// Parses the file. Every bad line is reported (`cachet check` lists them all); one bad line
    /// refuses the whole file, as a half-loaded users file would lock people out silently.
    pub fn load(path: &Path) -> Result<Users, Vec<UsersError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![UsersError {
                line: None,
                message: format!("cannot read: {e}"),
            }]
        })?;
        let mut users: HashMap<String, (usize, Hash)> = HashMap::new();
        let mut errors = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = parse_line(line).and_then(|(user, hash)| match users.get(user) {
                Some((first, _)) => {
                    Err(format!("user {user:?} is already defined on line {first}"))
                }
                None => Ok((user, hash)),
            });
            match parsed {
                Ok((user, hash)) => {
                    users.insert(user.to_string(), (line_no, hash));
                }
                Err(message) => errors.push(UsersError {
                    line: Some(line_no),
                    message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let users: HashMap<String, Hash> = users.into_iter().map(|(u, (_, h))| (u, h)).collect();
        let dummy = Hash {
            iterations: users
                .values()
                .map(|h| h.iterations)
                .max()
                .unwrap_or(NonZeroU32::new(ITERATIONS).expect("non-zero")),
            salt: b"cachet-dummy-salt".to_vec(),
            hash: vec![0; 32],
        };
        Ok(Users { users, dummy })
    }

    /// The hash to check for `user` and whether the user exists: an unknown user gets the dummy,
    /// so both paths run the same derivation.
    fn entry(&self, user: &str) -> (&Hash, bool) {
        match self.users.get(user) {
            Some(h) => (h, true),
            None => (&self.dummy, false),
        }
    }

    /// Constant-time check; unknown users cost the same as known ones.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = self.entry(user);
        hash.matches(password) & known
    }
}

/// `user:$pbkdf2-sha256$ITER$SALT$HASH` -> (user, hash), or why not (naming the user when known).
fn parse_line(line: &str) -> Result<(&str, Hash), String> {
    let expected =
        "expected user:$pbkdf2-sha256$ITERATIONS$SALT$HASH (make one with `cachet passwd USER`)";
    let (user, spec) = line.split_once(':').ok_or(expected)?;
    let bad = |what: &str| format!("user {user:?}: {what}; {expected}");
    let parts: Vec<&str> = spec.split('$').collect();
    let [_, "pbkdf2-sha256", iter, salt, hash] = parts.as_slice() else {
        return Err(bad("not a $pbkdf2-sha256$ hash"));
    };
    let iterations = iter
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| bad("bad iteration count"))?;
    if iterations.get() < MIN_ITERATIONS {
        return Err(format!(
            "user {user:?}: {iterations} PBKDF2 iterations is below the floor of {MIN_ITERATIONS}; \
             make a new line with `cachet passwd {user}`"
        ));
    }
    let salt = B64.decode(salt).map_err(|_| bad("salt is not base64"))?;
    let hash = B64.decode(hash).map_err(|_| bad("hash is not base64"))?;
    if hash.len() != 32 {
        return Err(bad("hash is not 32 bytes"));
    }
    Ok((
        user,
        Hash {
            iterations,
            salt,
            hash,
        },
    ))
}

/// Why `user` cannot be a users-file name, if it cannot: the line format splits at the first
/// `:`, is trimmed, and `#` starts a comment; control characters have no place in a name.
pub fn check_user_name(user: &str) -> Result<(), String> {
    if user.is_empty() {
        Err("the user name is empty".into())
    } else if user.contains(':') {
        Err(format!("user name {user:?} contains ':'"))
    } else if user.chars().any(char::is_control) {
        Err(format!("user name {user:?} contains control characters"))
    } else if user.trim() != user || user.starts_with('#') {
        Err(format!(
            "user name {user:?} starts or ends with a space, or starts with '#'"
        ))
    } else {
        Ok(())
    }
}

/// One users-file line for `user` with a fresh random salt and [`ITERATIONS`].
pub fn hash_line(user: &str, password: &str) -> Result<String, String> {
    use aws_lc_rs::rand::SecureRandom;
    check_user_name(user)?;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "the system random number generator failed".to_string())?;
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(ITERATIONS).expect("non-zero"),
        &salt,
        password.as_bytes(),
        &mut out,
    );
    Ok(format!(
        "{user}:$pbkdf2-sha256${ITERATIONS}${}${}",
        B64.encode(salt),
        B64.encode(out)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// A syntactically valid line with `iterations`; the hash matches no password.
    fn line(user: &str, iterations: u32) -> String {
        format!(
            "{user}:$pbkdf2-sha256${iterations}${}${}\n",
            B64.encode(b"salt"),
            B64.encode([1u8; 32])
        )
    }

    #[test]
    fn hash_line_round_trips_and_rejects_wrong_passwords() {
        let made = hash_line("relay", "s3cret").unwrap();
        assert!(made.starts_with("relay:$pbkdf2-sha256$600000$"), "{made}");
        let (_dir, path) = users_file(&format!("# comment\n{made}\n"));
        let users = Users::load(&path).unwrap();
        assert!(users.verify("relay", "s3cret"));
        assert!(!users.verify("relay", "S3cret"));
        assert!(!users.verify("nobody", "s3cret"));
        let (_dir, path) = users_file("relay:plaintext\n");
        let errors = Users::load(&path).unwrap_err();
        assert_eq!(errors[0].line, Some(1));
        assert!(
            errors[0].message.contains("expected user:$pbkdf2"),
            "{errors:?}"
        );
    }

    #[test]
    fn lines_below_the_floor_are_refused_naming_line_and_user() {
        let (_dir, path) = users_file(&format!(
            "{}{}# ok below\n{}{}",
            line("legacy", 100_000),
            line("fresh", MIN_ITERATIONS),
            line("almost", MIN_ITERATIONS - 1),
            line("fresh", 700_000),
        ));
        let errors = Users::load(&path).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0].line, Some(1));
        assert!(
            errors[0]
                .message
                .contains("user \"legacy\": 100000 PBKDF2 iterations")
                && errors[0].message.contains("floor of 600000")
                && errors[0].message.contains("cachet passwd legacy"),
            "{errors:?}"
        );
        assert_eq!(errors[1].line, Some(4));
        assert!(errors[1].message.contains("\"almost\""), "{errors:?}");
        assert_eq!(errors[2].line, Some(5));
        assert!(
            errors[2].message.contains("already defined on line 2"),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_users_run_the_same_derivation_as_the_costliest_known_user() {
        let (_dir, path) = users_file(&format!(
            "{}{}",
            line("relay", MIN_ITERATIONS),
            line("slow", 700_000)
        ));
        let users = Users::load(&path).unwrap();
        let (dummy, known) = users.entry("nobody");
        assert!(!known);
        assert_eq!(dummy.iterations.get(), 700_000);
        assert_eq!(dummy.hash.len(), 32);
        let (slow, known) = users.entry("slow");
        assert!(known);
        assert_eq!(slow.iterations, dummy.iterations);
        // Even the password that would match the dummy cannot log an unknown user in.
        assert!(!users.verify("nobody", ""));
        // An empty file still makes unknown users pay the default cost.
        let (_dir, path) = users_file("# nobody yet\n");
        let users = Users::load(&path).unwrap();
        assert_eq!(users.entry("x").0.iterations.get(), ITERATIONS);
    }

    #[test]
    fn user_names_that_would_break_the_file_are_refused() {
        for bad in ["", "a:b", "ev\nil", "tab\there", " lead", "#x"] {
            assert!(hash_line(bad, "pw").is_err(), "{bad:?}");
        }
        assert!(check_user_name("relay@example.org").is_ok());
    }
}
