//! The unit's listeners: each one's descriptor share, caps and deadlines, and a TCP
//! listener that admits only what its gate allows.
//!
//! The budget (issue #22 item 1), for the status-page compartment's `open_files = 256`
//! (`appliance/manifest.toml`; one process runs everything without a manifest, and the
//! same shares apply to its own limit):
//!
//! | what | descriptors | why |
//! |---|---|---|
//! | reserve | 64 | not a listener: the link's MQTT and image connections, its outbox files, pluton's socket, IPC channels, epoll/eventfd, logs |
//! | status page | min(64, 50 % of the rest), 16 per address | an operator's browser opens ≤ 6; unanswered ones quiet for 1 s or idle ones quiet for 2 s yield to newcomers |
//! | metrics | min(8, 10 %), 4 per address | one scraper on loopback |
//! | control socket | min(8, 5 %) | `warden status`, one at a time |
//!
//! With 256: 64 reserved, 64 + 8 + 8 = 80 for the listeners, 112 left over. The facade
//! runs in the bridges compartment (its own `max_clients`, config). A smaller limit
//! shrinks the shares, never the reserve.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use warden_listeners::{
    AcceptBackoff, AdmissionGate, Deadlines, DescriptorBudget, GuardedStream, Limits,
};

/// Descriptors kept for what is not a listener (see the module's table).
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// The status page: a request (after the TLS handshake) and its answer within 10 s, a
/// keep-alive connection closed after 30 s without traffic.
pub const PAGE_DEADLINES: Deadlines = Deadlines {
    request: Duration::from_secs(10),
    idle: Duration::from_secs(30),
};
/// The status page's TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// `/metrics`: a scrape is one short request.
pub const METRICS_DEADLINES: Deadlines = Deadlines {
    request: Duration::from_secs(10),
    idle: Duration::from_secs(30),
};
/// The control socket writes one answer and closes.
pub const CONTROL_DEADLINES: Deadlines = Deadlines {
    request: Duration::from_secs(5),
    idle: Duration::from_secs(5),
};

/// Each listener's caps, from this process's descriptor budget.
#[derive(Debug, Clone, Copy)]
pub struct ListenerPlan {
    /// The budget the caps came from.
    pub budget: DescriptorBudget,
    /// The status page.
    pub page: Limits,
    /// `/metrics`.
    pub metrics: Limits,
    /// The control socket (one local user: no per-address share).
    pub control: Limits,
}

impl ListenerPlan {
    /// The plan for `budget`.
    pub fn for_budget(budget: DescriptorBudget) -> Self {
        let page = budget.cap(64, 50);
        let metrics = budget.cap(8, 10);
        let control = budget.cap(8, 5);
        Self {
            budget,
            page: Limits {
                total: page,
                per_address: page.min(16),
            },
            metrics: Limits {
                total: metrics,
                per_address: metrics.min(4),
            },
            control: Limits {
                total: control,
                per_address: control,
            },
        }
    }

    /// The plan for this process's `RLIMIT_NOFILE`, logged.
    pub fn for_this_process() -> Self {
        let plan = Self::for_budget(DescriptorBudget::of_this_process(RESERVED_DESCRIPTORS));
        tracing::info!(
            rlimit_nofile = plan.budget.limit,
            reserved = plan.budget.reserve,
            page = plan.page.total,
            metrics = plan.metrics.total,
            control = plan.control.total,
            "listener descriptor budget"
        );
        plan
    }
}

/// A TCP listener for axum whose connections hold a slot of `gate` and run under
/// `deadlines`; accept errors back off.
#[derive(Debug)]
pub struct GuardedTcpListener {
    listener: TcpListener,
    gate: AdmissionGate,
    deadlines: Deadlines,
    backoff: AcceptBackoff,
}

impl GuardedTcpListener {
    /// Guards `listener` (named `name` in logs).
    pub fn new(
        listener: TcpListener,
        limits: Limits,
        deadlines: Deadlines,
        name: &'static str,
    ) -> Self {
        Self {
            listener,
            gate: AdmissionGate::new(limits),
            deadlines,
            backoff: AcceptBackoff::new(name),
        }
    }
}

impl axum::serve::Listener for GuardedTcpListener {
    type Io = GuardedStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    let wait = self.backoff.failed(&error);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            self.backoff.succeeded();
            match self.gate.admit(peer.ip()) {
                Ok(admission) => {
                    return (GuardedStream::new(stream, admission, self.deadlines), peer);
                }
                Err(refused) => tracing::debug!(%peer, %refused, "connection refused"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_limit_leaves_the_reserve_and_a_page_for_operators() {
        let plan = ListenerPlan::for_budget(DescriptorBudget {
            limit: 256,
            reserve: RESERVED_DESCRIPTORS,
        });
        assert_eq!(plan.page.total, 64);
        assert_eq!(plan.page.per_address, 16);
        let used = plan.page.total + plan.metrics.total + plan.control.total;
        assert!(
            u64::try_from(used).expect("small") <= 256 - RESERVED_DESCRIPTORS,
            "{used}"
        );
        let tight = ListenerPlan::for_budget(DescriptorBudget {
            limit: 96,
            reserve: RESERVED_DESCRIPTORS,
        });
        assert_eq!(tight.page.total, 16);
    }
}
