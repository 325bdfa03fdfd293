//! etcd's `Watch` service: one bidirectional stream per call, its watchers kept by a
//! [`flotilla_mvcc::watch::WatchStream`] hub, fed every revision this member applies.
//!
//! Each call runs one task that reads the client's requests (create, cancel, progress),
//! follows [`Backend::applied`] and writes the responses, in order, to a bounded channel
//! the response stream drains. Feeding: the task keeps `fed`, the last revision the hub was
//! fed; whenever the backend applied something (and before every create, progress request
//! and progress tick) it asks [`RecentChanges::since`] for the revisions after `fed` and
//! feeds them to the hub one by one, all inside one [`Backend::with_store`] call, so a
//! watcher is created on the store exactly as far as the hub has been fed.
//!
//! As etcd answers:
//! - a create is answered `created` with its watch id and the store's revision, then the
//!   changes since its start revision, then every change of its range once, in revision
//!   order (one response per revision); an empty key is `\0`, the smallest; a range end
//!   of `\0` is every key from the key on; the `NOPUT`/`NODELETE` filters and `prev_kv`
//!   shape what it is sent;
//! - a start revision compacted away: `created`, then a response that cancels the watcher
//!   with `compact_revision` (the client re-reads and watches again from there); a
//!   negative one, or a watch id already in use on the stream: created and canceled at
//!   once, with watch id -1 and the reason;
//! - cancel: a `canceled` response (nothing for an unknown id); a progress request: a
//!   response for watch id -1 with the revision everything before has been sent up to;
//! - `progress_notify`: every [`ServeOptions::progress_notify_interval`], a watcher that
//!   was sent no event since the last tick is sent an empty response with its id and the
//!   store's revision (etcd 10 minutes by default; etcd's jitter is left out);
//! - if this stream fell so far behind that the revisions it still owes were compacted
//!   away (possible only after it waited on a slow client), every watcher of the stream is
//!   canceled with the compaction revision, as etcd cancels its compacted slow watchers.
//!
//! Bounded memory: the channel holds at most [`ServeOptions::watch_buffer`] responses.
//! When it is full the task stops reading requests and feeding (the owed revisions wait in
//! the store's history, not in this stream), and if the client does not make room within
//! [`ServeOptions::slow_watch_timeout`] the stream ends with `UNAVAILABLE` (one slot is
//! always kept free for that status, so the client learns why after the responses before
//! it). etcd's clients (clientv3, etcdctl) answer `UNAVAILABLE` by opening a new stream and
//! watching again from the revision after the last one they saw. Besides the channel, a
//! stream holds at most what one feeding or one create's replay produces.
//!
//! The stream ends when the client cancels the call or goes away (the task sees the
//! response stream dropped), and with `UNAVAILABLE` when the server stops. A client that
//! only closes its sending side keeps its watchers, as with etcd. Fragmenting large
//! responses (`fragment`) is not done: every response is whole.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_mvcc::changes::RecentChanges;
use flotilla_mvcc::watch::{self as hub, WatchCreate, WatchId};
use flotilla_mvcc::{KeyRange, MvccStore, Revision};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::pb::etcdserverpb as pb;
use crate::server::{self, header, Backend, ServeOptions, Stopping};
use pb::watch_request::RequestUnion;
use pb::watch_server::Watch;

/// The watch id of responses for no one watcher (etcd's `InvalidWatchID`).
pub const NO_WATCH_ID: WatchId = -1;

/// etcd's reason for refusing a watch id already in use on the stream.
pub const ERR_DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// etcd's reason for refusing a compacted (or negative) start revision.
pub const ERR_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// etcd's `Watch` service.
pub struct WatchService<B> {
    backend: Arc<B>,
    options: ServeOptions,
    stopping: Stopping,
}

impl<B> WatchService<B> {
    pub(crate) fn new(backend: Arc<B>, options: &ServeOptions, stopping: Stopping) -> Self {
        WatchService {
            backend,
            options: options.clone(),
            stopping,
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> Watch for WatchService<B> {
    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(self.options.watch_buffer.max(2));
        let stream = StreamTask {
            backend: Arc::clone(&self.backend),
            hub: hub::WatchStream::new(),
            fed: 0,
            watchers: BTreeMap::new(),
            tx,
            slow_timeout: self.options.slow_watch_timeout,
            stopping: self.stopping.clone(),
        };
        tokio::spawn(stream.run(
            request.into_inner(),
            self.stopping.clone(),
            self.options.progress_notify_interval,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What a watcher is owed besides its changes.
#[derive(Clone, Copy, Debug)]
struct Watcher {
    progress_notify: bool,
    /// No event was sent to it since the last progress tick.
    quiet: bool,
}

/// Why a stream ends.
enum End {
    /// The client went away: nothing more to say.
    Gone,
    /// The stream ends with this status.
    Error(Status),
}

/// One call's state (see the module docs).
struct StreamTask<B> {
    backend: Arc<B>,
    hub: hub::WatchStream,
    /// Every revision up to this one has been fed to `hub`.
    fed: Revision,
    watchers: BTreeMap<WatchId, Watcher>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    slow_timeout: Duration,
    /// For waits inside a step (the loop of `run` has its own).
    stopping: Stopping,
}

/// What woke the stream's task.
enum Wake {
    Request(Result<Option<pb::WatchRequest>, Status>),
    Applied(bool),
    Tick,
    Gone,
    Stopping,
}

impl<B: Backend> StreamTask<B> {
    async fn run(
        mut self,
        mut requests: Streaming<pb::WatchRequest>,
        mut stopping: Stopping,
        progress_interval: Duration,
    ) {
        let mut applied = self.backend.applied();
        applied.borrow_and_update();
        self.fed = server::current_revision(&*self.backend);
        let every = progress_interval.max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reading = true;
        let end = loop {
            let wake = tokio::select! {
                request = requests.message(), if reading => Wake::Request(request),
                changed = applied.changed() => Wake::Applied(changed.is_ok()),
                _ = ticks.tick() => Wake::Tick,
                _ = self.tx.closed() => Wake::Gone,
                _ = server::stopped(&mut stopping) => Wake::Stopping,
            };
            let step = match wake {
                Wake::Request(Ok(Some(request))) => self.on_request(request).await,
                // The client closed its side: its watchers stay (as with etcd).
                Wake::Request(Ok(None)) => {
                    reading = false;
                    Ok(())
                }
                // A request that could not be read, or the call was reset: said to the
                // client if it still listens.
                Wake::Request(Err(status)) => Err(End::Error(status)),
                Wake::Applied(true) => self.catch_up().await,
                Wake::Applied(false) => Err(End::Error(server::server_stopping())),
                Wake::Tick => self.on_tick().await,
                Wake::Gone => Err(End::Gone),
                Wake::Stopping => Err(End::Error(server::server_stopping())),
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let End::Error(status) = end {
            // A slot is always free (see `send`).
            let _ = self.tx.try_send(Err(status));
        }
    }

    async fn on_request(&mut self, request: pb::WatchRequest) -> Result<(), End> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                match self.hub.cancel(cancel.watch_id, self.fed) {
                    Some(canceled) => {
                        self.watchers.remove(&cancel.watch_id);
                        self.send_hub(canceled).await
                    }
                    None => Ok(()), // no such watcher: etcd says nothing
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.catch_up().await?;
                let progress = self.hub.progress(self.fed);
                self.send_hub(progress).await
            }
            None => Ok(()), // etcd ignores a request of no known kind
        }
    }

    async fn create(&mut self, request: pb::WatchCreateRequest) -> Result<(), End> {
        if request.start_revision < 0 {
            return self.refuse(ERR_COMPACTED).await;
        }
        let key = if request.key.is_empty() {
            vec![0] // \0: the smallest key
        } else {
            request.key
        };
        let filter =
            |f: pb::watch_create_request::FilterType| request.filters.contains(&(f as i32));
        let create = WatchCreate {
            range: KeyRange {
                key,
                range_end: request.range_end,
            },
            start_revision: request.start_revision,
            no_put: filter(pb::watch_create_request::FilterType::Noput),
            no_delete: filter(pb::watch_create_request::FilterType::Nodelete),
            prev_kv: request.prev_kv,
            watch_id: request.watch_id,
        };
        let backend = Arc::clone(&self.backend);
        let (fed, created) = backend.with_store(|store, recent| {
            let fed = self.feed(store, recent);
            (fed, self.hub.create(store, create))
        });
        self.send_all(fed).await?;
        let mut responses = match created {
            Ok(responses) => responses,
            Err(hub::WatchError::IdInUse(_)) => return self.refuse(ERR_DUPLICATE_WATCH_ID).await,
        };
        let Some(first) = responses.first_mut() else {
            return Ok(());
        };
        if first.canceled && first.compact_revision != 0 {
            // Compacted away: etcd answers `created`, then cancels the watcher with the
            // compaction revision (the hub does not keep it).
            let mut canceled = first.clone();
            canceled.created = false;
            first.canceled = false;
            first.compact_revision = 0;
            first.cancel_reason.clear();
            responses.push(canceled);
        } else {
            self.watchers.insert(
                first.watch_id,
                Watcher {
                    progress_notify: request.progress_notify,
                    quiet: true,
                },
            );
        }
        self.send_all(responses).await
    }

    /// A create refused at once: created and canceled, for no watcher, with the reason.
    async fn refuse(&mut self, reason: &str) -> Result<(), End> {
        let response = pb::WatchResponse {
            header: Some(header(&*self.backend, self.fed)),
            watch_id: NO_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.into(),
            ..Default::default()
        };
        self.send(response).await
    }

    /// Feeds the hub every revision after `fed` up to `store`'s; what it owes for them. If
    /// they are compacted away, every watcher is canceled with the compaction revision.
    fn feed(&mut self, store: &MvccStore, recent: &RecentChanges) -> Vec<hub::WatchResponse> {
        let mut out = Vec::new();
        if !self.hub.is_empty() {
            match recent.since(store, self.fed) {
                Ok(changes) => {
                    for (revision, events) in changes {
                        out.extend(self.hub.on_applied(revision, &events));
                    }
                }
                Err(_) => {
                    for id in std::mem::take(&mut self.watchers).into_keys() {
                        if let Some(mut canceled) = self.hub.cancel(id, store.revision()) {
                            canceled.compact_revision = store.compacted();
                            canceled.cancel_reason = ERR_COMPACTED.into();
                            out.push(canceled);
                        }
                    }
                }
            }
        }
        self.fed = store.revision();
        out
    }

    /// Feeds the hub up to the store's revision and sends what it owes.
    async fn catch_up(&mut self) -> Result<(), End> {
        let backend = Arc::clone(&self.backend);
        let fed = backend.with_store(|store, recent| self.feed(store, recent));
        self.send_all(fed).await
    }

    async fn on_tick(&mut self) -> Result<(), End> {
        self.catch_up().await?;
        let owed: Vec<WatchId> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && w.quiet)
            .map(|(id, _)| *id)
            .collect();
        for watcher in self.watchers.values_mut() {
            watcher.quiet = true;
        }
        for id in owed {
            let mut progress = self.hub.progress(self.fed);
            progress.watch_id = id;
            self.send_hub(progress).await?;
        }
        Ok(())
    }

    async fn send_all(&mut self, responses: Vec<hub::WatchResponse>) -> Result<(), End> {
        for response in responses {
            self.send_hub(response).await?;
        }
        Ok(())
    }

    async fn send_hub(&mut self, response: hub::WatchResponse) -> Result<(), End> {
        if !response.events.is_empty() {
            if let Some(watcher) = self.watchers.get_mut(&response.watch_id) {
                watcher.quiet = false;
            }
        }
        let backend = &*self.backend;
        let response = convert::watch_response(|revision| header(backend, revision), response);
        self.send(response).await
    }

    /// Sends one response, keeping one slot of the channel free for the status a stream
    /// may end with; waits at most the slow-client timeout for room.
    async fn send(&mut self, response: pb::WatchResponse) -> Result<(), End> {
        let room = tokio::select! {
            room = tokio::time::timeout(self.slow_timeout, self.tx.reserve_many(2)) => room,
            _ = server::stopped(&mut self.stopping) => {
                return Err(End::Error(server::server_stopping()))
            }
        };
        match room {
            Ok(Ok(mut permits)) => {
                if let Some(permit) = permits.next() {
                    permit.send(Ok(response));
                }
                Ok(())
            }
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::Error(Status::unavailable(format!(
                "etcdserver: watch stream too slow: the client read none of its last {} \
                 responses within {:?}; watch again from the revision after the last one seen",
                self.tx.max_capacity() - 1,
                self.slow_timeout
            )))),
        }
    }
}
