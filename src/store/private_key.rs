//! The private-key seam: what a key can be asked to do (sign, the private step of decryption)
//! and how it fails, whether it lives in this process ([`super::keys`]) or on a PKCS#11 token
//! ([`super::pkcs11`]). Nothing else ever sees key material.

use zeroize::Zeroizing;

/// Signature schemes a [`PrivateKey`] may be asked for (RFC 8551 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    RsaPkcs1Sha256,
    RsaPkcs1Sha512,
    RsaPssSha256,
    RsaPssSha512,
    EcdsaP256Sha256,
}

/// Why a private-key operation failed, classified once where it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The key is there but cannot be reached now (token removed, restarting, refusing the
    /// PIN, all sessions busy): the message waits (4xx) and is tried again.
    Unavailable(String),
    /// The operation itself is impossible with this key (wrong type, bad input).
    Failed(String),
}

impl KeyError {
    pub fn is_temporary(&self) -> bool {
        matches!(self, KeyError::Unavailable(_))
    }
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Unavailable(r) => write!(f, "key unavailable: {r}"),
            KeyError::Failed(r) => write!(f, "{r}"),
        }
    }
}

/// OAEP hash (the same function for the label hash and MGF1, RFC 8017 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OaepHash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

/// The private-key step of decrypting a CMS EnvelopedData (RFC 5652 §6.2), the seam inbound
/// decryption uses: unwrap a KeyTransRecipientInfo's encryptedKey, or compute the ECDH shared
/// secret of a KeyAgreeRecipientInfo. The caller does the rest (RFC 5753's KDF and AES key
/// unwrap, the content decryption) in-process, so the private key stays in the token.
#[derive(Debug, Clone, Copy)]
pub enum Decrypt<'a> {
    /// RSAES-PKCS1-v1_5 (RFC 8017 §7.2): returns the content-encryption key.
    RsaPkcs1(&'a [u8]),
    /// RSAES-OAEP with an empty label (RFC 8017 §7.1, RFC 3560).
    RsaOaep {
        ciphertext: &'a [u8],
        hash: OaepHash,
    },
    /// ECDH on P-256 with the originator's uncompressed point (0x04 || x || y): returns the
    /// shared secret Z, 32 bytes (RFC 5753 §3.1.1, "ECDH ... the x-coordinate").
    EcdhP256 { peer_point: &'a [u8] },
}

/// A private key: the one seam where keys live in this process, in a token, or elsewhere.
/// Nothing else ever sees key material.
pub trait PrivateKey: Send + Sync {
    /// Sign `message` (the DER signed attributes; the scheme hashes it). Returns the raw
    /// signature: PKCS#1/PSS octets for RSA, DER `ECDSA-Sig-Value` for ECDSA.
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// The private-key step of decryption ([`Decrypt`]); the result is wiped on drop.
    fn decrypt(&self, op: Decrypt<'_>) -> Result<Zeroizing<Vec<u8>>, KeyError>;
}
