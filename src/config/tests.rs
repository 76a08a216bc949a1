//! Unit tests of the whole loader: defaults, problems named with file, line and key, per section.

use super::*;
use std::time::Duration;

fn parse(src: &str) -> Result<Config, Vec<ConfigError>> {
    Config::parse(Path::new("/nonexistent/cachet.toml"), src)
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse("[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://mx.example:587\"\n").unwrap();
    assert_eq!(c.server.listen, vec!["0.0.0.0:2525".parse().unwrap()]);
    assert_eq!(c.server.max_message_size, 50 << 20);
    assert_eq!(c.upstream.tls, UpstreamTls::Verify);
    assert_eq!(
        c.upstream.target,
        UpstreamTarget::Smtp {
            host: "mx.example".into(),
            port: 587,
            implicit_tls: false
        }
    );
    assert_eq!(c.spool.dir, Path::new("/var/spool/cachet"));
    assert_eq!(c.spool.retry.len(), 5);
}

#[test]
fn unknown_key_names_line_and_key() {
    let errs =
        parse("[server]\nlisten = []\nlissen = 3\n[upstream]\nurl = \"smtp://a\"\n").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, Some(3));
    assert!(
        errs[0].message.contains("unknown field `lissen`"),
        "{}",
        errs[0]
    );
}

#[test]
fn bad_size_is_reported_with_line() {
    let errs =
        parse("[server]\nmax_message_size = \"5 parsecs\"\n[upstream]\nurl = \"smtp://a\"\n")
            .unwrap_err();
    assert_eq!(errs[0].line, Some(2));
    assert!(errs[0].message.contains("invalid size unit"), "{}", errs[0]);
}

#[test]
fn every_semantic_problem_is_listed() {
    let src = "[server]\nlisten = [\"nope\"]\nrelay_networks = [\"10.0.0.0/33\"]\ntls_cert = \"missing.crt\"\n\
               [upstream]\nurl = \"ftp://x\"\ntls = \"maybe\"\n";
    let errs = parse(src).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let all = text.join("\n");
    assert!(all.contains("cachet.toml:2: server.listen"), "{all}");
    assert!(
        all.contains("cachet.toml:3: server.relay_networks"),
        "{all}"
    );
    assert!(
        all.contains("cachet.toml:4: server.tls_cert: file"),
        "{all}"
    );
    assert!(
        all.contains("server.tls_key: tls_cert is set but tls_key is not"),
        "{all}"
    );
    assert!(all.contains("cachet.toml:6: upstream.url"), "{all}");
    assert!(all.contains("cachet.toml:7: upstream.tls"), "{all}");
}

#[test]
fn directory_entries_are_checked_with_line_and_key() {
    let head = "[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://a\"\n";
    let with_trust = "[certificates]\ndir = \"/\"\ntrust = [\"/etc/hostname\"]\n";
    let ok = parse(&format!(
        "{head}{with_trust}[[directory]]\nurl = \"ldaps://ldap.example.org\"\nbase = \"dc=example,dc=org\"\n"
    ));
    let c = ok.unwrap_or_else(|e| panic!("{e:?}"));
    let d = &c.directories[0];
    assert_eq!(d.filter, "(mail={address})");
    assert_eq!(
        d.attributes,
        ["userSMIMECertificate;binary", "userCertificate;binary"]
    );
    assert_eq!(
        (d.cache_ttl, d.negative_ttl, d.timeout),
        (
            Duration::from_secs(3600),
            Duration::from_secs(600),
            Duration::from_secs(3)
        )
    );
    assert!(d.tls() && d.bind_dn.is_none());

    for (entry, expected) in [
        (
            "url = \"http://x\"\nbase = \"o=x\"",
            "directory #1: url: \"http://x\": the scheme must be ldap:// or ldaps://",
        ),
        (
            "url = \"ldap://x\"\nbase = \"o=x\"\nbind_dn = \"cn=a\"\npassword_file = \"/etc/hostname\"",
            "directory #1: starttls: a bind password would cross the network in clear",
        ),
        (
            "url = \"ldaps://x\"\nstarttls = true\nbase = \"o=x\"",
            "directory #1: starttls: ldaps:// is TLS from the start",
        ),
        (
            "url = \"ldaps://x\"\nbase = \"o=x\"\nbind_dn = \"cn=a\"",
            "directory #1: password_file: bind_dn needs password_file",
        ),
        (
            "url = \"ldaps://x\"\nbase = \"o=x\"\nfilter = \"(mail=bob)\"",
            "does not contain {address}",
        ),
        (
            "url = \"ldaps://x\"\nbase = \"o=x\"\nfilter = \"(mail={address}\"",
            "is not an LDAP filter",
        ),
        (
            "url = \"ldaps://x\"\nbase = \"o=x\"\ntimeout = \"2m\"",
            "directory #1: timeout: 120 seconds is out of range: must be from 1 to 60",
        ),
        (
            "url = \"ldaps://x\"\nbase = \"o=x\"\nattributes = []",
            "directory #1: attributes: name at least one attribute",
        ),
    ] {
        let errs = parse(&format!("{head}{with_trust}[[directory]]\n{entry}\n")).unwrap_err();
        let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            all.iter().any(|e| e.contains(expected)),
            "{expected:?} not in {all:?}"
        );
    }
    // Without trust anchors nothing from a directory could validate.
    let errs = parse(&format!(
        "{head}[[directory]]\nurl = \"ldaps://x\"\nbase = \"o=x\"\n"
    ))
    .unwrap_err();
    assert!(errs[0].to_string().contains("cachet.toml:5: directory #1: url: certificates from a directory are validated against certificates.trust"), "{errs:?}");
}

#[test]
fn pkcs11_keys_are_checked_with_line_and_key() {
    let src = "[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://a\"\n\
               [keys]\ndir = \"/\"\n[keys.pkcs11]\nmodule = \"/nonexistent/p11.so\"\ntoken = \" \"\n\
               pin_file = \"/nonexistent/pin\"\nsessions = 0\n";
    let errs = parse(src).unwrap_err();
    let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let all = all.join("\n");
    assert!(
        all.contains("cachet.toml:8: keys.pkcs11.module: file /nonexistent/p11.so does not exist"),
        "{all}"
    );
    assert!(
        all.contains("cachet.toml:9: keys.pkcs11.token: give the token's label"),
        "{all}"
    );
    assert!(
        all.contains("cachet.toml:10: keys.pkcs11.pin_file"),
        "{all}"
    );
    assert!(
        all.contains("keys.pkcs11.sessions: 0 sessions is out of range"),
        "{all}"
    );
    let errs = parse("[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://a\"\n[keys]\ndir = \"/\"\n[keys.pkcs11]\nmodule = \"x\"\n").unwrap_err();
    assert!(
        errs[0].message.contains("missing field `token`"),
        "{}",
        errs[0]
    );
}

#[test]
fn inbound_is_parsed_with_defaults_and_its_problems_named() {
    let head = "[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://relay.example:587\"\ntimeout = \"20s\"\nusername = \"u\"\npassword_file = \"/etc/hostname\"\n";
    let keys_and_trust =
        "[keys]\ndir = \"/\"\n[certificates]\ndir = \"/\"\ntrust = [\"/etc/hostname\"]\n";
    let c = parse(&format!(
        "{head}{keys_and_trust}[inbound]\nrelay_networks = [\"10.0.0.5\"]\nupstream = \"smtps://mailstore.internal\"\n\
         [[inbound.rule]]\nsenders = [\"*@Partner.Example\"]\nrequire = \"valid-signature\"\naction = \"hold\"\n"
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let i = c.inbound.expect("[inbound] parsed");
    assert_eq!(i.listen, vec!["0.0.0.0:2526".parse().unwrap()]);
    assert_eq!(i.relay_networks, vec!["10.0.0.5/32".parse().unwrap()]);
    assert_eq!(
        i.upstream.target,
        UpstreamTarget::Smtp {
            host: "mailstore.internal".into(),
            port: 465,
            implicit_tls: true
        }
    );
    assert_eq!(i.upstream.tls, UpstreamTls::Verify);
    // Timeout as [upstream]; the outbound provider's credentials never go inside.
    assert_eq!(i.upstream.timeout, Duration::from_secs(20));
    assert!(i.upstream.username.is_none() && i.upstream.password_file.is_none());
    assert!(i.decrypt && i.verify && i.harvest && !i.subject_tags);
    assert_eq!(i.on_undecryptable, OnUndecryptable::Deliver);
    assert_eq!(i.rules.len(), 1);
    assert_eq!(i.rules[0].senders[0].0, "*@partner.example");
    assert_eq!(
        (i.rules[0].require, i.rules[0].action),
        (InboundRequirement::ValidSignature, InboundAction::Hold)
    );
    assert!(parse(head).unwrap().inbound.is_none());

    // Without [keys] and trust anchors, the defaults cannot work: said, with the key.
    let errs = parse(&format!(
        "{head}[inbound]\nrelay_networks = [\"10.0.0.5\"]\nupstream = \"smtp://m\"\nharvest = true\nverify = false\n"
    ))
    .unwrap_err();
    let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let all = all.join("\n");
    assert!(
        all.contains("cachet.toml: inbound.decrypt: decrypting needs the organisation's keys"),
        "{all}"
    );
    assert!(
        all.contains("cachet.toml:11: inbound.harvest: only verified signers are learnt"),
        "{all}"
    );
    assert!(!all.contains("inbound.verify"), "{all}");
    // smtps:// with tls = "none", an overlapping listener, no relay_networks.
    let errs = parse(&format!(
        "{head}[inbound]\nlisten = [\"[::]:2525\"]\nupstream = \"smtps://m\"\ntls = \"none\"\ndecrypt = false\nverify = false\nharvest = false\n"
    ))
    .unwrap_err();
    let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let all = all.join("\n");
    assert!(
        all.contains(
            "cachet.toml:9: inbound.listen: [::]:2525 overlaps server.listen 0.0.0.0:2525"
        ),
        "{all}"
    );
    assert!(
        all.contains("cachet.toml:11: inbound.tls: smtps:// always uses TLS"),
        "{all}"
    );
    assert!(
        all.contains("inbound.relay_networks: list the MTAs"),
        "{all}"
    );
}

#[test]
fn upstream_urls() {
    let b = Path::new("/etc/cachet");
    assert_eq!(
        parse_upstream_url("smtps://[::1]:4650", b).unwrap(),
        UpstreamTarget::Smtp {
            host: "::1".into(),
            port: 4650,
            implicit_tls: true
        }
    );
    assert_eq!(
        parse_upstream_url("file://outbox", b).unwrap(),
        UpstreamTarget::File("/etc/cachet/outbox".into())
    );
    assert!(parse_upstream_url("smtp://:25", b).is_err());
}
