//! The certificate store on its database (issue 13, "Learn" and "Scale"): harvest rules, the
//! pending list and approval, the directory sync (add, change, delete, unchanged files not read
//! again), durability across reopening, and `cachet certs import|approve|list` from a second
//! process while the gateway runs, judged by `openssl cms -decrypt`.

mod common;
mod smime_common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use cachet::store::certdb::admin::Filter;
use cachet::store::{Capability, CertStore, Harvest, Harvested, TrustAnchors};
use common::*;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use smime_common::{Alg, Leaf, openssl_decrypt, read, trust};

const AES256_GCM: &str = "2.16.840.1.101.3.4.1.46";
const AES256_CBC: &str = "2.16.840.1.101.3.4.1.42";
const RSA_OAEP: &str = "1.2.840.113549.1.1.7";

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn caps(oids: &[&str]) -> Vec<Capability> {
    oids.iter()
        .map(|o| Capability {
            oid: const_oid::ObjectIdentifier::new(o).unwrap(),
            parameters: None,
        })
        .collect()
}

fn oids(c: &[Capability]) -> Vec<String> {
    c.iter().map(|c| c.oid.to_string()).collect()
}

/// A store at `dir/store.sqlite` syncing `dir/certs` (created empty when missing).
fn open(dir: &Path) -> CertStore {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (store, problems) = CertStore::open(
        &dir.join("store.sqlite"),
        Some(&certs),
        &trust(),
        SystemTime::now(),
    )
    .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    store
}

fn harvest(
    store: &CertStore,
    cert: &CertificateDer<'static>,
    from: &str,
    capabilities: &[Capability],
    signing_time: Option<SystemTime>,
    verified: bool,
    t: &TrustAnchors,
) -> Harvested {
    store
        .harvest(
            &Harvest {
                cert,
                chain: &[],
                capabilities,
                signing_time,
                from,
                verified,
                seen: SystemTime::now(),
            },
            t,
        )
        .unwrap()
}

#[test]
fn a_verified_signer_is_used_at_once_with_its_capabilities_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (pem, _) = Leaf::new("bob@partner.example", Alg::Rsa2048).issue();
    let cert = der(&pem);
    let now = SystemTime::now();
    assert!(store.lookup("bob@partner.example", now).cert.is_none());
    let got = harvest(
        &store,
        &cert,
        "Bob@Partner.Example",
        &caps(&[AES256_GCM, AES256_CBC, RSA_OAEP]),
        Some(now - Duration::from_secs(60)),
        true,
        &trust(),
    );
    assert_eq!(got, Harvested::Added);
    // The next lookup, no reload: the certificate and the sender's order of capabilities.
    let hit = store.lookup("bob@partner.example", now);
    let c = hit.cert.expect("harvested certificate used at once");
    assert_eq!(c.der, cert);
    assert_eq!(oids(&c.capabilities), [AES256_GCM, AES256_CBC, RSA_OAEP]);
    // A second view of the same file (another process's) sees it too, and so does one opened
    // after this one is gone: it was committed before harvest returned.
    let other = CertStore::attach(&dir.path().join("store.sqlite"), &trust()).unwrap();
    assert!(other.lookup("bob@partner.example", now).cert.is_some());
    drop(store);
    drop(other);
    let reopened = open(dir.path());
    let c = reopened.lookup("bob@partner.example", now).cert.unwrap();
    assert_eq!(oids(&c.capabilities), [AES256_GCM, AES256_CBC, RSA_OAEP]);
    // Seen again: last seen moves, nothing else.
    assert_eq!(
        harvest(
            &reopened,
            &cert,
            "bob@partner.example",
            &[],
            None,
            true,
            &trust()
        ),
        Harvested::Unchanged
    );
    let shown = reopened.show("bob@partner.example", now).unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].source, "harvested");
    assert_eq!(shown[0].trust, "anchored");
}

#[test]
fn a_newer_signing_time_replaces_capabilities_and_a_future_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let cert = der(&Leaf::new("carol@partner.example", Alg::EcP256).issue().0);
    let now = SystemTime::now();
    let h = |c: &[Capability], t: SystemTime| {
        harvest(
            &store,
            &cert,
            "carol@partner.example",
            c,
            Some(t),
            true,
            &trust(),
        )
    };
    let stored = || {
        oids(
            &store
                .lookup("carol@partner.example", now)
                .cert
                .unwrap()
                .capabilities,
        )
    };
    let hour = Duration::from_secs(3600);
    assert_eq!(h(&caps(&[AES256_CBC]), now - 2 * hour), Harvested::Added);
    // An older message (signed before the stored one) does not win.
    assert_eq!(
        h(&caps(&[AES256_GCM]), now - 3 * hour),
        Harvested::Unchanged
    );
    assert_eq!(stored(), [AES256_CBC]);
    // A newer one replaces them.
    assert_eq!(
        h(&caps(&[AES256_GCM, AES256_CBC]), now - hour),
        Harvested::Updated
    );
    assert_eq!(stored(), [AES256_GCM, AES256_CBC]);
    // More than a day in the future: not believed, the capabilities stay.
    assert_eq!(
        h(&caps(&[RSA_OAEP]), now + Duration::from_secs(2 * 86400)),
        Harvested::Unchanged
    );
    assert_eq!(stored(), [AES256_GCM, AES256_CBC]);
    // A first harvest with a future signingTime stores the certificate without capabilities.
    let dave = der(&Leaf::new("dave@partner.example", Alg::EcP256).issue().0);
    assert_eq!(
        harvest(
            &store,
            &dave,
            "dave@partner.example",
            &caps(&[AES256_GCM]),
            Some(now + Duration::from_secs(3 * 86400)),
            true,
            &trust()
        ),
        Harvested::Added
    );
    let d = store.lookup("dave@partner.example", now).cert.unwrap();
    assert!(d.capabilities.is_empty(), "{:?}", d.capabilities);
}

#[test]
fn an_unanchored_signer_is_pending_until_approved_and_can_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut leaf = Leaf::new("erin@elsewhere.example", Alg::EcP256);
    leaf.untrusted = true;
    let cert = der(&leaf.issue().0);
    let now = SystemTime::now();
    // The caller claims it verified: harvest checks the chain itself and keeps it pending.
    assert_eq!(
        harvest(
            &store,
            &cert,
            "erin@elsewhere.example",
            &caps(&[AES256_CBC]),
            Some(now),
            true,
            &trust()
        ),
        Harvested::Pending
    );
    let hit = store.lookup("erin@elsewhere.example", now);
    assert!(hit.cert.is_none(), "a pending certificate is never used");
    assert!(
        hit.rejected[0].1.contains("pending") && hit.rejected[0].1.contains("cachet certs approve"),
        "{:?}",
        hit.rejected
    );
    let mut pending = Vec::new();
    store
        .entries(
            &Filter {
                address: None,
                pending: true,
            },
            now,
            &mut |a, e| pending.push((a.to_string(), e)),
        )
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].0, "erin@elsewhere.example");
    assert!(
        pending[0].1.trust.starts_with("pending: "),
        "{:?}",
        pending[0].1
    );
    let fp = pending[0].1.fingerprint.clone();

    // Approved by a unique prefix of its fingerprint: used from the next lookup, with the
    // capabilities it came with.
    assert_eq!(store.approve(&fp[..12]).unwrap(), fp);
    let c = store.lookup("erin@elsewhere.example", now).cert.unwrap();
    assert_eq!(oids(&c.capabilities), [AES256_CBC]);
    // Approval vouches for the certificate, not for its validity period.
    assert!(
        store
            .lookup(
                "erin@elsewhere.example",
                now + Duration::from_secs(400 * 86400)
            )
            .cert
            .is_none()
    );
    assert_eq!(store.show(&fp, now).unwrap()[0].trust, "approved");

    // Removed: gone for every lookup and listing.
    assert_eq!(store.remove(&fp).unwrap(), fp);
    assert!(store.lookup("erin@elsewhere.example", now).cert.is_none());
    assert!(
        store
            .lookup("erin@elsewhere.example", now)
            .rejected
            .is_empty()
    );
    assert!(store.remove(&fp).unwrap_err().contains("no certificate"));
}

#[test]
fn harvest_refuses_what_it_must_not_learn() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let now = SystemTime::now();
    let frank = der(&Leaf::new("frank@partner.example", Alg::Rsa2048).issue().0);
    // The signature matched another From: address.
    assert!(matches!(
        harvest(&store, &frank, "ceo@example.org", &[], Some(now), true, &trust()),
        Harvested::Refused(r) if r.contains("does not name ceo@example.org")
    ));
    // A signing-only certificate cannot be encrypted to.
    let mut l = Leaf::new("gina@partner.example", Alg::Rsa2048);
    l.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let gina = der(&l.issue().0);
    assert!(matches!(
        harvest(&store, &gina, "gina@partner.example", &[], Some(now), true, &trust()),
        Harvested::Refused(r) if r.contains("keyEncipherment")
    ));
    assert!(store.lookup("ceo@example.org", now).rejected.is_empty());
    assert!(
        store
            .lookup("gina@partner.example", now)
            .rejected
            .is_empty()
    );
}

/// Set a file's mtime (after rewriting it, to pretend it did not change).
fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn the_directory_is_synced_added_changed_and_deleted_files_and_unchanged_ones_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let now = SystemTime::now();
    let (alice, _) = Leaf::new("alice@x.example", Alg::EcP256).issue();
    let (bob, _) = Leaf::new("bob@x.example", Alg::EcP256).issue();
    let (carol, _) = Leaf::new("carol@x.example", Alg::EcP256).issue();
    std::fs::write(certs.join("a.pem"), &alice).unwrap();
    let store = open(dir.path());
    assert!(store.lookup("alice@x.example", now).cert.is_some());
    drop(store);

    // Added.
    std::fs::write(certs.join("b.pem"), &bob).unwrap();
    let store = open(dir.path());
    assert!(store.lookup("bob@x.example", now).cert.is_some());
    assert_eq!(
        store.show("bob@x.example", now).unwrap()[0].files,
        ["b.pem"]
    );
    drop(store);

    // Unchanged by size and mtime: not read again. Garbage of the same length with the old
    // mtime stays unnoticed, which shows the file was not parsed.
    let a = certs.join("a.pem");
    let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
    std::fs::write(&a, "x".repeat(alice.len())).unwrap();
    set_mtime(&a, mtime);
    let store = open(dir.path());
    assert!(store.lookup("alice@x.example", now).cert.is_some());
    drop(store);

    // Changed: a.pem now holds carol's certificate; alice's is gone with it.
    std::fs::write(&a, &carol).unwrap();
    set_mtime(&a, mtime + Duration::from_secs(5));
    let store = open(dir.path());
    assert!(store.lookup("carol@x.example", now).cert.is_some());
    let gone = store.lookup("alice@x.example", now);
    assert!(gone.cert.is_none() && gone.rejected.is_empty(), "{gone:?}");
    drop(store);

    // Deleted: bob's certificate leaves with its file...
    std::fs::remove_file(certs.join("b.pem")).unwrap();
    // ... unless something else holds it too: an import keeps it.
    let store = open(dir.path());
    let gone = store.lookup("bob@x.example", now);
    assert!(gone.cert.is_none() && gone.rejected.is_empty(), "{gone:?}");
    store.import(&der(&carol), now).unwrap();
    assert!(
        store
            .remove(&store.show("carol@x.example", now).unwrap()[0].fingerprint)
            .unwrap_err()
            .contains("a.pem")
    );
    drop(store);
    std::fs::remove_file(&a).unwrap();
    let store = open(dir.path());
    let kept = store.show("carol@x.example", now).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].source, "imported");
    assert!(store.lookup("carol@x.example", now).cert.is_some());
}

#[test]
fn problems_of_unchanged_files_are_still_reported_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let mut l = Leaf::new("untrusted@x.example", Alg::EcP256);
    l.untrusted = true;
    std::fs::write(certs.join("u.pem"), l.issue().0).unwrap();
    std::fs::write(certs.join("junk.pem"), "not a certificate").unwrap();
    for round in 0..2 {
        let (_, problems) = CertStore::open(
            &dir.path().join("store.sqlite"),
            Some(&certs),
            &trust(),
            SystemTime::now(),
        )
        .unwrap();
        let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(all.len(), 2, "round {round}: {all:#?}");
        assert!(
            all.iter()
                .any(|p| p.contains("u.pem") && p.contains("does not chain to a trusted root")),
            "round {round}: {all:#?}"
        );
        assert!(
            all.iter().any(|p| p.contains("junk.pem")),
            "round {round}: {all:#?}"
        );
    }
}

// ---- the running gateway and a second process -------------------------------------------

const WAIT: Duration = Duration::from_secs(30);
const CANARY: &str = "CANARY-certstore-7a21";

fn message(to: &str) -> Vec<u8> {
    format!(
        "From: carol@example.org\r\nTo: {to}\r\nSubject: store\r\nMessage-ID: <{}@example.org>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{CANARY}\r\n",
        to.replace('@', ".")
    )
    .into_bytes()
}

async fn send(gw: &Gateway, to: &str) {
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    let r = c
        .send_message("carol@example.org", &[to], &message(to))
        .await
        .unwrap();
    assert_eq!(r.0, 250, "{r:?}\n{}", gw.logs());
}

#[tokio::test]
async fn import_and_approve_from_a_second_process_encrypt_the_next_message() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(
        GatewayConfig::new()
            .upstream(&up)
            .raw("[certificates]\ndir = \"recipients\"\ntrust = [\"trust/ca.pem\"]\n")
            .file("trust/ca.pem", read("ca.rsa.crt"))
            .file("recipients/README", ""),
    )
    .await;
    let scratch = tempfile::tempdir().unwrap();
    let (bob_cert, bob_key) = Leaf::new("bob@partner.example", Alg::Rsa2048).issue();
    let bob_crt = smime_common::write(scratch.path(), "bob.crt", &bob_cert);
    let bob_pk = smime_common::write(scratch.path(), "bob.key", &bob_key);

    // No certificate yet: opportunistic encryption sends it in clear.
    send(&gw, "bob@partner.example").await;
    let got = up.wait_for(1, WAIT).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains(CANARY));

    // Imported by another process while the gateway runs: the next message is encrypted.
    let (ok, out) = gw.cli(&["certs", "import", bob_crt.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("imported;") && out.contains("anchored"),
        "{out}"
    );
    send(&gw, "bob@partner.example").await;
    let got = up.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2, "{}", gw.logs());
    assert!(!String::from_utf8_lossy(&got[1].data).contains(CANARY));
    let plain = openssl_decrypt(&got[1].data, &bob_crt, &bob_pk);
    assert!(String::from_utf8_lossy(&plain).contains(CANARY));

    // A certificate without a path to the trust anchor: imported but not used...
    let mut l = Leaf::new("dan@elsewhere.example", Alg::EcP256);
    l.untrusted = true;
    let (dan_cert, dan_key) = l.issue();
    let dan_crt = smime_common::write(scratch.path(), "dan.crt", &dan_cert);
    let dan_pk = smime_common::write(scratch.path(), "dan.key", &dan_key);
    let (ok, out) = gw.cli(&["certs", "import", dan_crt.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("does not chain"), "{out}");
    send(&gw, "dan@elsewhere.example").await;
    let got = up.wait_for(3, WAIT).await;
    assert!(String::from_utf8_lossy(&got[2].data).contains(CANARY));
    // ... until the operator approves it.
    let fp = cachet::store::validate::inspect(&der(&dan_cert))
        .unwrap()
        .fingerprint;
    let (ok, out) = gw.cli(&["certs", "approve", &fp]);
    assert!(ok, "{out}");
    send(&gw, "dan@elsewhere.example").await;
    let got = up.wait_for(4, WAIT).await;
    assert_eq!(got.len(), 4, "{}", gw.logs());
    let plain = openssl_decrypt(&got[3].data, &dan_crt, &dan_pk);
    assert!(String::from_utf8_lossy(&plain).contains(CANARY));

    // The list shows both, with source and trust.
    let (ok, out) = gw.cli(&["certs", "list"]);
    assert!(ok, "{out}");
    let line = |addr: &str| {
        out.lines()
            .find(|l| l.starts_with(addr))
            .unwrap_or_else(|| panic!("{addr} not in {out}"))
            .to_string()
    };
    assert!(
        line("bob@partner.example\t").contains("\timported\tanchored\t"),
        "{out}"
    );
    assert!(
        line("dan@elsewhere.example\t").contains("\timported\tapproved\t"),
        "{out}"
    );
    // Removed from the CLI: the next message goes in clear again.
    let (ok, out) = gw.cli(&["certs", "remove", &fp]);
    assert!(ok, "{out}");
    send(&gw, "dan@elsewhere.example").await;
    let got = up.wait_for(5, WAIT).await;
    assert!(String::from_utf8_lossy(&got[4].data).contains(CANARY));
}

#[test]
fn the_intermediates_a_message_carried_are_kept_with_the_harvested_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (int_cert, int_key) = smime_common::intermediate_ca();
    let mut leaf = Leaf::new("ivy@partner.example", Alg::EcP256);
    leaf.intermediate = Some((int_cert.clone(), int_key));
    let cert = der(&leaf.issue().0);
    let chain = [der(&int_cert)];
    let now = SystemTime::now();
    let got = store
        .harvest(
            &Harvest {
                cert: &cert,
                chain: &chain,
                capabilities: &caps(&[AES256_GCM]),
                signing_time: Some(now),
                from: "ivy@partner.example",
                verified: true,
                seen: now,
            },
            &trust(),
        )
        .unwrap();
    // The directory holds no intermediate: the path exists only through what the message
    // carried, and later lookups (here from a reopened store) still build it.
    assert_eq!(got, Harvested::Added);
    drop(store);
    let store = open(dir.path());
    let c = store
        .lookup("ivy@partner.example", now)
        .cert
        .expect("chained by the kept intermediate");
    assert_eq!(oids(&c.capabilities), [AES256_GCM]);
    assert_eq!(store.show("ivy@partner.example", now).unwrap()[0].chain, 1);
    // Without the chain the same certificate would have been pending.
    let other = tempfile::tempdir().unwrap();
    let bare = open(other.path());
    assert_eq!(
        harvest(
            &bare,
            &cert,
            "ivy@partner.example",
            &[],
            Some(now),
            true,
            &trust()
        ),
        Harvested::Pending
    );
}
