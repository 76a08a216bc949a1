//! See `cachet_fuzz::key_pem` for the input format and the oracles.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cachet_fuzz::key_pem(data));
