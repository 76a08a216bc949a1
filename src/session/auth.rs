//! SMTP AUTH (RFC 4954) for clients outside `relay_networks`: PLAIN and LOGIN, offered only over
//! TLS, checked against the users file ([`crate::users`], `server.auth_users`). This file decodes
//! what the client sends; `session/login.rs` runs the exchange.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

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
