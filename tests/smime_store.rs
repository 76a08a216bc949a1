//! Key and certificate stores: the certificate matrix (each unfit certificate refused for the
//! right reason and never used), newest-wins, address matching, key file permissions, PKCS#12.

mod smime_common;

use cachet::smime::{self, EncryptOptions};
use cachet::store::{CertStore, KeyStore, TrustAnchors};
use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use smime_common::*;

/// One row of the matrix: address, how the certificate is made, the reason we expect.
struct Row {
    email: &'static str,
    leaf: Leaf,
    reason: &'static str,
}

fn matrix() -> Vec<Row> {
    let now = time::OffsetDateTime::now_utc();
    let d = time::Duration::days;
    let mut rows = Vec::new();
    let mut l = Leaf::new("expired@test.example", Alg::Rsa2048);
    (l.not_before, l.not_after) = (now - d(400), now - d(1));
    rows.push(Row {
        email: "expired@test.example",
        leaf: l,
        reason: "expired",
    });
    let mut l = Leaf::new("future@test.example", Alg::Rsa2048);
    (l.not_before, l.not_after) = (now + d(10), now + d(400));
    rows.push(Row {
        email: "future@test.example",
        leaf: l,
        reason: "not yet valid",
    });
    let mut l = Leaf::new("wrongeku@test.example", Alg::Rsa2048);
    l.ekus = vec![ExtendedKeyUsagePurpose::ServerAuth];
    rows.push(Row {
        email: "wrongeku@test.example",
        leaf: l,
        reason: "extendedKeyUsage lacks emailProtection",
    });
    let mut l = Leaf::new("nokeyenc@test.example", Alg::Rsa2048);
    l.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    rows.push(Row {
        email: "nokeyenc@test.example",
        leaf: l,
        reason: "keyUsage lacks keyEncipherment",
    });
    let mut l = Leaf::new("nokeyagree@test.example", Alg::EcP256);
    l.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    rows.push(Row {
        email: "nokeyagree@test.example",
        leaf: l,
        reason: "keyUsage lacks keyAgreement",
    });
    let mut l = Leaf::new("untrusted@test.example", Alg::EcP256);
    l.untrusted = true;
    rows.push(Row {
        email: "untrusted@test.example",
        leaf: l,
        reason: "does not chain to a trusted root",
    });
    rows
}

#[test]
fn certificate_matrix_refuses_each_unfit_certificate_for_the_right_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rows = matrix();
    for (i, row) in rows.iter().enumerate() {
        write(dir.path(), &format!("{i}.pem"), row.leaf.issue().0);
    }
    let scratch = tempfile::tempdir().unwrap();
    let (weak_cert, _) = issue_rsa1024("weak@test.example", scratch.path());
    write(dir.path(), "weak.crt", weak_cert);
    // SAN for another address: a file *named* for carol holds mallory's certificate.
    write(
        dir.path(),
        "carol@test.example.pem",
        Leaf::new("mallory@test.example", Alg::Rsa2048).issue().0,
    );
    // And one good certificate so we know the store works at all.
    write(
        dir.path(),
        "good.der",
        pem_to_der(&Leaf::new("good@test.example", Alg::EcP256).issue().0),
    );

    let (store, problems) = CertStore::load(dir.path(), &trust(), now());
    let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let mut expected: Vec<(&str, &str)> = rows.iter().map(|r| (r.email, r.reason)).collect();
    expected.push((
        "weak@test.example",
        "RSA key of 1024 bits is below the 2048-bit minimum",
    ));
    for (email, reason) in &expected {
        assert!(
            all.iter().any(|p| p.contains(email) && p.contains(reason)),
            "no problem reported for {email} ({reason}): {all:#?}"
        );
        let found = store.lookup(email, now());
        assert!(found.cert.is_none(), "{email} must not be usable");
        assert_eq!(found.rejected.len(), 1, "{email}");
        assert!(
            found.rejected[0].1.contains(reason),
            "{email}: {:?}",
            found.rejected
        );
        // Nothing is encrypted to a refused certificate: there is nothing to pass.
        let certs: Vec<_> = found.cert.into_iter().collect();
        assert!(matches!(
            smime::encrypt(
                b"Subject: x\r\n\r\nhi\r\n",
                &certs,
                &EncryptOptions::default()
            ),
            Err(smime::SmimeError::NoRecipients)
        ));
    }
    assert_eq!(problems.len(), expected.len(), "{all:#?}");
    // The misnamed file does not make mallory's certificate carol's.
    let carol = store.lookup("carol@test.example", now());
    assert!(carol.cert.is_none() && carol.rejected.is_empty());
    assert!(store.lookup("mallory@test.example", now()).cert.is_some());
    let good = store.lookup("good@TEST.example", now());
    assert!(
        good.cert.is_some() && good.rejected.is_empty(),
        "{:?}",
        good.rejected
    );
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn newest_valid_certificate_wins_and_expiry_is_judged_at_lookup_time() {
    let dir = tempfile::tempdir().unwrap();
    let now_t = time::OffsetDateTime::now_utc();
    let d = time::Duration::days;
    let mut old = Leaf::new("dora@test.example", Alg::Rsa2048);
    (old.not_before, old.not_after) = (now_t - d(300), now_t + d(400));
    let mut new = Leaf::new("dora@test.example", Alg::EcP256);
    (new.not_before, new.not_after) = (now_t - d(2), now_t + d(20));
    write(dir.path(), "old.pem", old.issue().0);
    write(dir.path(), "new.pem", new.issue().0);
    let (store, problems) = CertStore::load(dir.path(), &trust(), now());
    assert!(problems.is_empty(), "{problems:?}");
    let hit = store.lookup("Dora@Test.Example".replace("Dora", "dora").as_str(), now());
    assert_eq!(hit.cert.unwrap().key, cachet::store::KeyKind::EcP256);
    // A month later the newer one has expired: the older, still valid one is used, from memory.
    let later = store.lookup("dora@test.example", now() + days(30));
    assert!(matches!(
        later.cert.unwrap().key,
        cachet::store::KeyKind::Rsa { bits: 2048 }
    ));
    assert!(later.rejected[0].1.contains("expired"));
}

#[test]
fn rfc9216_recipient_certificates_are_indexed_and_signing_only_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["alice.encrypt.crt", "bob.encrypt.crt", "alice.sign.crt"] {
        std::fs::copy(rfc9216().join(f), dir.path().join(f)).unwrap();
    }
    let (store, problems) = CertStore::load(dir.path(), &trust(), now());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .reason
            .contains("keyUsage lacks keyEncipherment")
    );
    let alice = store.lookup("alice@SMIME.EXAMPLE", now());
    assert!(alice.cert.is_some());
    assert_eq!(alice.rejected.len(), 1);
    assert!(store.lookup("bob@smime.example", now()).cert.is_some());
    assert_eq!(
        store.addresses(),
        vec!["alice@smime.example", "bob@smime.example"]
    );
}

#[test]
fn key_store_loads_pem_and_p12_and_refuses_bad_files_with_clear_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let alice_pem = format!(
        "{}{}{}",
        read("alice.sign.key"),
        read("alice.sign.crt"),
        read("alice.encrypt.crt")
    );
    chmod(&write(p, "alice@SMIME.example.pem", &alice_pem), 0o600);
    // PKCS#12 with its password file (RFC 9216 §5.5, 3DES/SHA-1 PBE as exported by clients).
    std::fs::copy(rfc9216().join("bob.p12"), p.join("bob@smime.example.p12")).unwrap();
    chmod(&p.join("bob@smime.example.p12"), 0o600);
    chmod(&write(p, "bob@smime.example.p12.pass", "bob\n"), 0o600);
    // Readable by others: refused.
    chmod(&write(p, "open@smime.example.pem", &alice_pem), 0o644);
    // Certificate for another address than the file name.
    chmod(&write(p, "carol@smime.example.pem", &alice_pem), 0o600);
    // Expired signing certificate.
    let mut l = Leaf::new("old@smime.example", Alg::EcP256);
    l.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    l.not_before = l.not_after - time::Duration::days(30);
    let (c, k) = l.issue();
    chmod(&write(p, "old@smime.example.pem", format!("{k}{c}")), 0o600);
    // Wrong PKCS#12 password.
    std::fs::copy(
        rfc9216().join("alice.p12"),
        p.join("wrong@smime.example.p12"),
    )
    .unwrap();
    chmod(&p.join("wrong@smime.example.p12"), 0o600);
    chmod(&write(p, "wrong@smime.example.p12.pass", "nope"), 0o600);

    let (keys, problems) = KeyStore::load(p, None, &trust(), now());
    let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let expect = [
        (
            "open@smime.example.pem",
            "readable or writable by group/others (mode 644)",
        ),
        (
            "carol@smime.example.pem",
            "is for alice@smime.example, not for carol@smime.example",
        ),
        ("old@smime.example.pem", "expired"),
        ("wrong@smime.example.p12", "cannot open PKCS#12"),
    ];
    for (file, reason) in expect {
        assert!(
            all.iter().any(|p| p.contains(file) && p.contains(reason)),
            "{file}: {reason} not in {all:#?}"
        );
    }
    assert_eq!(problems.len(), expect.len(), "{all:#?}");
    assert_eq!(keys.iter().count(), 2);
    let alice = keys.get("alice@smime.EXAMPLE").unwrap();
    assert_eq!(alice.email, "alice@smime.example");
    assert!(
        alice.encryption_cert.is_some(),
        "alice.encrypt.crt in the key file is her encryption cert"
    );
    assert_eq!(alice.fingerprint.len(), 64);
    let bob = keys.get("bob@smime.example").expect("bob.p12 loads");
    // An encryption-only certificate (keyUsage keyEncipherment) never signs: it loads as a
    // decryption key (tests/keys_encryption_certs.rs), not as a signing identity.
    let only = tempfile::tempdir().unwrap();
    let enc_only = format!("{}{}", read("alice.decrypt.key"), read("alice.encrypt.crt"));
    chmod(
        &write(only.path(), "alice@smime.example.pem", &enc_only),
        0o600,
    );
    let (none, problems) = KeyStore::load(only.path(), None, &trust(), now());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(none.iter().count(), 0);
    assert!(none.get("alice@smime.example").is_none());
    assert_eq!(none.decryption_keys().len(), 1);
    // The identities actually sign, and openssl accepts the result.
    for id in [alice, bob] {
        let signed = smime::sign(&sample_message(), &id, &Default::default()).unwrap();
        openssl_verify(&signed, None);
    }
}

#[test]
fn shared_p12_password_file_is_used_when_no_per_key_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        rfc9216().join("alice.p12"),
        dir.path().join("alice@smime.example.p12"),
    )
    .unwrap();
    chmod(&dir.path().join("alice@smime.example.p12"), 0o600);
    let secret_dir = tempfile::tempdir().unwrap();
    let pass = write(secret_dir.path(), "p12pass", "alice");
    chmod(&pass, 0o600);
    let (keys, problems) = KeyStore::load(dir.path(), Some(&pass), &trust(), now());
    assert!(problems.is_empty(), "{problems:?}");
    assert!(keys.get("alice@smime.example").is_some());
    let (_, problems) = KeyStore::load(dir.path(), None, &trust(), now());
    assert!(problems[0].reason.contains("no password"), "{problems:?}");
}

#[test]
fn trust_anchor_problems_are_reported_and_nothing_validates_without_anchors() {
    let (t, problems) = TrustAnchors::load(&[rfc9216().join("does-not-exist.pem")]);
    assert!(t.is_empty());
    assert!(problems[0].reason.contains("cannot read"), "{problems:?}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        rfc9216().join("bob.encrypt.crt"),
        dir.path().join("bob.crt"),
    )
    .unwrap();
    let (store, problems) = CertStore::load(dir.path(), &t, now());
    assert!(
        problems[0].reason.contains("no trust anchors loaded"),
        "{problems:?}"
    );
    assert!(store.lookup("bob@smime.example", now()).cert.is_none());
}

#[test]
fn modern_pbes2_aes_p12_from_openssl_3_loads() {
    // OpenSSL 3's default export: PBES2 + PBKDF2 + AES-256-CBC, HMAC-SHA-256 MAC.
    let dir = tempfile::tempdir().unwrap();
    let p12 = dir.path().join("alice@smime.example.p12");
    let chain = write(dir.path(), "chain.pem", read("alice.encrypt.crt"));
    run_ok(
        std::process::Command::new("openssl")
            .args(["pkcs12", "-export", "-passout", "pass:s3cret", "-inkey"])
            .arg(rfc9216().join("alice.sign.key"))
            .arg("-in")
            .arg(rfc9216().join("alice.sign.crt"))
            .arg("-certfile")
            .arg(&chain)
            .arg("-out")
            .arg(&p12),
    );
    std::fs::remove_file(chain).unwrap();
    chmod(&p12, 0o600);
    chmod(
        &write(dir.path(), "alice@smime.example.p12.pass", "s3cret\r\n"),
        0o600,
    );
    let (keys, problems) = KeyStore::load(dir.path(), None, &trust(), now());
    assert!(problems.is_empty(), "{problems:?}");
    let alice = keys.get("alice@smime.example").unwrap();
    // p12-keystore keeps only the key's own chain: certificates without a localKeyId are not
    // read, so a separate encryption certificate needs the .pem form (documented).
    assert!(alice.encryption_cert.is_none());
    assert_eq!(alice.chain.len(), 1);
    openssl_verify(
        &smime::sign(&sample_message(), &alice, &Default::default()).unwrap(),
        None,
    );
}

#[test]
fn intermediates_come_from_the_key_file_and_the_certificate_directory() {
    let (int_cert, int_key) = intermediate_ca();
    let mut signer = Leaf::new("ivan@test.example", Alg::EcP256);
    signer.intermediate = Some((int_cert.clone(), int_key.clone()));
    let mut rcpt = Leaf::new("judy@test.example", Alg::Rsa2048);
    rcpt.intermediate = Some((int_cert.clone(), int_key));

    // Key file: key + leaf + intermediate. The signature carries the intermediate, so openssl
    // verifies with only the root as CA file.
    let keys = tempfile::tempdir().unwrap();
    let (c, k) = signer.issue();
    chmod(
        &write(
            keys.path(),
            "ivan@test.example.pem",
            format!("{k}{c}{int_cert}"),
        ),
        0o600,
    );
    let (ks, problems) = KeyStore::load(keys.path(), None, &trust(), now());
    assert!(problems.is_empty(), "{problems:?}");
    let ivan = ks.get("ivan@test.example").unwrap();
    assert_eq!(ivan.chain.len(), 2);
    openssl_verify(
        &smime::sign(&sample_message(), &ivan, &Default::default()).unwrap(),
        None,
    );
    // Without the intermediate the path cannot be built.
    chmod(
        &write(keys.path(), "ivan@test.example.pem", format!("{k}{c}")),
        0o600,
    );
    let (_, problems) = KeyStore::load(keys.path(), None, &trust(), now());
    assert!(
        problems[0]
            .reason
            .contains("does not chain to a trusted root"),
        "{problems:?}"
    );

    // Certificate directory: the intermediate in its own file serves every recipient.
    let certs = tempfile::tempdir().unwrap();
    write(certs.path(), "judy.pem", rcpt.issue().0);
    let (store, problems) = CertStore::load(certs.path(), &trust(), now());
    assert!(
        problems[0].reason.contains("does not chain"),
        "{problems:?}"
    );
    assert!(store.lookup("judy@test.example", now()).cert.is_none());
    write(certs.path(), "intermediate.crt", &int_cert);
    let (store, problems) = CertStore::load(certs.path(), &trust(), now());
    assert!(problems.is_empty(), "{problems:?}");
    assert!(store.lookup("judy@test.example", now()).cert.is_some());
}
