//! See `cachet_fuzz::key_p12` for the input format and the oracles.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cachet_fuzz::key_p12(data));
