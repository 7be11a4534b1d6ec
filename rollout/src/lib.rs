//! Generation backends.
