//! An independent oracle for the `wc` and `indexer` applications, for the tests of both
//! `flotilla-mr` and the `flotilla` program (`crates/cli/tests/mr.rs` includes this file).
//!
//! `flotilla mr sequential` shares the workers' word splitter, map buffer, merge and record
//! code, so a bug there makes both sides agree. This oracle shares none of it: it follows the
//! applications' documented rules (`crates/mr/src/words.rs`, `crates/mr/src/apps.rs`) in the
//! plainest way — each input read whole, decoded as UTF-8 (an invalid sequence becomes
//! U+FFFD), split at every character that is not of Unicode general category L (looked up
//! in the `unicode-properties` tables, one `char` at a time), and counted in a `BTreeMap` —
//! and produces the output lines as `sort mr-out* | grep .` would show them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// The words of `bytes`: maximal runs of letters (general category L), in order.
pub fn words(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut words = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.general_category_group() == GeneralCategoryGroup::Letter {
            word.push(c);
        } else if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn read(path: &PathBuf) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("oracle: cannot read {}: {e}", path.display()))
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

/// `wc` over `inputs` (`(name, path)`): one `word count` line per distinct word, sorted.
pub fn wc(inputs: &[(String, PathBuf)]) -> Vec<String> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (_, path) in inputs {
        for word in words(&read(path)) {
            *counts.entry(word).or_default() += 1;
        }
    }
    sorted(
        counts
            .into_iter()
            .map(|(w, n)| format!("{w} {n}"))
            .collect(),
    )
}

/// `indexer` over `inputs`: one `word n name,name,…` line per distinct word (the names of
/// the inputs that contain it, as given, sorted and comma-joined), sorted.
pub fn indexer(inputs: &[(String, PathBuf)]) -> Vec<String> {
    let mut names: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (name, path) in inputs {
        for word in words(&read(path)) {
            names.entry(word).or_default().insert(name);
        }
    }
    let lines = names.into_iter().map(|(word, names)| {
        let joined: Vec<&str> = names.into_iter().collect();
        format!("{word} {} {}", joined.len(), joined.join(","))
    });
    sorted(lines.collect())
}

/// Panics unless `actual` (sorted output lines) equals the oracle's `expected`, naming the
/// first line where they part (the full lists are tens of thousands of lines).
pub fn assert_agrees(actual: &[String], expected: &[String], what: &str) {
    if actual == expected {
        return;
    }
    let at = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    panic!(
        "{what} differs from the independent oracle: {} lines against {}; first difference at \
         line {at}: {:?} where the oracle has {:?}",
        actual.len(),
        expected.len(),
        actual.get(at),
        expected.get(at)
    );
}

#[test]
fn the_oracle_splits_by_the_documented_rule() {
    // Letters of any script are words; digits, marks, letter numbers (Ⅻ is Nl) and
    // invalid UTF-8 separate them.
    assert_eq!(
        words("Ab1cd Émile_straße\u{2162}x\u{0301}y".as_bytes()),
        ["Ab", "cd", "Émile", "straße", "x", "y"]
    );
    assert_eq!(words(b"ab\xffcd\xc3"), ["ab", "cd"]);
    assert_eq!(words("日本語 текст".as_bytes()), ["日本語", "текст"]);
}
