//! A config file's text: loading never panics and every diagnostic points inside the text. The
//! checks are `tests/fuzz_checks/mod.rs`, shared with the corpus test.
#![no_main]

#[path = "../../tests/fuzz_checks/mod.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_config(data));
