//! lincheck (stub).
