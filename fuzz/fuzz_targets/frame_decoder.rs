//! Arbitrary bytes as a stream of frames, decoded into the types that really travel.
//!
//! The first input byte picks the message type and the frame limit; the rest is the stream.
//! The stream is decoded three ways, which must agree frame for frame and end the same way:
//!
//! 1. `FrameReader::read_frame` over the whole stream (`&[u8]`, tokio's `AsyncRead`);
//! 2. `FrameReader::read_frame` over a reader that hands out the stream in small chunks and
//!    returns `Pending` between them, with the `read_frame` future **dropped** at every
//!    `Pending` (the reader claims to be cancel-safe: nothing may be lost or duplicated);
//! 3. the stateless `flotilla_wire::read_frame`, one call per frame.
//!
//! Any `Err` is fine. A panic, a future that stays `Pending` on a reader that is always
//! ready (a hang), a disagreement between the three, or memory use out of proportion to the
//! input (the reader must not allocate on the word of a length field) is a bug.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, ReadBuf};

use flotilla_wire::{
    FrameReader, Hello, Request, WireError, DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME,
};

// ---- an allocator that measures the peak of live bytes ------------------------------------

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---- polling without a runtime -------------------------------------------------------------

/// Polls `fut` to completion; the readers used here never wait for anything, so a `Pending`
/// that lasts is a hang.
fn block_on<T>(fut: impl Future<Output = T>) -> T {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("future still pending after 1,000,000 polls on an always-ready reader");
}

/// Hands out `data` at most `chunk` bytes at a time, returning `Pending` before each chunk.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
    pending_next: bool,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending_next {
            self.pending_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pending_next = true;
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// How a decoding run ended.
#[derive(Debug, PartialEq)]
enum End {
    Clean,
    TooLarge { len: u64, max: usize },
    Decode,
    Truncated,
    Other(String),
}

fn end_of(e: WireError) -> End {
    match e {
        WireError::FrameTooLarge { len, max } => End::TooLarge { len, max },
        WireError::Decode(_) => End::Decode,
        WireError::Truncated => End::Truncated,
        other => End::Other(other.to_string()),
    }
}

const MAX_FRAMES: usize = 10_000;

fn whole<T: DeserializeOwned>(stream: &[u8], max: usize) -> (Vec<T>, End) {
    let mut reader = FrameReader::new(max);
    let mut r = stream;
    let mut out = Vec::new();
    loop {
        assert!(out.len() <= MAX_FRAMES, "more frames than bytes");
        match block_on(reader.read_frame::<T>(&mut r)) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, End::Clean),
            Err(e) => return (out, end_of(e)),
        }
    }
}

fn cancelled<T: DeserializeOwned>(stream: &[u8], max: usize, chunk: usize) -> (Vec<T>, End) {
    let mut reader = FrameReader::new(max);
    let mut r = Chunked {
        data: stream,
        chunk,
        pending_next: false,
    };
    let mut out = Vec::new();
    let mut polls = 0usize;
    loop {
        assert!(out.len() <= MAX_FRAMES, "more frames than bytes");
        // A fresh future each time; dropped at its first `Pending`.
        let result = {
            let mut fut = pin!(reader.read_frame::<T>(&mut r));
            let mut cx = Context::from_waker(Waker::noop());
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            }
        };
        polls += 1;
        assert!(
            polls <= 4 * stream.len() + 16,
            "no progress with a chunked reader"
        );
        match result {
            None => continue,
            Some(Ok(Some(m))) => out.push(m),
            Some(Ok(None)) => return (out, End::Clean),
            Some(Err(e)) => return (out, end_of(e)),
        }
    }
}

fn stateless<T: DeserializeOwned>(stream: &[u8], max: usize) -> (Vec<T>, End) {
    let mut r = stream;
    let mut out = Vec::new();
    loop {
        assert!(out.len() <= MAX_FRAMES, "more frames than bytes");
        match block_on(flotilla_wire::read_frame::<T>(&mut r, max)) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, End::Clean),
            Err(e) => return (out, end_of(e)),
        }
    }
}

fn check<T: DeserializeOwned + PartialEq + Debug>(stream: &[u8], max: usize, chunk: usize) {
    // Live bytes besides the input may grow by the reader's buffer (what arrived, plus at
    // most 64 KiB of reserve, doubled by `Vec` growth), serde's cautious pre-allocation of
    // at most 1 MiB per collection being decoded (a few nest), and the decoded messages
    // (no bigger than their encoding, times a small factor).
    let bound = (4 << 20) + 16 * stream.len();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);

    let a = whole::<T>(stream, max);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert!(
        peak <= bound,
        "decoding {} bytes (limit {max}) took {peak} bytes of memory",
        stream.len()
    );
    let b = cancelled::<T>(stream, max, chunk);
    assert_eq!(a, b, "cancelled reads disagree with whole reads");
    let c = stateless::<T>(stream, max);
    assert_eq!(a, c, "the stateless read_frame disagrees with FrameReader");
}

/// `flotilla_runtime::port`'s limit for the `PeerIntro` frame (private there).
const INTRO_MAX_FRAME: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, stream)) = data.split_first() else {
        return;
    };
    // Low 2 bits: the type; the next bit: its real limit or a small one, so that frames
    // over the limit can be built from small inputs; the top bits: the chunk size.
    let small = 1 + (sel as usize >> 3) * 8;
    let real = sel & 4 == 0;
    let chunk = 1 + (sel as usize >> 5);
    match sel & 3 {
        0 => check::<flotilla_raft::Message>(
            stream,
            if real {
                flotilla_runtime::peer::PEER_MAX_FRAME
            } else {
                small
            },
            chunk,
        ),
        1 => check::<Request<flotilla_kv::Request>>(
            stream,
            if real { DEFAULT_MAX_FRAME } else { small },
            chunk,
        ),
        2 => check::<Hello>(
            stream,
            if real { HANDSHAKE_MAX_FRAME } else { small },
            chunk,
        ),
        _ => check::<flotilla_runtime::peer::PeerIntro>(
            stream,
            if real { INTRO_MAX_FRAME } else { small },
            chunk,
        ),
    }
});
