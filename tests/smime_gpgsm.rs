//! Interop with GnuPG's `gpgsm` (2.2): it verifies our RSA and ECDSA signatures and decrypts
//! RSA PKCS#1 v1.5 + AES-256-CBC. (gpgsm 2.2 cannot do OAEP, GCM or PSS; those are covered by
//! the openssl tests.) Each test uses a throwaway GNUPGHOME with the RFC 9216 CA trusted.

mod smime_common;

use std::path::Path;
use std::process::Command;

use cachet::smime::{self, EncryptOptions, SignForm, SignOptions};
use cachet::store::keys::SigningIdentity;
use smime_common::*;

/// A temporary GnuPG home: CA imported and marked trusted, CRL checks off (no network),
/// loopback pinentry so the p12 passphrase can be passed on the command line.
struct Gpgsm {
    home: tempfile::TempDir,
}

impl Gpgsm {
    fn new() -> Gpgsm {
        // Short path: gpg-agent's socket path must fit in sun_path.
        let home = tempfile::Builder::new()
            .prefix("gsm")
            .tempdir_in("/tmp")
            .unwrap();
        chmod(home.path(), 0o700);
        write(home.path(), "gpg-agent.conf", "allow-loopback-pinentry\n");
        write(
            home.path(),
            "gpgsm.conf",
            "disable-crl-checks\ndisable-policy-checks\n",
        );
        let fpr = run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
                .arg(ca_cert_path()),
        );
        let fpr = String::from_utf8_lossy(&fpr.stdout);
        let fpr = fpr.trim().split('=').nth(1).unwrap().to_string();
        write(home.path(), "trustlist.txt", format!("{fpr} S relax\n"));
        let g = Gpgsm { home };
        g.run_ok(&["--import", ca_cert_path().to_str().unwrap()]);
        g
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("gpgsm");
        c.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--no-tty",
            "--disable-crl-checks",
            "--disable-dirmngr",
        ]);
        c
    }

    fn run_ok(&self, args: &[&str]) -> std::process::Output {
        run_ok(self.cmd().args(args))
    }

    /// Import a private key + certificate. gpgsm 2.2 cannot parse RFC 9216's own .p12 files, so
    /// we re-pack the published PEM key as a PKCS#12 with openssl (3DES/SHA-1, what gpgsm reads).
    fn import_key(&self, key: &Path, cert: &Path, dir: &Path) {
        let p12 = dir.join("import.p12");
        run_ok(
            Command::new("openssl")
                .args([
                    "pkcs12",
                    "-export",
                    "-keypbe",
                    "PBE-SHA1-3DES",
                    "-certpbe",
                    "PBE-SHA1-3DES",
                ])
                .args(["-macalg", "sha1", "-passout", "pass:test", "-inkey"])
                .arg(key)
                .arg("-in")
                .arg(cert)
                .arg("-out")
                .arg(&p12),
        );
        let mut cmd = self.cmd();
        cmd.args([
            "--pinentry-mode",
            "loopback",
            "--passphrase-fd",
            "0",
            "--import",
        ])
        .arg(&p12);
        let out = run_with_input(&mut cmd, b"test\ntest\ntest\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("secret keys imported: 1"),
            "gpgsm import: {err}"
        );
    }
}

impl Drop for Gpgsm {
    fn drop(&mut self) {
        // Stop the agent this home started (by its socket, not by process name).
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

fn verify_detached_with_gpgsm(g: &Gpgsm, signed: &[u8], dir: &Path) {
    let (content, p7s) = split_signed(signed);
    let sig = write(dir, "sig.p7s", &p7s);
    let data = write(dir, "data", &content);
    let out = g
        .cmd()
        .args(["--status-fd", "1", "--verify"])
        .arg(&sig)
        .arg(&data)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && status.contains("[GNUPG:] GOODSIG") && status.contains("TRUST_"),
        "gpgsm --verify: {status}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gpgsm_verifies_rsa_detached_and_opaque_signatures() {
    let g = Gpgsm::new();
    let dir = tempfile::tempdir().unwrap();
    let signed = smime::sign(&sample_message(), &alice(), &SignOptions::default()).unwrap();
    verify_detached_with_gpgsm(&g, &signed, dir.path());
    let sha512 = SignOptions {
        digest: smime::Digest::Sha512,
        ..Default::default()
    };
    verify_detached_with_gpgsm(
        &g,
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
    verify_detached_with_gpgsm(&g, &signed, dir.path());
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
    let p7m = write(dir.path(), "enc.p7m", p7m_der(&enc));
    let out_path = dir.path().join("plain");
    let mut cmd = g.cmd();
    cmd.args([
        "--pinentry-mode",
        "loopback",
        "--passphrase-fd",
        "0",
        "--output",
    ])
    .arg(&out_path)
    .arg("--decrypt")
    .arg(&p7m);
    let out = run_with_input(&mut cmd, b"test\n");
    assert!(
        out.status.success(),
        "gpgsm --decrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inner = std::fs::read(&out_path).unwrap();
    assert_eq!(split_signed(&inner).0, split_signed(&signed).0);
    verify_detached_with_gpgsm(&g, &inner, dir.path());
}
