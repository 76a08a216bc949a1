//! EHLO and HELO (RFC 5321 §4.1.1.1): the greeting reply and the extensions offered.

use super::*;

impl Session {
    pub(super) fn ehlo_reply(&mut self) {
        let cfg = &self.runtime.config.server;
        let mut lines = vec![
            cfg.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if !self.tls && self.runtime.tls.is_some() {
            lines.push("STARTTLS".into());
        }
        if self.tls && self.runtime.users.is_some() && self.direction == Direction::Outbound {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
    }
}
