//! How to encrypt one copy: the content cipher and RSA key transport, chosen from what its
//! recipients announced (the SMIMECapabilities of their last signed message, RFC 8551 §2.7.1,
//! kept with harvested certificates) within what the policy allows. Pure, so its rules are
//! unit-tested.
//!
//! - The cipher is the first one in the representative recipient's order (the first recipient
//!   of the copy who announced any) that `policy.encryption_allowed` contains and that every
//!   recipient who announced capabilities also announced. AES-GCM (AuthEnvelopedData) is chosen
//!   only when EVERY recipient of the copy announced it: many clients still read only
//!   EnvelopedData, and a recipient we know nothing about may be one of them.
//! - When nobody announced anything usable, the treatment's `encryption` (the policy default or
//!   the rule's) is used; but a GCM default is replaced by AES-256-CBC when some recipient
//!   announced capabilities without it (they told us they cannot read it).
//! - RSA-OAEP is used when every RSA recipient of the copy announced it with the SHA-256
//!   parameters cachet writes (RFC 4055 §4.1: an RSAES-OAEP capability without parameters means
//!   SHA-1, which cachet does not produce); otherwise the treatment's `key_transport`.
//!
//! The [`Choice`] says in words which capability decided: `cachet explain` shows it.

use crate::policy::{Cipher, KeyTransport};
use crate::store::{Capability, KeyKind, RecipientCert};
use const_oid::ObjectIdentifier as Oid;

use crate::smime::algs::{AES128_GCM, AES256_CBC, AES256_GCM, ID_RSAES_OAEP as RSAES_OAEP, SHA256};
/// Content-encryption algorithms cachet recognises in a capability list but does not produce:
/// their presence still means "this recipient announced what it reads".
const OTHER_CIPHERS: &[Oid] = &[
    Oid::new_unwrap("2.16.840.1.101.3.4.1.2"),     // aes128-cbc
    Oid::new_unwrap("2.16.840.1.101.3.4.1.22"),    // aes192-cbc
    Oid::new_unwrap("2.16.840.1.101.3.4.1.26"),    // aes192-gcm
    Oid::new_unwrap("1.2.840.113549.3.7"),         // des-ede3-cbc
    Oid::new_unwrap("1.2.840.113549.3.2"),         // rc2-cbc
    Oid::new_unwrap("1.2.840.113549.1.9.16.3.18"), // chacha20-poly1305
];

/// The cipher a capability names, when cachet can produce it.
fn cipher_of(c: &Capability) -> Option<Cipher> {
    match c.oid {
        AES256_CBC => Some(Cipher::Aes256Cbc),
        AES128_GCM => Some(Cipher::Aes128Gcm),
        AES256_GCM => Some(Cipher::Aes256Gcm),
        _ => None,
    }
}

fn is_gcm(c: Cipher) -> bool {
    matches!(c, Cipher::Aes128Gcm | Cipher::Aes256Gcm)
}

/// The ciphers `caps` announces that cachet produces, in the announced order.
pub fn announced_ciphers(caps: &[Capability]) -> Vec<Cipher> {
    caps.iter().filter_map(cipher_of).collect()
}

/// Whether `caps` says anything about content encryption at all.
fn announces_ciphers(caps: &[Capability]) -> bool {
    caps.iter()
        .any(|c| cipher_of(c).is_some() || OTHER_CIPHERS.contains(&c.oid))
}

/// RSAES-OAEP with SHA-256 as cachet writes it: RSAES-OAEP-params (RFC 4055 §4.1) whose
/// hashFunc and MGF1 hash are both SHA-256. Absent fields mean SHA-1 (the defaults), which
/// cachet does not produce.
pub fn announces_oaep_sha256(caps: &[Capability]) -> bool {
    caps.iter()
        .any(|c| c.oid == RSAES_OAEP && c.parameters.as_deref().is_some_and(oaep_params_are_sha256))
}

fn oaep_params_are_sha256(params: &[u8]) -> bool {
    use crate::smime::ber::{self, Node};
    let Ok(seq) = ber::parse(params, 64) else {
        return false;
    };
    let oid_is_sha256 = |alg: Option<&Node<'_>>| {
        alg.and_then(|a| a.children().first())
            .and_then(Node::primitive)
            .is_some_and(|b| b == SHA256.as_bytes())
    };
    let field = |tag: u8| seq.children().iter().find(|n| n.tag == [tag]);
    // [0] hashFunc AlgorithmIdentifier; [1] maskGenFunc { id-mgf1, AlgorithmIdentifier }.
    let hash = field(0xa0).and_then(|f| f.children().first());
    let mgf_hash = field(0xa1)
        .and_then(|f| f.children().first())
        .and_then(|mgf| mgf.children().get(1));
    oid_is_sha256(hash) && oid_is_sha256(mgf_hash)
}

/// How one copy is encrypted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub cipher: Cipher,
    pub key_transport: KeyTransport,
    /// Which capability (or default) decided the cipher, in words.
    pub cipher_why: String,
    /// Which capability (or default) decided the key transport, in words.
    pub key_transport_why: String,
}

/// Chooses for a copy whose recipients are `certs` (address, certificate; the first is the
/// representative), whose treatment says `fallback`, within `allowed`. See the module header.
pub fn choose(
    fallback: (Cipher, KeyTransport),
    allowed: &[Cipher],
    certs: &[(&str, &RecipientCert)],
) -> Choice {
    let name = super::cipher_name;
    let announcing: Vec<&(&str, &RecipientCert)> = certs
        .iter()
        .filter(|(_, c)| announces_ciphers(&c.capabilities))
        .collect();
    let everyone_announced = |c: Cipher| {
        certs
            .iter()
            .all(|(_, r)| announced_ciphers(&r.capabilities).contains(&c))
    };
    let announcers_agree = |c: Cipher| {
        announcing
            .iter()
            .all(|(_, r)| announced_ciphers(&r.capabilities).contains(&c))
    };
    let (cipher, cipher_why) = match announcing.first() {
        None => (
            fallback.0,
            "policy: no recipient of this copy announced capabilities".to_string(),
        ),
        Some((first, cert)) => {
            let pick = announced_ciphers(&cert.capabilities)
                .into_iter()
                .find(|&c| {
                    allowed.contains(&c)
                        && announcers_agree(c)
                        && (!is_gcm(c) || everyone_announced(c))
                });
            match pick {
                Some(c) => {
                    let others = if certs.len() > 1 {
                        ", announced by every recipient of the copy"
                    } else {
                        ""
                    };
                    (
                        c,
                        format!(
                            "capabilities of {first}: first cipher in its order that the policy allows{others}"
                        ),
                    )
                }
                None if is_gcm(fallback.0) && !everyone_announced(fallback.0) => (
                    Cipher::Aes256Cbc,
                    format!(
                        "policy default {} not announced by {first}: aes256-cbc (EnvelopedData)",
                        name(fallback.0)
                    ),
                ),
                None => (
                    fallback.0,
                    format!(
                        "policy: no cipher announced by {first} is allowed and announced by every recipient"
                    ),
                ),
            }
        }
    };
    let rsa: Vec<&(&str, &RecipientCert)> = certs
        .iter()
        .filter(|(_, c)| matches!(c.key, KeyKind::Rsa { .. }))
        .collect();
    let (key_transport, key_transport_why) = if fallback.1 == KeyTransport::RsaOaep {
        (KeyTransport::RsaOaep, "policy".to_string())
    } else if !rsa.is_empty()
        && rsa
            .iter()
            .all(|(_, c)| announces_oaep_sha256(&c.capabilities))
    {
        (
            KeyTransport::RsaOaep,
            if rsa.len() == 1 {
                format!("capabilities of {}: RSAES-OAEP with SHA-256", rsa[0].0)
            } else {
                "every RSA recipient of the copy announced RSAES-OAEP with SHA-256".to_string()
            },
        )
    } else {
        (fallback.1, "policy".to_string())
    };
    Choice {
        cipher,
        key_transport,
        cipher_why,
        key_transport_why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Cipher::{Aes128Gcm, Aes256Cbc, Aes256Gcm};
    use KeyTransport::{RsaOaep, RsaPkcs1};

    fn cap(oid: Oid) -> Capability {
        Capability {
            oid,
            parameters: None,
        }
    }

    /// RSAES-OAEP with the RFC 4055 SHA-256 parameters as cachet and OpenSSL write them.
    fn oaep_sha256() -> Capability {
        let replies = crate::smime::ReplyAlgorithms::preferring(
            Default::default(),
            crate::smime::KeyTransport::RsaOaep,
        );
        let der = crate::smime::algs::smime_capabilities(&replies, false).unwrap();
        crate::smime::verify::parse_capabilities(&der)
            .into_iter()
            .find(|c| c.oid == RSAES_OAEP)
            .expect("cachet announces OAEP when it prefers it")
    }

    fn cert(key: KeyKind, caps: Vec<Capability>) -> RecipientCert {
        RecipientCert {
            emails: vec![],
            fingerprint: String::new(),
            not_before: std::time::UNIX_EPOCH,
            not_after: std::time::UNIX_EPOCH,
            key,
            der: rustls_pki_types::CertificateDer::from(vec![]),
            spki_der: vec![],
            rsa_key: None,
            capabilities: caps,
        }
    }

    const ALL: &[Cipher] = &[Aes256Gcm, Aes128Gcm, Aes256Cbc];
    const RSA: KeyKind = KeyKind::Rsa { bits: 2048 };
    const DES3: Oid = Oid::new_unwrap("1.2.840.113549.3.7");

    #[test]
    fn the_table() {
        let gcm_first = || cert(RSA, vec![cap(AES256_GCM), cap(AES256_CBC)]);
        let cbc_first = || cert(RSA, vec![cap(AES256_CBC), cap(AES256_GCM)]);
        let cbc_only = || cert(RSA, vec![cap(AES256_CBC), cap(DES3)]);
        let des_only = || cert(RSA, vec![cap(DES3)]);
        let unknown = || cert(RSA, vec![]);
        let oaep = || cert(RSA, vec![cap(AES256_CBC), oaep_sha256()]);
        let oaep_sha1 = || cert(RSA, vec![cap(AES256_CBC), cap(RSAES_OAEP)]);
        let ec = || cert(KeyKind::EcP256, vec![cap(AES128_GCM)]);
        type Row = (
            &'static str,
            (Cipher, KeyTransport),
            &'static [Cipher],
            Vec<RecipientCert>,
            (Cipher, KeyTransport),
            &'static str,
        );
        let rows: Vec<Row> = vec![
            (
                "nothing known: the default",
                (Aes256Cbc, RsaPkcs1),
                ALL,
                vec![unknown()],
                (Aes256Cbc, RsaPkcs1),
                "no recipient",
            ),
            (
                "nothing known: a GCM default stays",
                (Aes256Gcm, RsaPkcs1),
                ALL,
                vec![unknown()],
                (Aes256Gcm, RsaPkcs1),
                "no recipient",
            ),
            (
                "the recipient's first choice",
                (Aes256Cbc, RsaPkcs1),
                ALL,
                vec![gcm_first()],
                (Aes256Gcm, RsaPkcs1),
                "capabilities of r0",
            ),
            (
                "its order, not ours",
                (Aes256Gcm, RsaPkcs1),
                ALL,
                vec![cbc_first()],
                (Aes256Cbc, RsaPkcs1),
                "capabilities of r0",
            ),
            (
                "what the policy allows",
                (Aes256Cbc, RsaPkcs1),
                &[Aes256Cbc],
                vec![gcm_first()],
                (Aes256Cbc, RsaPkcs1),
                "capabilities of r0",
            ),
            (
                "GCM only when every recipient announced it",
                (Aes256Cbc, RsaPkcs1),
                ALL,
                vec![gcm_first(), unknown()],
                (Aes256Cbc, RsaPkcs1),
                "capabilities of r0",
            ),
            (
                "every announcer agrees",
                (Aes256Cbc, RsaPkcs1),
                ALL,
                vec![gcm_first(), gcm_first()],
                (Aes256Gcm, RsaPkcs1),
                "every recipient",
            ),
            (
                "a GCM default not announced",
                (Aes256Gcm, RsaPkcs1),
                &[Aes256Gcm, Aes256Cbc],
                vec![des_only()],
                (Aes256Cbc, RsaPkcs1),
                "not announced",
            ),
            (
                "nothing we make announced, CBC default",
                (Aes256Cbc, RsaPkcs1),
                ALL,
                vec![des_only()],
                (Aes256Cbc, RsaPkcs1),
                "no cipher announced",
            ),
            (
                "CBC for a CBC-only partner",
                (Aes256Gcm, RsaPkcs1),
                ALL,
                vec![cbc_only()],
                (Aes256Cbc, RsaPkcs1),
                "capabilities of r0",
            ),
            (
                "OAEP when announced",
                (Aes256Cbc, RsaPkcs1),
                ALL,
                vec![oaep()],
                (Aes256Cbc, RsaOaep),
                "capabilities of r0",
            ),
            (
                "OAEP with SHA-1 parameters is not ours",
                (Aes256Cbc, RsaPkcs1),
                ALL,
                vec![oaep_sha1()],
                (Aes256Cbc, RsaPkcs1),
                "capabilities of r0",
            ),
            (
                "OAEP only when every RSA recipient announced it",
                (Aes256Cbc, RsaPkcs1),
                ALL,
                vec![oaep(), cbc_only()],
                (Aes256Cbc, RsaPkcs1),
                "capabilities of r0",
            ),
            (
                "an EC recipient has no key transport",
                (Aes256Cbc, RsaPkcs1),
                ALL,
                vec![oaep(), ec()],
                (Aes256Cbc, RsaOaep),
                "no cipher announced",
            ),
            (
                "an OAEP policy stays",
                (Aes256Cbc, RsaOaep),
                ALL,
                vec![cbc_only()],
                (Aes256Cbc, RsaOaep),
                "capabilities of r0",
            ),
        ];
        for (what, fallback, allowed, certs, want, why) in rows {
            let names: Vec<String> = (0..certs.len()).map(|i| format!("r{i}")).collect();
            let pairs: Vec<(&str, &RecipientCert)> =
                names.iter().map(String::as_str).zip(certs.iter()).collect();
            let c = choose(fallback, allowed, &pairs);
            assert_eq!((c.cipher, c.key_transport), want, "{what}: {c:?}");
            assert!(
                c.cipher_why.contains(why),
                "{what}: {:?} lacks {why:?}",
                c.cipher_why
            );
        }
    }

    #[test]
    fn oaep_parameters_are_read() {
        assert!(announces_oaep_sha256(&[oaep_sha256()]));
        assert!(!announces_oaep_sha256(&[cap(RSAES_OAEP)]));
        assert!(!announces_oaep_sha256(&[cap(AES256_CBC)]));
        // SHA-1 hashFunc (the default, left out) with MGF1-SHA-256: not what cachet writes.
        let mgf_only = {
            let mut der = crate::smime::algs::oaep_sha256_params();
            let full = der.clone();
            // Drop the [0] hashFunc field: SEQUENCE { [1] maskGen }.
            let hash_len = 2 + full[3] as usize;
            der = crate::smime::algs::tlv(0x30, &full[2 + hash_len..]);
            Capability {
                oid: RSAES_OAEP,
                parameters: Some(der),
            }
        };
        assert!(!announces_oaep_sha256(&[mgf_only]));
    }
}
