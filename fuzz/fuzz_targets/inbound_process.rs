//! See `cachet_fuzz::inbound_process` for the input format and the oracles.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cachet_fuzz::inbound_process(data));
