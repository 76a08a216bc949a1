//! Interop: `openssl cms` verifies and decrypts exactly the bytes `cachet::smime` produces, for
//! every signature and encryption algorithm combination we emit.

mod smime_common;

use cachet::smime::{
    self, ContentCipher, Digest, EncryptOptions, KeyTransport, SignForm, SignOptions,
};
use cachet::store::keys::SigningIdentity;
use smime_common::*;

/// The canonical entity a client must see after verification: Content-* fields and the
/// re-encoded body, without the outer header fields.
fn assert_inner_entity(content: &[u8]) {
    let text = String::from_utf8_lossy(content);
    assert!(
        text.starts_with("Content-Type: multipart/mixed; boundary=\"outer\"\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("Subject: test"),
        "outer header leaked inside: {text}"
    );
    assert!(
        text.contains("Gr=C3=BC=C3=9Fe aus K=C3=B6ln\r\n=46rom the team\r\n=2E\r\n"),
        "{text}"
    );
    assert!(content.iter().all(|&b| b < 0x80), "entity is not 7-bit");
}

fn ec_identity(dir: &std::path::Path) -> (SigningIdentity, std::path::PathBuf) {
    let (cert, key) = Leaf::new("erin@smime.example", Alg::EcP256).issue();
    let id = SigningIdentity::from_pem(
        "erin@smime.example",
        format!("{key}{cert}").as_bytes(),
        &trust(),
        now(),
    )
    .unwrap();
    (id, write(dir, "erin.crt", cert))
}

#[test]
fn detached_rsa_signature_verifies_with_openssl_for_every_digest_and_padding() {
    let alice = alice();
    for (digest, pss, micalg) in [
        (Digest::Sha256, false, "sha-256"),
        (Digest::Sha512, false, "sha-512"),
        (Digest::Sha256, true, "sha-256"),
        (Digest::Sha512, true, "sha-512"),
    ] {
        let opts = SignOptions {
            form: SignForm::Detached,
            digest,
            rsa_pss: pss,
            ..Default::default()
        };
        let signed = smime::sign(&sample_message(), &alice, &opts).unwrap();
        let head = header_block(&signed);
        assert!(
            head.contains("Subject: test\r\n")
                && head.contains("Message-ID: <1@smime.example>\r\n")
        );
        assert!(head.contains(&format!("micalg={micalg};")), "{head}");
        let content = openssl_verify(&signed, None);
        assert_inner_entity(&content);
        // The bytes openssl verified are the bytes between our boundaries.
        assert_eq!(content, split_signed(&signed).0);
        let printed = openssl_print(&signed);
        if pss {
            assert!(printed.contains("rsassaPss"), "{printed}");
        }
    }
}

#[test]
fn signed_attributes_include_time_capabilities_signing_certificate_and_key_preference() {
    let signed = smime::sign(&sample_message(), &alice(), &SignOptions::default()).unwrap();
    let printed = openssl_print(&signed);
    for needle in [
        "signingTime",
        "messageDigest",
        "contentType",
        "S/MIME Capabilities",
        "id-smime-aa-encrypKeyPref",
        "Alice Lovelace",
        "aes-256-cbc",
        "id-smime-aa-signingCertificateV2",
    ] {
        assert!(printed.contains(needle), "missing {needle} in:\n{printed}");
    }
    for forbidden in ["des-ede3", "rc2", "sha1"] {
        assert!(
            !printed.to_ascii_lowercase().contains(forbidden),
            "{forbidden} announced:\n{printed}"
        );
    }
}

#[test]
fn opaque_signature_verifies_with_openssl() {
    let opts = SignOptions {
        form: SignForm::Opaque,
        ..Default::default()
    };
    let signed = smime::sign(&sample_message(), &alice(), &opts).unwrap();
    assert!(header_block(&signed).contains("smime-type=signed-data"));
    let content = openssl_verify(&signed, None);
    assert_inner_entity(&content);
}

#[test]
fn ecdsa_p256_signature_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let (erin, _) = ec_identity(dir.path());
    for form in [SignForm::Detached, SignForm::Opaque] {
        // The SHA-512 option falls back to SHA-256 for P-256 keys, and micalg says so.
        let opts = SignOptions {
            form,
            digest: Digest::Sha512,
            rsa_pss: true,
            ..Default::default()
        };
        let signed = smime::sign(&sample_message(), &erin, &opts).unwrap();
        if form == SignForm::Detached {
            assert!(header_block(&signed).contains("micalg=sha-256;"));
        }
        assert_inner_entity(&openssl_verify(&signed, None));
        assert!(openssl_print(&signed).contains("ecdsa-with-SHA256"));
    }
}

#[test]
fn encryption_decrypts_with_openssl_for_every_cipher_and_key_transport() {
    let dir = tempfile::tempdir().unwrap();
    let rsa_cert = rfc9216().join("bob.encrypt.crt");
    let rsa_key = rfc9216().join("bob.decrypt.key");
    let (ec_cert, ec_key) = Leaf::new("erin@smime.example", Alg::EcP256).issue();
    let ec_cert_path = write(dir.path(), "erin.crt", &ec_cert);
    let ec_key_path = write(dir.path(), "erin.key", &ec_key);
    let ec = recipient(&ec_cert);
    let bob = bob_recipient();
    let message = sample_message();
    for cipher in [
        ContentCipher::Aes256Cbc,
        ContentCipher::Aes128Gcm,
        ContentCipher::Aes256Gcm,
    ] {
        for kt in [KeyTransport::RsaPkcs1, KeyTransport::RsaOaep] {
            let opts = EncryptOptions {
                cipher,
                key_transport: kt,
            };
            // Both recipients in one message: one CEK, one RecipientInfo each.
            let enc = smime::encrypt(&message, &[bob.clone(), ec.clone()], &opts).unwrap();
            let head = header_block(&enc);
            assert!(head.contains("Subject: test\r\n"));
            let smime_type = if cipher == ContentCipher::Aes256Cbc {
                "smime-type=enveloped-data"
            } else {
                "smime-type=authEnveloped-data"
            };
            assert!(head.contains(smime_type), "{head}");
            let printed = openssl_print(&enc);
            let expect_alg = match cipher {
                ContentCipher::Aes256Cbc => "aes-256-cbc",
                ContentCipher::Aes128Gcm => "aes-128-gcm",
                ContentCipher::Aes256Gcm => "aes-256-gcm",
            };
            assert!(printed.contains(expect_alg), "{cipher:?}: {printed}");
            assert!(printed.contains(if kt == KeyTransport::RsaOaep {
                "rsaesOaep"
            } else {
                "rsaEncryption"
            }));
            assert!(
                printed.contains("dhSinglePass-stdDH-sha256kdf-scheme"),
                "{printed}"
            );
            for (cert, key) in [(&rsa_cert, &rsa_key), (&ec_cert_path, &ec_key_path)] {
                let plain = openssl_decrypt(&enc, cert, key);
                assert_inner_entity(&plain);
            }
        }
    }
}

#[test]
fn ecdh_key_wrap_matches_content_key_strength() {
    let (ec_cert, _) = Leaf::new("erin@smime.example", Alg::EcP256).issue();
    let ec = recipient(&ec_cert);
    for (cipher, wrap) in [
        (ContentCipher::Aes128Gcm, "id-aes128-wrap"),
        (ContentCipher::Aes256Gcm, "id-aes256-wrap"),
        (ContentCipher::Aes256Cbc, "id-aes256-wrap"),
    ] {
        let enc = smime::encrypt(
            &sample_message(),
            std::slice::from_ref(&ec),
            &EncryptOptions {
                cipher,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(openssl_print(&enc).contains(wrap), "{cipher:?}");
    }
}

#[test]
fn each_call_uses_a_fresh_content_key() {
    let bob = bob_recipient();
    let a = smime::encrypt(
        b"Subject: x\r\n\r\nsame\r\n",
        std::slice::from_ref(&bob),
        &EncryptOptions::default(),
    )
    .unwrap();
    let b = smime::encrypt(
        b"Subject: x\r\n\r\nsame\r\n",
        &[bob],
        &EncryptOptions::default(),
    )
    .unwrap();
    assert_ne!(p7m_der(&a), p7m_der(&b));
}

#[test]
fn sign_then_encrypt_decrypts_then_verifies_with_openssl() {
    let alice = alice();
    let bob = bob_recipient();
    for sign_form in [SignForm::Detached, SignForm::Opaque] {
        for cipher in [ContentCipher::Aes256Cbc, ContentCipher::Aes256Gcm] {
            let signed = smime::sign_message(
                &sample_message(),
                &alice,
                &SignOptions {
                    form: sign_form,
                    ..Default::default()
                },
            )
            .unwrap();
            let opts = EncryptOptions {
                cipher,
                key_transport: KeyTransport::RsaOaep,
            };
            let recipients = [bob.clone(), alice.encryption_cert.clone().unwrap()];
            // The pipeline's form (the signed message handed over with where its entity
            // starts, freed before the output is written) makes the same message, under
            // another content key.
            let enc = if cipher == ContentCipher::Aes256Cbc {
                smime::encrypt(signed.message(), &recipients, &opts)
            } else {
                smime::encrypt_signed(signed, &recipients, &opts)
            }
            .unwrap();
            let head = header_block(&enc);
            assert!(head.contains("From: Alice <alice@smime.example>\r\n"));
            let inner = openssl_decrypt(
                &enc,
                &rfc9216().join("bob.encrypt.crt"),
                &rfc9216().join("bob.decrypt.key"),
            );
            // The decrypted entity is the signed entity, and it still verifies.
            assert!(!String::from_utf8_lossy(&inner).contains("Subject:"));
            assert_inner_entity(&openssl_verify(&inner, None));
            // Encrypt-to-self: Alice's own encryption key opens it too (RFC 8551 §3.3).
            openssl_decrypt(
                &enc,
                &rfc9216().join("alice.encrypt.crt"),
                &rfc9216().join("alice.decrypt.key"),
            );
        }
    }
}

#[test]
fn message_without_content_type_or_final_crlf_is_signed_and_verifies() {
    let msg = b"From: alice@smime.example\nTo: bob@smime.example\nSubject: bare\n\nno final newline \xc3\xa9";
    let signed = smime::sign(msg, &alice(), &SignOptions::default()).unwrap();
    let content = openssl_verify(&signed, None);
    let text = String::from_utf8_lossy(&content);
    assert!(
        text.starts_with("Content-Type: text/plain; charset=utf-8\r\n"),
        "{text}"
    );
    assert!(text.ends_with("no final newline =C3=A9"), "{text}");
}
