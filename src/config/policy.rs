//! `[policy]` and `[[rule]]` -> [`Policy`]: every value checked, each problem reported with line
//! and rule name (unknown values, bad globs, a rule that can never match after a catch-all).
//! Defaults come from the parameter table ([`super::params`]). The policy module itself holds
//! only the loaded types and the pure decision, so it needs nothing from `config`.

use super::problems::Problems;
use super::raw::{RawPolicy, RawRule};
use crate::policy::{
    Cipher, Digest, KeyTransport, Mode, OnMissing, Overrides, Policy, Revocation, Rule,
    SignatureForm, Treatment,
};
use crate::store::normalize_glob;
use toml::Spanned;
use wildmatch::WildMatch;

fn parse_enum<T: Copy>(
    v: &Spanned<String>,
    key: &str,
    options: &[(&str, T)],
    p: &mut Problems,
) -> Option<T> {
    let found = options
        .iter()
        .find(|(name, _)| *name == v.get_ref().as_str())
        .map(|(_, t)| *t);
    if found.is_none() {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        p.at(
            v.span(),
            key,
            format!("{:?} is not one of {}", v.get_ref(), names.join(", ")),
        );
    }
    found
}

const MODES: &[(&str, Mode)] = &[
    ("never", Mode::Never),
    ("opportunistic", Mode::Opportunistic),
    ("required", Mode::Required),
];
const CIPHERS: &[(&str, Cipher)] = &[
    ("aes256-cbc", Cipher::Aes256Cbc),
    ("aes128-gcm", Cipher::Aes128Gcm),
    ("aes256-gcm", Cipher::Aes256Gcm),
];
const TRANSPORTS: &[(&str, KeyTransport)] = &[
    ("rsa-pkcs1", KeyTransport::RsaPkcs1),
    ("rsa-oaep", KeyTransport::RsaOaep),
];
const MISSING: &[(&str, OnMissing)] = &[
    ("reject", OnMissing::Reject),
    ("hold", OnMissing::Hold),
    ("bounce", OnMissing::Bounce),
];

const REVOCATION: &[(&str, Revocation)] = &[
    ("off", Revocation::Off),
    ("soft", Revocation::Soft),
    ("hard", Revocation::Hard),
];

const SIGNATURE_FORMS: &[(&str, SignatureForm)] = &[
    ("detached", SignatureForm::Detached),
    ("opaque", SignatureForm::Opaque),
];
const DIGESTS: &[(&str, Digest)] = &[("sha256", Digest::Sha256), ("sha512", Digest::Sha512)];
const RSA_SIGNATURES: &[(&str, bool)] = &[("pkcs1", false), ("pss", true)];

/// The parameter table's default for `key`, as one of `options`.
fn default_of<T: Copy>(key: &str, options: &[(&str, T)]) -> T {
    let name: String = super::params::default(key);
    options
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("{key}: default {name:?} is not an option"))
}

fn pick<T: Copy>(
    v: &Option<Spanned<String>>,
    key: &str,
    options: &[(&str, T)],
    p: &mut Problems,
) -> Option<T> {
    v.as_ref().and_then(|v| parse_enum(v, key, options, p))
}

fn globs(
    list: &Option<Vec<Spanned<String>>>,
    key: &str,
    p: &mut Problems,
) -> Vec<(String, WildMatch)> {
    let mut out = Vec::new();
    for v in list.iter().flatten() {
        let g = normalize_glob(v.get_ref());
        if g.is_empty() || g.contains(char::is_whitespace) || g.matches('@').count() > 1 {
            p.at(
                v.span(),
                key,
                format!(
                    "{:?} is not an address glob such as \"*@example.org\"",
                    v.get_ref()
                ),
            );
            continue;
        }
        out.push((g.clone(), WildMatch::new(&g)));
    }
    out
}

/// Validates `[policy]` and `[[rule]]`, reporting each problem with line and rule name.
pub fn build(raw: &RawPolicy, rules: &[Spanned<RawRule>], p: &mut Problems) -> Policy {
    let defaults = Treatment {
        sign: pick(&raw.sign, "policy.sign", MODES, p)
            .unwrap_or_else(|| default_of("policy.sign", MODES)),
        encrypt: pick(&raw.encrypt, "policy.encrypt", MODES, p)
            .unwrap_or_else(|| default_of("policy.encrypt", MODES)),
        encryption: pick(&raw.encryption, "policy.encryption", CIPHERS, p)
            .unwrap_or_else(|| default_of("policy.encryption", CIPHERS)),
        key_transport: pick(&raw.key_transport, "policy.key_transport", TRANSPORTS, p)
            .unwrap_or_else(|| default_of("policy.key_transport", TRANSPORTS)),
        on_missing_key: pick(&raw.on_missing_key, "policy.on_missing_key", MISSING, p)
            .unwrap_or_else(|| default_of("policy.on_missing_key", MISSING)),
        revocation: pick(&raw.revocation, "policy.revocation", REVOCATION, p)
            .unwrap_or_else(|| default_of("policy.revocation", REVOCATION)),
    };
    let signature_form = raw
        .signature
        .as_ref()
        .and_then(|v| parse_enum(v, "policy.signature", SIGNATURE_FORMS, p))
        .unwrap_or_else(|| default_of("policy.signature", SIGNATURE_FORMS));
    let digest = raw
        .digest
        .as_ref()
        .and_then(|v| parse_enum(v, "policy.digest", DIGESTS, p))
        .unwrap_or_else(|| default_of("policy.digest", DIGESTS));
    let rsa_pss = raw
        .rsa_signature
        .as_ref()
        .and_then(|v| parse_enum(v, "policy.rsa_signature", RSA_SIGNATURES, p))
        .unwrap_or_else(|| default_of("policy.rsa_signature", RSA_SIGNATURES));

    let mut out: Vec<Rule> = Vec::new();
    for spanned in rules {
        let r = spanned.get_ref();
        let key = |field: &str| format!("rule {:?}: {field}", r.name);
        let rule = Rule {
            name: r.name.clone(),
            from: globs(&r.from, &key("from"), p),
            to: globs(&r.to, &key("to"), p),
            set: Overrides {
                sign: pick(&r.sign, &key("sign"), MODES, p),
                encrypt: pick(&r.encrypt, &key("encrypt"), MODES, p),
                encryption: pick(&r.encryption, &key("encryption"), CIPHERS, p),
                key_transport: pick(&r.key_transport, &key("key_transport"), TRANSPORTS, p),
                on_missing_key: pick(&r.on_missing_key, &key("on_missing_key"), MISSING, p),
                revocation: pick(&r.revocation, &key("revocation"), REVOCATION, p),
            },
        };
        if r.name.trim().is_empty() {
            p.at(spanned.span(), "rule.name", "every rule needs a name");
        }
        if out.iter().any(|o| o.name == rule.name) {
            p.at(spanned.span(), &key("name"), "two rules have this name");
        }
        if let Some(catch_all) = out.iter().find(|o| o.is_catch_all()) {
            p.at(
                spanned.span(),
                &key("from"),
                format!(
                    "can never match: the earlier rule {:?} matches every sender and recipient",
                    catch_all.name
                ),
            );
        }
        out.push(rule);
    }

    let encryption_allowed = allowed_ciphers(raw, &defaults, &out, p);

    let version = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{defaults:?}{signature_form:?}{digest:?}{rsa_pss}{encryption_allowed:?}")
            .hash(&mut h);
        for r in &out {
            format!(
                "{}{:?}{:?}{:?}",
                r.name,
                r.from.iter().map(|g| &g.0).collect::<Vec<_>>(),
                r.to.iter().map(|g| &g.0).collect::<Vec<_>>(),
                r.set
            )
            .hash(&mut h);
        }
        format!("{:016x}", h.finish())
    };
    Policy {
        defaults,
        rules: out,
        signature_form,
        digest,
        rsa_pss,
        encryption_allowed,
        encrypt_to_self: raw
            .encrypt_to_self
            .unwrap_or_else(|| super::params::default("policy.encrypt_to_self")),
        subject_tag: raw.subject_tag.clone().filter(|s| !s.is_empty()),
        encrypt_header: raw.encrypt_header.clone().filter(|s| !s.is_empty()),
        version,
    }
}

/// `policy.encryption_allowed`: known names, no repeats, not empty, and containing every cipher
/// `[policy]` and the rules name as their choice (a cipher chosen when capabilities do not decide
/// must not be one the operator disallowed).
fn allowed_ciphers(
    raw: &RawPolicy,
    defaults: &Treatment,
    rules: &[Rule],
    p: &mut Problems,
) -> Vec<Cipher> {
    const KEY: &str = "policy.encryption_allowed";
    let Some(list) = &raw.encryption_allowed else {
        let names: Vec<String> = super::params::default(KEY);
        return names
            .iter()
            .filter_map(|n| CIPHERS.iter().find(|(c, _)| c == n).map(|(_, c)| *c))
            .collect();
    };
    let span = list.span();
    let mut out = Vec::new();
    for v in list.get_ref() {
        if let Some(c) = parse_enum(v, KEY, CIPHERS, p) {
            if out.contains(&c) {
                p.at(v.span(), KEY, format!("{:?} is listed twice", v.get_ref()));
            } else {
                out.push(c);
            }
        }
    }
    if out.is_empty() {
        p.at(span, KEY, "must name at least one cipher");
        return out;
    }
    let name = |c: Cipher| CIPHERS.iter().find(|(_, x)| *x == c).map_or("", |(n, _)| n);
    if !out.contains(&defaults.encryption) {
        p.at(
            span.clone(),
            KEY,
            format!(
                "does not contain policy.encryption {:?}: the default must be allowed",
                name(defaults.encryption)
            ),
        );
    }
    for r in rules {
        if let Some(c) = r.set.encryption
            && !out.contains(&c)
        {
            p.at(
                span.clone(),
                KEY,
                format!(
                    "does not contain {:?}, the encryption of rule {:?}",
                    name(c),
                    r.name
                ),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use crate::policy::{Cipher, Mode};
    use std::path::Path;

    fn load(policy: &str) -> Result<Config, Vec<ConfigError>> {
        let src = format!(
            "[server]\nlocal_domains = [\"example.org\"]\n[upstream]\nurl = \"smtp://a\"\n{policy}"
        );
        Config::parse(Path::new("/x/cachet.toml"), &src)
    }

    const PARTNERS: &str = r#"
[policy]
encrypt = "opportunistic"
[[rule]]
name = "partners"
from = ["*@example.org"]
to = ["*@partner.example", "ceo@other.example"]
encrypt = "required"
encryption = "aes256-gcm"
[[rule]]
name = "tickets"
from = ["tickets@example.org"]
sign = "never"
"#;

    #[test]
    fn encryption_allowed_is_checked_with_its_line() {
        let c = load("[policy]\nencryption_allowed = [\"aes256-cbc\", \"aes128-gcm\"]\n").unwrap();
        assert_eq!(
            c.policy.encryption_allowed,
            [Cipher::Aes256Cbc, Cipher::Aes128Gcm]
        );
        let all = load("").unwrap().policy.encryption_allowed;
        assert_eq!(
            all,
            [Cipher::Aes256Gcm, Cipher::Aes128Gcm, Cipher::Aes256Cbc]
        );
        for (policy, says) in [
            ("[policy]\nencryption_allowed = []\n", "at least one"),
            (
                "[policy]\nencryption_allowed = [\"3des\"]\n",
                "\"3des\" is not one of",
            ),
            (
                "[policy]\nencryption_allowed = [\"aes256-cbc\", \"aes256-cbc\"]\n",
                "twice",
            ),
            (
                "[policy]\nencryption_allowed = [\"aes256-gcm\"]\n",
                "policy.encryption \"aes256-cbc\"",
            ),
            (
                "[policy]\nencryption_allowed = [\"aes256-cbc\"]\n[[rule]]\nname = \"p\"\nencryption = \"aes128-gcm\"\n",
                "rule \"p\"",
            ),
        ] {
            let errs = load(policy).unwrap_err();
            let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            assert!(
                text.iter()
                    .any(|t| t.contains(":6: policy.encryption_allowed") && t.contains(says)),
                "{policy}: {text:?}"
            );
        }
    }

    #[test]
    fn first_matching_rule_wins_and_unset_fields_fall_back() {
        let c = load(PARTNERS).unwrap();
        type Row<'a> = (&'a str, &'a str, Option<&'a str>, Mode, Mode, Cipher);
        let table: &[Row] = &[
            (
                "a@example.org",
                "x@partner.example",
                Some("partners"),
                Mode::Opportunistic,
                Mode::Required,
                Cipher::Aes256Gcm,
            ),
            (
                "A@Example.ORG",
                "CEO@other.example",
                Some("partners"),
                Mode::Opportunistic,
                Mode::Required,
                Cipher::Aes256Gcm,
            ),
            (
                "a@example.org",
                "cfo@other.example",
                None,
                Mode::Opportunistic,
                Mode::Opportunistic,
                Cipher::Aes256Cbc,
            ),
            (
                "tickets@example.org",
                "x@partner.example",
                Some("partners"),
                Mode::Opportunistic,
                Mode::Required,
                Cipher::Aes256Gcm,
            ),
            (
                "tickets@example.org",
                "y@else.example",
                Some("tickets"),
                Mode::Never,
                Mode::Opportunistic,
                Cipher::Aes256Cbc,
            ),
            (
                "a@elsewhere.example",
                "x@partner.example",
                None,
                Mode::Opportunistic,
                Mode::Opportunistic,
                Cipher::Aes256Cbc,
            ),
        ];
        for (from, to, rule, sign, encrypt, cipher) in table {
            let (name, t) = c.policy.treatment(from, to);
            assert_eq!(
                (name, t.sign, t.encrypt, t.encryption),
                (*rule, *sign, *encrypt, *cipher),
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn bad_values_name_line_and_rule() {
        let errs =
            load("[[rule]]\nname = \"r1\"\nencryption = \"3des\"\nfrom = [\"a b\"]\n").unwrap_err();
        let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            all.iter()
                .any(|e| e
                    .contains(":7: rule \"r1\": encryption: \"3des\" is not one of aes256-cbc")),
            "{all:?}"
        );
        assert!(
            all.iter().any(|e| e.contains(":8: rule \"r1\": from")),
            "{all:?}"
        );
    }

    #[test]
    fn revocation_defaults_to_soft_and_rules_override_it() {
        let c = load("[policy]\nrevocation = \"hard\"\n[[rule]]\nname = \"r\"\nto = [\"*@x.example\"]\nrevocation = \"off\"\n").unwrap();
        assert_eq!(
            c.policy
                .treatment("a@example.org", "b@x.example")
                .1
                .revocation,
            crate::policy::Revocation::Off
        );
        assert_eq!(
            c.policy
                .treatment("a@example.org", "b@y.example")
                .1
                .revocation,
            crate::policy::Revocation::Hard
        );
        let c = load("").unwrap();
        assert_eq!(
            c.policy.defaults.revocation,
            crate::policy::Revocation::Soft
        );
        let errs = load("[[rule]]\nname = \"r1\"\nrevocation = \"maybe\"\n").unwrap_err();
        let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            all.iter().any(|e| e
                .contains(":7: rule \"r1\": revocation: \"maybe\" is not one of off, soft, hard")),
            "{all:?}"
        );
    }

    #[test]
    fn rule_after_catch_all_is_reported() {
        let errs = load("[[rule]]\nname = \"all\"\nsign = \"never\"\n[[rule]]\nname = \"late\"\nto = [\"*@x.example\"]\n").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0]
                .to_string()
                .contains("rule \"late\": from: can never match: the earlier rule \"all\""),
            "{}",
            errs[0]
        );
    }
}
