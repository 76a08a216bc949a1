//! The signed attributes a cachet signature carries, judged by OpenSSL: ESS
//! signingCertificateV2 naming the signer certificate (RFC 5035), and SMIMECapabilities that
//! list what the running gateway's policy configures, in its order of preference, with explicit
//! RFC 4055 SHA-256 parameters for RSAES-OAEP and RSASSA-PSS (RFC 8551 §2.5.2).

mod common;
mod smime_common;

use cachet::smime::{self, SignOptions};
use common::*;
use smime_common::{openssl_print, openssl_verify, read, split_signed};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Alice can sign; nobody has an encryption certificate, so every copy is signed only.
fn signing_gateway(policy: &str) -> GatewayConfig {
    GatewayConfig::new()
        .raw("[keys]\ndir = \"keys\"\n[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n")
        .raw(policy)
        .file(
            "keys/alice@smime.example.pem",
            format!("{}{}", read("alice.sign.key"), read("alice.sign.crt")),
        )
        .file("recipients/bob.crt", read("bob.encrypt.crt"))
        .file("trust/ca.pem", read("ca.rsa.crt"))
}

const MESSAGE: &[u8] = b"From: Alice <alice@smime.example>\r\nTo: carol@partner.example\r\nSubject: caps\r\nMessage-ID: <caps@smime.example>\r\n\r\nhello\r\n";

/// Sends one message through a gateway with `policy` and returns the relayed signed copy.
async fn relayed_signature(policy: &str) -> Vec<u8> {
    let gw = Gateway::start(signing_gateway(policy)).await;
    gw.send_ok("alice@smime.example", &["carol@partner.example"], MESSAGE)
        .await;
    // The file:// upstream writes `<id>-0.eml` (and its `.eml.env` envelope beside it).
    let deadline = std::time::Instant::now() + WAIT;
    let data = loop {
        let eml = gw
            .outbox_messages()
            .into_iter()
            .find(|(p, _)| p.extension().is_some_and(|e| e == "eml"));
        if let Some((_, data)) = eml {
            break data;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing relayed\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        String::from_utf8_lossy(&data).contains("multipart/signed"),
        "{}",
        gw.logs()
    );
    data
}

/// The lines `openssl cms -print` shows for the SMIMECapabilities attribute value.
fn capabilities_section(printed: &str) -> String {
    let start = printed
        .find("S/MIME Capabilities")
        .unwrap_or_else(|| panic!("no SMIMECapabilities in:\n{printed}"));
    let rest = &printed[start..];
    // It ends where the next attribute ("object:") or, for the last one, the signature
    // algorithm starts.
    let end = ["object: ", "signatureAlgorithm:"]
        .iter()
        .filter_map(|n| rest.find(n))
        .min()
        .unwrap_or(rest.len());
    rest[..end].to_string()
}

/// Offsets of each needle in `hay`, asserting each is present.
fn positions(hay: &str, needles: &[&str]) -> Vec<usize> {
    needles
        .iter()
        .map(|n| {
            hay.find(n)
                .unwrap_or_else(|| panic!("{n} missing in:\n{hay}"))
        })
        .collect()
}

#[tokio::test]
async fn capabilities_list_the_policy_ciphers_cbc_first_when_the_default_is_cbc() {
    let signed = relayed_signature(
        "[policy]\nencrypt = \"opportunistic\"\nencryption = \"aes256-cbc\"\n\
         [[rule]]\nname = \"partners\"\nto = [\"*@partner.example\"]\nencryption = \"aes128-gcm\"\n",
    )
    .await;
    openssl_verify(&signed, None);
    let caps = capabilities_section(&openssl_print(&signed));
    let p = positions(&caps, &["aes-256-cbc", "aes-128-gcm", "rsaEncryption"]);
    assert!(p[0] < p[1] && p[1] < p[2], "order:\n{caps}");
    for absent in [
        "aes-256-gcm",
        "aes-128-cbc",
        "aes-192-cbc",
        "rsaesOaep",
        "rsassaPss",
    ] {
        assert!(
            !caps.contains(absent),
            "{absent} is not in the policy:\n{caps}"
        );
    }
}

#[tokio::test]
async fn capabilities_follow_a_gcm_default_and_carry_explicit_sha256_parameters() {
    let signed = relayed_signature(
        "[policy]\nencrypt = \"opportunistic\"\nencryption = \"aes256-gcm\"\n\
         key_transport = \"rsa-oaep\"\nrsa_signature = \"pss\"\n\
         [[rule]]\nname = \"legacy\"\nto = [\"*@old.example\"]\nencryption = \"aes256-cbc\"\n\
         key_transport = \"rsa-pkcs1\"\n\
         [[rule]]\nname = \"partners\"\nto = [\"*@partner.example\"]\nencryption = \"aes128-gcm\"\n",
    )
    .await;
    openssl_verify(&signed, None);
    let printed = openssl_print(&signed);
    let caps = capabilities_section(&printed);
    // GCM default first, then the other GCM cipher, then CBC; OAEP (the default) before
    // PKCS#1 v1.5; the PSS signature scheme the policy uses.
    let p = positions(
        &caps,
        &[
            "aes-256-gcm",
            "aes-128-gcm",
            "aes-256-cbc",
            "rsaesOaep",
            "rsaEncryption",
            "rsassaPss",
        ],
    );
    assert!(p.windows(2).all(|w| w[0] < w[1]), "order:\n{caps}");
    // The parameters travel in the signature: compare them byte for byte with the RFC 4055
    // encodings OpenSSL writes (see src/smime/algs.rs tests for where they come from).
    let (_, p7s) = split_signed(&signed);
    let hex = hex(&p7s);
    assert!(
        hex.contains(OAEP_SHA256_CAPABILITY),
        "RSAES-OAEP without explicit SHA-256 parameters:\n{caps}"
    );
    assert!(
        hex.contains(PSS_SHA256_CAPABILITY),
        "RSASSA-PSS without explicit SHA-256 parameters:\n{caps}"
    );
    assert!(
        !hex.contains("06092a864886f70d0101073000"),
        "OAEP with empty (SHA-1 default) parameters"
    );
    assert!(
        !hex.contains("06092a864886f70d01010a3000"),
        "PSS with empty (SHA-1 default) parameters"
    );
}

/// id-RSAES-OAEP, RSAES-OAEP-params { sha256 NULL, mgf1 { sha256 NULL } }.
const OAEP_SHA256_CAPABILITY: &str = "303c06092a864886f70d010107302fa00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500";
/// id-RSASSA-PSS, RSASSA-PSS-params { sha256 NULL, mgf1 { sha256 NULL }, salt 32 }, as
/// `openssl req -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 -sha256` writes it.
const PSS_SHA256_CAPABILITY: &str = "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn signature_carries_signing_certificate_v2_for_the_signer_certificate() {
    let alice = smime_common::alice();
    for opts in [
        SignOptions::default(),
        SignOptions {
            form: smime::SignForm::Opaque,
            ..Default::default()
        },
    ] {
        let signed = smime::sign(&smime_common::sample_message(), &alice, &opts).unwrap();
        // OpenSSL checks an ESS signing-certificate attribute against the signer certificate
        // when it verifies (ossl_cms_check_signing_certs): a wrong hash or issuerSerial fails.
        openssl_verify(&signed, None);
        let printed = openssl_print(&signed);
        assert!(
            printed.contains("id-smime-aa-signingCertificateV2"),
            "missing in:\n{printed}"
        );
    }

    // The value: one ESSCertIDv2 whose certHash is the SHA-256 of Alice's signing
    // certificate, with the default hash algorithm left out, and her issuer and serial.
    let signed = smime::sign(
        &smime_common::sample_message(),
        &alice,
        &SignOptions::default(),
    )
    .unwrap();
    let (_, p7s) = split_signed(&signed);
    use der::{Decode, Encode};
    let cert = alice.certificate().to_vec();
    let parsed = x509_cert::Certificate::from_der(&cert).unwrap();
    let issuer = parsed.tbs_certificate().issuer().to_der().unwrap();
    let serial = parsed.tbs_certificate().serial_number().to_der().unwrap();
    let cert_hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert);
    // SigningCertificateV2 ::= SEQUENCE { certs SEQUENCE OF ESSCertIDv2 }
    // ESSCertIDv2 ::= SEQUENCE { [hashAlgorithm DEFAULT sha256: absent] certHash OCTET STRING,
    //   issuerSerial SEQUENCE { issuer GeneralNames (SEQUENCE { [4] Name }), serialNumber } }
    let mut issuer_serial = tlv(0x30, &tlv(0xa4, &issuer));
    issuer_serial.extend(serial);
    let mut cert_id = tlv(0x04, cert_hash.as_ref());
    cert_id.extend(tlv(0x30, &issuer_serial));
    let value = tlv(0x30, &tlv(0x30, &tlv(0x30, &cert_id)));
    // Attribute ::= SEQUENCE { id-aa-signingCertificateV2, SET { value } }
    let mut attr = b"\x06\x0b\x2a\x86\x48\x86\xf7\x0d\x01\x09\x10\x02\x2f".to_vec();
    attr.extend(tlv(0x31, &value));
    assert!(
        hex(&p7s).contains(&hex(&tlv(0x30, &attr))),
        "signingCertificateV2 for Alice's certificate not found"
    );
}

/// DER tag-length-value (definite lengths up to 65535).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let n = content.len();
    let mut out = vec![tag];
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend([0x81, n as u8]);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}
