//! Lower-case hex, for digests and fingerprints (the spool's message SHA-256, certificate
//! fingerprints): one table lookup per nibble, no formatter per byte.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

pub fn lower(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
    // Only ASCII digits and letters were pushed.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_formatter() {
        let bytes: Vec<u8> = (0..=255).collect();
        let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::lower(&bytes), want);
        assert_eq!(super::lower(&[]), "");
    }
}
