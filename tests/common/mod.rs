//! Integration-test harness shared by every `tests/*.rs` (each does `mod common;`): a test PKI, a recording
//! upstream SMTP server, the real gateway binary as a child process, and raw / Python SMTP clients.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod gateway;
pub mod pki;
pub mod upstream;

pub use client::{SmtpClient, python_send};
pub use gateway::{Gateway, GatewayConfig};
pub use pki::TestPki;
pub use upstream::{Action, Fault, Received, Stage, Upstream, UpstreamOptions, UpstreamTls};
