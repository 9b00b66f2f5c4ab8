//! Release-key revocation lists from the fleet, installed exactly as a file's.
//!
//! The link hands over the `WRL1` bytes the fleet sent (`updates/revocation-list`,
//! bounded but not verified). They go through the one install path a file from
//! `warden update install FILE` takes ([`install_list`]: the boot monitor's
//! `install_revocation_list`, which verifies the list against the vendor roots of the
//! unit's own root of trust, never the fleet's word, takes it only if its sequence is
//! above the held one's, and writes it atomically). The outcome goes to the fleet as an
//! event through the durable control queue (`revocation-list-installed`, or
//! `revocation-list-refused` with the reason: a refused list changes nothing), and the
//! held sequence into the reported twin ([`Updater::revocation_sequence`]).

use std::sync::{Arc, PoisonError};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_link::ControlMessage;
use warden_link::topics::{DeviceEvent, event_kind};
use warden_os::file_system::SlotFileSystem;
use warden_os::revocations::RevocationInstall;
use warden_os::{BootMonitor, BootRootOfTrust};

use super::installer::{SharedMonitor, Updater};

/// Installs `bytes` as the held revocation list through the boot monitor (verified
/// against the root of trust's vendor roots, newer than the held one, atomically); the
/// reason in words if refused. The one path for a file and for the fleet's list.
pub(super) async fn install_list<F, R>(
    monitor: &SharedMonitor<F, R>,
    bytes: Vec<u8>,
) -> Result<RevocationInstall, String>
where
    F: SlotFileSystem + Send + 'static,
    R: BootRootOfTrust + Send + 'static,
{
    let monitor = Arc::clone(monitor);
    tokio::task::spawn_blocking(move || {
        let mut monitor = monitor.lock().unwrap_or_else(PoisonError::into_inner);
        monitor
            .install_revocation_list(&bytes)
            .map_err(|error| error.to_string())
    })
    .await
    .unwrap_or_else(|error| Err(format!("revocation task: {error}")))
}

/// The sequence of the list the unit holds now (`None`: none, or it cannot be read).
pub(super) fn held_sequence<F, R>(monitor: &mut BootMonitor<F, R>) -> Option<u64>
where
    F: SlotFileSystem,
    R: BootRootOfTrust,
{
    match monitor.held_revocations() {
        Ok(held) => held.sequence,
        Err(error) => {
            tracing::warn!(%error, "cannot read the held revocation list");
            None
        }
    }
}

/// Installs a list the fleet sent and reports the outcome (event, log, the held
/// sequence for the twin); what the install came to.
pub async fn install_from_fleet<F, R>(
    updater: &Updater<F, R>,
    list: Vec<u8>,
) -> Result<RevocationInstall, String>
where
    F: SlotFileSystem + Send + 'static,
    R: BootRootOfTrust + Send + 'static,
{
    let installed = install_list(&updater.monitor, list).await;
    match &installed {
        Ok(RevocationInstall::Installed { sequence, revoked }) => {
            let detail = format!(
                "release-key revocation list {sequence} from the fleet verified against this unit's vendor roots and installed: {revoked} key(s) revoked; images signed by them are refused"
            );
            tracing::info!(%detail, "revocation list");
            updater.revocations_changed(Some(*sequence));
            updater
                .control
                .send_or_log(&ControlMessage::Event(DeviceEvent::now(
                    event_kind::REVOCATION_LIST_INSTALLED,
                    detail,
                )));
        }
        Ok(RevocationInstall::AlreadyHeld { sequence }) => {
            tracing::debug!(sequence, "the fleet's revocation list is already held");
            updater.revocations_changed(Some(*sequence));
        }
        Err(why) => {
            let detail = format!(
                "release-key revocation list from the fleet refused: {why}; nothing was changed"
            );
            tracing::warn!(%detail, "revocation list");
            updater
                .control
                .send_or_log(&ControlMessage::Event(DeviceEvent::now(
                    event_kind::REVOCATION_LIST_REFUSED,
                    detail,
                )));
        }
    }
    installed
}

/// Takes the fleet's lists from `lists` until `shutdown`, one at a time.
pub(super) async fn take_from_fleet<F, R>(
    updater: Updater<F, R>,
    mut lists: mpsc::Receiver<Vec<u8>>,
    shutdown: CancellationToken,
) where
    F: SlotFileSystem + Send + 'static,
    R: BootRootOfTrust + Send + 'static,
{
    loop {
        let list = tokio::select! {
            () = shutdown.cancelled() => return,
            list = lists.recv() => match list {
                Some(list) => list,
                None => return,
            },
        };
        let _ = install_from_fleet(&updater, list).await;
    }
}

/// Drops the fleet's lists with a warning (a unit without `[updates]` installs no
/// images, so it holds no list either).
pub async fn ignore_all(mut lists: mpsc::Receiver<Vec<u8>>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            list = lists.recv() => match list {
                Some(_) => tracing::warn!(
                    "release-key revocation list from the fleet ignored: this unit takes no updates (its config has no [updates] section)"
                ),
                None => return,
            },
        }
    }
}
