//! What a correspondent can decrypt, as their signed mail announced it.

/// One SMIMECapability (RFC 8551 §2.5.2): what a correspondent said it can decrypt, kept in the
/// correspondent's order of preference. Read from signatures (`smime::verify`), stored with
/// harvested certificates, and consulted when choosing how to encrypt to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub oid: const_oid::ObjectIdentifier,
    /// DER of the parameters, when present.
    pub parameters: Option<Vec<u8>>,
}
