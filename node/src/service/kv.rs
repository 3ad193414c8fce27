//! Client KV requests: validation, routing checks, reads and replicated writes.
//!
//! Every request is checked, in this order, for: a hosted region (`RegionNotFound`), the
//! region epoch (`EpochNotMatch`, carrying the current descriptor), key sizes and range
//! (`KeyTooLarge`, `KeyNotInRegion`, ...), then leadership (`NotLeader` with a hint) for
//! linearizable reads and all writes. Linearizable reads use openraft's read index; `Stale`
//! reads are served from this replica's applied state without any check of leadership.

use std::sync::Arc;

use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::ReadPolicy;
use tessera_wire::{
    key_in_range, validate_key, validate_value, Error, KvOp, KvRequest, KvResponse, ReadConsistency, RegionDescriptor,
    Response, ResponseBody, WriteCommand,
};

use super::NodeService;
use crate::raft::types::LogCommand;
use crate::region::Region;
use crate::storage::state_machine::{read_batch, read_get, read_scan};

impl NodeService {
    pub(crate) async fn kv(&self, req: KvRequest) -> Response {
        let header = req.header.clone();
        let region =
            self.ctx.regions.get(header.region_id).ok_or(Error::RegionNotFound { region_id: header.region_id })?;
        let desc = region.shared.descriptor();
        if header.epoch != desc.epoch {
            return Err(Error::EpochNotMatch { current: vec![desc] });
        }
        self.validate(&req.op, &desc)?;
        let timeout = if header.timeout_ms == 0 {
            self.default_timeout
        } else {
            std::time::Duration::from_millis(header.timeout_ms as u64)
        };
        // For a write, DeadlineExceeded means its fate is unknown; the client retries it
        // with the same session sequence number or reports it undetermined.
        tokio::time::timeout(timeout, self.execute(region, desc, req)).await.unwrap_or(Err(Error::DeadlineExceeded))
    }

    fn validate(&self, op: &KvOp, desc: &RegionDescriptor) -> Result<(), Error> {
        let limits = &self.limits;
        let in_region = |key: &[u8]| -> Result<(), Error> {
            validate_key(key, limits)?;
            if !desc.contains(key) {
                return Err(Error::KeyNotInRegion {
                    key: key.to_vec(),
                    region_id: desc.id,
                    start_key: desc.start_key.clone(),
                    end_key: desc.end_key.clone(),
                });
            }
            Ok(())
        };
        match op {
            KvOp::Get { key } => in_region(key),
            KvOp::BatchGet { keys } => {
                if keys.len() > limits.max_batch_keys {
                    return Err(Error::BatchTooLarge { len: keys.len() as u64, max: limits.max_batch_keys as u64 });
                }
                keys.iter().try_for_each(|k| in_region(k))
            }
            KvOp::Scan { start, end, limit, .. } => {
                if !end.is_empty() && start >= end {
                    return Err(Error::InvalidRequest { reason: "scan start must be below its end".into() });
                }
                if *limit == 0 {
                    return Err(Error::InvalidRequest { reason: "scan limit must be positive".into() });
                }
                // A reverse page resumes at the exclusive end `last_key ++ [0]`, one byte
                // longer than the longest key.
                if start.len() > limits.max_key_len || end.len() > limits.max_key_len + 1 {
                    return Err(Error::KeyTooLarge {
                        len: start.len().max(end.len()) as u64,
                        max: limits.max_key_len as u64,
                    });
                }
                // The scanned range must overlap the region.
                let starts_before_end = desc.end_key.is_empty() || start.as_slice() < desc.end_key.as_slice();
                let ends_after_start = end.is_empty() || end.as_slice() > desc.start_key.as_slice();
                if !(starts_before_end && ends_after_start) {
                    return Err(Error::KeyNotInRegion {
                        key: start.clone(),
                        region_id: desc.id,
                        start_key: desc.start_key.clone(),
                        end_key: desc.end_key.clone(),
                    });
                }
                Ok(())
            }
            KvOp::Write { command, .. } => {
                match command {
                    WriteCommand::Put { value, .. } | WriteCommand::Append { value, .. } => {
                        validate_value(value, limits)?
                    }
                    WriteCommand::CompareAndSwap { expected, new, .. } => {
                        if let Some(v) = expected {
                            validate_value(v, limits)?;
                        }
                        if let Some(v) = new {
                            validate_value(v, limits)?;
                        }
                    }
                    WriteCommand::BatchPut { pairs } => {
                        if pairs.len() > limits.max_batch_keys {
                            return Err(Error::BatchTooLarge {
                                len: pairs.len() as u64,
                                max: limits.max_batch_keys as u64,
                            });
                        }
                        pairs.iter().try_for_each(|(_, v)| validate_value(v, limits))?;
                    }
                    WriteCommand::Delete { .. } => {}
                }
                command.keys().into_iter().try_for_each(in_region)
            }
        }
    }

    async fn execute(&self, region: Arc<Region>, desc: RegionDescriptor, req: KvRequest) -> Response {
        let region_id = desc.id;
        let r = region_id.0;
        let engine = &self.ctx.engine;
        let storage = |e: std::io::Error| Error::StorageUnavailable { reason: e.to_string() };
        if let KvOp::Write { session, command } = req.op {
            let cmd = LogCommand::from_wire(session, command);
            return match region.raft.client_write(cmd).await {
                Ok(resp) => Ok(ResponseBody::Kv(KvResponse::Write(resp.data.to_wire()))),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    Err(Error::NotLeader { region_id, leader: region.leader_hint(&self.ctx.book) })
                }
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                    Err(Error::WriteUndetermined { region_id })
                }
                Err(e) => Err(Error::RegionUnavailable { region_id, reason: e.to_string() }),
            };
        }
        if req.header.consistency == ReadConsistency::Linearizable {
            match region.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(_) => {}
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
                    return Err(Error::NotLeader { region_id, leader: region.leader_hint(&self.ctx.book) })
                }
                Err(e) => return Err(Error::RegionUnavailable { region_id, reason: e.to_string() }),
            }
        }
        match req.op {
            KvOp::Get { key } => Ok(ResponseBody::Kv(KvResponse::Value(read_get(engine, r, &key).map_err(storage)?))),
            KvOp::BatchGet { keys } => {
                Ok(ResponseBody::Kv(KvResponse::Values(read_batch(engine, r, &keys).map_err(storage)?)))
            }
            KvOp::Scan { start, end, limit, reverse } => {
                // Clamp the range to the region.
                let lo = if start.as_slice() < desc.start_key.as_slice() { desc.start_key.clone() } else { start };
                let hi = if end.is_empty() || (!desc.end_key.is_empty() && desc.end_key < end) {
                    desc.end_key.clone()
                } else {
                    end
                };
                let limit = limit.min(self.limits.max_scan_limit) as usize;
                let (pairs, resume_key) = read_scan(engine, r, &lo, &hi, limit, reverse).map_err(storage)?;
                debug_assert!(pairs.iter().all(|(k, _)| key_in_range(k, &desc.start_key, &desc.end_key)));
                Ok(ResponseBody::Kv(KvResponse::Scan { pairs, resume_key }))
            }
            KvOp::Write { .. } => Err(Error::InvalidRequest { reason: "write reached the read path".into() }),
        }
    }
}
