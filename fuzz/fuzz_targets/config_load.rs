//! See `cachet_fuzz::config_load` for the input format and the oracles.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cachet_fuzz::config_load(data));
