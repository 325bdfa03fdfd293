//! Splitting text into words, streaming, the way the lab's applications do.
//!
//! A *word* is a maximal run of characters of Unicode general category L (`Lu`, `Ll`, `Lt`,
//! `Lm`, `Lo`) — Go's `unicode.IsLetter`, which the lab's `wc` and `indexer` use. Every other
//! character separates words. This is narrower than Rust's [`char::is_alphabetic`] (the
//! Alphabetic property also covers letter numbers such as `Ⅻ` and many combining marks),
//! so [`is_letter`] is used instead. The input is bytes decoded as UTF-8; a byte that does
//! not start a valid UTF-8 sequence stands for U+FFFD, which is not a letter.
//!
//! Guarantees:
//! - **Streaming.** [`for_each_word`] reads a [`BufRead`] chunk by chunk, never line by line:
//!   a 100 MB input without a newline is no different from any other. Memory is the reader's
//!   buffer plus the longest word that straddles a chunk boundary (a word is handed out as one
//!   `&str`, so a single enormous word is held whole).
//! - **Chunk boundaries do not matter.** The words produced are the same however the input is
//!   cut into chunks, including cuts inside a word and inside a multi-byte character
//!   ([`WordSplitter`] carries both across [`WordSplitter::feed`] calls).
//! - **Fast.** Blocks of 64 ASCII bytes are classified eight bytes at a time into a bit
//!   mask, and word boundaries are read off the mask's bit changes (no branch per byte); each
//!   chunk is UTF-8-validated once, so words are sliced from it without re-checking. Blocks
//!   holding non-ASCII bytes go byte by byte with a 256-entry class table, decoding only the
//!   non-ASCII characters (code points below U+0800 answered from a bitmap, the rest from the
//!   Unicode tables). About 800 MB/s on English text on the development machine
//!   (`examples/throughput.rs`).
//!
//! The general-category tables come from the `unicode-properties` crate and may be of a newer
//! Unicode version than a given Go release; the two agree on every character both versions
//! assign.

use std::io::{self, BufRead};
use std::sync::OnceLock;

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// Whether `c` is a letter: Unicode general category L (Go's `unicode.IsLetter`).
pub fn is_letter(c: char) -> bool {
    let code = u32::from(c);
    if code < 0x80 {
        return c.is_ascii_alphabetic();
    }
    if code < SMALL_LETTERS_LIMIT {
        let bits = small_letters();
        let index = code as usize;
        return bits[index / 64] & (1 << (index % 64)) != 0;
    }
    c.general_category_group() == GeneralCategoryGroup::Letter
}

/// Code points below this (the one- and two-byte UTF-8 range) are answered from a bitmap.
const SMALL_LETTERS_LIMIT: u32 = 0x800;

/// Bitmap of the letters below [`SMALL_LETTERS_LIMIT`], built once.
fn small_letters() -> &'static [u64; SMALL_LETTERS_LIMIT as usize / 64] {
    static BITS: OnceLock<[u64; SMALL_LETTERS_LIMIT as usize / 64]> = OnceLock::new();
    BITS.get_or_init(|| {
        let mut bits = [0u64; SMALL_LETTERS_LIMIT as usize / 64];
        for code in 0..SMALL_LETTERS_LIMIT {
            let is_letter = char::from_u32(code)
                .is_some_and(|c| c.general_category_group() == GeneralCategoryGroup::Letter);
            if is_letter {
                bits[code as usize / 64] |= 1 << (code % 64);
            }
        }
        bits
    })
}

/// Byte classes for the scanning loops.
const SEPARATOR: u8 = 0;
const ASCII_LETTER: u8 = 1;
const NON_ASCII: u8 = 2;

/// Class of every byte value: ASCII letters, other ASCII bytes, and bytes ≥ 0x80.
static CLASS: [u8; 256] = {
    let mut table = [SEPARATOR; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = if byte >= 0x80 {
            NON_ASCII
        } else if (byte >= b'A' as usize && byte <= b'Z' as usize)
            || (byte >= b'a' as usize && byte <= b'z' as usize)
        {
            ASCII_LETTER
        } else {
            SEPARATOR
        };
        byte += 1;
    }
    table
};

/// Bytes examined at once by the ASCII fast path (one bit each in a `u64`).
const BLOCK: usize = 64;

/// For a block of [`BLOCK`] bytes: a bit per ASCII letter, and a bit per byte ≥ 0x80
/// (bit `j` for byte `j`). Branch-free, eight bytes at a time in a `u64` (SWAR).
#[inline(always)]
fn block_masks(block: &[u8]) -> (u64, u64) {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut letters = 0u64;
    let mut non_ascii = 0u64;
    for (k, bytes) in block.chunks_exact(8).enumerate() {
        let x = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        // ASCII letters are the bytes below 0x80 whose lower-cased value is in a..=z. With
        // the high bits cleared, adding 0x1F sets a byte's high bit iff it is >= b'a', and
        // adding 0x05 iff it is > b'z'; no addition carries into the next byte.
        let lower = (x | 0x2020_2020_2020_2020) & !HIGH;
        let at_least_a = lower.wrapping_add(0x1F1F_1F1F_1F1F_1F1F);
        let past_z = lower.wrapping_add(0x0505_0505_0505_0505);
        let letter = at_least_a & !past_z & !x & HIGH;
        letters |= gather_high_bits(letter) << (8 * k);
        non_ascii |= gather_high_bits(x & HIGH) << (8 * k);
    }
    (letters, non_ascii)
}

/// Packs the high bit of each of the eight bytes of `x` (other bits zero) into bits 0..8.
#[inline(always)]
fn gather_high_bits(x: u64) -> u64 {
    // Each byte is now 0 or 1; the multiplication moves byte k's bit to bit 56 + k, with no
    // two partial products colliding (so no carries).
    (x >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// What the bytes at some position hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decoded {
    /// A valid character of `len` bytes.
    Char(char, usize),
    /// The first byte does not start a valid sequence: it stands for U+FFFD on its own.
    Invalid,
    /// The bytes are a valid but unfinished start of a sequence (more bytes are needed).
    Incomplete,
}

/// Decodes the UTF-8 sequence at the start of `bytes` (which is non-empty and starts with a
/// byte ≥ 0x80), following the well-formed byte sequences of Unicode's Table 3-7.
fn decode(bytes: &[u8]) -> Decoded {
    let lead = bytes[0];
    // (length, allowed range of the second byte)
    let (len, second_min, second_max) = match lead {
        0xC2..=0xDF => (2, 0x80, 0xBF),
        0xE0 => (3, 0xA0, 0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80, 0xBF),
        0xED => (3, 0x80, 0x9F),
        0xF0 => (4, 0x90, 0xBF),
        0xF1..=0xF3 => (4, 0x80, 0xBF),
        0xF4 => (4, 0x80, 0x8F),
        _ => return Decoded::Invalid,
    };
    let available = bytes.len().min(len);
    for (position, &byte) in bytes[1..available].iter().enumerate() {
        let (min, max) = if position == 0 {
            (second_min, second_max)
        } else {
            (0x80, 0xBF)
        };
        if byte < min || byte > max {
            return Decoded::Invalid;
        }
    }
    if available < len {
        return Decoded::Incomplete;
    }
    let mut code = u32::from(lead) & (0x7F >> len);
    for &byte in &bytes[1..len] {
        code = (code << 6) | (u32::from(byte) & 0x3F);
    }
    match char::from_u32(code) {
        Some(c) => Decoded::Char(c, len),
        // Unreachable for the ranges above (they exclude surrogates and values past
        // U+10FFFF); treated as invalid rather than trusted.
        None => Decoded::Invalid,
    }
}

/// Converts word bytes to `&str`. Word bytes are only ever ASCII letters and the bytes of
/// characters [`decode`] validated, so this cannot fail; the check guards that invariant.
fn word_str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("word bytes are valid UTF-8 by construction")
}

/// An incremental word splitter: feed it chunks of bytes, get words.
///
/// Between calls it keeps the start of a word cut by the chunk's end and the first bytes of
/// a multi-byte character cut by the chunk's end, so the words are the same however the
/// input is chunked. Call [`WordSplitter::finish`] after the last chunk.
#[derive(Debug, Default)]
pub struct WordSplitter {
    /// Bytes of a word that began in an earlier chunk and has not ended yet. Only letters,
    /// valid UTF-8; empty when the last chunk did not end inside a word.
    pending: Vec<u8>,
    /// A valid but unfinished multi-byte sequence at the end of the last chunk.
    carry: [u8; 4],
    carry_len: usize,
}

impl WordSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the pending word, if any.
    fn end_pending<E>(&mut self, f: &mut impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = f(word_str(&self.pending));
        self.pending.clear();
        result
    }

    /// Completes a sequence carried from the previous chunk with bytes from `chunk`.
    /// Returns how many bytes of `chunk` it used; `chunk.len()` with `carry_len > 0` left
    /// means the chunk was too short and the sequence is still unfinished.
    fn complete_carry<E>(
        &mut self,
        chunk: &[u8],
        f: &mut impl FnMut(&str) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut used = 0;
        while self.carry_len > 0 && used < chunk.len() {
            self.carry[self.carry_len] = chunk[used];
            self.carry_len += 1;
            used += 1;
            match decode(&self.carry[..self.carry_len]) {
                Decoded::Incomplete => {}
                Decoded::Char(c, len) => {
                    debug_assert_eq!(len, self.carry_len, "a carried prefix completes exactly");
                    let bytes = self.carry;
                    self.carry_len = 0;
                    if is_letter(c) {
                        self.pending.extend_from_slice(&bytes[..len]);
                    } else {
                        self.end_pending(f)?;
                    }
                }
                Decoded::Invalid => {
                    // The carried bytes were a valid prefix until this byte, so this byte is
                    // what broke it: the carried bytes are U+FFFDs and this byte is read
                    // again on its own.
                    used -= 1;
                    self.carry_len = 0;
                    self.end_pending(f)?;
                }
            }
        }
        Ok(used)
    }

    /// Splits `chunk`, the next bytes of the input, calling `f` for each word that ends in
    /// it. Stops at (and returns) the first error `f` returns.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        mut f: impl FnMut(&str) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut i = self.complete_carry(chunk, &mut f)?;
        if self.carry_len > 0 {
            return Ok(());
        }
        let n = chunk.len();
        // The chunk's valid UTF-8 prefix, checked once (fast for ASCII) so that words inside
        // it are sliced from a `&str` instead of each being validated again.
        let text = match std::str::from_utf8(chunk) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(&chunk[..e.valid_up_to()])
                .expect("the prefix up to valid_up_to is valid"),
        };
        // Start of the current word within `chunk`; when `pending` is non-empty the word
        // began in an earlier chunk and its bytes in this chunk start at `i`.
        let mut start: Option<usize> = if self.pending.is_empty() {
            None
        } else {
            Some(i)
        };
        // Ends the word running from `s` to `end` in `chunk` (plus `pending`, if any).
        macro_rules! end_word {
            ($s:expr, $end:expr) => {{
                let (s, end) = ($s, $end);
                if self.pending.is_empty() {
                    // Word boundaries are character boundaries, so the slice cannot fail.
                    match text.get(s..end) {
                        Some(word) => f(word)?,
                        None => f(word_str(&chunk[s..end]))?,
                    }
                } else {
                    self.pending.extend_from_slice(&chunk[s..end]);
                    let result = f(word_str(&self.pending));
                    self.pending.clear();
                    result?;
                }
            }};
        }
        while i < n {
            // Fast path: 64 ASCII bytes at a time. Word starts and ends are where the letter
            // mask changes, found with bit tricks instead of a branch per byte.
            if let Some(block) = chunk.get(i..i + BLOCK) {
                let (letters, non_ascii) = block_masks(block);
                if non_ascii == 0 {
                    let mut changes = letters ^ ((letters << 1) | u64::from(start.is_some()));
                    while changes != 0 {
                        let j = changes.trailing_zeros() as usize;
                        changes &= changes - 1;
                        match start.take() {
                            None => start = Some(i + j),
                            Some(s) => end_word!(s, i + j),
                        }
                    }
                    i += BLOCK;
                    continue;
                }
            }
            // Slow path, up to the end of this block (or a little past, to finish a
            // character): one ASCII byte or one decoded character at a time.
            let limit = n.min(i + BLOCK);
            while i < limit {
                match CLASS[usize::from(chunk[i])] {
                    ASCII_LETTER => {
                        start.get_or_insert(i);
                        i += 1;
                    }
                    SEPARATOR => {
                        if let Some(s) = start.take() {
                            end_word!(s, i);
                        }
                        i += 1;
                    }
                    _ => match decode(&chunk[i..n.min(i + 4)]) {
                        Decoded::Char(c, len) => {
                            if is_letter(c) {
                                start.get_or_insert(i);
                            } else if let Some(s) = start.take() {
                                end_word!(s, i);
                            }
                            i += len;
                        }
                        Decoded::Invalid => {
                            if let Some(s) = start.take() {
                                end_word!(s, i);
                            }
                            i += 1;
                        }
                        Decoded::Incomplete => {
                            // Only possible when the sequence is cut by the end of the chunk.
                            debug_assert!(i + 4 > n);
                            let rest = &chunk[i..];
                            self.carry[..rest.len()].copy_from_slice(rest);
                            self.carry_len = rest.len();
                            if let Some(s) = start.take() {
                                self.pending.extend_from_slice(&chunk[s..i]);
                            }
                            return Ok(());
                        }
                    },
                }
            }
        }
        if let Some(s) = start {
            self.pending.extend_from_slice(&chunk[s..n]);
        }
        Ok(())
    }

    /// Ends the input: an unfinished multi-byte sequence is invalid (a separator) and the
    /// word in progress, if any, is handed to `f`. The splitter is then ready for a new input.
    pub fn finish<E>(&mut self, mut f: impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
        self.carry_len = 0;
        self.end_pending(&mut f)
    }
}

/// Calls `f` for every word read from `reader`, in order, and returns the number of bytes
/// read. Reads until end of input or the first read error.
pub fn for_each_word(reader: &mut dyn BufRead, mut f: impl FnMut(&str)) -> io::Result<u64> {
    try_for_each_word(reader, |word| {
        f(word);
        Ok(())
    })
}

/// Like [`for_each_word`], but `f` may fail; its first error stops the reading and is
/// returned.
pub fn try_for_each_word(
    reader: &mut dyn BufRead,
    mut f: impl FnMut(&str) -> io::Result<()>,
) -> io::Result<u64> {
    let mut splitter = WordSplitter::new();
    let mut total: u64 = 0;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        let len = chunk.len();
        splitter.feed(chunk, &mut f)?;
        reader.consume(len);
        total += len as u64;
    }
    splitter.finish(&mut f)?;
    Ok(total)
}

/// All the words of `text`, in order (a convenience for small inputs and tests).
pub fn words(text: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut splitter = WordSplitter::new();
    let mut push = |word: &str| -> Result<(), std::convert::Infallible> {
        out.push(word.to_owned());
        Ok(())
    };
    let Ok(()) = splitter.feed(text, &mut push);
    let Ok(()) = splitter.finish(&mut push);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes per `fill_buf`.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(self.data.len()).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    impl BufRead for Trickle<'_> {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            let n = self.step.min(self.data.len());
            Ok(&self.data[..n])
        }
        fn consume(&mut self, amount: usize) {
            self.data = &self.data[amount..];
        }
    }

    fn words_chunked(data: &[u8], step: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut reader = Trickle { data, step };
        let read = for_each_word(&mut reader, |w| out.push(w.to_owned())).unwrap();
        assert_eq!(read, data.len() as u64);
        out
    }

    #[test]
    fn block_masks_agree_with_the_byte_table() {
        let mut block = [0u8; BLOCK];
        for start in (0..256).step_by(BLOCK).chain([17, 200]) {
            for (j, byte) in block.iter_mut().enumerate() {
                *byte = ((start + j * 7) % 256) as u8;
            }
            let (letters, non_ascii) = block_masks(&block);
            for (j, &byte) in block.iter().enumerate() {
                assert_eq!(
                    letters >> j & 1 == 1,
                    CLASS[usize::from(byte)] == ASCII_LETTER,
                    "{byte:#x}"
                );
                assert_eq!(non_ascii >> j & 1 == 1, byte >= 0x80, "{byte:#x}");
            }
        }
    }

    #[test]
    fn long_texts_across_blocks() {
        // Words crossing 64-byte blocks, non-ASCII in some blocks, at every alignment.
        let unit = "Lorem ipsum dolor sit amet, consectetur adipiscing elit; naïve café 中文 ok. ";
        for shift in 0..70 {
            let text = format!("{}{}", "x".repeat(shift), unit.repeat(7));
            let slow: Vec<String> = text
                .split(|c: char| !is_letter(c))
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
                .collect();
            assert_eq!(words(text.as_bytes()), slow, "shift {shift}");
            assert_eq!(words_chunked(text.as_bytes(), 100), slow, "shift {shift}");
        }
    }

    #[test]
    fn splits_ascii() {
        assert_eq!(
            words(b"Hello, world! It's 2024: x-ray\n"),
            ["Hello", "world", "It", "s", "x", "ray"]
        );
        assert!(words(b"").is_empty());
        assert!(words(b"123 456 ,.;").is_empty());
        assert_eq!(words(b"abc"), ["abc"]);
    }

    #[test]
    fn letters_are_category_l_not_alphabetic() {
        // Letters: Ll, Lu, Lo, Lm, Lt.
        for c in ['ß', 'é', 'ж', 'Ж', '中', 'ª', 'µ', 'ʰ', 'ǅ', 'א', '한'] {
            assert!(is_letter(c), "{c:?} is a letter");
        }
        // Alphabetic but not category L: letter numbers (Nl) and combining marks (Mn/Mc).
        for c in ['Ⅻ', 'ⅰ', '\u{0345}', '\u{0903}', '\u{0BBE}', '\u{16EE}'] {
            assert!(c.is_alphabetic(), "{c:?} is Alphabetic");
            assert!(!is_letter(c), "{c:?} is not a letter");
        }
        // Neither: digits, space, U+FFFD, punctuation, symbols, a plain combining accent.
        for c in ['1', '٣', ' ', '\u{FFFD}', '—', '€', '\u{1F600}', '\u{0301}'] {
            assert!(!is_letter(c), "{c:?} is not a letter");
        }
        // Outside the bitmap: supplementary-plane letters.
        assert!(is_letter('𝐀')); // U+1D400 MATHEMATICAL BOLD CAPITAL A (Lu)
        assert!(is_letter('𠀀')); // U+20000 CJK ideograph (Lo)
    }

    #[test]
    fn small_letter_bitmap_agrees_with_the_tables() {
        for code in 0..SMALL_LETTERS_LIMIT + 0x100 {
            if let Some(c) = char::from_u32(code) {
                assert_eq!(
                    is_letter(c),
                    c.general_category_group() == GeneralCategoryGroup::Letter,
                    "U+{code:04X}"
                );
            }
        }
    }

    #[test]
    fn non_letters_split_words() {
        assert_eq!(words("caféⅫbar".as_bytes()), ["café", "bar"]);
        // A combining acute accent separates (Go's IsLetter says no to Mn).
        assert_eq!(words("e\u{0301}t\u{00e9}".as_bytes()), ["e", "té"]);
        assert_eq!(words("straße中文 жук".as_bytes()), ["straße中文", "жук"]);
    }

    #[test]
    fn invalid_utf8_separates() {
        assert_eq!(words(b"ab\xffcd"), ["ab", "cd"]);
        // A truncated 3-byte sequence followed by ASCII: the ASCII is read on its own.
        assert_eq!(words(b"ab\xe4\xb8cd"), ["ab", "cd"]);
        // Surrogate encodings and overlong forms are invalid.
        assert_eq!(
            words(b"a\xed\xa0\x80b\xc0\xafc\xe0\x80\x80d"),
            ["a", "b", "c", "d"]
        );
        // Lone continuation bytes.
        assert_eq!(words(b"\x80\x80x\xbf"), ["x"]);
        // A truncated sequence at the very end.
        assert_eq!(words(b"xy\xe4\xb8"), ["xy"]);
        assert_eq!(words("y\u{4e2d}".as_bytes()), ["y中"]);
    }

    #[test]
    fn chunking_does_not_change_the_words() {
        let mut data =
            "The quick brown fox — «straße» 中文字 naïve café\n\u{0301}Ⅻ jump\u{1F600}ed \
                    𝐀𝐁c ok"
                .as_bytes()
                .to_vec();
        data.extend_from_slice(b"\xff? end\xe4\xb8-\xf0\x9f\x98-tail\xe4");
        let whole = words(&data);
        assert_eq!(
            whole,
            [
                "The",
                "quick",
                "brown",
                "fox",
                "straße",
                "中文字",
                "naïve",
                "café",
                "jump",
                "ed",
                "𝐀𝐁c",
                "ok",
                "end",
                "tail"
            ]
        );
        for step in 1..=9 {
            assert_eq!(words_chunked(&data, step), whole, "step {step}");
        }
    }

    #[test]
    fn every_cut_point_of_multibyte_text() {
        let data = "añb中c𝐀d\u{0301}e".as_bytes();
        let whole = words(data);
        assert_eq!(whole, ["añb中c𝐀d", "e"]);
        for cut in 0..=data.len() {
            let mut splitter = WordSplitter::new();
            let mut out = Vec::new();
            let mut push = |w: &str| -> Result<(), ()> {
                out.push(w.to_owned());
                Ok(())
            };
            splitter.feed(&data[..cut], &mut push).unwrap();
            splitter.feed(&data[cut..], &mut push).unwrap();
            splitter.finish(&mut push).unwrap();
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn a_carried_prefix_broken_by_the_next_chunk() {
        // "a" + E4 | 41 "b": the E4 is invalid, "Ab" is a word of its own.
        let mut splitter = WordSplitter::new();
        let mut out = Vec::new();
        let mut push = |w: &str| -> Result<(), ()> {
            out.push(w.to_owned());
            Ok(())
        };
        splitter.feed(b"a\xe4", &mut push).unwrap();
        splitter.feed(b"Ab", &mut push).unwrap();
        splitter.finish(&mut push).unwrap();
        assert_eq!(out, ["a", "Ab"]);
    }

    #[test]
    fn callback_errors_stop_the_reading() {
        let mut reader: &[u8] = b"one two three";
        let mut seen = Vec::new();
        let err = try_for_each_word(&mut reader, |w| {
            seen.push(w.to_owned());
            if w == "two" {
                Err(io::Error::other("stop"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "stop");
        assert_eq!(seen, ["one", "two"]);
    }
}
