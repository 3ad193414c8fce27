//! PD (stub).
