//! etcd's protobuf messages to and from the store's types, with etcd's request checks and
//! error statuses.
//!
//! Requests are checked as etcd's gRPC layer checks them before they reach its store (an
//! empty key, `ignore_value` with a value, `ignore_lease` with a lease, an unknown sort
//! option, too many operations in a transaction), with etcd's messages and codes; what the
//! store refuses is turned into a [`Status`] by [`status`].

use flotilla_mvcc as mvcc;
use flotilla_mvcc::{MvccError, Revision, MAX_TXN_OPS};
use tonic::Status;

use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;

/// What every response header says besides the revision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft_term: u64,
}

impl Header {
    /// The header of a response made at `revision`.
    pub fn at(&self, revision: Revision) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term,
        }
    }
}

/// etcd's status for what the store refused: its code and message.
pub fn status(error: MvccError) -> Status {
    let message = error.to_string();
    match error {
        MvccError::Compacted { .. } | MvccError::FutureRevision { .. } => {
            Status::out_of_range(message)
        }
        MvccError::LeaseNotFound(_) => Status::not_found(message),
        MvccError::LeaseExists(_) => Status::failed_precondition(message),
        MvccError::KeyNotFound
        | MvccError::DuplicateKey
        | MvccError::EmptyKey
        | MvccError::TooManyOps => Status::invalid_argument(message),
    }
}

/// etcd's messages for requests its gRPC layer refuses before they reach the store.
pub const ERR_VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const ERR_LEASE_PROVIDED: &str = "etcdserver: lease is provided";
pub const ERR_INVALID_SORT_OPTION: &str = "etcdserver: invalid sort option";

fn key_range(key: Vec<u8>, range_end: Vec<u8>) -> mvcc::KeyRange {
    mvcc::KeyRange { key, range_end }
}

/// A `RangeRequest` and whether it asked for a serializable read.
pub fn range_request(r: pb::RangeRequest) -> Result<(mvcc::RangeRequest, bool), Status> {
    use pb::range_request::{SortOrder, SortTarget};
    if r.key.is_empty() {
        return Err(status(MvccError::EmptyKey));
    }
    let sort_order = match SortOrder::try_from(r.sort_order) {
        Ok(SortOrder::None) => mvcc::SortOrder::None,
        Ok(SortOrder::Ascend) => mvcc::SortOrder::Ascend,
        Ok(SortOrder::Descend) => mvcc::SortOrder::Descend,
        Err(_) => return Err(Status::invalid_argument(ERR_INVALID_SORT_OPTION)),
    };
    let sort_target = match SortTarget::try_from(r.sort_target) {
        Ok(SortTarget::Key) => mvcc::SortTarget::Key,
        Ok(SortTarget::Version) => mvcc::SortTarget::Version,
        Ok(SortTarget::Create) => mvcc::SortTarget::Create,
        Ok(SortTarget::Mod) => mvcc::SortTarget::Mod,
        Ok(SortTarget::Value) => mvcc::SortTarget::Value,
        Err(_) => return Err(Status::invalid_argument(ERR_INVALID_SORT_OPTION)),
    };
    let request = mvcc::RangeRequest {
        range: key_range(r.key, r.range_end),
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    };
    Ok((request, r.serializable))
}

pub fn put_request(r: pb::PutRequest) -> Result<mvcc::PutRequest, Status> {
    if r.key.is_empty() {
        return Err(status(MvccError::EmptyKey));
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Status::invalid_argument(ERR_VALUE_PROVIDED));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Status::invalid_argument(ERR_LEASE_PROVIDED));
    }
    Ok(mvcc::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    })
}

pub fn delete_range_request(r: pb::DeleteRangeRequest) -> Result<mvcc::DeleteRangeRequest, Status> {
    if r.key.is_empty() {
        return Err(status(MvccError::EmptyKey));
    }
    Ok(mvcc::DeleteRangeRequest {
        range: key_range(r.key, r.range_end),
        prev_kv: r.prev_kv,
    })
}

/// A compare: the operand is the one of `target` (etcd reads the union through the target's
/// getter, so a missing or mismatched operand compares as that target's zero value).
pub fn compare(c: pb::Compare) -> Result<mvcc::Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    if c.key.is_empty() {
        return Err(status(MvccError::EmptyKey));
    }
    let result = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => mvcc::CompareResult::Equal,
        Ok(CompareResult::Greater) => mvcc::CompareResult::Greater,
        Ok(CompareResult::Less) => mvcc::CompareResult::Less,
        Ok(CompareResult::NotEqual) => mvcc::CompareResult::NotEqual,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown compare result {}",
                c.result
            )))
        }
    };
    let union = c.target_union;
    let target = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Version) => mvcc::CompareTarget::Version(match union {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Create) => mvcc::CompareTarget::Create(match union {
            Some(TargetUnion::CreateRevision(r)) => r,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => mvcc::CompareTarget::Mod(match union {
            Some(TargetUnion::ModRevision(r)) => r,
            _ => 0,
        }),
        Ok(CompareTarget::Value) => mvcc::CompareTarget::Value(match union {
            Some(TargetUnion::Value(v)) => v,
            _ => Vec::new(),
        }),
        Ok(CompareTarget::Lease) => mvcc::CompareTarget::Lease(match union {
            Some(TargetUnion::Lease(l)) => l,
            _ => 0,
        }),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown compare target {}",
                c.target
            )))
        }
    };
    Ok(mvcc::Compare {
        range: key_range(c.key, c.range_end),
        target,
        result,
    })
}

pub fn request_op(op: pb::RequestOp) -> Result<mvcc::RequestOp, Status> {
    use pb::request_op::Request;
    Ok(match op.request {
        Some(Request::RequestRange(r)) => mvcc::RequestOp::Range(range_request(r)?.0),
        Some(Request::RequestPut(p)) => mvcc::RequestOp::Put(put_request(p)?),
        Some(Request::RequestDeleteRange(d)) => {
            mvcc::RequestOp::DeleteRange(delete_range_request(d)?)
        }
        Some(Request::RequestTxn(t)) => mvcc::RequestOp::Txn(txn_request(t)?),
        None => return Err(Status::invalid_argument("a request op without a request")),
    })
}

pub fn txn_request(t: pb::TxnRequest) -> Result<mvcc::TxnRequest, Status> {
    if t.compare.len() > MAX_TXN_OPS
        || t.success.len() > MAX_TXN_OPS
        || t.failure.len() > MAX_TXN_OPS
    {
        return Err(status(MvccError::TooManyOps));
    }
    Ok(mvcc::TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

pub fn key_value(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_response(header: pb::ResponseHeader, r: mvcc::RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn put_response(header: pb::ResponseHeader, r: mvcc::PutResponse) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(header),
        prev_kv: r.prev_kv.map(key_value),
    }
}

pub fn delete_range_response(
    header: pb::ResponseHeader,
    r: mvcc::DeleteRangeResponse,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// A transaction's response. The operations' own headers carry only the transaction's
/// revision, as etcd's do (etcd fills in cluster, member and term on the outer header only);
/// a nested transaction's header is empty, as in etcd.
pub fn txn_response(header: pb::ResponseHeader, r: mvcc::TxnResponse) -> pb::TxnResponse {
    let inner = pb::ResponseHeader {
        revision: header.revision,
        ..Default::default()
    };
    pb::TxnResponse {
        header: Some(header),
        succeeded: r.succeeded,
        responses: r
            .responses
            .into_iter()
            .map(|op| response_op(inner, op))
            .collect(),
    }
}

fn response_op(inner: pb::ResponseHeader, op: mvcc::ResponseOp) -> pb::ResponseOp {
    use pb::response_op::Response;
    let response = match op {
        mvcc::ResponseOp::Range(r) => Response::ResponseRange(range_response(inner, r)),
        mvcc::ResponseOp::Put(p) => Response::ResponsePut(put_response(inner, p)),
        mvcc::ResponseOp::DeleteRange(d) => {
            Response::ResponseDeleteRange(delete_range_response(inner, d))
        }
        mvcc::ResponseOp::Txn(t) => {
            let mut nested = txn_response(inner, t);
            nested.header = Some(pb::ResponseHeader::default());
            Response::ResponseTxn(nested)
        }
    };
    pb::ResponseOp {
        response: Some(response),
    }
}

/// A change as a watcher sees it.
pub fn event(e: mvcc::Event) -> mvccpb::Event {
    let kind = match e.kind {
        mvcc::EventKind::Put => mvccpb::event::EventType::Put,
        mvcc::EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(key_value(e.kv)),
        prev_kv: e.prev_kv.map(key_value),
    }
}

/// A watch stream's response, its header made by `header` from the response's revision.
pub fn watch_response(
    header: impl FnOnce(Revision) -> pb::ResponseHeader,
    r: mvcc::watch::WatchResponse,
) -> pb::WatchResponse {
    pb::WatchResponse {
        header: Some(header(r.revision)),
        watch_id: r.watch_id,
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        cancel_reason: r.cancel_reason,
        fragment: false,
        events: r.events.into_iter().map(event).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};

    #[test]
    fn errors_get_etcds_codes_and_messages() {
        let cases = [
            (
                MvccError::Compacted {
                    requested: 1,
                    compacted: 3,
                },
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                MvccError::FutureRevision {
                    requested: 9,
                    current: 3,
                },
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                MvccError::KeyNotFound,
                tonic::Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                MvccError::LeaseNotFound(7),
                tonic::Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                MvccError::LeaseExists(7),
                tonic::Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                MvccError::DuplicateKey,
                tonic::Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                MvccError::EmptyKey,
                tonic::Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                MvccError::TooManyOps,
                tonic::Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
        ];
        for (error, code, message) in cases {
            let s = status(error.clone());
            assert_eq!((s.code(), s.message()), (code, message), "{error:?}");
        }
    }

    #[test]
    fn requests_etcd_refuses_before_its_store() {
        let code = |r: Result<mvcc::PutRequest, Status>| r.unwrap_err();
        let s = code(put_request(pb::PutRequest::default()));
        assert_eq!(s.message(), "etcdserver: key is not provided");
        let s = code(put_request(pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        }));
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::InvalidArgument, ERR_VALUE_PROVIDED)
        );
        let s = code(put_request(pb::PutRequest {
            key: b"k".to_vec(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        }));
        assert_eq!(s.message(), ERR_LEASE_PROVIDED);
        let s = range_request(pb::RangeRequest {
            key: b"k".to_vec(),
            sort_order: 7,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(s.message(), ERR_INVALID_SORT_OPTION);
        let s = txn_request(pb::TxnRequest {
            success: vec![
                pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: b"k".to_vec(),
                            ..Default::default()
                        }
                    )),
                };
                MAX_TXN_OPS + 1
            ],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            s.message(),
            "etcdserver: too many operations in txn request"
        );
    }

    #[test]
    fn range_request_fields_map_one_to_one() {
        let (r, serializable) = range_request(pb::RangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            limit: 3,
            revision: 4,
            sort_order: 2,
            sort_target: 4,
            serializable: true,
            keys_only: true,
            count_only: false,
            min_mod_revision: 10,
            max_mod_revision: 11,
            min_create_revision: 12,
            max_create_revision: 13,
        })
        .unwrap();
        assert!(serializable);
        assert_eq!(
            r,
            mvcc::RangeRequest {
                range: mvcc::KeyRange {
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec()
                },
                limit: 3,
                revision: 4,
                sort_order: mvcc::SortOrder::Descend,
                sort_target: mvcc::SortTarget::Value,
                keys_only: true,
                count_only: false,
                min_mod_revision: 10,
                max_mod_revision: 11,
                min_create_revision: 12,
                max_create_revision: 13,
            }
        );
    }

    #[test]
    fn compares_take_the_operand_of_their_target() {
        let c = |target: CompareTarget, union| pb::Compare {
            result: CompareResult::Less as i32,
            target: target as i32,
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            target_union: union,
        };
        let got = compare(c(CompareTarget::Mod, Some(TargetUnion::ModRevision(9)))).unwrap();
        assert_eq!(
            got,
            mvcc::Compare {
                range: mvcc::KeyRange {
                    key: b"k".to_vec(),
                    range_end: b"l".to_vec()
                },
                target: mvcc::CompareTarget::Mod(9),
                result: mvcc::CompareResult::Less,
            }
        );
        let cases = [
            (
                CompareTarget::Version,
                TargetUnion::Version(2),
                mvcc::CompareTarget::Version(2),
            ),
            (
                CompareTarget::Create,
                TargetUnion::CreateRevision(3),
                mvcc::CompareTarget::Create(3),
            ),
            (
                CompareTarget::Value,
                TargetUnion::Value(b"v".to_vec()),
                mvcc::CompareTarget::Value(b"v".to_vec()),
            ),
            (
                CompareTarget::Lease,
                TargetUnion::Lease(5),
                mvcc::CompareTarget::Lease(5),
            ),
        ];
        for (target, union, want) in cases {
            assert_eq!(compare(c(target, Some(union))).unwrap().target, want);
        }
        // A mismatched or missing operand is the target's zero value, as in etcd.
        assert_eq!(
            compare(c(CompareTarget::Version, Some(TargetUnion::Lease(5))))
                .unwrap()
                .target,
            mvcc::CompareTarget::Version(0)
        );
        assert_eq!(
            compare(c(CompareTarget::Value, None)).unwrap().target,
            mvcc::CompareTarget::Value(Vec::new())
        );
    }
}
