//! The decryption seam inbound mail uses (`SigningIdentity::decrypt`, issue 11): RSA PKCS#1 v1.5
//! and OAEP unwrap and ECDH P-256, for a key in a file (aws-lc-rs) and the same kind of key on a
//! SoftHSM2 token, against ciphertexts and shared secrets made by `openssl pkeyutl` and aws-lc-rs.
//!
//! One test in its own binary: the PKCS#11 module is process-wide and SoftHSM reads
//! `SOFTHSM2_CONF` when it is initialised.

mod common;
mod smime_common;

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use cachet::store::keys::{
    Decrypt, KeySources, KeyStore, OaepHash, SignatureScheme, SigningIdentity,
};
use cachet::store::pkcs11::{Token, TokenConfig};
use common::{SoftHsm, USER_PIN, cachet_command, toml_str};
use smime_common::{Alg, Leaf, chmod, read, run_ok, trust, write};

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = dir.join("openssl.out");
    run_ok(Command::new("openssl").args(args).arg("-out").arg(&out));
    std::fs::read(out).unwrap()
}

#[test]
fn rsa_and_ecdh_unwrap_match_openssl_for_file_and_token_keys() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let (rsa_cert, rsa_key) = Leaf::new("alice@smime.example", Alg::Rsa2048).issue();
    let (ec_cert, ec_key) = Leaf::new("erin@smime.example", Alg::EcP256).issue();
    let now = SystemTime::now();
    let file_rsa = SigningIdentity::from_pem(
        "alice@smime.example",
        format!("{rsa_key}{rsa_cert}").as_bytes(),
        &trust(),
        now,
    )
    .unwrap();
    let file_ec = SigningIdentity::from_pem(
        "erin@smime.example",
        format!("{ec_key}{ec_cert}").as_bytes(),
        &trust(),
        now,
    )
    .unwrap();

    // The same keys on a token, imported by `cachet keys import` (certificates on the token).
    let hsm = SoftHsm::new("cachet");
    let keys = dir.join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(dir.join("ca.pem"), read("ca.rsa.crt")).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlocal_domains = [\"smime.example\"]\n[upstream]\nurl = \"file://{}/out\"\n\
             [certificates]\ndir = {}\ntrust = [{}]\n[keys]\ndir = {}\n{}",
            dir.display(),
            toml_str(&dir.display().to_string()),
            toml_str(&dir.join("ca.pem").display().to_string()),
            toml_str(&keys.display().to_string()),
            hsm.keys_toml(&hsm.pin_file(USER_PIN)),
        ),
    )
    .unwrap();
    for (name, pem) in [
        ("a.pem", format!("{rsa_key}{rsa_cert}")),
        ("e.pem", format!("{ec_key}{ec_cert}")),
    ] {
        let f = write(dir, name, pem);
        chmod(&f, 0o600);
        let out = cachet_command()
            .env("SOFTHSM2_CONF", &hsm.conf)
            .args(["keys", "import"])
            .arg(&f)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // SAFETY: this binary runs this one test, before any other thread exists.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &hsm.conf) };
    let token = Token::open(&TokenConfig {
        module: hsm.module.clone(),
        label: "cachet".into(),
        pin: zeroize::Zeroizing::new(USER_PIN.into()),
        sessions: 2,
    })
    .unwrap();
    let sources = KeySources {
        dir: keys,
        token: Some(token.clone()),
        token_expected: true,
        ..Default::default()
    };
    let (store, problems) = KeyStore::load_with(&sources, &trust(), now);
    assert!(problems.is_empty(), "{problems:?}");
    let token_rsa = store.get("alice@smime.example").unwrap();
    let token_ec = store.get("erin@smime.example").unwrap();
    assert!(token_rsa.source.to_string().starts_with("token \"cachet\""));

    // RSA: a content-encryption key wrapped by openssl with the certificate's public key.
    let cek = [0x5au8; 32];
    let cek_file = write(dir, "cek", cek);
    let cert_file = write(dir, "alice.crt", &rsa_cert);
    let (cek_s, cert_s) = (cek_file.to_str().unwrap(), cert_file.to_str().unwrap());
    let pkcs1 = openssl(
        dir,
        &[
            "pkeyutl", "-encrypt", "-certin", "-inkey", cert_s, "-in", cek_s,
        ],
    );
    let oaep256 = openssl(
        dir,
        &[
            "pkeyutl",
            "-encrypt",
            "-certin",
            "-inkey",
            cert_s,
            "-in",
            cek_s,
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
        ],
    );
    // OAEP with SHA-1 (RFC 3560's default) made by aws-lc-rs.
    let oaep1 = {
        use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPublicEncryptingKey, PublicEncryptingKey};
        let info = cachet::store::validate::inspect(token_rsa.certificate()).unwrap();
        let key =
            OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(&info.spki_der).unwrap())
                .unwrap();
        let mut out = vec![0u8; key.ciphertext_size()];
        key.encrypt(&OAEP_SHA1_MGF1SHA1, &cek, &mut out, None)
            .unwrap()
            .to_vec()
    };
    // SoftHSM 2.6 implements OAEP with SHA-1 only: for it, SHA-256 is refused as unsuitable
    // (a permanent failure, not a token outage); the file key does both.
    let err = token_rsa
        .decrypt(Decrypt::RsaOaep {
            ciphertext: &oaep256,
            hash: OaepHash::Sha256,
        })
        .unwrap_err();
    assert!(!err.is_temporary(), "{err}");
    for id in [&file_rsa, &*token_rsa] {
        let what = id.source.to_string();
        assert_eq!(
            &id.decrypt(Decrypt::RsaPkcs1(&pkcs1)).unwrap()[..],
            &cek,
            "{what}"
        );
        let hashes: &[(&Vec<u8>, OaepHash)] = if what.starts_with("token") {
            &[(&oaep1, OaepHash::Sha1)]
        } else {
            &[(&oaep256, OaepHash::Sha256), (&oaep1, OaepHash::Sha1)]
        };
        for &(ct, hash) in hashes {
            let got = id
                .decrypt(Decrypt::RsaOaep {
                    ciphertext: ct,
                    hash,
                })
                .unwrap();
            assert_eq!(&got[..], &cek, "{what} {hash:?}");
        }
        // A ciphertext that is not for this key fails, it does not return garbage.
        let mut bad = pkcs1.clone();
        bad[10] ^= 1;
        assert!(id.decrypt(Decrypt::RsaPkcs1(&bad)).is_err(), "{what}");
        // The wrong operation for the key type is refused.
        assert!(
            id.decrypt(Decrypt::EcdhP256 {
                peer_point: &[4; 65]
            })
            .is_err()
        );
    }

    // ECDH: openssl's ephemeral key agrees with the certificate's key; both sides get Z.
    let eph = dir.join("eph.pem");
    run_ok(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&eph),
    );
    let ec_cert_file = write(dir, "erin.crt", &ec_cert);
    let erin_pub = openssl(
        dir,
        &[
            "x509",
            "-pubkey",
            "-noout",
            "-in",
            ec_cert_file.to_str().unwrap(),
        ],
    );
    let erin_pub = write(dir, "erin.pub", erin_pub);
    let z = openssl(
        dir,
        &[
            "pkeyutl",
            "-derive",
            "-inkey",
            eph.to_str().unwrap(),
            "-peerkey",
            erin_pub.to_str().unwrap(),
        ],
    );
    assert_eq!(z.len(), 32);
    let eph_spki = openssl(
        dir,
        &[
            "pkey",
            "-pubout",
            "-outform",
            "DER",
            "-in",
            eph.to_str().unwrap(),
        ],
    );
    let point = &eph_spki[eph_spki.len() - 65..];
    assert_eq!(point[0], 4, "uncompressed point");
    for id in [&file_ec, &*token_ec] {
        let got = id.decrypt(Decrypt::EcdhP256 { peer_point: point }).unwrap();
        assert_eq!(&got[..], &z[..], "{}", id.source);
        assert!(id.decrypt(Decrypt::RsaPkcs1(&pkcs1)).is_err());
    }

    // The session pool is bounded: 8 threads signing at once share 2 sessions.
    let signers: Vec<_> = (0..8)
        .map(|i| {
            let id = if i % 2 == 0 {
                token_rsa.clone()
            } else {
                token_ec.clone()
            };
            std::thread::spawn(move || {
                let scheme = if i % 2 == 0 {
                    SignatureScheme::RsaPssSha256
                } else {
                    SignatureScheme::EcdsaP256Sha256
                };
                for _ in 0..5 {
                    id.sign(scheme, b"parallel").unwrap();
                }
            })
        })
        .collect();
    for s in signers {
        s.join().unwrap();
    }
    assert!(token.sessions_open() <= 2, "{}", token.sessions_open());
}
