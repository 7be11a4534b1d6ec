//! The population a vLLM backend generates with (EGGROLL) and which of its members the servers hold
//! as adapters; loading them is [`crate::member_adapters`].
use std::collections::BTreeMap;
use std::sync::Arc;

use alp_policy::MemberHooks;

/// Member adapters are named this plus the population's number and the member.
pub const MEMBER_PREFIX: &str = "alp-es-";

/// The population the backend generates with, and which of its members every serving server holds.
pub(crate) struct MemberAdapters {
    pub hooks: Arc<dyn MemberHooks>,
    /// Counts populations, so a new one's names never match the last one's.
    pub number: u64,
    /// Member to the name it is served under, for the members loaded so far.
    pub loaded: BTreeMap<usize, String>,
}
