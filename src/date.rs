//! The one date and time module: the two forms cachet writes. RFC 5322 §3.3 dates for mail
//! headers (`Received:`, DSN `Date:` and `Arrival-Date:`), RFC 3339 for logs, the audit trail,
//! `cachet explain` and operator messages. Both in UTC, to the second.

use std::time::SystemTime;

fn utc(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// `Sun, 29 Nov 2026 08:53:22 +0000`
pub fn rfc5322(t: SystemTime) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day padding:none] [month repr:short] [year] [hour]:[minute]:[second] +0000"
    );
    utc(t).format(&fmt).unwrap_or_default()
}

/// `2026-11-29T08:53:22Z`
pub fn rfc3339(t: SystemTime) -> String {
    utc(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Now, as [`rfc3339`].
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn both_forms() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_942_402);
        assert_eq!(rfc5322(t), "Sun, 29 Nov 2026 08:53:22 +0000");
        assert_eq!(rfc3339(t), "2026-11-29T08:53:22Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
