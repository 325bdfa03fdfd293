//! Where the lab's input texts are: the eight Project Gutenberg books of 6.5840 Lab 1, used
//! by the tests, the examples and the benchmarks.
//!
//! They live outside the repository, in `shared/data/gutenberg` beside the project's root.
//! `FLOTILLA_TEXTS` names another directory (a clone elsewhere, a CI machine); otherwise the
//! directory beside the source tree this crate was built from is used. A missing directory
//! is an error that names the path and the variable, not a panic deep inside a test.

use std::io;
use std::path::PathBuf;

/// The environment variable that names the directory of the lab's texts.
pub const TEXTS_ENV: &str = "FLOTILLA_TEXTS";

/// The directory of the lab's texts: `$FLOTILLA_TEXTS`, or `shared/data/gutenberg` beside
/// the project's root.
pub fn lab_texts_dir() -> PathBuf {
    match std::env::var_os(TEXTS_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/gutenberg"
        )),
    }
}

/// The lab's texts (`pg-*.txt`), sorted by name.
pub fn lab_texts() -> io::Result<Vec<PathBuf>> {
    let dir = lab_texts_dir();
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "the lab's texts are not at {} ({e}); set {TEXTS_ENV} to their directory",
                dir.display()
            ),
        )
    })?;
    let mut texts = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let is_text = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("pg-") && n.ends_with(".txt"));
        if is_text {
            texts.push(path);
        }
    }
    texts.sort();
    if texts.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no pg-*.txt texts in {}; set {TEXTS_ENV} to their directory",
                dir.display()
            ),
        ));
    }
    Ok(texts)
}
