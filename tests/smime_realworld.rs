//! Real client messages (../shared/interop/realworld): signing or encrypting a message that a
//! client already signed must leave the client's signed bytes intact, so the inner signature
//! still verifies with openssl after our outer signature or encryption is removed.

mod smime_common;

use std::path::PathBuf;

use cachet::smime::{self, EncryptOptions, SignForm, SignOptions};
use smime_common::*;

fn realworld(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/interop/realworld"
    ))
    .join(rel)
}

/// (message, CA file that verifies its own signature)
fn client_signed() -> Vec<(Vec<u8>, PathBuf)> {
    [
        ("thunderbird52-signed.eml", "keys/sjm_ca.crt"),
        (
            "nss-thunderbird-testsuite/alice.dsig.SHA256.multipart.eml",
            "nss-thunderbird-testsuite/TestCA.pem",
        ),
    ]
    .into_iter()
    .map(|(m, ca)| (std::fs::read(realworld(m)).unwrap(), realworld(ca)))
    .collect()
}

#[test]
fn client_signed_messages_keep_their_signature_under_ours() {
    let alice = alice();
    for (msg, ca) in client_signed() {
        // Sanity: the client's signature verifies as shipped.
        openssl_verify(&msg, Some(&ca));
        for form in [SignForm::Detached, SignForm::Opaque] {
            let ours = smime::sign(
                &msg,
                &alice,
                &SignOptions {
                    form,
                    ..Default::default()
                },
            )
            .unwrap();
            let inner = openssl_verify(&ours, None);
            assert!(
                String::from_utf8_lossy(&inner)
                    .to_ascii_lowercase()
                    .starts_with("content-type: multipart/signed")
            );
            openssl_verify(&inner, Some(&ca));
        }
    }
}

#[test]
fn client_signed_messages_encrypt_without_breaking_their_signature() {
    let bob = bob_recipient();
    for (msg, ca) in client_signed() {
        for cipher in [
            smime::ContentCipher::Aes256Cbc,
            smime::ContentCipher::Aes128Gcm,
        ] {
            let enc = smime::encrypt(
                &msg,
                std::slice::from_ref(&bob),
                &EncryptOptions {
                    cipher,
                    ..Default::default()
                },
            )
            .unwrap();
            let inner = openssl_decrypt(
                &enc,
                &rfc9216().join("bob.encrypt.crt"),
                &rfc9216().join("bob.decrypt.key"),
            );
            openssl_verify(&inner, Some(&ca));
        }
    }
}
