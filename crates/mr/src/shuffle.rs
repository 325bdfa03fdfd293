//! The shuffle without a shared file system (the paper's §3.1): a map worker keeps its
//! outputs on its own disk and serves them over TCP; a reduce fetches its segment of every
//! map task's output from the worker that holds it, into one local file, before merging.
//!
//! - [`serve_intermediates`]: the server a worker runs while it holds map outputs (in its
//!   work directory, as [`crate::task::intermediate_path`] names them). Each request names
//!   map task, attempt and reduce task; it answers with bytes of that segment, or says the
//!   output is lost (missing, truncated, corrupt: the same checks a reduce makes).
//! - [`fetch_segments`]: a reduce's fetch, chunk by chunk ([`FETCH_CHUNK`]), of every map
//!   task's segment. The fetched bytes are checked as they are merged (each segment's magic,
//!   record count and CRC-32), so a segment damaged on the way is found and reported like a
//!   damaged file.
//! - [`check_segment`]: the coordinator's check of an output a reduce reported lost, made
//!   by the worker that serves it: whether the writer or the reader is at fault.
//!
//! Nothing a peer sends is trusted: requests for files that are not there, offsets past a
//! segment's end and over-long chunks are answered with errors, and every call has a
//! timeout, so a peer that speaks garbage or hangs costs a failed fetch, never a wedged
//! worker.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_wire::{Client, Protocol, ServerConfig, WireError};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::protocol::Attempt;
use crate::task::{check_intermediate, locate_segment, FetchedSegments};

/// The shuffle's wire protocol. Bump `version` whenever a message below changes.
pub const PROTOCOL: Protocol = Protocol {
    service: "flotilla-mr-shuffle",
    version: 1,
};

/// The most bytes one fetch asks for.
pub const FETCH_CHUNK: u32 = 4 << 20;

/// Frames of the shuffle: a chunk and its header, with room to spare.
const MAX_FRAME: usize = FETCH_CHUNK as usize + (64 << 10);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShuffleRequest {
    /// Bytes `offset..offset + len` (`len` ≤ [`FETCH_CHUNK`]) of segment `reduce` of the
    /// output of attempt `attempt` of map task `map`.
    Fetch {
        map: usize,
        attempt: Attempt,
        reduce: usize,
        offset: u64,
        len: u32,
    },
    /// Read that segment through with every check a reduce makes.
    Check {
        map: usize,
        attempt: Attempt,
        reduce: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShuffleReply {
    /// Bytes of the segment (fewer than asked only at its end); `total` is its length.
    Data {
        total: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The segment is here and intact.
    Intact,
    /// This worker cannot serve the segment: why (missing, corrupt, unreadable).
    Lost(String),
    /// The request itself is wrong (a chunk too long, an offset past the end).
    Invalid(String),
}

/// Serves the map outputs in `dir` on `listener` until `shutdown` resolves.
pub async fn serve_intermediates(
    listener: TcpListener,
    dir: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let dir = Arc::new(dir);
    let handler = move |request: ShuffleRequest| Some(answer(&dir, request));
    flotilla_wire::serve(
        listener,
        PROTOCOL,
        ServerConfig::new(MAX_FRAME),
        handler,
        shutdown,
    )
    .await
}

/// Runs `f`, which reads files, where it may block: on a multi-thread runtime, off the
/// reactor's back.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn answer(dir: &Path, request: ShuffleRequest) -> ShuffleReply {
    match request {
        ShuffleRequest::Fetch {
            map,
            attempt,
            reduce,
            offset,
            len,
        } => {
            if len > FETCH_CHUNK {
                return ShuffleReply::Invalid(format!(
                    "a fetch of {len} bytes is over the limit of {FETCH_CHUNK}"
                ));
            }
            blocking(|| {
                let (file, start, total) = match locate_segment(dir, map, attempt, reduce) {
                    Ok(found) => found,
                    Err(e) => return ShuffleReply::Lost(e.to_string()),
                };
                if offset > total {
                    return ShuffleReply::Invalid(format!(
                        "offset {offset} is past the end of the {total}-byte segment"
                    ));
                }
                let mut data = vec![0; (total - offset).min(len as u64) as usize];
                match file.read_exact_at(&mut data, start + offset) {
                    Ok(()) => ShuffleReply::Data { total, data },
                    Err(e) => {
                        ShuffleReply::Lost(format!("cannot read map task {map}'s output: {e}"))
                    }
                }
            })
        }
        ShuffleRequest::Check {
            map,
            attempt,
            reduce,
        } => blocking(|| match check_intermediate(dir, map, attempt, reduce) {
            Ok(_) => ShuffleReply::Intact,
            Err(e) => ShuffleReply::Lost(e.to_string()),
        }),
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Map task `map`'s output could not be had from the worker serving it.
    #[error("{why}")]
    Map { map: usize, why: String },
    /// This worker failed (its disk), not the map output.
    #[error("{0}")]
    Local(String),
}

type ShuffleClient = Client<ShuffleRequest, ShuffleReply>;

/// One connection per serving worker, made when first needed; a broken one is dropped.
struct Connections {
    clients: HashMap<SocketAddr, ShuffleClient>,
    timeout: Duration,
}

impl Connections {
    async fn call(
        &mut self,
        at: SocketAddr,
        request: &ShuffleRequest,
    ) -> Result<ShuffleReply, String> {
        let client = match self.clients.get_mut(&at) {
            Some(client) if client.is_usable() => client,
            _ => {
                let connect = Client::connect(at, PROTOCOL, MAX_FRAME);
                let client = match tokio::time::timeout(self.timeout, connect).await {
                    Ok(Ok(client)) => client,
                    Ok(Err(e)) => return Err(format!("cannot reach the worker at {at}: {e}")),
                    Err(_) => {
                        return Err(format!(
                            "cannot reach the worker at {at}: no answer within {:?}",
                            self.timeout
                        ))
                    }
                };
                self.clients.insert(at, client);
                self.clients.get_mut(&at).expect("just inserted")
            }
        };
        client
            .call(request, self.timeout)
            .await
            .map_err(|e: WireError| format!("the worker at {at}: {e}"))
    }
}

/// Fetches segment `reduce` of map task `m`'s output (attempt `map_attempts[m]`, served at
/// `servers[m]`) for every map task into one unnamed file in `dir`. `timeout` bounds each
/// connect and each call.
pub async fn fetch_segments(
    servers: &[SocketAddr],
    map_attempts: &[Attempt],
    reduce: usize,
    dir: &Path,
    timeout: Duration,
) -> Result<FetchedSegments, FetchError> {
    if servers.len() != map_attempts.len() {
        return Err(FetchError::Local(format!(
            "{} servers for {} map tasks",
            servers.len(),
            map_attempts.len()
        )));
    }
    let local = |e: io::Error| {
        FetchError::Local(format!(
            "cannot write fetched map outputs in {}: {e}",
            dir.display()
        ))
    };
    let file = tempfile::tempfile_in(dir).map_err(local)?;
    let mut connections = Connections {
        clients: HashMap::new(),
        timeout,
    };
    let mut segments = Vec::with_capacity(servers.len());
    let mut origins = Vec::with_capacity(servers.len());
    let mut end = 0u64;
    let mut out = io::BufWriter::with_capacity(1 << 20, &file);
    for (map, (&at, &attempt)) in servers.iter().zip(map_attempts).enumerate() {
        let lost = |why: String| FetchError::Map { map, why };
        let start = end;
        let mut offset = 0u64;
        loop {
            let request = ShuffleRequest::Fetch {
                map,
                attempt,
                reduce,
                offset,
                len: FETCH_CHUNK,
            };
            let (total, data) = match connections.call(at, &request).await.map_err(lost)? {
                ShuffleReply::Data { total, data } => (total, data),
                ShuffleReply::Lost(why) => return Err(lost(why)),
                other => {
                    return Err(lost(format!(
                        "the worker at {at} answered a fetch with {other:?}"
                    )))
                }
            };
            if data.is_empty() && offset < total || offset + data.len() as u64 > total {
                return Err(lost(format!(
                    "the worker at {at} sent {} bytes at offset {offset} of a {total}-byte \
                     segment",
                    data.len()
                )));
            }
            out.write_all(&data).map_err(local)?;
            offset += data.len() as u64;
            if offset == total {
                break;
            }
        }
        end += offset;
        segments.push((start, offset));
        origins.push(format!(
            "the output of attempt {attempt} of map task {map} for reduce task {reduce}, \
             fetched from the worker at {at}"
        ));
    }
    out.flush().map_err(local)?;
    drop(out);
    Ok(FetchedSegments {
        file,
        segments,
        origins,
    })
}

/// Asks the worker at `at` whether segment `reduce` of attempt `attempt` of map task `map`'s
/// output is there and intact. Unreachable (within `timeout` for the connect and for the
/// check) counts as lost.
pub async fn check_segment(
    at: SocketAddr,
    map: usize,
    attempt: Attempt,
    reduce: usize,
    timeout: Duration,
) -> Result<(), String> {
    let mut connections = Connections {
        clients: HashMap::new(),
        timeout,
    };
    let request = ShuffleRequest::Check {
        map,
        attempt,
        reduce,
    };
    match connections.call(at, &request).await? {
        ShuffleReply::Intact => Ok(()),
        ShuffleReply::Lost(why) => Err(why),
        other => Err(format!(
            "the worker at {at} answered a check with {other:?}"
        )),
    }
}
