//! A refused learner setting ([`SettingsError`]) and the one check every settings table uses: its own
//! module so that both learners' settings depend on it without depending on each other.
use thiserror::Error;

/// A refused setting: the field's path below `[learner]` and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid learner setting `{field}`: {reason}")]
pub struct SettingsError {
    pub field: String,
    pub reason: String,
}

impl SettingsError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub(crate) fn check(
    ok: bool,
    field: &str,
    reason: impl FnOnce() -> String,
) -> Result<(), SettingsError> {
    if ok {
        Ok(())
    } else {
        Err(SettingsError::new(field, reason()))
    }
}
