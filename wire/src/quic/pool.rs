//! Connections keyed by address, shared by every caller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::OnceCell;

use super::{ClientEndpoint, Connection, TransportError};
use crate::{Request, Response};

/// One address's slot: the outcome of its dial. Concurrent `get`s for the address wait on
/// the same cell, so they share one dial and, if it fails, its error. A failed slot is
/// removed at once so the next `get` dials again.
type Slot = Arc<OnceCell<Result<Connection, TransportError>>>;

/// Connections keyed by address, dialled on first use and redialled when lost. Concurrent
/// callers for one address share a single dial.
#[derive(Debug, Clone)]
pub struct ConnectionPool {
    pub(crate) endpoint: ClientEndpoint,
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl ConnectionPool {
    /// A pool dialling through `endpoint`.
    pub fn new(endpoint: ClientEndpoint) -> ConnectionPool {
        ConnectionPool { endpoint, slots: Arc::default() }
    }

    /// The endpoint the pool dials through.
    pub fn endpoint(&self) -> &ClientEndpoint {
        &self.endpoint
    }

    /// The live connection to `addr`, dialling if needed.
    pub async fn get(&self, addr: &str) -> Result<Connection, TransportError> {
        // At most two rounds: a cached connection found closed is replaced once.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let slot = self.lock().entry(addr.to_owned()).or_default().clone();
            let dialled = slot.get_or_init(|| self.endpoint.connect(addr)).await;
            match dialled {
                Ok(conn) if conn.is_closed() && attempts < 2 => {
                    self.remove_slot(addr, &slot);
                }
                Ok(conn) => return Ok(conn.clone()),
                Err(error) => {
                    // Leave no failed slot behind, so the next caller dials afresh.
                    self.remove_slot(addr, &slot);
                    return Err(error.clone());
                }
            }
        }
    }

    /// `get(addr)` then `call`, all within `timeout`. A connection found closed is redialled
    /// once before sending. A dial that does not finish in time is a
    /// [`TransportError::Connect`] (nothing was sent). A connection that fails while the
    /// request is in flight (lost, or its peer silent past the liveness timeout) is evicted,
    /// so the next call dials a new one; the failed request is not retried.
    pub async fn call(&self, addr: &str, request: Request, timeout: Duration) -> Result<Response, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = match tokio::time::timeout_at(deadline, self.get(addr)).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(TransportError::Connect {
                    addr: addr.to_owned(),
                    reason: format!("no connection within {timeout:?}"),
                })
            }
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let result = conn.call(request, left).await;
        if let Err(TransportError::ConnectionLost(_) | TransportError::NotSent(_)) = &result {
            self.evict_connection(addr, &conn);
        }
        result
    }

    /// Drops the cached connection to `addr` (after an error that suggests it is broken).
    /// Callers still holding it keep it until they drop it.
    pub fn evict(&self, addr: &str) {
        self.lock().remove(addr);
    }

    /// Number of addresses with a cached (or dialling) connection.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no connection is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn evict_connection(&self, addr: &str, conn: &Connection) {
        let mut slots = self.lock();
        let cached = slots
            .get(addr)
            .and_then(|slot| slot.get())
            .is_some_and(|dialled| dialled.as_ref().is_ok_and(|c| c.same_connection(conn)));
        if cached {
            slots.remove(addr);
        }
    }

    /// Removes `slot` if it is still the one cached for `addr` (another caller may have
    /// replaced it already).
    fn remove_slot(&self, addr: &str, slot: &Slot) {
        let mut slots = self.lock();
        if slots.get(addr).is_some_and(|cached| Arc::ptr_eq(cached, slot)) {
            slots.remove(addr);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // Every critical section is a single map operation: a poisoned map is consistent.
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
