//! The envelope file: sender, recipients with their delivery state, and scheduling facts.
//! Per-recipient state persists so a partial delivery is never repeated for recipients already done.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    /// Not yet delivered; will be tried (again).
    Pending,
    /// Accepted by the upstream (or written to the outbox).
    Delivered,
    /// Permanently failed; a DSN was (or will not be, for `<>`) sent.
    Failed,
    /// Held by policy (required protection impossible, `on_missing_key = "hold"`).
    Held,
}

/// Which way a message travels: it decides which pipeline and which upstream it takes.
/// Envelopes written before inbound mail existed have no field and read as `Outbound`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Submitted by the organisation's clients: policy + sealing, relayed to `[upstream]`.
    #[default]
    Outbound,
    /// Handed in on the `[inbound]` listener for local recipients: opened (verify, decrypt),
    /// relayed to the internal mail server (`inbound.upstream`).
    Inbound,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub status: RcptStatus,
    /// The last public reply (`451 4.4.2 ...`, the next hop's or ours): what `queue show`
    /// and a DSN show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The private reason behind the last failure (OS error, TLS alert, S/MIME error): for
    /// `queue show` and the log only, never in a bounce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    /// Outbound (the default, also for envelopes older than this field) or inbound.
    #[serde(default)]
    pub direction: Direction,
    /// Bumped on every rewrite; after a crash mid-move the higher one wins.
    pub seq: u64,
    /// Envelope sender; empty for `<>` (bounces).
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Arrival time (Unix seconds): max_age counts from here.
    pub received: u64,
    pub client_ip: String,
    pub helo: String,
    /// MAIL FROM carried SMTPUTF8.
    #[serde(default)]
    pub smtputf8: bool,
    /// MAIL FROM carried BODY=8BITMIME.
    #[serde(default)]
    pub body_8bit: bool,
    /// Length of the message data in bytes (checked with `data_crc32` or `data_sha256`).
    pub size: u64,
    /// CRC-32 (IEEE) of the message data, taken while it was received: data that no longer
    /// matches (zeroed or scrambled blocks after a crash) goes to corrupt/ instead of being
    /// relayed. A check against damage, not against someone who can write the spool (they
    /// could rewrite the record too), so an error-detecting code serves, at a tenth of the CPU
    /// of a cryptographic digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_crc32: Option<u32>,
    /// SHA-256 of the message data (lowercase hex), as cachet recorded it before `data_crc32`:
    /// still checked for messages queued by an older version. Envelopes with neither (written
    /// by hand, or before either existed) are not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sha256: Option<String>,
    pub attempts: u32,
    /// Unix seconds; 0 = as soon as possible.
    pub next_attempt: u64,
    /// A DSN we generated: never bounced again.
    #[serde(default)]
    pub is_bounce: bool,
    /// An operator released this message from hold/ (`cachet queue release`): for inbound mail,
    /// the inbound rules and `on_undecryptable` no longer hold or refuse it (they tag or deliver
    /// as it arrived instead), or a release would only hold it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    /// Why the message is in hold/.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_reason: Option<String>,
    /// The `[[submitter]]` entry (or default) the client was granted as (audit trail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
    /// Header fields removed before relaying (a submitter's tenant header: never leaves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_headers: Vec<String>,
}

impl Envelope {
    pub fn new(
        sender: String,
        recipients: Vec<String>,
        client_ip: String,
        helo: String,
    ) -> Envelope {
        Envelope {
            id: String::new(),
            direction: Direction::Outbound,
            seq: 0,
            sender,
            recipients: recipients
                .into_iter()
                .map(|address| Recipient {
                    address,
                    status: RcptStatus::Pending,
                    reply: None,
                    reason: None,
                })
                .collect(),
            received: super::now_secs(),
            client_ip,
            helo,
            smtputf8: false,
            body_8bit: false,
            size: 0,
            data_crc32: None,
            data_sha256: None,
            attempts: 0,
            next_attempt: 0,
            is_bounce: false,
            released: false,
            hold_reason: None,
            submitter: None,
            remove_headers: Vec::new(),
        }
    }

    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients
            .iter()
            .filter(|r| r.status == RcptStatus::Pending)
    }

    pub fn recipient_mut(&mut self, address: &str) -> Option<&mut Recipient> {
        self.recipients.iter_mut().find(|r| r.address == address)
    }
}

impl Recipient {
    /// Records the outcome of the last attempt for this recipient.
    pub fn record(&mut self, failure: &crate::reply::Failure) {
        self.reply = Some(failure.reply.to_string());
        self.reason = (!failure.private.is_empty()).then(|| failure.private.clone());
    }
}
