//! Encrypted key files: PKCS#8 `EncryptedPrivateKeyInfo` (RFC 5958 §3) protected with PBES2
//! (RFC 8018 §6.2: PBKDF2 or scrypt, AES-128/192/256-CBC), as `openssl pkcs8 -topk8 -v2
//! aes-256-cbc [-scrypt]` writes them, and the passphrase that opens them
//! (`keys.passphrase_file`).
//!
//! PBES2 comes from RustCrypto's `pkcs5` crate (the generation p12-keystore already pulls in,
//! so no crate is added); legacy PBES1 (DES, RC2) is refused.
//!
//! Secrets: the passphrase is read once per load into a [`Zeroizing`] buffer and wiped when the
//! load ends; the decrypted key DER is wiped as soon as aws-lc-rs has parsed it.

use std::path::Path;

use base64::Engine;
use zeroize::Zeroizing;

const BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// The DER of the first `ENCRYPTED PRIVATE KEY` PEM block, if the file has one.
pub fn encrypted_pem(pem: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let text = String::from_utf8_lossy(pem);
    let Some(start) = text.find(BEGIN) else {
        return Ok(None);
    };
    let body = &text[start + BEGIN.len()..];
    let end = body
        .find(END)
        .ok_or("ENCRYPTED PRIVATE KEY block has no END line")?;
    let b64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map(Some)
        .map_err(|e| format!("ENCRYPTED PRIVATE KEY is not base64: {e}"))
}

/// Decrypt an `EncryptedPrivateKeyInfo` into the PKCS#8 `PrivateKeyInfo` DER. A wrong
/// passphrase shows as a padding error or a result that is not a key: both say so.
pub fn decrypt_pkcs8(der: &[u8], passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    use pkcs5::der::{Decode, Reader, SliceReader, asn1::OctetStringRef};
    let mut reader = SliceReader::new(der).map_err(|e| format!("EncryptedPrivateKeyInfo: {e}"))?;
    let (scheme, data) = reader
        .sequence(|r| {
            let scheme = pkcs5::EncryptionScheme::decode(r)?;
            let data = OctetStringRef::decode(r)?;
            Ok((scheme, data))
        })
        .map_err(|e| {
            format!("EncryptedPrivateKeyInfo: {e} (only PBES2 with PBKDF2 or scrypt and AES-CBC is supported)")
        })?;
    if scheme.pbes2().is_none() {
        return Err(
            "encrypted with legacy PBES1 (DES/RC2): re-encrypt with `openssl pkcs8 -topk8 -v2 aes-256-cbc`"
                .into(),
        );
    }
    let plain = Zeroizing::new(scheme.decrypt(passphrase, data.as_bytes()).map_err(|e| {
        match e {
            // pkcs5 0.7 reports a bad padding (a wrong passphrase) as EncryptFailed.
            pkcs5::Error::DecryptFailed | pkcs5::Error::EncryptFailed => {
                "cannot decrypt the private key: wrong passphrase in keys.passphrase_file?"
                    .to_string()
            }
            other => format!("cannot decrypt the private key: {other}"),
        }
    })?);
    // The padding check passes by chance about once in 256 wrong passphrases: the result must
    // also be a PKCS#8 PrivateKeyInfo.
    let looks_like_key = {
        use der::Decode as _;
        pkcs8::PrivateKeyInfoRef::from_der(&plain).is_ok()
    };
    if !looks_like_key {
        return Err(
            "cannot decrypt the private key: wrong passphrase in keys.passphrase_file?".into(),
        );
    }
    Ok(plain)
}

/// Read `keys.passphrase_file`: refused when others may read it, one line, trailing newline
/// dropped; wiped when the caller drops it.
pub fn read_passphrase(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut bytes = check_private(path)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err("the passphrase file is empty".into());
    }
    Ok(bytes)
}

/// Read a secret file, refusing it when group or others may read it (mode & 077). The bytes are
/// wiped when the caller drops them.
pub(crate) fn check_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "readable or writable by group/others (mode {mode:03o}); refusing it, run chmod 600"
            ));
        }
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| format!("cannot read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_pem_has_no_encrypted_block_and_a_broken_one_is_named() {
        assert_eq!(
            encrypted_pem(b"-----BEGIN PRIVATE KEY-----\n").unwrap(),
            None
        );
        let err = encrypted_pem(format!("{BEGIN}\nAAAA\n").as_bytes()).unwrap_err();
        assert!(err.contains("no END line"), "{err}");
        let der = encrypted_pem(format!("{BEGIN}\nMAA=\n{END}\n").as_bytes()).unwrap();
        assert_eq!(der, Some(vec![0x30, 0]));
        let err = decrypt_pkcs8(&[0x30, 0], b"x").unwrap_err();
        assert!(err.contains("EncryptedPrivateKeyInfo"), "{err}");
    }
}
