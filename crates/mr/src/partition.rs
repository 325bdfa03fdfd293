//! Which reduce task a key belongs to.
//!
//! [`ihash`] is exactly the lab's `ihash`: the 32-bit FNV-1a hash of the key's UTF-8 bytes,
//! masked to 31 bits. [`bucket`] is `ihash(key) % n_reduce`. Keeping the lab's function means
//! the lab's published facts hold here too (with ten reduce tasks, key `a` goes to task 2,
//! `b` to 9, `c` to 0, `d` to 5, …), and it is what every map task of a job must agree on:
//! a key's pairs from all map tasks meet in one reduce task only because they all use this
//! one function.

/// FNV-1a offset basis (32-bit).
const FNV_OFFSET_BASIS: u32 = 0x811c_9dc5;
/// FNV-1a prime (32-bit).
const FNV_PRIME: u32 = 0x0100_0193;

/// The lab's `ihash`: 32-bit FNV-1a of `key`'s bytes, masked with `0x7fffffff`.
pub fn ihash(key: &str) -> u32 {
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in key.as_bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash & 0x7fff_ffff
}

/// The reduce task (in `0..n_reduce`) that `key` belongs to.
///
/// `n_reduce` must be at least 1 (a job always has a reduce task); callers validate it where
/// it comes from outside (see [`crate::task::MapTask`]).
pub fn bucket(key: &str, n_reduce: usize) -> usize {
    assert!(n_reduce > 0, "bucket: n_reduce must be at least 1");
    // u32 -> usize is lossless on every platform Rust supports with std (>= 32-bit).
    ihash(key) as usize % n_reduce
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ihash_matches_the_lab() {
        assert_eq!(ihash("a"), 1_678_518_572);
        // FNV-1a of the empty string is the offset basis, masked.
        assert_eq!(ihash(""), 0x811c_9dc5 & 0x7fff_ffff);
    }

    #[test]
    fn buckets_match_the_lab_for_ten_reduce_tasks() {
        let expected = [
            ("a", 2),
            ("b", 9),
            ("c", 0),
            ("d", 5),
            ("e", 6),
            ("f", 3),
            ("g", 4),
            ("h", 3),
            ("i", 4),
            ("j", 1),
        ];
        for (key, want) in expected {
            assert_eq!(bucket(key, 10), want, "bucket({key:?}, 10)");
        }
        // The early-exit test's slow keys (spec §2.5).
        assert_eq!(bucket("../pg-sherlock_holmes.txt", 10), 6);
        assert_eq!(bucket("../pg-tom_sawyer.txt", 10), 2);
    }

    #[test]
    fn one_reduce_task_takes_everything() {
        for key in ["", "a", "zebra", "中文"] {
            assert_eq!(bucket(key, 1), 0);
        }
    }
}
