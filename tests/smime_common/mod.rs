//! Shared helpers for the S/MIME tests: the RFC 9216 example PKI, a CA to issue more test
//! certificates (rcgen, or the openssl CLI where rcgen cannot, e.g. RSA-1024), and runners
//! for the independent engines (`openssl cms`, `gpgsm`) that judge our output.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cachet::store::certs::RecipientCert;
use cachet::store::keys::SigningIdentity;
use cachet::store::{TrustAnchors, validate};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The RFC 9216 example keys and certificates (shared/ sits beside the project, in CI too).
pub fn rfc9216() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/interop/rfc9216"
    ))
}

pub fn read(name: &str) -> String {
    std::fs::read_to_string(rfc9216().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn ca_cert_path() -> PathBuf {
    rfc9216().join("ca.rsa.crt")
}

/// Trust anchors = the RFC 9216 RSA CA.
pub fn trust() -> TrustAnchors {
    let (t, problems) = TrustAnchors::load(&[ca_cert_path()]);
    assert!(problems.is_empty(), "{problems:?}");
    t
}

/// Alice's signing identity (RSA-2048) with her encryption certificate in the same file.
pub fn alice() -> SigningIdentity {
    let pem = format!(
        "{}{}{}",
        read("alice.sign.key"),
        read("alice.sign.crt"),
        read("alice.encrypt.crt")
    );
    SigningIdentity::from_pem(
        "alice@smime.example",
        pem.as_bytes(),
        &trust(),
        SystemTime::now(),
    )
    .unwrap()
}

/// A recipient certificate from PEM, validated for encryption like the store would.
pub fn recipient(pem: &str) -> Arc<RecipientCert> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let info = validate::inspect(&der).unwrap();
    validate::check(
        &der,
        &info,
        &[],
        &trust(),
        SystemTime::now(),
        validate::Purpose::Encrypt,
    )
    .unwrap();
    Arc::new(RecipientCert::from_der(der).unwrap())
}

pub fn bob_recipient() -> Arc<RecipientCert> {
    recipient(&read("bob.encrypt.crt"))
}

pub fn alice_recipient() -> Arc<RecipientCert> {
    recipient(&read("alice.encrypt.crt"))
}

/// Key algorithm for generated test certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rsa2048,
    EcP256,
}

/// What a generated leaf certificate looks like; defaults are a valid S/MIME certificate.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub email: String,
    pub alg: Alg,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
    /// Issue from a fresh, untrusted CA instead of the RFC 9216 CA.
    pub untrusted: bool,
    /// Issue from this intermediate CA (cert PEM, key PEM) instead of the RFC 9216 CA.
    pub intermediate: Option<(String, String)>,
    /// CRL distribution point URLs (revocation tests).
    pub crl_urls: Vec<String>,
    /// OCSP responder URL for the AIA extension (revocation tests).
    pub ocsp_url: Option<String>,
    /// Serial number; `None`: rcgen picks one.
    pub serial: Option<u64>,
}

/// An intermediate CA under the RFC 9216 root: (cert PEM, key PEM).
pub fn intermediate_ca() -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "Test Intermediate CA");
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.use_authority_key_identifier_extension = true;
    let ca_key = KeyPair::from_pem(&read("ca.rsa.key")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&read("ca.rsa.crt"), ca_key).unwrap();
    (
        p.signed_by(&key, &issuer).unwrap().pem(),
        key.serialize_pem(),
    )
}

impl Leaf {
    pub fn new(email: &str, alg: Alg) -> Leaf {
        let now = time::OffsetDateTime::now_utc();
        Leaf {
            email: email.into(),
            alg,
            key_usages: match alg {
                Alg::Rsa2048 => vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ],
                Alg::EcP256 => vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyAgreement,
                ],
            },
            ekus: vec![ExtendedKeyUsagePurpose::EmailProtection],
            not_before: now - time::Duration::days(1),
            not_after: now + time::Duration::days(365),
            untrusted: false,
            intermediate: None,
            crl_urls: Vec::new(),
            ocsp_url: None,
            serial: None,
        }
    }

    /// Issue it: returns (certificate PEM, PKCS#8 private key PEM).
    pub fn issue(&self) -> (String, String) {
        let key = match self.alg {
            Alg::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                    .unwrap()
            }
            Alg::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        };
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, format!("Test {}", self.email));
        p.subject_alt_names = vec![SanType::Rfc822Name(self.email.clone().try_into().unwrap())];
        p.key_usages = self.key_usages.clone();
        p.extended_key_usages = self.ekus.clone();
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        p.is_ca = IsCa::ExplicitNoCa;
        p.use_authority_key_identifier_extension = true;
        p.serial_number = self.serial.map(rcgen::SerialNumber::from);
        if !self.crl_urls.is_empty() {
            p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: self.crl_urls.clone(),
            }];
        }
        if let Some(url) = &self.ocsp_url {
            p.custom_extensions.push(aia_ocsp(url));
        }
        let cert = if self.untrusted {
            let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut cp = CertificateParams::default();
            cp.distinguished_name
                .push(DnType::CommonName, "Untrusted Test CA");
            cp.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            cp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let issuer = Issuer::new(cp, ca_key);
            p.signed_by(&key, &issuer).unwrap()
        } else if let Some((ca_cert, ca_key)) = &self.intermediate {
            let ca_key = KeyPair::from_pem(ca_key).unwrap();
            let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key).unwrap();
            p.signed_by(&key, &issuer).unwrap()
        } else {
            let ca_key = KeyPair::from_pem(&read("ca.rsa.key")).unwrap();
            let issuer = Issuer::from_ca_cert_pem(&read("ca.rsa.crt"), ca_key).unwrap();
            p.signed_by(&key, &issuer).unwrap()
        };
        (cert.pem(), key.serialize_pem())
    }
}

/// RSA-1024 certificate from the RFC 9216 CA, made with the openssl CLI (rcgen and aws-lc-rs
/// refuse to generate keys that small, which is the point). Returns (cert PEM, key PEM).
pub fn issue_rsa1024(email: &str, dir: &Path) -> (String, String) {
    let key = dir.join("rsa1024.key");
    let csr = dir.join("rsa1024.csr");
    let crt = dir.join("rsa1024.crt");
    let ext = dir.join("rsa1024.ext");
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=email:{email}\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=emailProtection\n"
        ),
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("1024"),
    );
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-subj", "/CN=weak"])
            .arg("-key")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "30", "-set_serial", "4242"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(ca_cert_path())
            .arg("-CAkey")
            .arg(rfc9216().join("ca.rsa.key"))
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&crt),
    );
    (
        std::fs::read_to_string(crt).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

/// Run and insist on success, showing stderr otherwise.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Run with `input` on stdin.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// `openssl cms -verify -CAfile <RFC 9216 CA>` on exactly `message`; returns the content
/// openssl says was signed.
pub fn openssl_verify(message: &[u8], extra_ca: Option<&Path>) -> Vec<u8> {
    let mut cmd = Command::new("openssl");
    cmd.args(["cms", "-verify", "-CAfile"])
        .arg(extra_ca.map(Path::to_path_buf).unwrap_or_else(ca_cert_path));
    let out = run_with_input(&mut cmd, message);
    assert!(
        out.status.success(),
        "openssl cms -verify failed: {}\n--- message ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&message[..message.len().min(3000)])
    );
    out.stdout
}

/// Rebuild the DER of `der` with the SET at `path` (child indexes from the root) replaced
/// by `n` copies of its first element, or with `extra` appended to it: the hostile inputs of
/// the bad-input tests (10,000 RecipientInfos, a 20 MB certificate bag).
pub fn grow_set(der: &[u8], path: &[usize], n: usize, extra: Option<Vec<u8>>) -> Vec<u8> {
    use cachet::smime::ber::{self, Node, Value};
    fn walk<'a>(node: &mut Node<'a>, path: &[usize], n: usize, extra: &'a Option<Vec<u8>>) {
        let Value::Constructed(kids) = &mut node.value else {
            panic!("not constructed")
        };
        if let Some((first, rest)) = path.split_first() {
            return walk(&mut kids[*first], rest, n, extra);
        }
        match extra {
            Some(raw) => kids.push(ber::parse(raw, 1 << 20).unwrap()),
            None => {
                let one = kids[0].clone();
                kids.clear();
                kids.extend(std::iter::repeat_n(one, n));
            }
        }
    }
    let mut root = ber::parse(der, 1 << 22).unwrap();
    walk(&mut root, path, n, &extra);
    // The tree borrows `der`: serialise before returning.
    root.to_der()
}

/// A file of ../shared/interop (RFC samples, real client messages, their keys).
pub fn interop(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/interop")).join(rel)
}

/// `openssl cms <args>` on `input`; returns stdout, fails the test with openssl's stderr.
pub fn openssl_cms(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new("openssl");
    cmd.arg("cms").args(args);
    let out = run_with_input(&mut cmd, input);
    assert!(
        out.status.success(),
        "openssl cms {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A path as the `&str` a command line argument list wants.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

/// `openssl cms -decrypt` with a recipient certificate and key file; returns the plaintext.
pub fn openssl_decrypt(message: &[u8], cert: &Path, key: &Path) -> Vec<u8> {
    openssl_cms(
        &[
            "-decrypt",
            "-recip",
            path_str(cert),
            "-inkey",
            path_str(key),
        ],
        message,
    )
}

/// `openssl cms -cmsout -print` of the CMS structure in an S/MIME message.
pub fn openssl_print(message: &[u8]) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["cms", "-cmsout", "-print", "-inform", "SMIME"]);
    let out = run_with_input(&mut cmd, message);
    assert!(
        out.status.success(),
        "openssl cms -print failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Write bytes to a file in `dir`, returning its path.
pub fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Set a file's Unix mode.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn now() -> SystemTime {
    SystemTime::now()
}

pub fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// A small but realistic message with 8-bit text and a binary attachment.
pub fn sample_message() -> Vec<u8> {
    let mut m = b"From: Alice <alice@smime.example>\r\nTo: Bob <bob@smime.example>\r\nSubject: test\r\nDate: Sun, 29 Nov 2026 08:00:00 +0000\r\nMessage-ID: <1@smime.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\npreamble\r\n--outer\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\r\nFrom the team\r\n.\r\n".to_vec();
    m.extend_from_slice(b"--outer\r\nContent-Type: application/octet-stream; name=\"b.bin\"\r\nContent-Transfer-Encoding: binary\r\n\r\n");
    m.extend((0u8..=255).cycle().take(700));
    m.extend_from_slice(b"\r\n--outer--\r\n");
    m
}

/// Split our `multipart/signed` output into (signed entity bytes, DER signature), following
/// RFC 2046 §5.1.1 exactly: the CRLF before a delimiter belongs to the delimiter.
pub fn split_signed(message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let text = message;
    let bpos = find(text, b"boundary=\"").expect("boundary") + 10;
    let bend = bpos + find(&text[bpos..], b"\"").unwrap();
    let boundary = format!("--{}", String::from_utf8_lossy(&text[bpos..bend]));
    let first = find(text, format!("\r\n{boundary}\r\n").as_bytes()).unwrap() + boundary.len() + 4;
    let delim = format!("\r\n{boundary}\r\n");
    let second = first + find(&text[first..], delim.as_bytes()).unwrap();
    let content = text[first..second].to_vec();
    let sig_part = &text[second + delim.len()..];
    let body_start = find(sig_part, b"\r\n\r\n").unwrap() + 4;
    let close = find(sig_part, format!("\r\n{boundary}--").as_bytes()).unwrap();
    let b64: String = String::from_utf8_lossy(&sig_part[body_start..close])
        .split_whitespace()
        .collect();
    use base64::Engine;
    (
        content,
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
}

/// The base64 body of a single-part `application/pkcs7-mime` message, decoded.
pub fn p7m_der(message: &[u8]) -> Vec<u8> {
    let body_start = find(message, b"\r\n\r\n").unwrap() + 4;
    let b64: String = String::from_utf8_lossy(&message[body_start..])
        .split_whitespace()
        .collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The header block (up to the empty line) of a message, as text.
pub fn header_block(message: &[u8]) -> String {
    let end = find(message, b"\r\n\r\n").unwrap();
    String::from_utf8_lossy(&message[..end + 2]).into_owned()
}

/// In-process check of a detached RSA PKCS#1 v1.5 SHA-256 signature made by `signer_cert_pem`:
/// the messageDigest attribute matches SHA-256(`content`) and the signature over the DER signed
/// attributes verifies with aws-lc-rs. Panics with the reason otherwise.
pub fn verify_detached_in_process(content: &[u8], p7s: &[u8], signer_cert_pem: &str) {
    use cms::content_info::ContentInfo;
    use cms::signed_data::SignedData;
    use der::{Decode, Encode};
    let ci = ContentInfo::from_der(p7s).expect("ContentInfo");
    let sd: SignedData = ci.content.decode_as().expect("SignedData");
    assert!(sd.encap_content_info.econtent.is_none(), "detached");
    let si = sd.signer_infos.0.get(0).expect("one signer");
    let attrs = si.signed_attrs.as_ref().expect("signed attributes");
    let md_oid = const_oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
    let md = attrs
        .iter()
        .find(|a| a.oid == md_oid)
        .expect("messageDigest");
    let md: der::asn1::OctetString = md.values.get(0).unwrap().decode_as().unwrap();
    let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
    assert_eq!(
        md.as_bytes(),
        want.as_ref(),
        "messageDigest does not match the content"
    );
    let cert_der = CertificateDer::from_pem_slice(signer_cert_pem.as_bytes()).unwrap();
    let cert = x509_cert::Certificate::from_der(&cert_der).unwrap();
    let pk = cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        pk,
    );
    key.verify(&attrs.to_der().unwrap(), si.signature.as_bytes())
        .expect("signature verifies");
}

/// A temporary GnuPG home: CA imported and marked trusted, CRL checks off (no network),
/// loopback pinentry so the p12 passphrase can be passed on the command line.
pub struct Gpgsm {
    home: tempfile::TempDir,
}

impl Gpgsm {
    pub fn new() -> Gpgsm {
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

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("gpgsm");
        c.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--no-tty",
            "--disable-crl-checks",
            "--disable-dirmngr",
        ]);
        c
    }

    /// [`Gpgsm::cmd`] with loopback pinentry: passphrases are read from stdin.
    pub fn with_passphrase(&self) -> Command {
        let mut c = self.cmd();
        c.args(["--pinentry-mode", "loopback", "--passphrase-fd", "0"]);
        c
    }

    pub fn run_ok(&self, args: &[&str]) -> std::process::Output {
        run_ok(self.cmd().args(args))
    }

    /// `entity` encrypted by gpgsm to `recipient` (whose certificate `cert` is imported first):
    /// the EnvelopedData, BER as gpgsm writes it. Files go in `dir`.
    pub fn encrypt_to(&self, cert: &Path, recipient: &str, entity: &[u8], dir: &Path) -> Vec<u8> {
        self.run_ok(&["--import", path_str(cert)]);
        let input = write(dir, "gpgsm-entity", entity);
        let out = dir.join("gpgsm-enc.p7m");
        self.run_ok(&[
            "--encrypt",
            "-r",
            recipient,
            "--output",
            path_str(&out),
            path_str(&input),
        ]);
        std::fs::read(&out).unwrap()
    }

    /// Import a private key + certificate. gpgsm 2.2 cannot parse RFC 9216's own .p12 files, so
    /// we re-pack the published PEM key as a PKCS#12 with openssl (3DES/SHA-1, what gpgsm reads).
    ///
    /// gpgsm 2.2.40 also rejects some of the valid files openssl writes ("decryption failed;
    /// trying charset ...", "error parsing or decrypting the PKCS#12 file"), depending only on
    /// the file's random salts: one such file failed in 5 of 5 fresh homes while `openssl
    /// pkcs12` read it, and 2 of about 200 exports failed in a loop (tests/smime_gpgsm.rs saw
    /// it once in a full run). So an export gpgsm cannot read is made again with new salts, a
    /// few times; any other import failure fails at once.
    pub fn import_key(&self, key: &Path, cert: &Path, dir: &Path) {
        let p12 = dir.join("import.p12");
        let mut tries = Vec::new();
        for _ in 0..5 {
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
            let mut cmd = self.with_passphrase();
            cmd.arg("--import").arg(&p12);
            let out = run_with_input(&mut cmd, b"test\ntest\ntest\n");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if err.contains("secret keys imported: 1") {
                return;
            }
            let unreadable = err.contains("error parsing or decrypting the PKCS#12 file");
            tries.push(err);
            if !unreadable {
                break;
            }
        }
        panic!("gpgsm import: {}", tries.join("\n-- exported again --\n"));
    }

    /// `gpgsm --verify` of a detached multipart/signed message; asserts a good, trusted signature.
    pub fn verify_detached(&self, signed: &[u8], dir: &Path) {
        let (content, p7s) = split_signed(signed);
        let sig = write(dir, "sig.p7s", &p7s);
        let data = write(dir, "data", &content);
        let out = self
            .cmd()
            .args(["--status-fd", "1", "--verify"])
            .arg(&sig)
            .arg(&data)
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && status.contains("[GNUPG:] GOODSIG")
                && status.contains("TRUST_"),
            "gpgsm --verify: {status}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `gpgsm --decrypt` of an S/MIME enveloped message (the PEM/base64 body of an .eml).
    pub fn decrypt(&self, message: &[u8], dir: &Path) -> Vec<u8> {
        let p7m = write(dir, "enc.p7m", p7m_der(message));
        let out_path = dir.join("plain");
        let mut cmd = self.with_passphrase();
        cmd.arg("--output")
            .arg(&out_path)
            .arg("--decrypt")
            .arg(&p7m);
        let out = run_with_input(&mut cmd, b"test\n");
        assert!(
            out.status.success(),
            "gpgsm --decrypt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(&out_path).unwrap()
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

/// An authorityInfoAccess extension naming `url` as OCSP responder (RFC 5280 §4.2.2.1).
pub fn aia_ocsp(url: &str) -> rcgen::CustomExtension {
    use der::Encode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax};
    let aia = AuthorityInfoAccessSyntax(vec![AccessDescription {
        access_method: const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1"),
        access_location: GeneralName::UniformResourceIdentifier(
            der::asn1::Ia5String::new(url).unwrap(),
        ),
    }]);
    rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], aia.to_der().unwrap())
}

/// A whole message from `from` to Bob (RFC 9216) around a DER CMS object:
/// `application/pkcs7-mime` with the given `smime-type`, base64 in 76-character lines.
pub fn p7m_message(der: &[u8], smime_type: &str, from: &str) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut m = format!(
        "From: {from}\r\nTo: bob@smime.example\r\nSubject: t\r\nMIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type={smime_type}; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    for chunk in b64.as_bytes().chunks(76) {
        m.extend_from_slice(chunk);
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// Bytes as SMTP carries them: CRLF line ends (files from disk and openssl output may use LF).
pub fn crlf(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + m.len() / 40);
    for (i, &b) in m.iter().enumerate() {
        if b == b'\n' && (i == 0 || m[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// Bytes as text, for assertions and their messages.
pub fn text(m: &[u8]) -> String {
    String::from_utf8_lossy(m).into_owned()
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &str) -> bool {
    find(hay, needle.as_bytes()).is_some()
}

/// SHA-256 fingerprint (lower-case hex) of the first certificate of a PEM text, as cachet
/// names certificates in headers, logs and `cachet certs`.
pub fn pem_fingerprint(pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    validate::inspect(&der).unwrap().fingerprint
}
