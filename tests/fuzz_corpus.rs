//! The fuzzers' corpora as ordinary tests: every file under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the same checks as the fuzz target of that name
//! (`tests/fuzz_checks/mod.rs`), on stable, with no fuzzer. See `fuzz/README.md`.

mod fuzz_checks;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `check` on every input of `target`, then fails naming every input that panicked.
fn run(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        files.len() >= 10,
        "fuzz/corpus/{target}/ holds only {} files",
        files.len()
    );
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).unwrap();
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn callback_corpus() {
    run("callback", fuzz_checks::check_callback);
}

#[test]
fn config_corpus() {
    run("config", fuzz_checks::check_config);
}
