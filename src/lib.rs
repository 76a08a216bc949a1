//! cachet: an S/MIME signing and encryption SMTP gateway.
//!
//! Mail flows one way through stages that meet at the spool, as in Postfix:
//!
//! ```text
//! listener -> session -> spool -> [scheduler] -> pipeline (policy -> smime) -> relay
//!                                                                     \-> dsn (bounces, back into the spool)
//! ```
//!
//! `config` builds one immutable [`config::Config`]; `store` holds the signing keys and recipient
//! certificates and their revocation status (kept fresh by a background task that fetches CRLs
//! and OCSP answers through `http`); `app` wires the stages together and owns shutdown and reload. Lower stages never
//! import `session` or `listener`.

// The stages, in the order mail flows through them.
pub mod dsn;
pub mod http;
pub mod listener;
pub mod pipeline;
pub mod policy;
pub mod relay;
pub mod scheduler;
pub mod session;
pub mod smime;
pub mod spool;

// What every stage reads: configuration, keys and certificates, the loaded world.
pub mod config;
pub mod runtime;
pub mod store;

// Shared vocabulary.
pub mod date;
pub mod reply;

// Operations beside the flow.
pub mod admin;
pub mod app;
pub mod audit;
pub mod check;
pub mod demo;
pub mod metrics;
