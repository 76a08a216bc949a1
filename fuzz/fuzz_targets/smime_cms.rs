//! See `cachet_fuzz::smime_cms` for the input format and the oracles.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cachet_fuzz::smime_cms(data));
