//! See `cachet_fuzz::session::smtp_session` for the input format and the oracles.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cachet_fuzz::session::smtp_session(data));
