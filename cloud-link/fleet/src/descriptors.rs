//! The fleet's descriptor budget: `RLIMIT_NOFILE` raised, a reserve kept, shares split.
//!
//! Every connection holds a descriptor; ~1,100 idle HTTP connections exhausted the
//! default 1024 (issue #22). At start the soft limit is raised to the hard one; above
//! [`RESERVED_DESCRIPTORS`] (the store's connections, image files, logs, the
//! listeners themselves) the HTTP listener may take [`HTTP_PERCENT`] and the broker
//! [`BROKER_PERCENT`], each never more than its configured cap.

use warden_listeners::DescriptorBudget;

/// Descriptors kept out of the listeners' budget: the store's connections, image
/// files, logs, the listening sockets.
pub const RESERVED_DESCRIPTORS: u64 = 256;
/// The HTTP listener's share of the descriptors above the reserve.
pub const HTTP_PERCENT: u64 = 25;
/// The broker's share of the descriptors above the reserve (its devices).
pub const BROKER_PERCENT: u64 = 75;

// The shares never add up to more than the descriptors above the reserve.
const _: () = assert!(HTTP_PERCENT + BROKER_PERCENT <= 100);

/// Raises the soft `RLIMIT_NOFILE` to the hard one (the default soft 1024 is what ~1,100
/// idle connections exhausted) and returns the soft limit now in force (`None`: unknown).
pub fn raise_descriptor_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return Some(hard),
            Err(errno) => {
                tracing::warn!(%errno, soft, hard, "cannot raise the open-file limit");
            }
        }
    }
    Some(soft)
}

/// A listener's connection cap: `configured`, held to its `percent` of what `open_files`
/// leaves above [`RESERVED_DESCRIPTORS`]; at least 1. `None` (limit unknown): as
/// configured.
pub fn connection_cap(open_files: Option<u64>, configured: u32, percent: u64) -> u32 {
    let Some(limit) = open_files else {
        return configured.max(1);
    };
    let budget = DescriptorBudget {
        limit,
        reserve: RESERVED_DESCRIPTORS,
    };
    let wanted = usize::try_from(configured).unwrap_or(usize::MAX);
    u32::try_from(budget.cap(wanted, percent)).unwrap_or(configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_broker_share_what_the_reserve_leaves() {
        assert_eq!(connection_cap(Some(1024), 1024, HTTP_PERCENT), 192);
        assert_eq!(connection_cap(Some(1024), 16_384, BROKER_PERCENT), 576);
        assert_eq!(connection_cap(Some(20_000), 1024, HTTP_PERCENT), 1024);
        assert_eq!(
            connection_cap(Some(1_048_576), 16_384, BROKER_PERCENT),
            16_384
        );
        assert_eq!(connection_cap(Some(100), 1024, HTTP_PERCENT), 1);
        assert_eq!(connection_cap(None, 1024, BROKER_PERCENT), 1024);
    }
}
