//! Interop with GnuPG's `gpgsm` (2.2): it verifies our RSA and ECDSA signatures and decrypts
//! RSA PKCS#1 v1.5 + AES-256-CBC. (gpgsm 2.2 cannot do OAEP, GCM or PSS; those are covered by
//! the openssl tests.) Each test uses a throwaway GNUPGHOME with the RFC 9216 CA trusted.

mod smime_common;

use cachet::smime::{self, EncryptOptions, SignForm, SignOptions};
use cachet::store::keys::SigningIdentity;
use smime_common::*;

#[test]
fn gpgsm_verifies_rsa_detached_and_opaque_signatures() {
    let g = Gpgsm::new();
    let dir = tempfile::tempdir().unwrap();
    let signed = smime::sign(&sample_message(), &alice(), &SignOptions::default()).unwrap();
    g.verify_detached(&signed, dir.path());
    let sha512 = SignOptions {
        digest: smime::Digest::Sha512,
        ..Default::default()
    };
    g.verify_detached(
        &smime::sign(&sample_message(), &alice(), &sha512).unwrap(),
        dir.path(),
    );
    // Opaque: gpgsm takes the DER SignedData and writes the content it verified.
    let opaque = smime::sign(
        &sample_message(),
        &alice(),
        &SignOptions {
            form: SignForm::Opaque,
            ..Default::default()
        },
    )
    .unwrap();
    let p7m = write(dir.path(), "opaque.p7m", p7m_der(&opaque));
    let out_path = dir.path().join("opaque.out");
    let out = g
        .cmd()
        .args(["--status-fd", "1", "--output"])
        .arg(&out_path)
        .arg("--verify")
        .arg(&p7m)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && status.contains("GOODSIG"),
        "{status} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let content = std::fs::read(out_path).unwrap();
    assert!(String::from_utf8_lossy(&content).starts_with("Content-Type: multipart/mixed"));
}

#[test]
fn gpgsm_verifies_ecdsa_p256_signature() {
    let g = Gpgsm::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = Leaf::new("erin@smime.example", Alg::EcP256).issue();
    let erin = SigningIdentity::from_pem(
        "erin@smime.example",
        format!("{key}{cert}").as_bytes(),
        &trust(),
        now(),
    )
    .unwrap();
    let signed = smime::sign(&sample_message(), &erin, &SignOptions::default()).unwrap();
    g.verify_detached(&signed, dir.path());
}

#[test]
fn gpgsm_decrypts_rsa_pkcs1_aes256_cbc_and_verifies_the_inner_signature() {
    let g = Gpgsm::new();
    let dir = tempfile::tempdir().unwrap();
    g.import_key(
        &rfc9216().join("bob.decrypt.key"),
        &rfc9216().join("bob.encrypt.crt"),
        dir.path(),
    );
    let signed = smime::sign(&sample_message(), &alice(), &SignOptions::default()).unwrap();
    let enc = smime::encrypt(&signed, &[bob_recipient()], &EncryptOptions::default()).unwrap();
    let inner = g.decrypt(&enc, dir.path());
    assert_eq!(split_signed(&inner).0, split_signed(&signed).0);
    g.verify_detached(&inner, dir.path());
}
