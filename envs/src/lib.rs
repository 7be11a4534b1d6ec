//! Environments: see docs/environments.md.
