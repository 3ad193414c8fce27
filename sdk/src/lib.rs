//! SDK (stub).
