//! `[inbound]` and `[[inbound.rule]]` (issue 13): the second listener, the MTAs allowed to hand
//! mail in, the internal mail server and what opening a message needs. It reads the sections
//! validated before it (`Sections`): its listeners must not take `[server]`'s, the internal
//! relay borrows `[upstream]`'s limits (never its credentials), decrypting needs `[keys]`,
//! verifying and harvesting need trust anchors from `[certificates]`.

use super::certificates::CertificatesConfig;
use super::keys::KeysConfig;
use super::problems::{Problems, existing_file, networks, sender_globs, socket_addrs};
use super::raw::{self, RawInbound};
use super::server::ServerConfig;
use super::upstream::{UpstreamConfig, UpstreamTarget, parse_upstream_url, upstream_tls};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// `[inbound]`: the second listener, for mail the organisation's internet-facing MTA hands in for
/// local recipients; cachet verifies, decrypts and learns, then relays to the internal mail server
/// (docs/inbound.md). The names `listen`, `relay_networks`, `upstream`, `tls`, `ca_file`,
/// `decrypt`, `verify`, `harvest` are the contract of issue 13.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub listen: Vec<SocketAddr>,
    /// MTAs allowed to hand mail in; nobody else gets past the banner.
    pub relay_networks: Vec<ipnet::IpNet>,
    /// The internal mail server: `upstream` (url forms as `[upstream]`), `tls`, `ca_file`; the
    /// other fields as `[upstream]` has them.
    pub upstream: UpstreamConfig,
    /// Decrypt what was encrypted to the organisation's keys (`[keys]`).
    pub decrypt: bool,
    /// Verify every signature layer and write `Authentication-Results:`.
    pub verify: bool,
    /// Learn verified signers' certificates and capabilities.
    pub harvest: bool,
    /// What happens to mail encrypted to a recipient cachet holds no usable key for.
    pub on_undecryptable: OnUndecryptable,
    /// Prefix `[signed]`, `[signature invalid]`, `[decrypted]` to the Subject (off by default).
    pub subject_tags: bool,
    /// `[[inbound.rule]]`: per-sender requirements, first match wins.
    pub rules: Vec<InboundRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUndecryptable {
    /// Deliver as it arrived, with the reason in a header.
    Deliver,
    /// Keep in hold/ for an operator.
    Hold,
    /// Refuse at end of DATA (`550 5.7.x`): no backscatter.
    Reject,
}

/// One `[[inbound.rule]]`: mail from `senders` that does not meet `require` gets `action`.
#[derive(Debug, Clone)]
pub struct InboundRule {
    /// Address globs, normalised as `[[rule]]` globs are.
    pub senders: Vec<(String, wildmatch::WildMatch)>,
    pub require: InboundRequirement,
    pub action: InboundAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundRequirement {
    /// At least one signature layer, whatever its result.
    Signed,
    /// At least one signature with `smime=pass`.
    ValidSignature,
    /// Arrived encrypted.
    Encrypted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundAction {
    /// Deliver with a subject tag and a header naming the rule.
    Tag,
    /// Keep in hold/.
    Hold,
    /// Refuse at end of DATA.
    Reject,
}

/// What `[inbound]` validation reads of the sections validated before it.
pub(super) struct Sections<'a> {
    pub(super) base: &'a Path,
    pub(super) server: &'a ServerConfig,
    pub(super) upstream: &'a UpstreamConfig,
    pub(super) keys: Option<&'a KeysConfig>,
    pub(super) certificates: Option<&'a CertificatesConfig>,
}

/// Whether two listen addresses would take the same socket (same port, and the same address or
/// either a wildcard).
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `[inbound]`: its own listeners (never one of `[server]`'s), the MTAs allowed to hand mail in,
/// the internal mail server (url, tls and ca_file as `[upstream]`; timeout, connections and EHLO
/// name taken from `[upstream]`, credentials never: the outbound provider's password does not go
/// to the internal server), and what opening needs: `[keys]` to decrypt, trust anchors to
/// verify and harvest.
pub(super) fn inbound(raw: &Spanned<RawInbound>, s: &Sections, p: &mut Problems) -> InboundConfig {
    let span = raw.span();
    let r = raw.get_ref();
    let listen = socket_addrs(&r.listen, "inbound.listen", p);
    if r.listen.is_empty() {
        p.at(
            span.clone(),
            "inbound.listen",
            "no inbound listener: give at least one address such as \"0.0.0.0:2526\"",
        );
    }
    for (v, a) in r.listen.iter().zip(&listen) {
        let taken = s
            .server
            .listen
            .iter()
            .map(|b| ("server.listen", b))
            .chain(s.server.listen_tls.iter().map(|b| ("server.listen_tls", b)));
        for (key, b) in taken {
            if overlaps(a, b) {
                p.at(
                    v.span(),
                    "inbound.listen",
                    format!("{a} overlaps {key} {b}: the inbound listener needs an address of its own (another port)"),
                );
            }
        }
    }
    let relay_networks = networks(&r.relay_networks, "inbound.relay_networks", p);
    if r.relay_networks.is_empty() {
        p.at(
            span.clone(),
            "inbound.relay_networks",
            "list the MTAs that hand mail in, e.g. [\"10.0.0.5/32\"]: everyone else is refused",
        );
    }
    let target = parse_upstream_url(r.upstream.get_ref(), s.base).unwrap_or_else(|msg| {
        p.at(r.upstream.span(), "inbound.upstream", msg);
        UpstreamTarget::File(PathBuf::new())
    });
    let tls = upstream_tls(&r.tls, &target, "inbound.tls", p);
    let upstream = UpstreamConfig {
        url: r.upstream.get_ref().clone(),
        target,
        tls,
        ca_file: r
            .ca_file
            .as_ref()
            .map(|v| existing_file(s.base, v, "inbound.ca_file", p)),
        username: None,
        password_file: None,
        timeout: s.upstream.timeout,
        max_connections: s.upstream.max_connections,
        helo_name: s.upstream.helo_name.clone(),
        pipelining: s.upstream.pipelining,
    };
    let (decrypt, verify, harvest) = (
        *r.decrypt.get_ref(),
        *r.verify.get_ref(),
        *r.harvest.get_ref(),
    );
    if decrypt && s.keys.is_none() {
        p.at(
            r.decrypt.span(),
            "inbound.decrypt",
            "decrypting needs the organisation's keys: configure [keys] (or set decrypt = false)",
        );
    }
    let have_trust = s.certificates.is_some_and(|c| !c.trust.is_empty());
    if verify && !have_trust {
        p.at(
            r.verify.span(),
            "inbound.verify",
            "verifying needs trust anchors: configure [certificates] with trust (or set verify = false); without them no signature could pass",
        );
    }
    if harvest && !verify {
        p.at(
            r.harvest.span(),
            "inbound.harvest",
            "only verified signers are learnt: harvest needs verify = true",
        );
    } else if harvest && !have_trust {
        p.at(
            r.harvest.span(),
            "inbound.harvest",
            "harvesting learns only certificates that chain to a trust anchor: configure [certificates] with trust (or set harvest = false)",
        );
    }
    let on_undecryptable = match r.on_undecryptable.get_ref().as_str() {
        "deliver" => OnUndecryptable::Deliver,
        "hold" => OnUndecryptable::Hold,
        "reject" => OnUndecryptable::Reject,
        other => {
            p.at(
                r.on_undecryptable.span(),
                "inbound.on_undecryptable",
                format!("{other:?} is not one of deliver, hold, reject"),
            );
            OnUndecryptable::Deliver
        }
    };
    let rules = r
        .rules
        .iter()
        .enumerate()
        .map(|(i, v)| inbound_rule(i, v, p))
        .collect();
    InboundConfig {
        listen,
        relay_networks,
        upstream,
        decrypt,
        verify,
        harvest,
        on_undecryptable,
        subject_tags: r.subject_tags,
        rules,
    }
}

/// One `[[inbound.rule]]`: sender globs as `[[submitter]]` has them, a requirement and an action.
fn inbound_rule(i: usize, v: &Spanned<raw::RawInboundRule>, p: &mut Problems) -> InboundRule {
    let r = v.get_ref();
    let key = |field: &str| format!("inbound.rule #{}: {field}", i + 1);
    if r.senders.is_empty() {
        p.at(
            v.span(),
            &key("senders"),
            "list the sender addresses (globs) the rule is for, e.g. [\"*@partner.example\"]",
        );
    }
    let senders = sender_globs(&r.senders, &key("senders"), "*@partner.example", p);
    let require = match r.require.get_ref().as_str() {
        "signed" => InboundRequirement::Signed,
        "valid-signature" => InboundRequirement::ValidSignature,
        "encrypted" => InboundRequirement::Encrypted,
        other => {
            p.at(
                r.require.span(),
                &key("require"),
                format!("{other:?} is not one of signed, valid-signature, encrypted"),
            );
            InboundRequirement::Signed
        }
    };
    let action = match r.action.get_ref().as_str() {
        "tag" => InboundAction::Tag,
        "hold" => InboundAction::Hold,
        "reject" => InboundAction::Reject,
        other => {
            p.at(
                r.action.span(),
                &key("action"),
                format!("{other:?} is not one of tag, hold, reject"),
            );
            InboundAction::Tag
        }
    };
    InboundRule {
        senders,
        require,
        action,
    }
}
