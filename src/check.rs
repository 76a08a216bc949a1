//! What `cachet check` prints after "ok" and the certificate-expiry gauges of `/metrics`:
//! reports over the loaded [`Runtime`], beside the pipeline rather than in it.

use crate::config::{Config, OnUndecryptable, UpstreamTls};
use crate::policy::{Digest, Mode, Revocation};
use crate::runtime::{Runtime, Stores};
use crate::store::revocation::Status;
use std::time::{Duration, SystemTime};

/// Lines `cachet check` prints after "ok": what was loaded, then warnings (unusable files,
/// certificates and keys expiring within 30 days).
pub fn check_summary(rt: &Runtime) -> Vec<String> {
    let s = &rt.stores;
    let mut out = vec![format!(
        "policy {} with {} rule(s); upstream {}; {} signing key(s), {} recipient certificate(s), {} trust anchor(s)",
        rt.config.policy.version,
        rt.config.policy.rules.len(),
        rt.config.upstream.url,
        s.keys.iter().count(),
        s.certs.address_count(),
        s.trust.len()
    )];
    out.extend(inbound_summary(rt));
    out.extend(s.warnings.iter().map(|w| format!("warning: {w}")));
    out.extend(submitter_warnings(&rt.config));
    for d in rt.config.directories.iter().filter(|d| !d.tls()) {
        out.push(format!(
            "warning: [[directory]] {}: plain LDAP without StartTLS: anyone on the path can hide a recipient's certificate (forged ones still fail validation); set starttls = true or use ldaps://",
            d.url
        ));
    }
    // Policy settings a key cannot honour.
    if rt.config.policy.digest == Digest::Sha512 {
        for id in s
            .keys
            .iter()
            .filter(|id| id.key == crate::store::KeyKind::EcP256)
        {
            out.push(format!("warning: policy.digest = \"sha512\" but the signing key for {} is EC P-256: it signs with SHA-256", id.email));
        }
    }
    if rt.config.policy.rsa_pss {
        for id in s
            .keys
            .iter()
            .filter(|id| id.key == crate::store::KeyKind::EcP256)
        {
            out.push(format!("warning: policy.rsa_signature = \"pss\" does not apply to the EC P-256 key for {} (ECDSA)", id.email));
        }
    }
    out.extend(revocation_advice(&rt.config.policy));
    out.extend(revocation_warnings(rt));
    let soon = SystemTime::now() + Duration::from_secs(30 * 86400);
    for id in s.keys.iter().filter(|id| id.not_after < soon) {
        out.push(format!(
            "warning: signing key {} ({}) expires within 30 days ({})",
            id.email,
            id.fingerprint,
            crate::date::rfc5322(id.not_after)
        ));
    }
    // A decryption key about to expire matters when no newer one for the address outlives it
    // (partners stop encrypting to an expired certificate).
    let decryption = s.keys.decryption_keys();
    for id in decryption.iter().filter(|id| {
        id.not_after < soon
            && !decryption
                .iter()
                .any(|o| o.email == id.email && o.not_after >= soon)
    }) {
        out.push(format!(
            "warning: decryption key {} ({}) expires within 30 days ({})",
            id.email,
            id.fingerprint,
            crate::date::rfc5322(id.not_after)
        ));
    }
    let expiring = s
        .certs
        .expiring_addresses(SystemTime::now(), soon, EXPIRY_LINES + 1);
    for addr in expiring.iter().take(EXPIRY_LINES) {
        if let Some(c) = s.certs.lookup(addr, SystemTime::now()).cert
            && c.not_after < soon
        {
            out.push(format!(
                "warning: certificate for {addr} ({}) expires within 30 days ({})",
                c.fingerprint,
                crate::date::rfc5322(c.not_after)
            ));
        }
    }
    if expiring.len() > EXPIRY_LINES {
        out.push(format!(
            "warning: more recipient certificates expire within 30 days than the {EXPIRY_LINES} shown"
        ));
    }
    out
}

/// The inbound route, when `[inbound]` is configured: where it listens and for whom, where
/// the mail goes, and what is done to it. Every key of `[keys]` is tried on mail encrypted to
/// its certificate (a signing key too, when a partner encrypted to it), so all are counted.
fn inbound_summary(rt: &Runtime) -> Vec<String> {
    let Some(inb) = &rt.config.inbound else {
        return Vec::new();
    };
    let list = |v: Vec<String>| v.join(", ");
    let on = |b: bool| if b { "on" } else { "off" };
    let on_undecryptable = match inb.on_undecryptable {
        OnUndecryptable::Deliver => "deliver",
        OnUndecryptable::Hold => "hold",
        OnUndecryptable::Reject => "reject",
    };
    let tls = match inb.upstream.tls {
        UpstreamTls::Verify => "verify",
        UpstreamTls::Insecure => "insecure",
        UpstreamTls::None => "none",
    };
    vec![format!(
        "inbound: listening on {} for {}; mail for {} to {} (tls {tls}); decrypt {} ({} key(s)), verify {}, harvest {}, on_undecryptable {on_undecryptable}, {} rule(s)",
        list(inb.listen.iter().map(|a| a.to_string()).collect()),
        list(inb.relay_networks.iter().map(|n| n.to_string()).collect()),
        list(rt.config.server.local_domains.clone()),
        inb.upstream.url,
        on(inb.decrypt),
        rt.stores.keys.all().len(),
        on(inb.verify),
        on(inb.harvest),
        inb.rules.len(),
    )]
}

/// Recipient certificates named one by one in `check` and in the expiry gauges.
const EXPIRY_LINES: usize = 1000;

/// `cachet check` warnings about who may submit: public ranges in `relay_networks` that no
/// `[[submitter]]` entry narrows (every tenant of a shared platform could send as you).
pub fn submitter_warnings(config: &Config) -> Vec<String> {
    let subs = &config.submitters;
    let mut out = Vec::new();
    for net in &subs.relay_networks {
        if is_private(net) {
            continue;
        }
        let narrowed = subs.entries.iter().any(|e| {
            e.networks
                .iter()
                .any(|n| n.contains(net) || net.contains(n))
        });
        if !narrowed {
            out.push(format!(
                "warning: {}: server.relay_networks: {net} is a public range and no [[submitter]] entry restricts it: every host there (on a shared platform, every tenant) may send as any address in server.local_domains; authenticate the platform with a [[submitter]] entry (tls_client + require_header) instead, see docs/deployment.md",
                config.path.display()
            ));
        }
    }
    out
}

/// Loopback, RFC 1918, link-local, CGNAT, ULA: ranges only the organisation's own hosts use.
fn is_private(net: &ipnet::IpNet) -> bool {
    use std::net::IpAddr;
    let private: [&str; 9] = [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ];
    let inside = |n: &ipnet::IpNet| {
        private
            .iter()
            .filter_map(|p| p.parse::<ipnet::IpNet>().ok())
            .any(|p| p.contains(n))
    };
    match net.addr() {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            let v4 = v6.to_ipv4_mapped().unwrap();
            let len = net.prefix_len().saturating_sub(96);
            ipnet::Ipv4Net::new(v4, len).is_ok_and(|n| inside(&ipnet::IpNet::V4(n)))
        }
        _ => inside(net),
    }
}

/// Prometheus gauges for certificate expiry (one per signing key, decryption key and recipient
/// certificate).
pub fn expiry_gauges(stores: &Stores) -> String {
    use std::fmt::Write;
    let mut s = String::from(
        "# HELP cachet_certificate_expiry_seconds Unix time when a certificate in use expires.\n# TYPE cachet_certificate_expiry_seconds gauge\n",
    );
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    };
    for id in stores.keys.iter() {
        let _ = writeln!(
            s,
            "cachet_certificate_expiry_seconds{{kind=\"signing\",address=\"{}\",fingerprint=\"{}\"}} {}",
            id.email,
            id.fingerprint,
            secs(id.not_after)
        );
    }
    for id in stores.keys.decryption_keys() {
        let _ = writeln!(
            s,
            "cachet_certificate_expiry_seconds{{kind=\"decryption\",address=\"{}\",fingerprint=\"{}\"}} {}",
            id.email,
            id.fingerprint,
            secs(id.not_after)
        );
    }
    // Every recipient certificate in use while the store is small; beyond EXPIRY_LINES
    // addresses only those expiring within 60 days (a store of a million would otherwise be a
    // million lines per scrape).
    let now = SystemTime::now();
    let addrs = if stores.certs.address_count_up_to(EXPIRY_LINES + 1) <= EXPIRY_LINES {
        stores.certs.addresses()
    } else {
        let soon = now + Duration::from_secs(60 * 86400);
        stores.certs.expiring_addresses(now, soon, EXPIRY_LINES)
    };
    for addr in addrs {
        let addr = addr.as_str();
        if let Some(c) = stores.certs.lookup(addr, now).cert {
            let _ = writeln!(
                s,
                "cachet_certificate_expiry_seconds{{kind=\"recipient\",address=\"{addr}\",fingerprint=\"{}\"}} {}",
                c.fingerprint,
                secs(c.not_after)
            );
        }
    }
    s
}

/// `cachet check` advice: where encryption is required, an unknown revocation status should
/// not let a possibly revoked certificate through (`revocation = "hard"`).
pub fn revocation_advice(policy: &crate::policy::Policy) -> Vec<String> {
    let mut out = Vec::new();
    let d = policy.defaults;
    if d.encrypt == Mode::Required && d.revocation != Revocation::Hard {
        out.push("suggestion: [policy] encrypt = \"required\": consider revocation = \"hard\" so a certificate whose revocation status is unknown is not used".to_string());
    }
    for r in &policy.rules {
        let encrypt = r.set.encrypt.unwrap_or(d.encrypt);
        let revocation = r.set.revocation.unwrap_or(d.revocation);
        if encrypt == Mode::Required && revocation != Revocation::Hard {
            out.push(format!("suggestion: rule {:?} has encrypt = \"required\": consider revocation = \"hard\" so a certificate whose revocation status is unknown is not used", r.name));
        }
    }
    out
}

/// `cachet check` warnings about recipient certificates whose revocation status is known now
/// (from `crl_dir`) to be revoked, or can never be known (no CRL distribution point, no OCSP
/// responder, no CRL in `crl_dir`) while some rule says `revocation = "hard"`.
pub fn revocation_warnings(rt: &Runtime) -> Vec<String> {
    let p = &rt.config.policy;
    if !p.revocation_in_use() {
        return Vec::new();
    }
    let hard = p.defaults.revocation == Revocation::Hard
        || p.rules
            .iter()
            .any(|r| r.set.revocation == Some(Revocation::Hard));
    let s = &rt.stores;
    let now = SystemTime::now();
    let mut out = Vec::new();
    // The certificates the refresher starts with (the most recently seen), not all of a
    // large store.
    let mut addrs: Vec<String> = Vec::new();
    for der in s
        .certs
        .recent_certificates(crate::runtime::REVOCATION_PRELOAD)
    {
        if let Ok(info) = crate::store::validate::inspect(&der) {
            addrs.extend(info.emails);
        }
    }
    addrs.sort();
    addrs.dedup();
    for addr in addrs.iter().map(String::as_str) {
        let seen = std::cell::RefCell::new(Vec::new());
        s.certs.lookup_with(addr, now, &|der, chain| {
            let fp = crate::store::hex(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref(),
            );
            seen.borrow_mut()
                .push((fp, s.revocation.status(der, chain, &s.trust, now)));
            Ok(())
        });
        for (fp, status) in seen.into_inner() {
            match status {
                Status::Revoked(source) => out.push(format!(
                    "warning: certificate for {addr} ({fp}) is revoked ({}); it is never used",
                    source.name()
                )),
                Status::Unknown {
                    reason,
                    pending: false,
                } if hard => out.push(format!(
                    "warning: certificate for {addr} ({fp}): its revocation status cannot be known ({reason}); rules with revocation = \"hard\" will not use it"
                )),
                _ => {}
            }
        }
    }
    out
}
