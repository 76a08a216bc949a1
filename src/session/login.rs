//! The AUTH exchange (RFC 4954): PLAIN and LOGIN steps and the verification on the blocking pool;
//! the users file and password hashing are in [`super::auth`].

use super::*;

impl Session {
    pub(super) async fn verify(&mut self, user: String, pass: String) {
        let rt = self.runtime.clone();
        let who = user.clone();
        let ok = tokio::task::spawn_blocking(move || {
            rt.users.as_ref().is_some_and(|u| u.verify(&who, &pass))
        })
        .await
        .unwrap_or(false);
        // `user` as a str value, not `%user`: both log formats quote and escape it (CR, LF).
        if ok {
            tracing::info!(client = %self.peer, user = user.as_str(), "authenticated");
            self.authenticated = Some(user);
            self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
        } else {
            tracing::warn!(client = %self.peer, user = user.as_str(), "authentication failed");
            self.ctx.metrics.refused("auth_failed");
            self.reply(Reply::new(
                535,
                "5.7.8",
                "Authentication credentials invalid",
            ));
        }
    }

    pub(super) fn auth_start(&mut self, mechanism: u64, initial: &str) -> Step {
        // No AUTH on the inbound listener: who may hand mail in is decided by address alone.
        let r = if self.runtime.users.is_none() || self.direction == Direction::Inbound {
            reply::NOT_IMPLEMENTED
        } else if !self.tls {
            Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            )
        } else if self.authenticated.is_some() {
            Reply::new(503, "5.5.1", "Already authenticated")
        } else if self.tx.is_some() {
            reply::BAD_SEQUENCE
        } else if mechanism == smtp_proto::AUTH_PLAIN {
            if initial.is_empty() || initial == "=" {
                self.auth = Some(AuthStep::Plain);
                Reply::new(334, "", "")
            } else {
                return self.plain(initial);
            }
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            if initial.is_empty() {
                self.auth = Some(AuthStep::LoginUser);
                Reply::new(334, "", "VXNlcm5hbWU6")
            } else {
                return self.auth_continue(AuthStep::LoginUser, initial.as_bytes());
            }
        } else {
            Reply::new(504, "5.5.4", "Unrecognized authentication mechanism")
        };
        self.reply(r);
        Step::Continue
    }

    pub(super) fn plain(&mut self, b64: &str) -> Step {
        match auth::decode_plain(b64) {
            Some((user, pass)) => Step::Verify(user, pass),
            None => {
                self.reply(Reply::new(501, "5.5.2", "Cannot decode AUTH response"));
                Step::Continue
            }
        }
    }

    /// The client's line during an AUTH exchange (base64, or `*` to cancel).
    pub(super) fn auth_continue(&mut self, step: AuthStep, line: &[u8]) -> Step {
        let text = String::from_utf8_lossy(line).trim_end().to_string();
        if text == "*" {
            self.reply(Reply::new(501, "5.0.0", "Authentication canceled"));
            return Step::Continue;
        }
        let undecodable = Reply::new(501, "5.5.2", "Cannot decode AUTH response");
        match step {
            AuthStep::Plain => self.plain(&text),
            AuthStep::LoginUser => {
                match auth::decode_text(&text) {
                    Some(user) => {
                        self.auth = Some(AuthStep::LoginPass(user));
                        self.reply(Reply::new(334, "", "UGFzc3dvcmQ6"));
                    }
                    None => self.reply(undecodable),
                }
                Step::Continue
            }
            AuthStep::LoginPass(user) => match auth::decode_text(&text) {
                Some(pass) => Step::Verify(user, pass),
                None => {
                    self.reply(undecodable);
                    Step::Continue
                }
            },
        }
    }
}
