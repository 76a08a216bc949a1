//! The seam between spool and relay: (envelope, message bytes, pending recipients) -> outgoing
//! copies, each for a group of recipients that get the same treatment, plus the recipients whose
//! required protection cannot be met (refused, held or bounced — never sent in plaintext).
//!
//! Pure stages over `(&Policy, &Stores)`, never a whole `Runtime`:
//! - [`decide`](decide::decide): the one policy decision for a (sender, From:, recipient); the
//!   session's RCPT and end-of-DATA checks, grouping and `cachet explain` all call it;
//! - [`group`]: which recipients share a copy (Bcc recipients of encrypted copies alone, so their
//!   certificate never shows in a copy others receive), without cryptography;
//! - [`seal`](seal::seal): signs once per signer and encrypts once per group (one content key
//!   per copy). CPU work: callers run it off the async threads.
//! - [`inbound`]: the other direction, mail the organisation receives: verify, decrypt per
//!   recipient, `Authentication-Results`, `[[inbound.rule]]` -> copies for the internal server.

pub mod capabilities;
pub mod decide;
pub mod explain;
pub mod group;
pub mod headers;
pub mod inbound;
pub mod seal;

pub use decide::{Ask, Decision, Fate, data_check, decide, rcpt_check, rcpt_needs_lookup};
pub use seal::{Copy, Sealed, cipher_name, seal};

#[cfg(test)]
mod tests;
