//! `cargo bench --bench smime`: messages per second for sign, encrypt and sign+encrypt, 10 KB and
//! 100 KB messages, 1 and 3 recipients, beside the `openssl cms` CLI on the same input in the
//! same run. The openssl column includes process start-up (that is what a CLI-based gateway
//! pays); the cachet column is in-process. Then issue 12's target rows (sign+encrypt beside the
//! bare RSA-2048 signature of the same key, interleaved) and the PKCS#11 token row.
//!
//! Without `--bench` (e.g. `cargo test --benches`) every row runs once as a smoke test.
//!
//! Modes (arguments after `--`): `target` only issue 12's rows (~10 s); `pieces` what a 10 KB
//! sign+encrypt is made of, each piece alone in microseconds; `profile` / `profile10` a 10 s
//! loop of 100 KB / 10 KB sign+encrypt for `perf record` (docs/performance.md).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cachet::smime::{self, EncryptOptions, SignOptions};
use cachet::store::TrustAnchors;
use cachet::store::certs::RecipientCert;
use cachet::store::keys::SigningIdentity;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The allocator the `cachet` binary runs the S/MIME stage under (src/main.rs): glibc malloc
/// would hand each 100 KB buffer back to the kernel and page-fault it in again per message.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rfc9216() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/interop/rfc9216"
    ))
}

fn read(name: &str) -> String {
    std::fs::read_to_string(rfc9216().join(name)).unwrap()
}

fn recipient(pem: &str) -> Arc<RecipientCert> {
    Arc::new(
        RecipientCert::from_der(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap(),
    )
}

/// A third RSA-2048 recipient issued by the RFC 9216 CA.
fn third_recipient() -> String {
    let ca_key = rcgen::KeyPair::from_pem(&read("ca.rsa.key")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.rsa.crt"), ca_key).unwrap();
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::Rfc822Name(
        "carol@smime.example".try_into().unwrap(),
    )];
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::EmailProtection];
    p.signed_by(&key, &issuer).unwrap().pem()
}

/// A 7-bit text message of about `size` bytes (the same file is fed to openssl).
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: alice@smime.example\r\nTo: bob@smime.example\r\nSubject: bench\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n".to_vec();
    let line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}

/// Run `f` for about `budget` (at least once); return operations per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u32;
    while n == 0 || start.elapsed() < budget {
        f();
        n += 1;
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

/// Nanoseconds this thread has run on a CPU (Linux `/proc/thread-self/schedstat`, first
/// field), or `None` where that file does not exist.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Like [`rate`], but per second of this thread's CPU time ("per second on one core"), so
/// other processes on a shared machine do not count against it; wall time where the kernel
/// does not say.
fn cpu_rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    let Some(cpu0) = thread_cpu_ns() else {
        return rate(budget, f);
    };
    let start = Instant::now();
    let mut n = 0u32;
    while n == 0 || start.elapsed() < budget {
        f();
        n += 1;
    }
    let cpu = thread_cpu_ns().unwrap_or(cpu0).saturating_sub(cpu0).max(1);
    f64::from(n) * 1e9 / cpu as f64
}

/// Median of `xs` (not empty).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Issue 12's first target, measured in one run: the bare RSA-2048 signature (aws-lc-rs, the
/// same key, no CMS around it) beside sign+encrypt of a 10 KB and a 100 KB message to one
/// recipient, exactly as the pipeline calls them (`sign_message`, then `encrypt_signed` of its
/// output). The three are measured in interleaved rounds and each reported as the median of
/// its rounds, so a burst of background load hits all three alike; rates are per second of the
/// thread's own CPU time (one core), so the other processes of a shared machine do not count.
fn target_rows(
    alice: &SigningIdentity,
    one: &[Arc<RecipientCert>],
    budget: Duration,
    rounds: usize,
) {
    use aws_lc_rs::rsa::KeyPair;
    use aws_lc_rs::signature::RSA_PKCS1_SHA256;
    let pem = read("alice.sign.key");
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let key = KeyPair::from_pkcs8(der.secret_der()).unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let attrs = [7u8; 200];
    let mut sig = vec![0u8; key.public_modulus_len()];
    let small = message(10 * 1024);
    let large = message(100 * 1024);
    let seal = |msg: &[u8]| {
        let s = smime::sign_message(msg, alice, &SignOptions::default()).unwrap();
        std::hint::black_box(smime::encrypt_signed(s, one, &EncryptOptions::default()).unwrap());
    };
    let (mut bare, mut s10, mut s100) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        bare.push(cpu_rate(budget, || {
            key.sign(&RSA_PKCS1_SHA256, &rng, &attrs, &mut sig).unwrap();
            std::hint::black_box(&sig);
        }));
        s10.push(cpu_rate(budget, || seal(&small)));
        s100.push(cpu_rate(budget, || seal(&large)));
    }
    let (bare, s10, s100) = (median(bare), median(s10), median(s100));
    println!();
    println!(
        "Issue 12 target, same run ({rounds} interleaved rounds of {} ms each, medians, per second of \
         the bench thread's CPU time; sign+encrypt = smime::sign_message then encrypt_signed, RSA-2048, \
         SHA-256, AES-256-CBC, 1 recipient):",
        budget.as_millis()
    );
    println!();
    println!(
        "| measure                                          | per second | against the target |"
    );
    println!(
        "|--------------------------------------------------|------------|--------------------|"
    );
    println!(
        "| bare RSA-2048 signature (aws-lc-rs, same key)    | {bare:>10.0} |                    |"
    );
    println!(
        "| sign+encrypt 10 KB x1                            | {s10:>10.0} | {:>5.1}% of bare (>= 90%) |",
        100.0 * s10 / bare
    );
    println!(
        "| sign+encrypt 100 KB x1                           | {s100:>10.0} | {:>5.0} MB/s (>= 2,000/s) |",
        s100 * large.len() as f64 / 1e6
    );
}

/// The pieces of a 10 KB sign+encrypt, each alone: microseconds per call (CPU time).
fn pieces(alice: &SigningIdentity, one: &[Arc<RecipientCert>]) {
    use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
    let budget = Duration::from_millis(500);
    let us = |r: f64| 1e6 / r;
    let msg = message(10 * 1024);
    let signed = smime::sign_message(&msg, alice, &SignOptions::default()).unwrap();
    let spki = &one[0].spki_der;
    let parsed =
        Pkcs1PublicEncryptingKey::new(PublicEncryptingKey::from_der(spki).unwrap()).unwrap();
    let mut ct = vec![0u8; 256];
    let key =
        aws_lc_rs::cipher::UnboundCipherKey::new(&aws_lc_rs::cipher::AES_256, &[1u8; 32]).unwrap();
    let key = aws_lc_rs::cipher::EncryptingKey::cbc(key).unwrap();
    let mut buf = vec![0u8; signed.message().len() / 16 * 16 + 16];
    let signer = {
        let pem = read("alice.sign.key");
        let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        aws_lc_rs::rsa::KeyPair::from_pkcs8(der.secret_der()).unwrap()
    };
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut sig = vec![0u8; 256];
    let rows: Vec<(&str, f64)> = vec![
        (
            "bare RSA-2048 signature",
            cpu_rate(budget, || {
                let alg = &aws_lc_rs::signature::RSA_PKCS1_SHA256;
                signer.sign(alg, &rng, &[7u8; 200], &mut sig).unwrap();
            }),
        ),
        (
            "smime::sign 10 KB",
            cpu_rate(budget, || {
                std::hint::black_box(smime::sign(&msg, alice, &SignOptions::default()).unwrap());
            }),
        ),
        (
            "smime::encrypt_signed (signed 10 KB)",
            cpu_rate(budget, || {
                std::hint::black_box(
                    smime::encrypt_signed(signed.clone(), one, &EncryptOptions::default()).unwrap(),
                );
            }),
        ),
        (
            "sha-256 of 10 KB",
            cpu_rate(budget, || {
                std::hint::black_box(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &msg));
            }),
        ),
        (
            "aes-256-cbc of the signed message",
            cpu_rate(budget, || {
                key.encrypt(&mut buf).unwrap();
            }),
        ),
        (
            "rsa public key: parse + encrypt",
            cpu_rate(budget, || {
                let k = Pkcs1PublicEncryptingKey::new(PublicEncryptingKey::from_der(spki).unwrap())
                    .unwrap();
                k.encrypt(&[3u8; 32], &mut ct).unwrap();
            }),
        ),
        ("base64 lines of 100 KB", {
            let big = message(100 * 1024);
            let mut out = Vec::new();
            cpu_rate(budget, || {
                out.clear();
                smime::base64_lines_into(&big, &mut out);
                std::hint::black_box(&out);
            })
        }),
        (
            "rsa public key: encrypt only",
            cpu_rate(budget, || {
                parsed.encrypt(&[3u8; 32], &mut ct).unwrap();
            }),
        ),
    ];
    for (what, r) in rows {
        println!("| {what:<40} | {:>8.1} us |", us(r));
    }
}

fn sh(script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .expect("sh");
    assert!(st.success(), "{script}");
}

/// Where Debian installs the SoftHSM2 module.
fn softhsm_module() -> Option<PathBuf> {
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Signatures per second (RSA-2048 PKCS#1 v1.5 over SHA-256 of 200 bytes): in-process beside the
/// same key on a SoftHSM2 token, through the key store's token path (`[keys.pkcs11]`).
fn token_rows(alice: &SigningIdentity, trust: &TrustAnchors, budget: Duration) {
    use cachet::store::keys::{KeySources, KeyStore, SignatureScheme};
    use cachet::store::pkcs11::{Token, TokenConfig};
    println!();
    println!("| signatures/s (RSA-2048, PKCS#1 v1.5) | per second |");
    println!("|--------------------------------------|------------|");
    let data = [7u8; 200];
    let local = rate(budget, || {
        std::hint::black_box(alice.sign(SignatureScheme::RsaPkcs1Sha256, &data).unwrap());
    });
    println!("| in-process (aws-lc-rs)               | {local:>10.0} |");
    let Some(module) = softhsm_module() else {
        println!(
            "| SoftHSM2 token                       | skipped: SoftHSM2 is not installed (apt-get install softhsm2) |"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\n", tokens.display()),
    )
    .unwrap();
    // SAFETY: single-threaded at this point; SoftHSM reads it at C_Initialize.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    let key = dir.join("alice.key");
    std::fs::write(&key, read("alice.sign.key")).unwrap();
    sh(&format!(
        "softhsm2-util --init-token --free --label bench --so-pin 12345678 --pin 5678 >/dev/null && \
         softhsm2-util --import {} --token bench --label alice --id 01 --pin 5678 >/dev/null",
        key.display()
    ));
    let keys = dir.join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(keys.join("alice@smime.example.pem"), read("alice.sign.crt")).unwrap();
    sh(&format!("chmod 600 {}/*", keys.display()));
    let token = Token::open(&TokenConfig {
        module,
        label: "bench".into(),
        pin: zeroize::Zeroizing::new("5678".into()),
        sessions: 4,
    })
    .unwrap();
    let sources = KeySources {
        dir: keys,
        token: Some(token),
        token_expected: true,
        ..Default::default()
    };
    let (store, problems) = KeyStore::load_with(&sources, trust, SystemTime::now());
    assert!(problems.is_empty(), "{problems:?}");
    let on_token = store.get("alice@smime.example").unwrap();
    let hsm = rate(budget, || {
        std::hint::black_box(
            on_token
                .sign(SignatureScheme::RsaPkcs1Sha256, &data)
                .unwrap(),
        );
    });
    println!("| SoftHSM2 token (PKCS#11)             | {hsm:>10.0} |");
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // `cargo bench --bench smime -- target`: only issue 12's target rows (a quick re-measure).
    let only_target = std::env::args().any(|a| a == "target");
    let (ours, theirs) = if full {
        (Duration::from_secs(1), Duration::from_millis(1500))
    } else {
        (Duration::ZERO, Duration::ZERO)
    };
    let (trust, problems) = TrustAnchors::load(&[rfc9216().join("ca.rsa.crt")]);
    assert!(problems.is_empty());
    let pem = format!("{}{}", read("alice.sign.key"), read("alice.sign.crt"));
    let alice = SigningIdentity::from_pem(
        "alice@smime.example",
        pem.as_bytes(),
        &trust,
        SystemTime::now(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let carol = third_recipient();
    std::fs::write(dir.join("carol.crt"), &carol).unwrap();
    let one = vec![recipient(&read("bob.encrypt.crt"))];
    let three = vec![
        one[0].clone(),
        recipient(&read("alice.encrypt.crt")),
        recipient(&carol),
    ];
    let r = |n: &str| rfc9216().join(n).display().to_string();
    let certs1 = r("bob.encrypt.crt");
    let certs3 = format!(
        "{} {} {}",
        certs1,
        r("alice.encrypt.crt"),
        dir.join("carol.crt").display()
    );
    let signer = format!(
        "-signer {} -inkey {}",
        r("alice.sign.crt"),
        r("alice.sign.key")
    );

    let (budget, rounds) = if full {
        (Duration::from_millis(400), 7)
    } else {
        (Duration::ZERO, 1)
    };
    // `cargo bench --bench smime -- profile` (100 KB) or `-- profile10` (10 KB): sign+encrypt
    // for 10 s and nothing else, for `perf record`.
    let profile = std::env::args().find_map(|a| match a.as_str() {
        "profile" => Some(100 * 1024),
        "profile10" => Some(10 * 1024),
        _ => None,
    });
    if let Some(size) = profile {
        let msg = message(size);
        rate(Duration::from_secs(10), || {
            let s = smime::sign_message(&msg, &alice, &SignOptions::default()).unwrap();
            std::hint::black_box(
                smime::encrypt_signed(s, &one, &EncryptOptions::default()).unwrap(),
            );
        });
        return;
    }
    // `cargo bench --bench smime -- pieces`: what one 10 KB sign+encrypt is made of, each
    // piece alone (per CPU-second), to see where the time beyond the signature goes.
    if std::env::args().any(|a| a == "pieces") {
        pieces(&alice, &one);
        return;
    }
    if only_target {
        target_rows(&alice, &one, budget, rounds);
        return;
    }
    println!(
        "S/MIME throughput, messages/s (RSA-2048; SHA-256; AES-256-CBC; PKCS#1 v1.5 key transport)"
    );
    println!("openssl = `openssl cms` CLI per message, process start included");
    println!();
    println!("| operation      | size    | rcpts | cachet msg/s | openssl cms msg/s |  ratio |");
    println!("|----------------|---------|-------|--------------|-------------------|--------|");
    for size in [10 * 1024, 100 * 1024] {
        let msg = message(size);
        let input = dir.join(format!("in-{size}.eml"));
        std::fs::write(&input, &msg).unwrap();
        let input = input.display().to_string();
        let rows: Vec<(&str, usize)> = vec![
            ("sign", 0),
            ("encrypt", 1),
            ("encrypt", 3),
            ("sign+encrypt", 1),
            ("sign+encrypt", 3),
        ];
        for (op, n) in rows {
            let rcpts = if n == 3 { &three } else { &one };
            let certs = if n == 3 { &certs3 } else { &certs1 };
            let ours_rate = rate(ours, || {
                let out = match op {
                    "sign" => smime::sign(&msg, &alice, &SignOptions::default()),
                    "encrypt" => smime::encrypt(&msg, rcpts, &EncryptOptions::default()),
                    _ => smime::sign(&msg, &alice, &SignOptions::default())
                        .and_then(|s| smime::encrypt(&s, rcpts, &EncryptOptions::default())),
                };
                std::hint::black_box(out.unwrap());
            });
            let script = match op {
                "sign" => format!("openssl cms -sign {signer} -in {input} -out /dev/null"),
                "encrypt" => {
                    format!("openssl cms -encrypt -aes256 -in {input} -out /dev/null {certs}")
                }
                _ => format!(
                    "openssl cms -sign {signer} -in {input} | openssl cms -encrypt -aes256 -out /dev/null {certs}"
                ),
            };
            let theirs_rate = rate(theirs, || sh(&script));
            println!(
                "| {op:<14} | {:>4} KB | {:>5} | {ours_rate:>12.0} | {theirs_rate:>17.0} | {:>5.1}x |",
                size / 1024,
                if n == 0 {
                    "-".to_string()
                } else {
                    n.to_string()
                },
                ours_rate / theirs_rate
            );
        }
    }
    target_rows(&alice, &one, budget, rounds);
    token_rows(&alice, &trust, ours);
    if !full {
        println!(
            "\n(smoke run: pass --bench, as `cargo bench --bench smime` does, for real numbers)"
        );
    }
}
