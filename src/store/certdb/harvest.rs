//! Learning certificates from signed inbound mail (issue 13, "Learn").
//!
//! The inbound path calls [`CertStore::harvest`] for each signature that verified
//! cryptographically. The rules:
//! - the certificate must name the `From:` address in its subjectAltName and be fit for
//!   encryption now (key, validity, keyUsage, emailProtection): otherwise it is refused;
//! - it is stored durably (one transaction, `synchronous = FULL`) before `harvest` returns, and
//!   the next lookup uses it: no reload;
//! - whether it chains to a trust anchor is checked here again (defence in depth: the caller's
//!   `verified` alone is not enough), with the directory's intermediates and the CA certificates
//!   the message carried (kept with the certificate for later lookups). One that does not chain
//!   is kept as *pending*: never used until it chains or an operator approves it;
//! - SMIMECapabilities are taken with their signingTime: a newer signingTime replaces older
//!   capabilities; a signingTime more than a day after `seen` is ignored (the certificate is
//!   still recorded, its capabilities are not); without a signingTime they are taken only when
//!   none are stored;
//! - first seen and last seen are recorded.

use std::time::{Duration, SystemTime};

use rusqlite::{OptionalExtension, params};
use rustls_pki_types::CertificateDer;

use super::{encode_capabilities, encode_chain, fingerprint, secs, upsert_cert};
use crate::store::validate::{self, Purpose};
use crate::store::{Capability, CertStore, TrustAnchors, normalize_address};

/// A signingTime further ahead of the time the message was seen is not believed.
pub const FUTURE_SLACK: Duration = Duration::from_secs(86400);
/// CA certificates kept from one message (a longer chain is not a real one).
const MAX_CHAIN: usize = 8;
/// Largest CA certificate kept from a message.
const MAX_CA_SIZE: usize = 16 * 1024;

/// A stored certificate's (id, pending, approved, signingTime, capabilities).
type Known = (i64, bool, bool, Option<i64>, Option<String>);

/// One verified signature's certificate, as the inbound path found it.
#[derive(Debug, Clone)]
pub struct Harvest<'a> {
    /// The signer certificate.
    pub cert: &'a CertificateDer<'static>,
    /// The other certificates the message carried (intermediates are kept from them).
    pub chain: &'a [CertificateDer<'static>],
    /// SMIMECapabilities, in the sender's order.
    pub capabilities: &'a [Capability],
    pub signing_time: Option<SystemTime>,
    /// The `From:` address the signature matched.
    pub from: &'a str,
    /// The caller's verdict: signature pass, chain to a trust anchor, emailProtection, SAN ==
    /// From. Only signatures that verified cryptographically are handed to `harvest`.
    pub verified: bool,
    /// When the message arrived.
    pub seen: SystemTime,
}

/// What a harvest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Harvested {
    /// A new certificate, usable at once.
    Added,
    /// Known already; capabilities replaced (newer signingTime) or it became anchored.
    Updated,
    /// Known already; only last seen changed.
    Unchanged,
    /// Stored, but not used: no path to a trust anchor (an operator may approve it).
    Pending,
    /// Not stored: why.
    Refused(String),
}

impl CertStore {
    /// Learn a signer's certificate (see the module header for the rules). `Err` only when the
    /// database cannot be written; a certificate that does not qualify is `Ok(Refused)`.
    pub fn harvest(&self, h: &Harvest<'_>, trust: &TrustAnchors) -> Result<Harvested, String> {
        let Some(pool) = &self.db else {
            return Err("no certificate store configured".into());
        };
        let info = match validate::inspect(h.cert) {
            Ok(i) => i,
            Err(e) => return Ok(Harvested::Refused(e)),
        };
        if info.is_ca {
            return Ok(Harvested::Refused(
                "a CA certificate, not a signer's".into(),
            ));
        }
        let from = normalize_address(h.from);
        if !info.emails.contains(&from) {
            return Ok(Harvested::Refused(format!(
                "the certificate does not name {from} in subjectAltName"
            )));
        }
        if let Err(reason) = validate::check_local(&info, h.seen, Purpose::Encrypt) {
            return Ok(Harvested::Refused(format!(
                "cannot encrypt to it: {reason}"
            )));
        }
        // The CA certificates the message carried, bounded.
        let cas: Vec<&[u8]> = h
            .chain
            .iter()
            .filter(|c| c.len() <= MAX_CA_SIZE)
            .filter(|c| validate::inspect(c).is_ok_and(|i| i.is_ca))
            .take(MAX_CHAIN)
            .map(|c| c.as_ref())
            .collect();
        let carried: Vec<CertificateDer<'static>> = cas
            .iter()
            .map(|c| CertificateDer::from(c.to_vec()))
            .collect();
        let intermediates: Vec<CertificateDer<'static>> =
            self.intermediates.iter().chain(&carried).cloned().collect();
        let anchored = h.verified
            && validate::check_path(h.cert, &intermediates, trust, h.seen).is_ok()
            && validate::check_path(h.cert, &intermediates, &self.trust, h.seen).is_ok();
        let caps_time = match h.signing_time {
            Some(t) if t > h.seen + FUTURE_SLACK => None,
            Some(t) => Some(Some(secs(t))),
            None => Some(None),
        };
        let seen = secs(h.seen);
        let fp = fingerprint(h.cert);

        let mut c = pool.get()?;
        let e = |x: rusqlite::Error| pool.error(x);
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        let existing: Option<Known> = tx
            .query_row(
                "SELECT id, pending, approved, signing_time, capabilities
                 FROM certs WHERE fingerprint = ?1",
                [&fp[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(e)?;
        let outcome = match existing {
            None => {
                let (id, _) = upsert_cert(&tx, h.cert, &info, seen).map_err(e)?;
                let caps = caps_time.map(|_| encode_capabilities(h.capabilities));
                tx.execute(
                    "UPDATE certs SET harvested = 1, pending = ?2, chain = ?3, capabilities = ?4,
                     signing_time = ?5, first_seen = ?6, last_seen = ?6 WHERE id = ?1",
                    params![
                        id,
                        !anchored,
                        (!cas.is_empty()).then(|| encode_chain(&cas)),
                        caps,
                        caps_time.flatten(),
                        seen
                    ],
                )
                .map_err(e)?;
                if anchored {
                    Harvested::Added
                } else {
                    Harvested::Pending
                }
            }
            Some((id, pending, approved, stored_time, stored_caps)) => {
                let mut changed = false;
                // Capabilities: a newer signingTime wins; none stored: any signingTime (or
                // none) is taken.
                let take = match (caps_time, stored_time) {
                    (None, _) => false,
                    (Some(Some(t)), Some(old)) => t > old,
                    (Some(Some(_)), None) => true,
                    (Some(None), _) => stored_caps.is_none(),
                };
                if take {
                    tx.execute(
                        "UPDATE certs SET capabilities = ?2, signing_time = ?3 WHERE id = ?1",
                        params![id, encode_capabilities(h.capabilities), caps_time.flatten()],
                    )
                    .map_err(e)?;
                    changed = true;
                }
                if pending && anchored {
                    tx.execute(
                        "UPDATE certs SET pending = 0, chain = ?2, problem = NULL WHERE id = ?1",
                        params![id, (!cas.is_empty()).then(|| encode_chain(&cas))],
                    )
                    .map_err(e)?;
                    changed = true;
                }
                tx.execute(
                    "UPDATE certs SET harvested = 1,
                     last_seen = MAX(last_seen, ?2) WHERE id = ?1",
                    params![id, seen],
                )
                .map_err(e)?;
                if pending && !anchored && !approved {
                    Harvested::Pending
                } else if changed {
                    Harvested::Updated
                } else {
                    Harvested::Unchanged
                }
            }
        };
        tx.commit().map_err(e)?;
        Ok(outcome)
    }
}
