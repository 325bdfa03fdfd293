//! The generated tonic clients against `serve` on loopback: etcd's KV semantics through
//! the wire, response headers, etcd's error statuses, and the services not served yet
//! answering UNIMPLEMENTED at once.

mod common;

use std::future::Future;

use common::{TestServer, CLUSTER_ID, MEMBER_ID, WAIT};
use flotilla_etcd::pb::etcdserverpb as pb;
use flotilla_etcd::pb::mvccpb::KeyValue;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::range_request::{SortOrder, SortTarget};
use pb::request_op::Request as Op;
use pb::response_op::Response as OpResponse;
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

#[tokio::test]
async fn services_not_served_yet_answer_unimplemented_at_once() {
    use tonic::codegen::tokio_stream;
    let server = TestServer::start().await;
    let url = format!("http://{}", server.addr);
    let channel = within(Channel::from_shared(url).unwrap().connect())
        .await
        .unwrap();
    let unimplemented = |r: Result<(), tonic::Status>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{what}: {e:?}");
    };

    let mut watch = pb::watch_client::WatchClient::new(channel.clone());
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: b"k".to_vec(),
                ..Default::default()
            },
        )),
    };
    // The request stream stays open: the answer must not wait for it to end.
    let requests =
        tokio_stream::StreamExt::chain(tokio_stream::iter(vec![create]), tokio_stream::pending());
    unimplemented(within(watch.watch(requests)).await.map(drop), "Watch");

    let mut lease = pb::lease_client::LeaseClient::new(channel.clone());
    unimplemented(
        within(lease.lease_grant(pb::LeaseGrantRequest { ttl: 5, id: 0 }))
            .await
            .map(drop),
        "LeaseGrant",
    );
    unimplemented(
        within(lease.lease_revoke(pb::LeaseRevokeRequest { id: 1 }))
            .await
            .map(drop),
        "LeaseRevoke",
    );
    unimplemented(
        within(lease.lease_keep_alive(tokio_stream::pending()))
            .await
            .map(drop),
        "LeaseKeepAlive",
    );
    unimplemented(
        within(lease.lease_time_to_live(pb::LeaseTimeToLiveRequest { id: 1, keys: true }))
            .await
            .map(drop),
        "LeaseTimeToLive",
    );
    unimplemented(
        within(lease.lease_leases(pb::LeaseLeasesRequest {}))
            .await
            .map(drop),
        "LeaseLeases",
    );
    let mut cluster = pb::cluster_client::ClusterClient::new(channel.clone());
    unimplemented(
        within(cluster.member_list(pb::MemberListRequest::default()))
            .await
            .map(drop),
        "MemberList",
    );
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel.clone());
    unimplemented(
        within(maintenance.status(pb::StatusRequest {}))
            .await
            .map(drop),
        "Status",
    );
    drop((watch, lease, cluster, maintenance, channel));
    server.stop().await;
}
