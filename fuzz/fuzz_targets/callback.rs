//! A request body: decoding (JSON or form), the envelope, signature verification, routing and
//! template rendering. The checks are `tests/fuzz_checks/mod.rs`, shared with the corpus test.
#![no_main]

#[path = "../../tests/fuzz_checks/mod.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_callback(data));
