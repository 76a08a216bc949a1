//! MAIL FROM (RFC 5321 §4.1.1.2): who may send, as whom, and how big; the address form every
//! party reads the same way.

use super::*;

impl Session {
    pub(super) fn gate(&self) -> Option<Reply> {
        if self.helo.is_none() {
            return Some(reply::NEED_HELO);
        }
        if self.runtime.config.server.require_tls && !self.tls {
            return Some(reply::TLS_REQUIRED);
        }
        None
    }

    pub(super) fn mail(&mut self, address: &str, flags: u64, size: usize) -> Reply {
        if let Some(r) = self.gate() {
            return r;
        }
        if self.tx.is_some() {
            return reply::NESTED_MAIL;
        }
        let smtputf8 = flags & MAIL_SMTPUTF8 != 0;
        if !address.is_ascii() && !smtputf8 {
            return reply::SMTPUTF8_NEEDED;
        }
        if !address.is_empty() && !plain_address(address) {
            tracing::warn!(client = %self.peer, sender = %address.escape_debug(), "sender address refused: not a plain address");
            self.ctx.metrics.refused("address_form");
            return reply::ADDRESS_FORM;
        }
        if size as u64 > self.runtime.config.server.max_message_size {
            self.ctx.metrics.refused("size");
            return reply::MESSAGE_TOO_BIG;
        }
        // Inbound: the sender is anyone on the internet; what matters is the recipient (RCPT).
        let grant = match self.direction {
            Direction::Outbound => self.grant(),
            Direction::Inbound => None,
        };
        // The envelope sender must be one the client may use; `<>` (a bounce) is always allowed.
        if let Some(g) = &grant
            && !address.is_empty()
            && !self.runtime.config.submitters.allows(g, address)
        {
            tracing::warn!(client = %self.peer, submitter = %g.name, sender = %address, "sender not allowed for this submitter");
            self.ctx.metrics.refused("sender_not_allowed");
            return reply::SENDER_NOT_ALLOWED;
        }
        self.tx = Some(Transaction {
            sender: address.to_string(),
            smtputf8,
            body_8bit: flags & MAIL_BODY_8BITMIME != 0,
            recipients: Vec::new(),
            grant,
        });
        reply::SENDER_OK
    }
}

/// The number in a `SIZE=` parameter of a MAIL command, read without overflow
/// (`u128::MAX` for absurdly long numbers). `None` when there is none.
pub(super) fn declared_size(line: &[u8]) -> Option<u128> {
    let text = std::str::from_utf8(line).ok()?;
    let params = &text[text.rfind('>')? + 1..];
    let value = params.split_ascii_whitespace().find_map(|p| {
        p.get(..5)
            .filter(|k| k.eq_ignore_ascii_case("SIZE="))
            .map(|_| &p[5..])
    })?;
    if value.len() > 30 {
        return Some(u128::MAX);
    }
    value.parse::<u128>().ok().or(Some(u128::MAX))
}

/// True for an address that reads the same to every party: one `@`, a dot-atom local part
/// (RFC 5322 §3.2.3 atext, UTF-8 allowed for SMTPUTF8) and a domain or address literal. The
/// parser has already removed quotes from a quoted local part, so what could only be written
/// quoted (spaces, `<`, `>`, `"`, `\`, control characters, a second `@`) is refused: the policy
/// must judge exactly the string the upstream receives.
pub fn plain_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    if address.len() > 254 || local.is_empty() || local.len() > 64 || domain.is_empty() {
        return false;
    }
    // Non-ASCII (SMTPUTF8, RFC 6532 UTF8-non-ascii) but never a control or a space of any kind.
    let utf8 = |c: char| !c.is_ascii() && !c.is_control() && !c.is_whitespace();
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || utf8(c);
    let dot_atom = |s: &str, ok: &dyn Fn(char) -> bool| {
        !s.starts_with('.')
            && !s.ends_with('.')
            && !s.contains("..")
            && s.chars().all(|c| c == '.' || ok(c))
    };
    if !dot_atom(local, &atext) {
        return false;
    }
    if let Some(lit) = domain.strip_prefix('[') {
        return lit.strip_suffix(']').is_some_and(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_hexdigit() || ".:".contains(c) || c.is_ascii_alphanumeric())
        });
    }
    // Labels of letters, digits and hyphens (or U-label characters), never starting or ending
    // with a hyphen (RFC 5321 §4.1.2 sub-domain).
    dot_atom(domain, &|c: char| {
        c.is_ascii_alphanumeric() || c == '-' || utf8(c)
    }) && domain
        .split('.')
        .all(|l| !l.starts_with('-') && !l.ends_with('-'))
}
