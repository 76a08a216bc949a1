//! cachet: an S/MIME gateway for SMTP with two directions on one path. Outbound it signs and
//! encrypts the organisation's mail; inbound (`[inbound]`) it verifies, decrypts and learns
//! certificates from the mail the MX hands it. Both directions share the stages up to the
//! scheduler, which the envelope's `direction` then sends one way or the other; the stages meet
//! at the spool, as in Postfix:
//!
//! ```text
//! outbound: client -> listener -> session -> spool -> scheduler -> pipeline::seal -> relay -> [upstream]
//! inbound:  MX     -> listener -> session -> spool -> scheduler -> pipeline::inbound -> relay -> inbound.upstream
//!                                                     \-> dsn (bounces, back into the spool)
//! ```
//!
//! `pipeline` decides with `policy` and seals or opens with `smime`, reading keys and
//! certificates from `store` (revocation kept fresh in the background through `http`); `config`
//! builds one immutable [`config::Config`] and `runtime` the loaded world every stage reads;
//! `app` wires the stages together and owns shutdown and reload. Lower stages never import
//! `session` or `listener`: what the runtime loads for them (the TLS acceptor, `tls`; the AUTH
//! users file, `users`) sits beside `config`. The modules are listed below in the order mail
//! flows through them.

// The stages, in the order mail flows through them (both directions).
// Sockets and connection slots, one listener per direction; TLS at accept.
pub mod listener;
// The SMTP conversation, one file per verb; drafts into the spool, `250` after fsync.
pub mod session;
// Where the stages meet: queue files, the durable commit, recovery, operator actions.
pub mod spool;
// What is delivered next; one attempt per message, outbound or inbound by its envelope.
pub mod scheduler;
// (envelope, bytes, recipients) -> copies: `seal` outbound, `inbound::process` inbound.
pub mod pipeline;
// What to do per (sender, recipient), and who may send as whom: pure functions.
pub mod policy;
// CMS: sign, encrypt, and open (verify, decrypt) what arrives.
pub mod smime;
// SMTP client to `[upstream]` and to `inbound.upstream`; every reply classified once.
pub mod relay;
// Bounces, back into the spool from `<>`.
pub mod dsn;

// What every stage reads: configuration, the loaded world, keys and certificates.
pub mod config;
pub mod runtime;
pub mod store;
// Loaded with the runtime for the listener and the session: the TLS acceptor (and client
// certificates), the AUTH users file.
pub mod tls;
pub mod users;
// CRL and OCSP downloads for `store`'s revocation task.
pub mod http;

// Shared vocabulary.
pub mod date;
pub mod hex;
pub mod message;
pub mod reply;

// Operations beside the flow.
pub mod admin;
pub mod app;
pub mod audit;
pub mod check;
pub mod demo;
pub mod metrics;
