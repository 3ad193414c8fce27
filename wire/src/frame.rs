//! Frame codec: a big-endian `u32` length followed by a postcard-encoded [`Frame`].
//!
//! Decoding is a pure function over a buffer ([`decode`]): it checks the length prefix
//! against a maximum *before* allocating anything, so a peer cannot make us reserve memory
//! by announcing a huge frame.

use crate::{Error, Request, Response};

/// Default largest frame accepted: 4 MiB.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 4 * 1024 * 1024;

/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Who opens a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// An application client (KV and PD lookups only).
    Client,
    /// A storage node, with the id it claims; the server checks it against the certificate.
    Node(crate::NodeId),
    /// A placement-driver server.
    Pd,
}

/// First frame on every connection of a peer with a certificate. Its encoding is the same
/// in every protocol version, so a server can always read the peer's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    /// The sender's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// What the sender claims to be.
    pub role: Role,
}

impl Hello {
    /// A `Hello` of this protocol version.
    pub fn new(role: Role) -> Hello {
        Hello { protocol_version: crate::PROTOCOL_VERSION, role }
    }
}

/// First frame on every connection of a web client, which has no certificate: it claims
/// [`Role::Client`] and presents a scoped token ([`crate::token`]). Since version 4.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenHello {
    /// The sender's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The token, `tst1.…`.
    pub token: String,
}

impl TokenHello {
    /// A `TokenHello` of this protocol version.
    pub fn new(token: impl Into<String>) -> TokenHello {
        TokenHello { protocol_version: crate::PROTOCOL_VERSION, token: token.into() }
    }

    /// The `Hello` it stands for: a client of its version.
    pub fn hello(&self) -> Hello {
        Hello { protocol_version: self.protocol_version, role: Role::Client }
    }
}

/// Server's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HelloAck {
    /// The server's protocol version.
    pub protocol_version: u32,
    /// What the server is.
    pub role: Role,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    /// Matches a response to its request on a multiplexed stream. 0 for the handshake.
    pub request_id: u64,
    /// Content.
    pub body: FrameBody,
}

/// Frame content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FrameBody {
    /// Connection handshake.
    Hello(Hello),
    /// Handshake answer: accepted, or refused with a typed error.
    HelloAck(Result<HelloAck, Error>),
    /// A request.
    Request(crate::Request),
    /// A response.
    Response(Response),
    /// Connection handshake of a web client (a token instead of a certificate). Last, so
    /// the other variants keep their encoding.
    TokenHello(TokenHello),
}

impl Frame {
    /// A request frame.
    pub fn request(request_id: u64, req: Request) -> Self {
        Frame { request_id, body: FrameBody::Request(req) }
    }

    /// A response frame.
    pub fn response(request_id: u64, resp: Response) -> Self {
        Frame { request_id, body: FrameBody::Response(resp) }
    }
}

/// Codec failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces a frame larger than allowed. The stream is unusable.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// Limit.
        max: u32,
    },
    /// The frame body is not a valid postcard [`Frame`]. The stream is unusable.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes `frame` with its length prefix.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// Appends `frame`, with its length prefix, to `out`; returns the length appended. With a
/// reused buffer this allocates nothing once the buffer has grown to the frames' size. On
/// error `out` is left as it was.
pub fn encode_into(frame: &Frame, out: &mut Vec<u8>) -> Result<usize, FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; LEN_PREFIX]);
    let taken = core::mem::take(out);
    *out = match postcard::to_extend(frame, taken) {
        Ok(v) => v,
        Err(e) => return Err(FrameError::Malformed(e.to_string())),
    };
    let body_len = out.len() - start - LEN_PREFIX;
    let Ok(len) = u32::try_from(body_len) else {
        out.truncate(start);
        return Err(FrameError::TooLarge { len: body_len as u64, max: u32::MAX });
    };
    out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    Ok(out.len() - start)
}

/// Reads the length prefix of `buf`, if complete, and checks it against `max`.
pub fn check(buf: &[u8], max: u32) -> Result<Option<usize>, FrameError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len > max {
        return Err(FrameError::TooLarge { len: len as u64, max });
    }
    Ok(Some(len as usize))
}

/// Decodes one frame from the front of `buf`. Returns `None` when more bytes are needed,
/// otherwise the frame and the number of bytes it used.
pub fn decode(buf: &[u8], max: u32) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(len) = check(buf, max)? else { return Ok(None) };
    if buf.len() < LEN_PREFIX + len {
        return Ok(None);
    }
    let body = &buf[LEN_PREFIX..LEN_PREFIX + len];
    let frame = decode_body(body)?;
    Ok(Some((frame, LEN_PREFIX + len)))
}

/// Decodes a frame body (without its length prefix). Trailing bytes are an error.
pub fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
    let (frame, rest) = postcard::take_from_bytes::<Frame>(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..24)
    }

    fn epoch() -> impl Strategy<Value = RegionEpoch> {
        (any::<u64>(), any::<u64>()).prop_map(|(conf_ver, version)| RegionEpoch { conf_ver, version })
    }

    fn peer() -> impl Strategy<Value = Peer> {
        (any::<u64>(), any::<u64>()).prop_map(|(p, n)| Peer { id: PeerId(p), node_id: NodeId(n) })
    }

    fn region() -> impl Strategy<Value = RegionDescriptor> {
        (any::<u64>(), bytes(), bytes(), epoch(), proptest::collection::vec(peer(), 0..4)).prop_map(
            |(id, start_key, end_key, epoch, peers)| RegionDescriptor {
                id: RegionId(id),
                start_key,
                end_key,
                epoch,
                peers,
            },
        )
    }

    fn write_command() -> impl Strategy<Value = WriteCommand> {
        prop_oneof![
            (bytes(), bytes()).prop_map(|(key, value)| WriteCommand::Put { key, value }),
            bytes().prop_map(|key| WriteCommand::Delete { key }),
            (bytes(), bytes()).prop_map(|(key, value)| WriteCommand::Append { key, value }),
            (bytes(), proptest::option::of(bytes()), proptest::option::of(bytes()))
                .prop_map(|(key, expected, new)| WriteCommand::CompareAndSwap { key, expected, new }),
            proptest::collection::vec((bytes(), bytes()), 0..4).prop_map(|pairs| WriteCommand::BatchPut { pairs }),
        ]
    }

    fn kv_op() -> impl Strategy<Value = KvOp> {
        prop_oneof![
            bytes().prop_map(|key| KvOp::Get { key }),
            proptest::collection::vec(bytes(), 0..4).prop_map(|keys| KvOp::BatchGet { keys }),
            (bytes(), bytes(), any::<u32>(), any::<bool>()).prop_map(|(start, end, limit, reverse)| KvOp::Scan {
                start,
                end,
                limit,
                reverse
            }),
            (proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>())), write_command()).prop_map(
                |(s, command)| KvOp::Write {
                    session: s.map(|(s, seq, first_pending)| SessionSeq { session: SessionId(s), seq, first_pending }),
                    command
                }
            ),
        ]
    }

    fn pd_request() -> impl Strategy<Value = PdRequest> {
        prop_oneof![
            (any::<u64>(), ".{0,10}", any::<u64>()).prop_map(|(n, addr, capacity_bytes)| PdRequest::RegisterNode {
                node_id: NodeId(n),
                addr,
                capacity_bytes
            }),
            (any::<u64>(), any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u64>(), 0..3), region())
                .prop_map(|(n, region_count, used_bytes, hosted, merged)| PdRequest::NodeHeartbeat {
                    node_id: NodeId(n),
                    stats: NodeStats {
                        region_count,
                        leader_count: 0,
                        used_bytes,
                        host_cpu_busy_pct: (n % 3 != 0).then_some((n % 101) as u8),
                        storage_failure: (n % 5 == 0).then(|| format!("disk {n} full")),
                        ..NodeStats::default()
                    },
                    hosted: hosted.into_iter().map(RegionId).collect(),
                    merged: vec![merged],
                }),
            (any::<u64>(), region(), peer(), any::<u64>()).prop_map(|(n, region, leader, term)| {
                PdRequest::RegionHeartbeat {
                    node_id: NodeId(n),
                    regions: vec![RegionStats {
                        region,
                        leader,
                        term,
                        approximate_size: 1,
                        approximate_keys: 2,
                        learners: vec![leader],
                        write_qps: 3,
                        read_qps: 4,
                        split_off: vec![],
                        merging: Some(crate::MergeReport {
                            target: RegionId(term),
                            target_epoch: crate::RegionEpoch { conf_ver: n, version: term },
                            prepare_index: n,
                        }),
                    }],
                }
            }),
            bytes().prop_map(|key| PdRequest::GetRegion { key }),
            any::<u64>().prop_map(|r| PdRequest::GetRegionById { region_id: RegionId(r) }),
            (bytes(), bytes(), any::<u32>()).prop_map(|(start, end, limit)| PdRequest::ScanRegions {
                start,
                end,
                limit
            }),
            Just(PdRequest::GetNodes),
            Just(PdRequest::AllocSession),
            Just(PdRequest::GetClusterStatus),
            bytes().prop_map(|key| PdRequest::SplitRegion { key }),
            bytes().prop_map(|key| PdRequest::MergeRegion { key }),
            (any::<u64>(), any::<u64>()).prop_map(|(id, expires_at)| PdRequest::RevokeToken { id, expires_at }),
            any::<u64>().prop_map(|n| PdRequest::DrainNode { node_id: NodeId(n) }),
            any::<u64>().prop_map(|n| PdRequest::RemoveNode { node_id: NodeId(n) }),
            Just(PdRequest::GetOperators),
        ]
    }

    fn raft_kind() -> impl Strategy<Value = RaftRpcKind> {
        prop_oneof![
            Just(RaftRpcKind::AppendEntries),
            Just(RaftRpcKind::Vote),
            Just(RaftRpcKind::PreVote),
            Just(RaftRpcKind::SnapshotChunk),
            Just(RaftRpcKind::TransferLeader),
        ]
    }

    fn node_info() -> impl Strategy<Value = NodeInfo> {
        (any::<u64>(), ".{0,10}", any::<u64>(), any::<bool>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(
                |(id, addr, capacity_bytes, up, last_heartbeat_ms_ago, region_count, leader_count, used_bytes)| {
                    NodeInfo {
                        id: NodeId(id),
                        addr,
                        capacity_bytes,
                        state: if up { NodeState::Up } else { NodeState::Down },
                        last_heartbeat_ms_ago,
                        region_count,
                        leader_count,
                        used_bytes,
                        write_path: crate::pd::WritePathStats {
                            log_syncs: id ^ 7,
                            log_entries: used_bytes,
                            log_bytes: 3,
                        },
                        draining: up && id % 2 == 0,
                        web_cert_hash: up.then(|| id.to_be_bytes().to_vec()),
                        host_cpu_busy_pct: up.then_some((id % 101) as u8),
                        storage_failure: (!up && id % 2 == 0).then(|| format!("node {id}: No space left")),
                    }
                },
            )
    }

    fn route() -> impl Strategy<Value = RegionRoute> {
        (region(), proptest::option::of(peer()), proptest::collection::vec(".{0,8}", 0..3))
            .prop_map(|(region, leader, peer_addrs)| RegionRoute { region, leader, peer_addrs })
    }

    fn pd_response() -> impl Strategy<Value = PdResponse> {
        prop_oneof![
            Just(PdResponse::Ok),
            (proptest::collection::vec(region(), 0..3), proptest::collection::vec(node_info(), 0..3)).prop_map(
                |(create, nodes)| PdResponse::NodeHeartbeat {
                    destroy: create.clone(),
                    destroy_merged: create.iter().map(|d| d.id).collect(),
                    revoked_tokens: create.iter().map(|d| d.id.0).collect(),
                    create,
                    nodes,
                }
            ),
            route().prop_map(PdResponse::Region),
            proptest::collection::vec(route(), 0..3).prop_map(PdResponse::Regions),
            proptest::collection::vec(node_info(), 0..3).prop_map(PdResponse::Nodes),
            any::<u64>().prop_map(|s| PdResponse::Session(SessionId(s))),
            (any::<u64>(), region(), peer(), proptest::option::of(bytes())).prop_map(|(op_id, region, peer, key)| {
                use crate::pd::RegionCommandKind as K;
                let kinds = vec![
                    K::AddLearner { peer },
                    K::PromoteLearner { peer },
                    K::RemovePeer { peer },
                    K::TransferLeader { to: peer },
                    K::Split { key, new_region_id: RegionId(op_id ^ 1), new_peers: region.peers.clone() },
                    K::SplitByLoad { new_region_id: RegionId(op_id ^ 2), new_peers: region.peers.clone() },
                ];
                PdResponse::RegionCommands(
                    kinds
                        .into_iter()
                        .map(|kind| crate::pd::RegionCommand { op_id, region_id: region.id, epoch: region.epoch, kind })
                        .collect(),
                )
            }),
            (proptest::collection::vec(node_info(), 0..3), region(), proptest::option::of(peer())).prop_map(
                |(nodes, region, leader)| PdResponse::ClusterStatus {
                    nodes,
                    regions: vec![crate::pd::RegionInfo {
                        learners: leader.into_iter().collect(),
                        region,
                        leader,
                        approximate_size: 5,
                        approximate_keys: 6,
                    }],
                }
            ),
            any::<u64>().prop_map(|op_id| PdResponse::OperatorStarted { op_id }),
            (any::<u64>(), ".{0,8}").prop_map(|(id, reason)| PdResponse::Operators(vec![
                crate::pd::OperatorInfo {
                    id,
                    region_id: RegionId(id),
                    kind: "split".into(),
                    reason: reason.clone(),
                    state: crate::pd::OperatorState::Cancelled { reason },
                    started_ms_ago: 1,
                    took_ms: Some(2),
                },
                crate::pd::OperatorInfo {
                    id,
                    region_id: RegionId(1),
                    kind: "split".into(),
                    reason: String::new(),
                    state: crate::pd::OperatorState::Running,
                    started_ms_ago: 1,
                    took_ms: None,
                }
            ])),
        ]
    }

    fn write_result() -> impl Strategy<Value = WriteResult> {
        prop_oneof![
            Just(WriteResult::Done),
            any::<bool>().prop_map(|existed| WriteResult::Deleted { existed }),
            any::<u64>().prop_map(|new_len| WriteResult::Appended { new_len }),
            (any::<bool>(), proptest::option::of(bytes()))
                .prop_map(|(succeeded, previous)| WriteResult::CompareAndSwap { succeeded, previous }),
        ]
    }

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Client), Just(Role::Pd), any::<u64>().prop_map(|n| Role::Node(NodeId(n)))]
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<u64>(), epoch(), any::<u32>(), any::<bool>(), kv_op()).prop_map(
                |(r, epoch, timeout_ms, stale, op)| {
                    Request::Kv(KvRequest {
                        header: RequestHeader {
                            region_id: RegionId(r),
                            epoch,
                            timeout_ms,
                            consistency: if stale { ReadConsistency::Stale } else { ReadConsistency::Linearizable },
                        },
                        op,
                    })
                }
            ),
            (any::<u64>(), any::<u64>(), raft_kind(), bytes()).prop_map(|(r, p, kind, payload)| Request::Raft(
                RaftRequest { region_id: RegionId(r), to_peer: PeerId(p), kind, payload }
            )),
            pd_request().prop_map(Request::Pd),
        ]
    }

    fn error() -> impl Strategy<Value = Error> {
        prop_oneof![
            (any::<u64>(), proptest::option::of((peer(), ".{0,8}"))).prop_map(|(r, l)| Error::NotLeader {
                region_id: RegionId(r),
                leader: l.map(|(peer, addr)| LeaderHint { peer, addr }),
            }),
            proptest::collection::vec(region(), 0..3).prop_map(|current| Error::EpochNotMatch { current }),
            (bytes(), any::<u64>(), bytes(), bytes()).prop_map(|(key, r, start_key, end_key)| Error::KeyNotInRegion {
                key,
                region_id: RegionId(r),
                start_key,
                end_key
            }),
            any::<u64>().prop_map(|r| Error::RegionNotFound { region_id: RegionId(r) }),
            any::<u32>().prop_map(|retry_after_ms| Error::ServerBusy { retry_after_ms }),
            Just(Error::DeadlineExceeded),
            (any::<u64>(), any::<u64>()).prop_map(|(len, max)| Error::KeyTooLarge { len, max }),
            (any::<u64>(), any::<u64>()).prop_map(|(len, max)| Error::ValueTooLarge { len, max }),
            ".{0,12}".prop_map(|reason| Error::InvalidRequest { reason }),
            ".{0,12}".prop_map(|reason| Error::PermissionDenied { reason }),
            (any::<u32>(), any::<u32>()).prop_map(|(ours, theirs)| Error::UnsupportedVersion { ours, theirs }),
            Just(Error::NotBootstrapped),
            any::<u64>().prop_map(|r| Error::WriteUndetermined { region_id: RegionId(r) }),
            (any::<u64>(), ".{0,12}")
                .prop_map(|(r, reason)| Error::RegionUnavailable { region_id: RegionId(r), reason }),
            (any::<u64>(), any::<u64>()).prop_map(|(len, max)| Error::BatchTooLarge { len, max }),
            (any::<u64>(), any::<u64>()).prop_map(|(bytes, max)| Error::BatchBytesTooLarge { bytes, max }),
            (any::<u64>(), any::<u64>()).prop_map(|(len, max)| Error::ResponseTooLarge { len, max }),
            any::<u64>().prop_map(|s| Error::SessionExpired { session: SessionId(s) }),
            ".{0,12}".prop_map(|reason| Error::Unauthenticated { reason }),
            ".{0,12}".prop_map(|reason| Error::StorageUnavailable { reason }),
            proptest::option::of(".{0,12}").prop_map(|leader| Error::PdNotLeader { leader }),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            proptest::option::of(bytes()).prop_map(|v| Ok(ResponseBody::Kv(KvResponse::Value(v)))),
            proptest::collection::vec(proptest::option::of(bytes()), 0..3)
                .prop_map(|v| Ok(ResponseBody::Kv(KvResponse::Values(v)))),
            (proptest::collection::vec((bytes(), bytes()), 0..3), proptest::option::of(bytes()))
                .prop_map(|(pairs, resume_key)| Ok(ResponseBody::Kv(KvResponse::Scan { pairs, resume_key }))),
            write_result().prop_map(|r| Ok(ResponseBody::Kv(KvResponse::Write(r)))),
            bytes().prop_map(|payload| Ok(ResponseBody::Raft(RaftResponse { payload }))),
            pd_response().prop_map(|r| Ok(ResponseBody::Pd(r))),
            error().prop_map(Err),
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u32>(), role()).prop_map(|(v, role)| Frame {
                request_id: 0,
                body: FrameBody::Hello(Hello { protocol_version: v, role })
            }),
            (any::<u32>(), "tst1\\.[A-Za-z0-9_.-]{0,60}").prop_map(|(protocol_version, token)| Frame {
                request_id: 0,
                body: FrameBody::TokenHello(TokenHello { protocol_version, token })
            }),
            error().prop_map(|e| Frame { request_id: 0, body: FrameBody::HelloAck(Err(e)) }),
            (any::<u32>(), role()).prop_map(|(v, role)| Frame {
                request_id: 0,
                body: FrameBody::HelloAck(Ok(HelloAck { protocol_version: v, role }))
            }),
            (any::<u64>(), request()).prop_map(|(id, r)| Frame::request(id, r)),
            (any::<u64>(), response()).prop_map(|(id, r)| Frame::response(id, r)),
        ]
    }

    proptest! {
        #[test]
        fn frames_appended_to_a_reused_buffer_decode_in_order(a in frame(), b in frame()) {
            let mut buf = b"junk".to_vec();
            let la = encode_into(&a, &mut buf).unwrap();
            let lb = encode_into(&b, &mut buf).unwrap();
            prop_assert_eq!(buf.len(), 4 + la + lb);
            let alone = encode(&a).unwrap();
            prop_assert_eq!(&buf[4..4 + la], alone.as_slice());
            let (back_a, used) = decode(&buf[4..], DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
            let (back_b, _) = decode(&buf[4 + used..], DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
            prop_assert_eq!(back_a, a);
            prop_assert_eq!(back_b, b);
        }

        #[test]
        fn every_frame_round_trips(f in frame()) {
            let bytes = encode(&f).unwrap();
            let (back, used) = decode(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, f);
        }

        #[test]
        fn truncated_frames_ask_for_more(f in frame(), cut in 0usize..64) {
            let bytes = encode(&f).unwrap();
            let cut = cut.min(bytes.len().saturating_sub(1));
            prop_assert_eq!(decode(&bytes[..cut], DEFAULT_MAX_FRAME_LEN).unwrap(), None);
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&buf, DEFAULT_MAX_FRAME_LEN);
        }
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_reading_the_body() {
        let buf = (DEFAULT_MAX_FRAME_LEN + 1).to_be_bytes();
        assert_eq!(
            decode(&buf, DEFAULT_MAX_FRAME_LEN),
            Err(FrameError::TooLarge { len: DEFAULT_MAX_FRAME_LEN as u64 + 1, max: DEFAULT_MAX_FRAME_LEN })
        );
    }

    /// Byte fields use `serde_bytes` for speed; postcard writes them exactly as it wrote the
    /// plain `Vec<u8>` they replaced (length, then the bytes), so nothing on the wire or on
    /// disk changes.
    #[test]
    fn byte_fields_encode_as_plain_byte_vectors_did() {
        #[derive(serde::Serialize)]
        struct Plain(Vec<u8>, Option<Vec<u8>>);
        #[derive(serde::Serialize)]
        struct Fast(#[serde(with = "serde_bytes")] Vec<u8>, #[serde(with = "serde_bytes")] Option<Vec<u8>>);
        for v in [vec![], vec![0u8, 255, 7], vec![9u8; 300]] {
            let plain = postcard::to_allocvec(&Plain(v.clone(), Some(v.clone()))).unwrap();
            let fast = postcard::to_allocvec(&Fast(v.clone(), Some(v))).unwrap();
            assert_eq!(plain, fast);
        }
    }

    #[test]
    fn garbage_body_is_malformed() {
        let mut buf = 3u32.to_be_bytes().to_vec();
        buf.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(decode(&buf, DEFAULT_MAX_FRAME_LEN), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut bytes = encode(&Frame::response(7, Err(Error::DeadlineExceeded))).unwrap();
        bytes.push(0);
        let len = (bytes.len() - LEN_PREFIX) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode(&bytes, DEFAULT_MAX_FRAME_LEN), Err(FrameError::Malformed(_))));
    }
}
