//! The generated tonic clients against `serve` on loopback: etcd's KV semantics through
//! the wire, response headers, etcd's error statuses; watches (keys, prefixes, history,
//! filters, prev_kv, cancel, compacted starts, progress, a client that stops reading, the
//! stream's end); leases (grant, keep-alive, time to live, list, revoke, expiry); member
//! list and status; and the methods not served answering UNIMPLEMENTED at once.

mod common;

use std::future::Future;

use std::time::{Duration, Instant};

use common::{TestServer, CLUSTER_ID, MEMBER_ID, WAIT};
use flotilla_etcd::pb::etcdserverpb as pb;
use flotilla_etcd::pb::mvccpb::event::EventType;
use flotilla_etcd::pb::mvccpb::Event;
use flotilla_etcd::pb::mvccpb::KeyValue;
use flotilla_etcd::ServeOptions;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::range_request::{SortOrder, SortTarget};
use pb::request_op::Request as Op;
use pb::response_op::Response as OpResponse;
use pb::watch_create_request::FilterType;
use pb::watch_request::RequestUnion;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Any call, bounded.
async fn within<T>(call: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, call)
        .await
        .expect("the call is answered within the bound")
}

async fn client(server: &TestServer) -> KvClient<Channel> {
    within(KvClient::connect(format!("http://{}", server.addr)))
        .await
        .expect("connect")
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> pb::PutResponse {
    within(kv.put(pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }))
    .await
    .expect("put")
    .into_inner()
}

async fn range(kv: &mut KvClient<Channel>, request: pb::RangeRequest) -> pb::RangeResponse {
    within(kv.range(request)).await.expect("range").into_inner()
}

fn get(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn revision(header: Option<pb::ResponseHeader>) -> i64 {
    header.expect("a response header").revision
}

#[tokio::test]
async fn kv_service_over_the_wire() {
    let server = TestServer::start().await;
    let mut kv = client(&server).await;

    // A put: the header tells cluster, member, term and the new revision.
    let r = put(&mut kv, "foo", "bar").await;
    assert_eq!(
        r.header,
        Some(pb::ResponseHeader {
            cluster_id: CLUSTER_ID,
            member_id: MEMBER_ID,
            revision: 2,
            raft_term: 1,
        })
    );
    assert_eq!(r.prev_kv, None);

    // A get: the key with its revisions and version; the header has the store's revision.
    let r = range(&mut kv, get("foo")).await;
    assert_eq!(revision(r.header), 2);
    assert_eq!(
        r.kvs,
        vec![KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b"bar".to_vec(),
            lease: 0,
        }]
    );
    assert_eq!((r.count, r.more), (1, false));

    // Three keys under a prefix, put out of key order (revisions 3, 4, 5).
    for (k, v) in [("a/1", "z"), ("a/3", "x"), ("a/2", "y")] {
        put(&mut kv, k, v).await;
    }
    let prefix = |limit, order: SortOrder, target: SortTarget| pb::RangeRequest {
        key: b"a/".to_vec(),
        range_end: b"a0".to_vec(),
        limit,
        sort_order: order as i32,
        sort_target: target as i32,
        ..Default::default()
    };
    let r = range(&mut kv, prefix(0, SortOrder::None, SortTarget::Key)).await;
    assert_eq!(keys(&r.kvs), ["a/1", "a/2", "a/3"]);
    assert_eq!(revision(r.header), 5);
    let r = range(&mut kv, prefix(2, SortOrder::Descend, SortTarget::Key)).await;
    assert_eq!(keys(&r.kvs), ["a/3", "a/2"], "descending by key, limited");
    assert_eq!((r.count, r.more), (3, true));
    let r = range(&mut kv, prefix(0, SortOrder::Ascend, SortTarget::Value)).await;
    assert_eq!(keys(&r.kvs), ["a/3", "a/2", "a/1"], "ascending by value");
    let r = range(&mut kv, prefix(0, SortOrder::Descend, SortTarget::Create)).await;
    assert_eq!(keys(&r.kvs), ["a/2", "a/3", "a/1"], "newest first");
    // A target without an order is ascending (etcd's rule).
    let r = range(&mut kv, prefix(0, SortOrder::None, SortTarget::Mod)).await;
    assert_eq!(keys(&r.kvs), ["a/1", "a/3", "a/2"]);
    // keys_only, count_only and a revision filter.
    let r = range(
        &mut kv,
        pb::RangeRequest {
            keys_only: true,
            min_create_revision: 4,
            ..prefix(0, SortOrder::None, SortTarget::Key)
        },
    )
    .await;
    assert_eq!(keys(&r.kvs), ["a/2", "a/3"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()), "keys only");
    let r = range(
        &mut kv,
        pb::RangeRequest {
            count_only: true,
            ..prefix(0, SortOrder::None, SortTarget::Key)
        },
    )
    .await;
    assert_eq!((r.kvs.len(), r.count), (0, 3));

    // An overwrite, then a read at the old revision.
    let r = within(kv.put(pb::PutRequest {
        key: b"foo".to_vec(),
        value: b"baz".to_vec(),
        prev_kv: true,
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(revision(r.header), 6);
    assert_eq!(r.prev_kv.map(|kv| kv.value), Some(b"bar".to_vec()));
    let r = range(
        &mut kv,
        pb::RangeRequest {
            revision: 2,
            ..get("foo")
        },
    )
    .await;
    assert_eq!(r.kvs[0].value, b"bar");
    assert_eq!(revision(r.header), 6, "the header has the store's revision");
    let r = range(&mut kv, get("foo")).await;
    assert_eq!(
        (r.kvs[0].value.as_slice(), r.kvs[0].version),
        (&b"baz"[..], 2)
    );

    // A delete with prev_kv.
    let r = within(kv.delete_range(pb::DeleteRangeRequest {
        key: b"foo".to_vec(),
        prev_kv: true,
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(revision(r.header), 7);
    assert_eq!(r.deleted, 1);
    assert_eq!(keys(&r.prev_kvs), ["foo"]);
    assert_eq!(
        (r.prev_kvs[0].value.as_slice(), r.prev_kvs[0].mod_revision),
        (&b"baz"[..], 6)
    );
    let r = range(&mut kv, get("foo")).await;
    assert!(r.kvs.is_empty() && r.count == 0, "deleted");
    // Deleting nothing makes no revision.
    let r = within(kv.delete_range(pb::DeleteRangeRequest {
        key: b"foo".to_vec(),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!((r.deleted, revision(r.header)), (0, 7));

    server.stop().await;
}

/// A compare-and-set: put `a/1` if it is still at version `version`, and read it back in
/// either branch.
fn cas(version: i64, value: &str) -> pb::TxnRequest {
    let read = pb::RequestOp {
        request: Some(Op::RequestRange(get("a/1"))),
    };
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: b"a/1".to_vec(),
            target_union: Some(TargetUnion::Version(version)),
            ..Default::default()
        }],
        success: vec![
            pb::RequestOp {
                request: Some(Op::RequestPut(pb::PutRequest {
                    key: b"a/1".to_vec(),
                    value: value.into(),
                    prev_kv: true,
                    ..Default::default()
                })),
            },
            read.clone(),
        ],
        failure: vec![read],
    }
}

#[tokio::test]
async fn txn_compare_and_set_and_compaction() {
    let server = TestServer::start().await;
    let mut kv = client(&server).await;
    put(&mut kv, "a/1", "one").await; // revision 2, version 1

    // Version 1 holds: the put and the read of the success branch, at revision 3.
    let r = within(kv.txn(cas(1, "two"))).await.unwrap().into_inner();
    assert!(r.succeeded);
    assert_eq!(revision(r.header), 3);
    assert_eq!(r.header.unwrap().cluster_id, CLUSTER_ID);
    match r.responses.as_slice() {
        [pb::ResponseOp {
            response: Some(OpResponse::ResponsePut(p)),
        }, pb::ResponseOp {
            response: Some(OpResponse::ResponseRange(g)),
        }] => {
            assert_eq!(
                p.prev_kv.as_ref().map(|kv| &kv.value[..]),
                Some(&b"one"[..])
            );
            assert_eq!(g.kvs[0].value, b"two", "the read sees the txn's own put");
            assert_eq!(g.kvs[0].version, 2);
        }
        other => panic!("success branch: put then range, got {other:?}"),
    }

    // Version 1 no longer holds: the failure branch only, no new revision.
    let r = within(kv.txn(cas(1, "three"))).await.unwrap().into_inner();
    assert!(!r.succeeded);
    assert_eq!(revision(r.header), 3);
    match r.responses.as_slice() {
        [pb::ResponseOp {
            response: Some(OpResponse::ResponseRange(g)),
        }] => assert_eq!(g.kvs[0].value, b"two"),
        other => panic!("failure branch: one range, got {other:?}"),
    }
    let r = range(&mut kv, get("a/1")).await;
    assert_eq!(r.kvs[0].value, b"two", "the failed txn wrote nothing");

    // A value compare, a nested txn, and the store refusing a duplicate key.
    let nested = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: b"a/1".to_vec(),
            target_union: Some(TargetUnion::Value(b"two".to_vec())),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(Op::RequestTxn(pb::TxnRequest {
                compare: vec![],
                success: vec![pb::RequestOp {
                    request: Some(Op::RequestPut(pb::PutRequest {
                        key: b"b".to_vec(),
                        value: b"nested".to_vec(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })),
        }],
        failure: vec![],
    };
    let r = within(kv.txn(nested)).await.unwrap().into_inner();
    assert!(r.succeeded);
    match r.responses.as_slice() {
        [pb::ResponseOp {
            response: Some(OpResponse::ResponseTxn(t)),
        }] => assert!(t.succeeded && t.responses.len() == 1),
        other => panic!("one nested txn, got {other:?}"),
    }
    assert_eq!(range(&mut kv, get("b")).await.kvs[0].value, b"nested");
    let twice = pb::RequestOp {
        request: Some(Op::RequestPut(pb::PutRequest {
            key: b"c".to_vec(),
            ..Default::default()
        })),
    };
    let e = within(kv.txn(pb::TxnRequest {
        success: vec![twice.clone(), twice],
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request"
        )
    );
    let e = within(kv.put(pb::PutRequest::default())).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided"
        )
    );

    // Compact at revision 4 (the nested txn's): reads before it are refused, at it served.
    let current = revision(range(&mut kv, get("b")).await.header);
    assert_eq!(current, 4);
    let r = within(kv.compact(pb::CompactionRequest {
        revision: 4,
        physical: true,
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(revision(r.header), 4);
    let at = |rev| pb::RangeRequest {
        revision: rev,
        ..get("a/1")
    };
    let e = within(kv.range(at(2))).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    assert_eq!(range(&mut kv, at(4)).await.kvs[0].value, b"two");
    let e = within(kv.range(at(5))).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    let e = within(kv.compact(pb::CompactionRequest {
        revision: 3,
        physical: false,
    }))
    .await
    .unwrap_err();
    assert_eq!(
        e.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(server.backend.with_store_mut(|s| s.compacted()), 4);

    server.stop().await;
}

async fn channel(server: &TestServer) -> Channel {
    let url = format!("http://{}", server.addr);
    within(Channel::from_shared(url).unwrap().connect())
        .await
        .expect("connect")
}

/// One watch stream: the requests the test sends, the responses it reads.
struct WatchSession {
    requests: Option<mpsc::Sender<pb::WatchRequest>>,
    responses: tonic::Streaming<pb::WatchResponse>,
}

impl WatchSession {
    async fn open(channel: &Channel) -> WatchSession {
        let (requests, rx) = mpsc::channel(16);
        let mut client = pb::watch_client::WatchClient::new(channel.clone());
        let responses = within(client.watch(ReceiverStream::new(rx)))
            .await
            .expect("the watch stream opens")
            .into_inner();
        WatchSession {
            requests: Some(requests),
            responses,
        }
    }

    async fn send(&self, request: RequestUnion) {
        let requests = self.requests.as_ref().expect("still sending");
        within(requests.send(pb::WatchRequest {
            request_union: Some(request),
        }))
        .await
        .expect("the stream takes requests");
    }

    /// Sends a create and returns the response that answers it.
    async fn create(&mut self, create: pb::WatchCreateRequest) -> pb::WatchResponse {
        self.send(RequestUnion::CreateRequest(create)).await;
        let created = self.next().await;
        assert!(created.created, "a create is answered created: {created:?}");
        created
    }

    async fn cancel(&self, watch_id: i64) {
        self.send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id,
        }))
        .await;
    }

    async fn progress(&self) {
        self.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
            .await;
    }

    /// The next response (bounded; the stream must not fail or end).
    async fn next(&mut self) -> pb::WatchResponse {
        within(self.responses.message())
            .await
            .expect("the watch stream does not fail")
            .expect("the watch stream does not end")
    }

    /// The next response, after a progress request: proof that nothing else was owed.
    async fn nothing_more(&mut self, revision: i64) {
        self.progress().await;
        let r = self.next().await;
        assert_eq!(
            (r.watch_id, r.events.len(), r.created, r.canceled),
            (-1, 0, false, false),
            "nothing before the progress response: {r:?}"
        );
        assert_eq!(revision_of(&r), revision, "{r:?}");
    }
}

fn revision_of(r: &pb::WatchResponse) -> i64 {
    r.header.as_ref().expect("a header").revision
}

fn watch_key(key: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn watch_prefix(prefix: &str) -> pb::WatchCreateRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    pb::WatchCreateRequest {
        key: prefix.into(),
        range_end: end,
        ..Default::default()
    }
}

/// (type, key, value, mod revision) of each event.
fn events(r: &pb::WatchResponse) -> Vec<(EventType, String, String, i64)> {
    r.events
        .iter()
        .map(|e: &Event| {
            let kv = e.kv.as_ref().expect("an event has its key");
            (
                EventType::try_from(e.r#type).expect("a known event type"),
                String::from_utf8(kv.key.clone()).unwrap(),
                String::from_utf8(kv.value.clone()).unwrap(),
                kv.mod_revision,
            )
        })
        .collect()
}

fn prev_value(e: &Event) -> Option<String> {
    e.prev_kv
        .as_ref()
        .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
}

async fn delete(kv: &mut KvClient<Channel>, key: &str) -> i64 {
    let r = within(kv.delete_range(pb::DeleteRangeRequest {
        key: key.into(),
        ..Default::default()
    }))
    .await
    .expect("delete")
    .into_inner();
    revision(r.header)
}

#[tokio::test]
async fn watch_keys_prefixes_history_filters_prev_kv_and_cancel() {
    use EventType::{Delete, Put};
    let server = TestServer::start().await;
    let mut kv = client(&server).await;
    let channel = channel(&server).await;
    put(&mut kv, "a/1", "x").await; // 2
    put(&mut kv, "b", "y").await; // 3
    put(&mut kv, "a/2", "z").await; // 4

    let mut w = WatchSession::open(&channel).await;
    // A key from now on: created with the first free id and the store's revision.
    let created = w.create(watch_key("a/1")).await;
    assert_eq!(
        created,
        pb::WatchResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: CLUSTER_ID,
                member_id: MEMBER_ID,
                revision: 4,
                raft_term: 1,
            }),
            watch_id: 0,
            created: true,
            ..Default::default()
        }
    );
    // A prefix from revision 2, with previous values: its history replayed, one response
    // per revision, each with the store's revision in the header.
    let created = w
        .create(pb::WatchCreateRequest {
            start_revision: 2,
            prev_kv: true,
            ..watch_prefix("a/")
        })
        .await;
    assert_eq!((created.watch_id, created.canceled), (1, false));
    let r = w.next().await;
    assert_eq!(r.watch_id, 1);
    assert_eq!(events(&r), [(Put, "a/1".into(), "x".into(), 2)]);
    assert_eq!(revision_of(&r), 4);
    let r = w.next().await;
    assert_eq!(events(&r), [(Put, "a/2".into(), "z".into(), 4)]);

    // A change seen by both, in watch id order; prev_kv only for the one that asked.
    put(&mut kv, "a/1", "x2").await; // 5
    let r = w.next().await;
    assert_eq!((r.watch_id, revision_of(&r)), (0, 5));
    assert_eq!(events(&r), [(Put, "a/1".into(), "x2".into(), 5)]);
    let kv0 = r.events[0].kv.as_ref().unwrap();
    assert_eq!((kv0.create_revision, kv0.version), (2, 2));
    assert_eq!(prev_value(&r.events[0]), None, "not asked for");
    let r = w.next().await;
    assert_eq!(r.watch_id, 1);
    assert_eq!(events(&r), [(Put, "a/1".into(), "x2".into(), 5)]);
    assert_eq!(prev_value(&r.events[0]).as_deref(), Some("x"));

    // A delete under the prefix, with the value before it.
    assert_eq!(delete(&mut kv, "a/2").await, 6);
    let r = w.next().await;
    assert_eq!(r.watch_id, 1);
    assert_eq!(events(&r), [(Delete, "a/2".into(), "".into(), 6)]);
    assert_eq!(prev_value(&r.events[0]).as_deref(), Some("z"));

    // Outside both ranges: nothing (the progress response comes next, at revision 7).
    put(&mut kv, "b", "y2").await; // 7
    w.nothing_more(7).await;

    // Cancel the prefix watcher: canceled, and nothing more for it.
    w.cancel(1).await;
    let r = w.next().await;
    assert_eq!((r.watch_id, r.canceled, r.created), (1, true, false));
    put(&mut kv, "a/3", "only the canceled one would see this").await; // 8
    put(&mut kv, "a/1", "x3").await; // 9
    let r = w.next().await;
    assert_eq!(r.watch_id, 0, "not the canceled watcher: {r:?}");
    assert_eq!(events(&r), [(Put, "a/1".into(), "x3".into(), 9)]);

    // Filters: deletes only (id 7, asked for), puts only (the next free id, 1 again).
    let created = w
        .create(pb::WatchCreateRequest {
            watch_id: 7,
            filters: vec![FilterType::Noput as i32],
            ..watch_key("a/1")
        })
        .await;
    assert_eq!(created.watch_id, 7);
    let created = w
        .create(pb::WatchCreateRequest {
            filters: vec![FilterType::Nodelete as i32],
            ..watch_key("a/1")
        })
        .await;
    assert_eq!(created.watch_id, 1);
    assert_eq!(delete(&mut kv, "a/1").await, 10);
    let r = w.next().await;
    assert_eq!(r.watch_id, 0);
    assert_eq!(events(&r), [(Delete, "a/1".into(), "".into(), 10)]);
    let r = w.next().await;
    assert_eq!(r.watch_id, 7, "the deletes-only watcher: {r:?}");
    assert_eq!(events(&r), [(Delete, "a/1".into(), "".into(), 10)]);
    put(&mut kv, "a/1", "x4").await; // 11
    let r = w.next().await;
    assert_eq!(r.watch_id, 0);
    let r = w.next().await;
    assert_eq!(r.watch_id, 1, "the puts-only watcher: {r:?}");
    assert_eq!(events(&r), [(Put, "a/1".into(), "x4".into(), 11)]);
    w.nothing_more(11).await;

    // Refused at once, for no watcher: an id in use, a negative start.
    let r = w
        .create(pb::WatchCreateRequest {
            watch_id: 7,
            ..watch_key("c")
        })
        .await;
    assert_eq!((r.watch_id, r.canceled), (-1, true));
    assert_eq!(
        r.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    let r = w
        .create(pb::WatchCreateRequest {
            start_revision: -3,
            ..watch_key("c")
        })
        .await;
    assert_eq!((r.watch_id, r.canceled), (-1, true));
    assert_eq!(
        r.cancel_reason,
        "etcdserver: mvcc: required revision has been compacted"
    );
    // A future start waits for its revision.
    let r = w
        .create(pb::WatchCreateRequest {
            start_revision: 13,
            ..watch_key("c")
        })
        .await;
    let future = r.watch_id;
    put(&mut kv, "c", "before its start").await; // 12
    put(&mut kv, "c", "at its start").await; // 13
    let r = w.next().await;
    assert_eq!(r.watch_id, future);
    assert_eq!(events(&r), [(Put, "c".into(), "at its start".into(), 13)]);
    w.nothing_more(13).await;

    drop(w);
    server.stop().await;
}

#[tokio::test]
async fn watch_odd_ranges_and_requests_are_served_without_harm() {
    let server = TestServer::start().await;
    let mut kv = client(&server).await;
    let channel = channel(&server).await;
    let mut w = WatchSession::open(&channel).await;
    // An empty key with range end \0: every key.
    let all = w
        .create(pb::WatchCreateRequest {
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .watch_id;
    // A range that ends before it starts, a start far in the future: nothing, ever.
    w.create(pb::WatchCreateRequest {
        key: b"z".to_vec(),
        range_end: b"a".to_vec(),
        ..Default::default()
    })
    .await;
    w.create(pb::WatchCreateRequest {
        start_revision: i64::MAX,
        ..watch_key("k")
    })
    .await;
    // A request of no known kind, a cancel of no watcher: ignored.
    let requests = w.requests.as_ref().unwrap();
    within(requests.send(pb::WatchRequest {
        request_union: None,
    }))
    .await
    .unwrap();
    w.cancel(99).await;
    put(&mut kv, "k", "v").await; // 2
    put(&mut kv, "\u{ff}", "v").await; // 3
    for (revision, key) in [(2, "k"), (3, "\u{ff}")] {
        let r = w.next().await;
        assert_eq!(r.watch_id, all, "{r:?}");
        assert_eq!(
            events(&r),
            [(EventType::Put, key.into(), "v".into(), revision)]
        );
    }
    w.nothing_more(3).await;
    drop(w);
    server.stop().await;
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_canceled_with_the_compaction_revision() {
    let server = TestServer::start().await;
    let mut kv = client(&server).await;
    let channel = channel(&server).await;
    for v in ["1", "2", "3", "4"] {
        put(&mut kv, "k", v).await; // 2, 3, 4, 5
    }
    within(kv.compact(pb::CompactionRequest {
        revision: 4,
        physical: false,
    }))
    .await
    .expect("compact");

    let mut w = WatchSession::open(&channel).await;
    // As etcd: created, then canceled with the compaction revision.
    let created = w
        .create(pb::WatchCreateRequest {
            start_revision: 2,
            ..watch_key("k")
        })
        .await;
    assert_eq!(
        (created.watch_id, created.canceled, created.compact_revision),
        (0, false, 0),
        "{created:?}"
    );
    let r = w.next().await;
    assert_eq!(
        (r.watch_id, r.canceled, r.compact_revision, r.created),
        (0, true, 4, false),
        "{r:?}"
    );
    assert!(r.events.is_empty());
    // From the compaction revision itself: served.
    let created = w
        .create(pb::WatchCreateRequest {
            start_revision: 4,
            ..watch_key("k")
        })
        .await;
    assert!(!created.canceled);
    let r = w.next().await;
    assert_eq!(
        events(&r),
        [(EventType::Put, "k".into(), "3".into(), 4)],
        "{r:?}"
    );
    let r = w.next().await;
    assert_eq!(events(&r), [(EventType::Put, "k".into(), "4".into(), 5)]);
    w.nothing_more(5).await;
    drop(w);
    server.stop().await;
}

#[tokio::test]
async fn watch_progress_notifications_at_the_configured_interval() {
    let server = TestServer::start_with(ServeOptions {
        progress_notify_interval: Duration::from_millis(150),
        ..ServeOptions::default()
    })
    .await;
    let mut kv = client(&server).await;
    let channel = channel(&server).await;
    let mut w = WatchSession::open(&channel).await;
    let asked = w
        .create(pb::WatchCreateRequest {
            progress_notify: true,
            ..watch_key("p")
        })
        .await
        .watch_id;
    let not_asked = w.create(watch_key("q")).await.watch_id;
    // Only the watcher that asked is told, with its id, nothing else in the response.
    for _ in 0..3 {
        let r = w.next().await;
        assert_eq!(
            (
                r.watch_id,
                r.events.len(),
                r.created,
                r.canceled,
                revision_of(&r)
            ),
            (asked, 0, false, false, 1),
            "{r:?}"
        );
    }
    // A change of the other watcher's key: its event, then notifications carry revision 2.
    put(&mut kv, "q", "v").await; // 2
    let mut seen_event = false;
    let mut bound = 0;
    loop {
        let r = w.next().await;
        if r.watch_id == not_asked {
            assert_eq!(events(&r).len(), 1, "{r:?}");
            seen_event = true;
            continue;
        }
        assert_eq!((r.watch_id, r.events.len()), (asked, 0), "{r:?}");
        if revision_of(&r) == 2 {
            break;
        }
        bound += 1;
        assert!(bound < 20, "no notification with revision 2 after {bound}");
    }
    assert!(
        seen_event,
        "the event came before the notification of its revision"
    );
    drop(w);
    server.stop().await;
}

/// The backend's references: one more per open stream (each stream's task holds one).
fn backend_refs(server: &TestServer) -> usize {
    std::sync::Arc::strong_count(&server.backend)
}

/// Waits (bounded, polling) until the backend's references are back to `count`.
async fn refs_back_to(server: &TestServer, count: usize, what: &str) {
    let started = Instant::now();
    while backend_refs(server) != count {
        assert!(
            started.elapsed() < WAIT,
            "{what}: the stream's task did not end ({} references, {count} expected)",
            backend_refs(server)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_watch_client_that_stops_reading_is_ended_unavailable() {
    let server = TestServer::start_with(ServeOptions {
        watch_buffer: 4,
        slow_watch_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    })
    .await;
    let mut kv = client(&server).await;
    let baseline = backend_refs(&server);
    // Its own connection, so that what it leaves unread does not hold up the puts.
    let watch_channel = channel(&server).await;
    let mut w = WatchSession::open(&watch_channel).await;
    w.create(watch_prefix("big/")).await;
    // About 10 MB of changes, more than the connection's windows and the stream's buffer.
    const PUTS: usize = 150;
    let value = "v".repeat(64 * 1024);
    for i in 0..PUTS {
        put(&mut kv, &format!("big/{i:03}"), &value).await;
    }
    // The stream ends (its task too) while the client reads nothing.
    refs_back_to(&server, baseline, "a client that does not read").await;
    // What it reads: the responses before the end, then UNAVAILABLE.
    let mut seen = 0;
    let status = loop {
        match within(w.responses.message()).await {
            Ok(Some(r)) => seen += r.events.len(),
            Ok(None) => panic!("the stream ended without a status after {seen} events"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("watch stream too slow"),
        "{status:?}"
    );
    assert!(seen < PUTS, "ended before everything was sent: {seen}");
    server.stop().await;
}

#[tokio::test]
async fn a_watch_stream_left_behind_past_a_compaction_cancels_its_watchers() {
    use flotilla_mvcc::{MvccCommand, PutRequest};
    let server = TestServer::start_with(ServeOptions {
        watch_buffer: 2,
        slow_watch_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    })
    .await;
    let mut kv = client(&server).await;
    let watch_channel = channel(&server).await;
    let mut w = WatchSession::open(&watch_channel).await;
    let id = w.create(watch_prefix("w/")).await.watch_id;
    // More than the connection's windows: the stream's task waits for its client to read.
    let value = "v".repeat(100 * 1024);
    for i in 0..60 {
        put(&mut kv, &format!("w/{i:02}"), &value).await;
    }
    // Meanwhile more revisions than the recent changes keep, then a compaction of them all.
    for i in 0..4200 {
        let applied = flotilla_etcd::Backend::apply(
            &*server.backend,
            MvccCommand::Put(PutRequest {
                key: format!("other/{i}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            }),
        )
        .await
        .expect("applied");
        assert!(applied.result.is_ok());
    }
    let current = revision(range(&mut kv, get("w/00")).await.header);
    within(kv.compact(pb::CompactionRequest {
        revision: current,
        physical: false,
    }))
    .await
    .expect("compact");
    // The client reads again: the events it was sent, then its watcher canceled with the
    // compaction revision (the revisions it is owed are gone), as etcd cancels a compacted
    // slow watcher.
    let mut seen = 0;
    let canceled = loop {
        let r = w.next().await;
        if r.canceled {
            break r;
        }
        assert_eq!(r.watch_id, id, "{r:?}");
        seen += r.events.len();
        assert!(seen <= 60, "more events than puts");
    };
    assert!(seen < 60, "left behind before the last put: {seen}");
    assert_eq!(
        (canceled.watch_id, canceled.compact_revision),
        (id, current),
        "{canceled:?}"
    );
    w.nothing_more(current).await;
    drop(w);
    server.stop().await;
}

#[tokio::test]
async fn streams_end_when_their_client_goes_away_and_when_the_server_stops() {
    let server = TestServer::start().await;
    let channel = channel(&server).await;
    let baseline = backend_refs(&server);

    let mut w = WatchSession::open(&channel).await;
    w.create(watch_key("k")).await;
    assert_eq!(backend_refs(&server), baseline + 1, "the stream's task");
    drop(w);
    refs_back_to(&server, baseline, "a watch whose client dropped it").await;

    // A client that closes its sending side keeps its watchers (as etcd).
    let mut kv = client(&server).await;
    let mut w = WatchSession::open(&channel).await;
    w.create(watch_key("k")).await;
    w.requests = None;
    put(&mut kv, "k", "after the half-close").await;
    assert_eq!(events(&w.next().await).len(), 1);

    let mut lease = pb::lease_client::LeaseClient::new(channel.clone());
    let (requests, rx) = mpsc::channel(4);
    let mut keep_alive = within(lease.lease_keep_alive(ReceiverStream::new(rx)))
        .await
        .expect("keep-alive stream")
        .into_inner();
    requests
        .send(pb::LeaseKeepAliveRequest { id: 1 })
        .await
        .unwrap();
    within(keep_alive.message()).await.unwrap().unwrap();
    assert_eq!(backend_refs(&server), baseline + 2);
    drop((keep_alive, requests));
    refs_back_to(
        &server,
        baseline + 1,
        "a keep-alive whose client dropped it",
    )
    .await;

    // The server stops with the watch open: it ends UNAVAILABLE, and the stop completes.
    let stop = tokio::spawn(server.stop());
    let status = match within(w.responses.message()).await {
        Ok(Some(r)) => panic!("nothing more was owed: {r:?}"),
        Ok(None) => panic!("ended without a status"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    within(stop).await.expect("the server stopped");
}

fn lease_ids(r: &pb::LeaseLeasesResponse) -> Vec<i64> {
    r.leases.iter().map(|l| l.id).collect()
}

#[tokio::test]
async fn leases_grant_keep_alive_time_to_live_list_revoke_and_expire() {
    let server = TestServer::start().await;
    let channel = channel(&server).await;
    let mut kv = client(&server).await;
    let mut lease = pb::lease_client::LeaseClient::new(channel.clone());

    // Below the minimum TTL: raised to it (2 s); id 0: the store picks one.
    let granted_at = Instant::now();
    let short = within(lease.lease_grant(pb::LeaseGrantRequest { ttl: 1, id: 0 }))
        .await
        .expect("grant")
        .into_inner();
    assert_eq!(short.ttl, 2, "raised to the minimum: {short:?}");
    assert_ne!(short.id, 0);
    assert_eq!(revision(short.header), 1);
    assert_eq!(short.header.unwrap().member_id, MEMBER_ID);
    // An id asked for; again: refused; too long a TTL: refused.
    let long = within(lease.lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 1000 }))
        .await
        .expect("grant")
        .into_inner();
    assert_eq!((long.id, long.ttl), (1000, 60));
    let e = within(lease.lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 1000 }))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists"
        )
    );
    let e = within(lease.lease_grant(pb::LeaseGrantRequest {
        ttl: 9_000_000_001,
        id: 0,
    }))
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::OutOfRange, "etcdserver: too large lease TTL")
    );

    // Keys on the long lease.
    for key in ["l/1", "l/2"] {
        within(kv.put(pb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease: 1000,
            ..Default::default()
        }))
        .await
        .expect("put with a lease"); // 2, 3
    }
    assert_eq!(range(&mut kv, get("l/1")).await.kvs[0].lease, 1000);
    let ttl = within(lease.lease_time_to_live(pb::LeaseTimeToLiveRequest {
        id: 1000,
        keys: true,
    }))
    .await
    .expect("time to live")
    .into_inner();
    assert_eq!((ttl.id, ttl.granted_ttl), (1000, 60));
    assert!(
        (50..=60).contains(&ttl.ttl),
        "60 s or a little less: {ttl:?}"
    );
    assert_eq!(ttl.keys, [b"l/1".to_vec(), b"l/2".to_vec()]);
    assert_eq!(revision(ttl.header), 3);
    let ttl = within(lease.lease_time_to_live(pb::LeaseTimeToLiveRequest {
        id: 1000,
        keys: false,
    }))
    .await
    .unwrap()
    .into_inner();
    assert!(ttl.keys.is_empty(), "keys only when asked: {ttl:?}");
    let listed = within(lease.lease_leases(pb::LeaseLeasesRequest {}))
        .await
        .expect("leases")
        .into_inner();
    let mut want = vec![short.id, 1000];
    want.sort();
    assert_eq!(lease_ids(&listed), want);
    assert_eq!(revision(listed.header), 3);

    // Keep-alives: each answered in order, an unknown lease with TTL 0; the stream ends
    // cleanly when the client closes its side.
    let (requests, rx) = mpsc::channel(4);
    let mut keep_alive = within(lease.lease_keep_alive(ReceiverStream::new(rx)))
        .await
        .expect("keep-alive stream")
        .into_inner();
    for (id, ttl) in [(1000, 60), (12345, 0), (1000, 60)] {
        requests
            .send(pb::LeaseKeepAliveRequest { id })
            .await
            .unwrap();
        let r = within(keep_alive.message())
            .await
            .expect("a keep-alive answer")
            .expect("the stream goes on");
        assert_eq!((r.id, r.ttl), (id, ttl), "{r:?}");
        assert_eq!(revision(r.header), 3);
    }
    drop(requests);
    assert!(
        within(keep_alive.message())
            .await
            .expect("ends cleanly")
            .is_none(),
        "the stream ends when the client closes its side"
    );

    // Revoke: the lease's keys go at one revision; then it is not found.
    let r = within(lease.lease_revoke(pb::LeaseRevokeRequest { id: 1000 }))
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(revision(r.header), 4);
    assert_eq!(range(&mut kv, get("l/1")).await.count, 0);
    assert_eq!(range(&mut kv, get("l/2")).await.count, 0);
    let e = within(lease.lease_revoke(pb::LeaseRevokeRequest { id: 1000 }))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );
    let ttl = within(lease.lease_time_to_live(pb::LeaseTimeToLiveRequest {
        id: 1000,
        keys: true,
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!((ttl.id, ttl.ttl, ttl.granted_ttl), (1000, -1, 0));

    // Expiry: a key on the short lease vanishes once its 2 s are up (not before), seen by
    // a watcher as a delete.
    within(kv.put(pb::PutRequest {
        key: b"e".to_vec(),
        value: b"v".to_vec(),
        lease: short.id,
        ..Default::default()
    }))
    .await
    .expect("put with a lease"); // 5
    let mut w = WatchSession::open(&channel).await;
    w.create(watch_key("e")).await;
    while range(&mut kv, get("e")).await.count != 0 {
        assert!(granted_at.elapsed() < WAIT, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lived = granted_at.elapsed();
    assert!(
        lived >= Duration::from_millis(1900),
        "expired early: {lived:?}"
    );
    let r = w.next().await;
    assert_eq!(events(&r), [(EventType::Delete, "e".into(), "".into(), 6)]);
    let ttl = within(lease.lease_time_to_live(pb::LeaseTimeToLiveRequest {
        id: short.id,
        keys: false,
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(ttl.ttl, -1, "gone: {ttl:?}");
    let listed = within(lease.lease_leases(pb::LeaseLeasesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.leases.is_empty(), "{listed:?}");
    drop(w);
    server.stop().await;
}

#[tokio::test]
async fn member_list_and_status() {
    let server = TestServer::start().await;
    let channel = channel(&server).await;
    let mut kv = client(&server).await;
    // Three commands, two keys, revision 4: each number told apart from the others.
    put(&mut kv, "k1", "v").await; // 2
    put(&mut kv, "k2", "v").await; // 3
    put(&mut kv, "k1", "w").await; // 4

    let mut cluster = pb::cluster_client::ClusterClient::new(channel.clone());
    let r = within(cluster.member_list(pb::MemberListRequest::default()))
        .await
        .expect("member list")
        .into_inner();
    assert_eq!(
        r.header,
        Some(pb::ResponseHeader {
            cluster_id: CLUSTER_ID,
            member_id: MEMBER_ID,
            revision: 0,
            raft_term: 1,
        }),
        "as etcd's: no revision"
    );
    assert_eq!(
        r.members,
        [pb::Member {
            id: MEMBER_ID,
            name: "m0".into(),
            peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
            client_ur_ls: vec!["http://127.0.0.1:2379".into()],
            is_learner: false,
        }]
    );

    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel.clone());
    let r = within(maintenance.status(pb::StatusRequest {}))
        .await
        .expect("status")
        .into_inner();
    let want = flotilla_etcd::Backend::status(&*server.backend);
    assert_eq!(
        r.header,
        Some(pb::ResponseHeader {
            cluster_id: CLUSTER_ID,
            member_id: MEMBER_ID,
            revision: 4,
            raft_term: 1,
        })
    );
    assert_eq!(r.version, "3.4.23");
    assert_eq!(r.leader, MEMBER_ID);
    assert_eq!(
        (r.raft_index, r.raft_term, r.raft_applied_index),
        (want.raft_index, 1, want.raft_applied_index)
    );
    assert_eq!(r.raft_index, 3, "three commands applied");
    assert_eq!((r.db_size, r.db_size_in_use), (want.db_size, want.db_size));
    assert_eq!(
        want.db_size, 2,
        "the memory backend's size is its key count"
    );
    assert!(r.errors.is_empty(), "{r:?}");
    server.stop().await;
}

#[tokio::test]
async fn methods_not_served_answer_unimplemented_at_once() {
    let server = TestServer::start().await;
    let channel = channel(&server).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    for path in [
        "/etcdserverpb.Auth/AuthEnable",
        "/etcdserverpb.Cluster/MemberAdd",
        "/etcdserverpb.Maintenance/Defragment",
        "/etcdserverpb.Maintenance/Snapshot",
        "/etcdserverpb.Lease/LeaseCheckpoint",
    ] {
        within(grpc.ready()).await.expect("ready");
        let codec = tonic_prost::ProstCodec::<pb::StatusRequest, pb::StatusResponse>::default();
        let e = within(grpc.unary(
            tonic::Request::new(pb::StatusRequest {}),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            codec,
        ))
        .await
        .expect_err(path);
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{path}: {e:?}");
    }
    server.stop().await;
}
