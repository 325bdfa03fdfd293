//! The frame codec: one message = a 4-byte big-endian length, then that many bytes of postcard.
//!
//! Two ways to use it:
//!
//! - [`read_frame`] and [`write_frame`], stateless functions for one frame at a time. Neither
//!   reads past the frame it returns, so they can be mixed with other reads of the same stream;
//!   each call allocates its buffer.
//! - [`FrameReader`] and [`FrameWriter`], which keep their buffers between frames. A reader
//!   reads as much as the socket has (many small frames per system call) and is
//!   **cancel-safe**: a `read_frame` future dropped mid-frame (by a timeout, say) loses
//!   nothing, and the next call continues where it stopped. The server and the client are
//!   built on these.
//!
//! Guarantees, for both:
//!
//! - A length above the limit is rejected as soon as the 4 length bytes are in, before any of
//!   the payload is read or buffered (so a lying peer costs nothing). A limit above `u32::MAX`
//!   is taken as `u32::MAX`, the largest length the header can state.
//! - A frame decodes only if the payload is exactly one message: bytes left over are an error.
//! - End of stream before the first length byte is a clean end (`Ok(None)`); anywhere else it
//!   is [`WireError::Truncated`].
//! - A writer sends a frame as one buffer (length and payload together) with one
//!   `write_all`, then flushes; a message over the limit is refused before anything is sent.
//!
//! After an error other than a refused write, the stream is no longer at a frame boundary:
//! drop the connection.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::WireError;

/// The frame size limit used unless a service configures another: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// Bytes of the length field that starts every frame.
pub const HEADER_LEN: usize = 4;

/// Buffer capacity a reader starts with.
const INITIAL_CAPACITY: usize = 8 << 10;
/// A reader asks the socket for at least this much at a time (when the frame needs that much).
const MIN_READ: usize = 4 << 10;
/// ... and grows its buffer by at most this much at a time, so a peer announcing a large frame
/// and sending little of it does not make the reader allocate the whole frame up front.
const MAX_RESERVE: usize = 64 << 10;
/// A buffer grown past this for one large frame is released once that frame is done.
const KEEP_CAPACITY: usize = 1 << 20;

/// The limit that actually applies: the header cannot state more than `u32::MAX`.
fn effective_max(max: usize) -> usize {
    max.min(u32::MAX as usize)
}

/// A postcard output that appends to a borrowed `Vec` (so the `Vec`'s allocation is reused).
struct AppendToVec<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendToVec<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends one frame carrying `msg` to `buf`. On error, `buf` is left exactly as it was.
pub fn encode_frame<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    msg: &T,
    max: usize,
) -> Result<(), WireError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = postcard::serialize_with_flavor(msg, AppendToVec(buf)) {
        buf.truncate(start);
        return Err(WireError::Encode(e.to_string()));
    }
    let len = buf.len() - start - HEADER_LEN;
    let max = effective_max(max);
    if len > max {
        buf.truncate(start);
        return Err(WireError::FrameTooLarge {
            len: len as u64,
            max,
        });
    }
    let header = u32::try_from(len).expect("len <= effective_max <= u32::MAX");
    buf[start..start + HEADER_LEN].copy_from_slice(&header.to_be_bytes());
    Ok(())
}

/// The payload length a header announces, if it is within the limit.
fn checked_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header);
    let max = effective_max(max);
    if len as usize > max {
        return Err(WireError::FrameTooLarge {
            len: len.into(),
            max,
        });
    }
    Ok(len as usize)
}

/// Decodes a payload that must hold exactly one `T`.
fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    let (msg, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|e| WireError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Decode(format!(
            "{} bytes left over after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Reads one frame and decodes it as a `T`.
///
/// Returns `Ok(None)` if the stream ends cleanly before the frame starts. Reads exactly the
/// frame's bytes and no more. Not cancel-safe: if the future is dropped part-way, the stream
/// is left mid-frame (use [`FrameReader`] where a read may be cancelled).
pub async fn read_frame<T: DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Option<T>, WireError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(WireError::Truncated)
            };
        }
        got += n;
    }
    let len = checked_len(header, max)?;
    // Grows with the data that arrives, so a peer that announces more than it sends costs
    // only what it sent.
    let mut payload = Vec::new();
    (&mut *r).take(len as u64).read_to_end(&mut payload).await?;
    if payload.len() < len {
        return Err(WireError::Truncated);
    }
    decode_payload(&payload).map(Some)
}

/// Encodes `msg` as one frame and writes it with a single `write_all`, then flushes.
///
/// Refuses (with [`WireError::FrameTooLarge`], having written nothing) a message whose
/// encoding exceeds `max` bytes. The message is encoded when this function is called, so the
/// returned future does not borrow it (and is `Send` whatever `T` is). Not cancel-safe: a
/// future dropped part-way may leave part of the frame written.
pub fn write_frame<'w, T: Serialize + ?Sized>(
    w: &'w mut (impl AsyncWrite + Unpin),
    msg: &T,
    max: usize,
) -> impl Future<Output = Result<(), WireError>> + 'w {
    let mut buf = Vec::new();
    let encoded = encode_frame(&mut buf, msg, max);
    async move {
        encoded?;
        w.write_all(&buf).await?;
        w.flush().await?;
        Ok(())
    }
}

/// Reads frames from a stream through a buffer kept between frames. Cancel-safe.
///
/// Invariant: `buf[pos..]` holds the bytes received but not yet returned as frames; they
/// start at a frame boundary.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    pos: usize,
    max: usize,
}

impl FrameReader {
    /// A reader that rejects frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameReader {
            buf: Vec::with_capacity(INITIAL_CAPACITY),
            pos: 0,
            max,
        }
    }

    /// The current frame size limit.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// Changes the frame size limit for the frames not yet returned.
    pub fn set_max_frame(&mut self, max: usize) {
        self.max = max;
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The payload length of the frame being received, once its header is in (`None`
    /// before): how much a reader still in the middle of a frame is waiting for.
    pub fn pending_frame_len(&self) -> Option<usize> {
        self.buf[self.pos..]
            .first_chunk::<HEADER_LEN>()
            .map(|header| u32::from_be_bytes(*header) as usize)
    }

    /// Reads the next frame and decodes it as a `T`; `Ok(None)` if the stream ends cleanly at
    /// a frame boundary.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no data is lost and the next
    /// call returns the same frame.
    pub async fn read_frame<T: DeserializeOwned>(
        &mut self,
        r: &mut (impl AsyncRead + Unpin),
    ) -> Result<Option<T>, WireError> {
        loop {
            if let Some(msg) = self.next_buffered()? {
                return Ok(Some(msg));
            }
            self.make_room();
            // The only await: `read_buf` is cancel-safe (it either appends bytes or does
            // nothing), and every other step is synchronous, so the reader is too.
            if r.read_buf(&mut self.buf).await? == 0 {
                return if self.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                };
            }
        }
    }

    /// Waits until at least one byte of the next frame is buffered (returns at once if one
    /// already is); `Ok(false)` if the stream ends first. Lets a caller tell a peer that sends
    /// nothing (idle) from one that is in the middle of a frame.
    ///
    /// Cancel-safe, like [`FrameReader::read_frame`]: the bytes it reads stay buffered for
    /// the next call of either.
    pub async fn wait_for_data(
        &mut self,
        r: &mut (impl AsyncRead + Unpin),
    ) -> Result<bool, WireError> {
        if self.buffered() > 0 {
            return Ok(true);
        }
        self.make_room();
        Ok(r.read_buf(&mut self.buf).await? > 0)
    }

    /// The next frame if it is wholly in the buffer; checks the length as soon as it is in.
    fn next_buffered<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        let avail = &self.buf[self.pos..];
        let Some(header) = avail.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = checked_len(*header, self.max)?;
        // (Saturating: on a 32-bit target, 4 + u32::MAX does not fit in a usize.)
        let Some(payload) = avail.get(HEADER_LEN..HEADER_LEN.saturating_add(len)) else {
            return Ok(None);
        };
        let msg = decode_payload(payload);
        self.pos += HEADER_LEN + len; // fits: the frame is in the buffer
        msg.map(Some)
    }

    /// Bytes still needed to complete the frame at the front of the buffer (at least 1).
    fn missing(&self) -> usize {
        let avail = &self.buf[self.pos..];
        match avail.first_chunk::<HEADER_LEN>() {
            None => HEADER_LEN - avail.len(),
            Some(header) => HEADER_LEN
                .saturating_add(u32::from_be_bytes(*header) as usize)
                .saturating_sub(avail.len()),
        }
        .max(1)
    }

    /// Makes spare capacity for the next read, reusing the buffer where possible.
    fn make_room(&mut self) {
        if self.pos == self.buf.len() {
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::with_capacity(INITIAL_CAPACITY);
            } else {
                self.buf.clear();
            }
            self.pos = 0;
        }
        let want = self.missing().clamp(MIN_READ, MAX_RESERVE);
        if self.buf.capacity() - self.buf.len() < want {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.buf.reserve(want);
        }
        debug_assert!(self.buf.capacity() > self.buf.len());
    }
}

/// Writes frames through a buffer kept between frames.
#[derive(Debug)]
pub struct FrameWriter {
    buf: Vec<u8>,
    max: usize,
}

impl FrameWriter {
    /// A writer that refuses to send frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameWriter {
            buf: Vec::with_capacity(INITIAL_CAPACITY),
            max,
        }
    }

    /// The frame size limit.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// Changes the frame size limit.
    pub fn set_max_frame(&mut self, max: usize) {
        self.max = max;
    }

    /// Encodes `msg` as one frame, writes it with one `write_all` and flushes. A message over
    /// the limit is refused with nothing written. The message is encoded when this method is
    /// called, so the returned future does not borrow it. Not cancel-safe.
    pub fn write_frame<'a, T: Serialize + ?Sized>(
        &'a mut self,
        w: &'a mut (impl AsyncWrite + Unpin),
        msg: &T,
    ) -> impl Future<Output = Result<(), WireError>> + 'a {
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::with_capacity(INITIAL_CAPACITY);
        }
        self.buf.clear();
        let encoded = encode_frame(&mut self.buf, msg, self.max);
        let buf = &self.buf;
        async move {
            encoded?;
            w.write_all(buf).await?;
            w.flush().await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;
    use tokio::io::{duplex, AsyncWriteExt};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        n: u64,
        text: String,
        bytes: Vec<u8>,
    }

    fn msg(n: u64) -> Msg {
        Msg {
            n,
            text: format!("message {n}"),
            bytes: vec![n as u8; n as usize % 100],
        }
    }

    /// The bytes of one frame carrying `m`.
    fn frame_bytes<T: Serialize>(m: &T) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_frame(&mut buf, m, DEFAULT_MAX_FRAME).unwrap();
        buf
    }

    #[test]
    fn frame_is_big_endian_length_then_postcard() {
        let m = msg(3);
        let bytes = frame_bytes(&m);
        let payload = postcard::to_stdvec(&m).unwrap();
        assert_eq!(bytes[..4], (payload.len() as u32).to_be_bytes());
        assert_eq!(bytes[4..], payload[..]);
    }

    #[tokio::test]
    async fn functions_round_trip_and_end_cleanly() {
        let (mut a, mut b) = duplex(64);
        let writer = tokio::spawn(async move {
            for n in 0..50 {
                write_frame(&mut a, &msg(n), DEFAULT_MAX_FRAME)
                    .await
                    .unwrap();
            }
        });
        for n in 0..50 {
            let got: Option<Msg> = read_frame(&mut b, DEFAULT_MAX_FRAME).await.unwrap();
            assert_eq!(got, Some(msg(n)));
        }
        writer.await.unwrap();
        let end: Option<Msg> = read_frame(&mut b, DEFAULT_MAX_FRAME).await.unwrap();
        assert_eq!(end, None, "clean EOF at a frame boundary");
    }

    #[tokio::test]
    async fn reader_round_trips_many_frames_per_read_and_frames_split_in_bytes() {
        let mut all = Vec::new();
        for n in 0..200 {
            all.extend(frame_bytes(&msg(n)));
        }
        // All at once: many frames per read.
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        let mut src = &all[..];
        for n in 0..200 {
            assert_eq!(reader.read_frame(&mut src).await.unwrap(), Some(msg(n)));
        }
        assert_eq!(reader.read_frame::<Msg>(&mut src).await.unwrap(), None);

        // One byte at a time: every frame split at every point.
        let (mut a, mut b) = duplex(1);
        let bytes = all.clone();
        let writer = tokio::spawn(async move {
            for byte in bytes {
                a.write_all(&[byte]).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        for n in 0..200 {
            assert_eq!(reader.read_frame(&mut b).await.unwrap(), Some(msg(n)));
        }
        writer.await.unwrap();
        assert_eq!(reader.read_frame::<Msg>(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn writer_round_trips_through_reader() {
        let (mut a, mut b) = duplex(1024);
        let writer = tokio::spawn(async move {
            let mut w = FrameWriter::new(DEFAULT_MAX_FRAME);
            for n in 0..100 {
                w.write_frame(&mut a, &msg(n)).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        for n in 0..100 {
            assert_eq!(reader.read_frame(&mut b).await.unwrap(), Some(msg(n)));
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_truncated() {
        let bytes = frame_bytes(&msg(42));
        for cut in 1..bytes.len() {
            let mut src = &bytes[..cut];
            let got = read_frame::<Msg>(&mut src, DEFAULT_MAX_FRAME).await;
            assert!(
                matches!(got, Err(WireError::Truncated)),
                "cut {cut}: {got:?}"
            );
            let mut src = &bytes[..cut];
            let got = FrameReader::new(DEFAULT_MAX_FRAME)
                .read_frame::<Msg>(&mut src)
                .await;
            assert!(
                matches!(got, Err(WireError::Truncated)),
                "cut {cut}: {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn oversized_length_is_rejected_before_the_payload() {
        // The header alone announces too much: rejected without waiting for the payload
        // (which never comes: the other end stays open).
        let (mut a, mut b) = duplex(64);
        a.write_all(&1001u32.to_be_bytes()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), read_frame::<Msg>(&mut b, 1000))
            .await
            .expect("rejected without waiting for the payload");
        assert!(
            matches!(
                got,
                Err(WireError::FrameTooLarge {
                    len: 1001,
                    max: 1000
                })
            ),
            "{got:?}"
        );
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            FrameReader::new(1000).read_frame::<Msg>(&mut b),
        )
        .await
        .expect("rejected without waiting for the payload");
        assert!(
            matches!(got, Err(WireError::FrameTooLarge { .. })),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn exactly_max_is_accepted() {
        let payload = vec![7u8; 100];
        let bytes = frame_bytes(&payload);
        let max = bytes.len() - HEADER_LEN;
        let mut src = &bytes[..];
        assert_eq!(
            read_frame::<Vec<u8>>(&mut src, max).await.unwrap(),
            Some(payload.clone())
        );
        let mut src = &bytes[..];
        assert!(matches!(
            read_frame::<Vec<u8>>(&mut src, max - 1).await,
            Err(WireError::FrameTooLarge { .. })
        ));
        let mut out = Vec::new();
        write_frame(&mut out, &payload, max).await.unwrap();
        assert_eq!(out, bytes);
    }

    #[tokio::test]
    async fn write_frame_refuses_oversized_and_writes_nothing() {
        let big = vec![0u8; 2000];
        let mut out = Vec::new();
        let got = write_frame(&mut out, &big, 1000).await;
        assert!(
            matches!(got, Err(WireError::FrameTooLarge { len, max: 1000 }) if len > 2000),
            "{got:?}"
        );
        assert!(out.is_empty());

        let mut w = FrameWriter::new(1000);
        let got = w.write_frame(&mut out, &big).await;
        assert!(
            matches!(got, Err(WireError::FrameTooLarge { .. })),
            "{got:?}"
        );
        assert!(out.is_empty());
        // The writer is still good for a message that fits.
        w.write_frame(&mut out, &msg(1)).await.unwrap();
        assert_eq!(out, frame_bytes(&msg(1)));
    }

    #[tokio::test]
    async fn malformed_payloads_are_decode_errors() {
        // A varint that never ends, in a frame of valid length.
        let mut bad = 16u32.to_be_bytes().to_vec();
        bad.extend([0xFF; 16]);
        let mut src = &bad[..];
        let got = read_frame::<Msg>(&mut src, DEFAULT_MAX_FRAME).await;
        assert!(matches!(got, Err(WireError::Decode(_))), "{got:?}");

        // A good message with bytes left over.
        let mut payload = postcard::to_stdvec(&msg(5)).unwrap();
        payload.extend([1, 2, 3]);
        let mut bad = (payload.len() as u32).to_be_bytes().to_vec();
        bad.extend(payload);
        let mut src = &bad[..];
        let got = FrameReader::new(DEFAULT_MAX_FRAME)
            .read_frame::<Msg>(&mut src)
            .await;
        assert!(
            matches!(&got, Err(WireError::Decode(m)) if m.contains("3 bytes left over")),
            "{got:?}"
        );

        // A string length far beyond the frame: an error, not an allocation.
        let mut payload = vec![1]; // n = 1
        payload.extend([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]); // text length u32::MAX
        let mut bad = (payload.len() as u32).to_be_bytes().to_vec();
        bad.extend(payload);
        let mut src = &bad[..];
        let got = read_frame::<Msg>(&mut src, DEFAULT_MAX_FRAME).await;
        assert!(matches!(got, Err(WireError::Decode(_))), "{got:?}");
    }

    #[tokio::test]
    async fn reader_is_cancel_safe() {
        let bytes = frame_bytes(&msg(77));
        let (mut a, mut b) = duplex(1024);
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        a.write_all(&bytes[..10]).await.unwrap();
        // The read is cancelled while the frame is incomplete ...
        let cancelled =
            tokio::time::timeout(Duration::from_millis(20), reader.read_frame::<Msg>(&mut b)).await;
        assert!(cancelled.is_err());
        assert_eq!(reader.buffered(), 10);
        // ... and the next read completes the same frame.
        a.write_all(&bytes[10..]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader.read_frame::<Msg>(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Some(msg(77)));
    }

    #[tokio::test]
    async fn wait_for_data_keeps_what_it_reads_for_the_frame() {
        let bytes = frame_bytes(&msg(5));
        let (mut a, mut b) = duplex(1024);
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        // Nothing sent: it waits (and a cancelled wait loses nothing).
        let waited =
            tokio::time::timeout(Duration::from_millis(20), reader.wait_for_data(&mut b)).await;
        assert!(waited.is_err());
        a.write_all(&bytes[..3]).await.unwrap();
        assert!(reader.wait_for_data(&mut b).await.unwrap());
        assert_eq!(reader.buffered(), 3);
        // Already buffered: returns at once without reading (nothing more is coming).
        let at_once = tokio::time::timeout(Duration::from_secs(5), reader.wait_for_data(&mut b));
        assert!(at_once.await.expect("returned at once").unwrap());
        assert_eq!(reader.buffered(), 3);
        a.write_all(&bytes[3..]).await.unwrap();
        assert_eq!(reader.read_frame(&mut b).await.unwrap(), Some(msg(5)));
        drop(a);
        assert!(
            !reader.wait_for_data(&mut b).await.unwrap(),
            "end of stream"
        );
    }

    #[tokio::test]
    async fn reader_releases_a_buffer_grown_for_a_large_frame() {
        let big = vec![9u8; 4 << 20];
        let mut bytes = frame_bytes(&big);
        bytes.extend(frame_bytes(&msg(1)));
        let mut src = &bytes[..];
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        assert_eq!(reader.read_frame(&mut src).await.unwrap(), Some(big));
        assert_eq!(reader.read_frame(&mut src).await.unwrap(), Some(msg(1)));
        assert_eq!(reader.read_frame::<Msg>(&mut src).await.unwrap(), None);
        assert!(reader.buf.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn limit_above_u32_is_clamped() {
        assert_eq!(effective_max(usize::MAX), u32::MAX as usize);
        assert!(checked_len(u32::MAX.to_be_bytes(), usize::MAX).is_ok());
    }
}
