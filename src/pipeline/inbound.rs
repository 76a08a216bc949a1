//! PLACEHOLDER (owned by h4, replaced at merge): the processing of one inbound message —
//! verify, decrypt per recipient, `Authentication-Results`, tags, per-sender rules — as a pure
//! function. This stand-in has the agreed API and delivers the message unchanged to every
//! recipient, so the route (listener, session, spool, scheduler, relay) can be built and tested
//! on its own.

use crate::config::InboundConfig;
use crate::runtime::Stores;
use std::time::SystemTime;

/// One message to relay to the internal mail server, for these recipients.
pub struct InboundCopy {
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
}

/// What becomes of an inbound message.
pub enum Verdict {
    Deliver(Vec<InboundCopy>),
    /// Private reason, for hold/ and `cachet queue show`.
    Hold(String),
    /// At end of DATA: the reply to give.
    Reject(crate::reply::Failure),
}

pub struct Processed {
    pub verdict: Verdict,
    pub signers: Vec<crate::smime::verify::Signer>,
}

/// Placeholder: every recipient gets the message as it arrived.
pub fn process(
    _inbound: &InboundConfig,
    _stores: &Stores,
    _hostname: &str,
    _sender: &str,
    recipients: &[String],
    message: &[u8],
    _now: SystemTime,
) -> Processed {
    Processed {
        verdict: Verdict::Deliver(vec![InboundCopy {
            recipients: recipients.to_vec(),
            message: message.to_vec(),
        }]),
        signers: Vec::new(),
    }
}

/// True when `process` may answer Reject for some message under this config
/// (`on_undecryptable = "reject"` or a rule with action `"reject"`): only then does the session
/// run it before answering `250`.
pub fn may_reject(inbound: &InboundConfig) -> bool {
    inbound.on_undecryptable == crate::config::OnUndecryptable::Reject
        || inbound
            .rules
            .iter()
            .any(|r| r.action == crate::config::InboundAction::Reject)
}
