//! The key and certificate stores seen through the running gateway: addresses match whatever
//! their case (issue 9 §2) and a subject-DN emailAddress never binds an address (issue 9 §5).
//! OpenSSL judges the bytes the upstream received.

mod common;
mod smime_common;

use common::*;
use smime_common::{Alg, Leaf, openssl_decrypt, openssl_verify, read};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const CANARY: &str = "CANARY-case-4e1d";

/// A gateway trusting the RFC 9216 CA, with `keys/` and `recipients/` filled by the caller.
fn config(up: &Upstream) -> GatewayConfig {
    GatewayConfig::new()
        .upstream(up)
        .raw("[keys]\ndir = \"keys\"\n[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n")
        .file("trust/ca.pem", read("ca.rsa.crt"))
        // Both directories must exist; the stores skip files of other types.
        .file("keys/README", "")
        .file("recipients/README", "")
}

fn message(from: &str, to: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: case\r\nMessage-ID: <case@example.org>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{CANARY}\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn rcpt_in_mixed_case_is_encrypted_to_the_lowercase_certificate() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let (bob_cert, bob_key) = Leaf::new("bob@partner.example", Alg::Rsa2048).issue();
    let gw = Gateway::start(
        config(&up)
            .file("recipients/bob.pem", bob_cert.clone())
            .raw("[[rule]]\nname = \"partners\"\nto = [\"*@partner.example\"]\nencrypt = \"required\"\n"),
    )
    .await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(c.cmd("MAIL FROM:<carol@example.org>").await.unwrap().0, 250);
    // Was: 550 5.7.1 no valid S/MIME certificate for Bob@Partner.Example.
    let r = c.cmd("RCPT TO:<Bob@Partner.Example>").await.unwrap();
    assert_eq!(r.0, 250, "{r:?}\n{}", gw.logs());
    assert_eq!(c.cmd("DATA").await.unwrap().0, 354);
    let mut body = message("carol@example.org", "Bob <Bob@Partner.Example>");
    body.extend_from_slice(b".\r\n");
    c.send_raw(&body).await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 250);

    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    // Relayed as received: the store's lower-case key never leaks into the envelope.
    assert_eq!(got[0].rcpt_to, ["Bob@Partner.Example"]);
    assert!(!String::from_utf8_lossy(&got[0].data).contains(CANARY));
    let dir = tempfile::tempdir().unwrap();
    let cert = smime_common::write(dir.path(), "bob.crt", &bob_cert);
    let key = smime_common::write(dir.path(), "bob.key", &bob_key);
    let plain = openssl_decrypt(&got[0].data, &cert, &key);
    assert!(String::from_utf8_lossy(&plain).contains(CANARY));
}

#[tokio::test]
async fn key_file_named_in_mixed_case_signs_for_the_lowercase_from() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let (cert, key) = Leaf::new("alice@example.org", Alg::EcP256).issue();
    let gw = Gateway::start(
        config(&up)
            .file("keys/Alice@example.org.pem", format!("{key}{cert}"))
            .raw("[policy]\nsign = \"required\"\n"),
    )
    .await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let r = c
        .send_message(
            "alice@example.org",
            &["dave@plain.example"],
            &message("alice@example.org", "dave@plain.example"),
        )
        .await
        .unwrap();
    assert_eq!(r.0, 250, "{r:?}\n{}", gw.logs());
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("multipart/signed"), "{text}\n{}", gw.logs());
    let content = openssl_verify(&got[0].data, None);
    assert!(String::from_utf8_lossy(&content).contains(CANARY));
}

/// A sub-CA under the RFC 9216 root that may only issue for `partner.example` (RFC 5280
/// §4.2.1.10 rfc822Name constraint): (certificate PEM, key PEM).
fn partner_only_sub_ca() -> (String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, GeneralSubtree, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, NameConstraints,
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "Partner Sub-CA (partner.example only)");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::Rfc822Name("partner.example".into())],
        excluded_subtrees: vec![],
    });
    p.use_authority_key_identifier_extension = true;
    let root_key = KeyPair::from_pem(&read("ca.rsa.key")).unwrap();
    let root = Issuer::from_ca_cert_pem(&read("ca.rsa.crt"), root_key).unwrap();
    (p.signed_by(&key, &root).unwrap().pem(), key.serialize_pem())
}

/// A certificate with no subjectAltName and `E=<email>` in the subject, from `ca`, fit to sign
/// and to encrypt to (EC P-256): (certificate PEM, key PEM).
fn san_less_leaf(ca: &(String, String), email: &str) -> (String, String) {
    use rcgen::{
        CertificateParams, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "The CEO");
    // id-emailAddress (PKCS #9), the legacy place for an address (RFC 8550 §3).
    p.distinguished_name.push(
        DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
        DnValue::Ia5String(email.try_into().unwrap()),
    );
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyAgreement,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_ca_cert_pem(&ca.0, KeyPair::from_pem(&ca.1).unwrap()).unwrap();
    (
        p.signed_by(&key, &issuer).unwrap().pem(),
        key.serialize_pem(),
    )
}

#[tokio::test]
async fn subject_email_address_never_binds_an_address_outside_a_name_constrained_ca() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let sub_ca = partner_only_sub_ca();
    // The sub-CA may issue for partner.example only, yet names ceo@example.org in the subject
    // DN of a SAN-less certificate. webpki applies rfc822Name constraints to SANs only, so the
    // path validates: the store alone decides whether the address is bound.
    let (cert, key) = san_less_leaf(&sub_ca, "ceo@example.org");
    let gw = Gateway::start(
        config(&up)
            .file("recipients/partner-sub-ca.pem", sub_ca.0.clone())
            .file("recipients/ceo.pem", cert.clone())
            .file(
                "keys/ceo@example.org.pem",
                format!("{key}{cert}{}", sub_ca.0),
            )
            .raw("[[rule]]\nname = \"ceo\"\nto = [\"ceo@example.org\"]\nencrypt = \"required\"\n"),
    )
    .await;

    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(c.cmd("MAIL FROM:<carol@example.org>").await.unwrap().0, 250);
    assert_eq!(
        c.cmd("RCPT TO:<ceo@example.org>").await.unwrap(),
        (
            550,
            "550 5.7.1 no valid S/MIME certificate for ceo@example.org".to_string()
        ),
        "{}",
        gw.logs()
    );

    // `cachet check` names both files and the reason; nothing is filed under the address.
    let (ok, out) = gw.cli(&["check"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("0 signing key(s), 0 recipient certificate(s)"),
        "{out}"
    );
    for file in ["recipients/ceo.pem", "keys/ceo@example.org.pem"] {
        assert!(
            out.lines()
                .any(|l| l.contains(file) && l.contains("no rfc822Name in subjectAltName")),
            "{file}: {out}"
        );
    }
}

/// A certificate names an internationalised domain by its A-label (rfc822Name is IA5String); an
/// SMTPUTF8 envelope names it by its U-label. One domain: required encryption is met.
#[tokio::test]
async fn a_u_label_recipient_is_encrypted_to_the_a_label_certificate() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let (cert, key) = Leaf::new("bob@xn--bcher-kva.example", Alg::Rsa2048).issue();
    let gw =
        Gateway::start(config(&up).file("recipients/bob.pem", cert.clone()).raw(
            "[[rule]]\nname = \"books\"\nto = [\"*@bücher.example\"]\nencrypt = \"required\"\n",
        ))
        .await;
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(
        c.cmd("MAIL FROM:<carol@example.org> SMTPUTF8")
            .await
            .unwrap()
            .0,
        250
    );
    // Was: 550 5.7.1 no valid S/MIME certificate for bob@bücher.example.
    let r = c.cmd("RCPT TO:<bob@bücher.example>").await.unwrap();
    assert_eq!(r.0, 250, "{r:?}\n{}", gw.logs());
    assert_eq!(c.cmd("DATA").await.unwrap().0, 354);
    let mut body = message("carol@example.org", "bob@bücher.example");
    body.extend_from_slice(b".\r\n");
    c.send_raw(&body).await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 250);
    let got = up.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", gw.logs());
    assert_eq!(
        got[0].rcpt_to,
        ["bob@bücher.example"],
        "relayed as received"
    );
    let dir = tempfile::tempdir().unwrap();
    let c_path = smime_common::write(dir.path(), "bob.crt", &cert);
    let k_path = smime_common::write(dir.path(), "bob.key", &key);
    let plain = openssl_decrypt(&got[0].data, &c_path, &k_path);
    assert!(String::from_utf8_lossy(&plain).contains(CANARY));
}
