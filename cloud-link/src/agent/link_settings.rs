//! Link settings from the fleet's twin: validated, applied whole or not at all, kept
//! across restarts in the outbox directory.

use std::path::Path;

use crate::control::{ControlMessage, ControlSender};
use warden_wire::topics::{DeviceEvent, LinkSettings, LinkSettingsError, event_kind};

/// Where the link settings from the fleet are kept (in the outbox directory).
pub(super) const LINK_SETTINGS_FILE: &str = "link-settings.json";

/// The saved link settings, if any and valid (an invalid file is ignored, logged).
pub(super) fn load_link_settings(path: &Path) -> Option<LinkSettings> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice::<LinkSettings>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|settings| {
            settings
                .validate()
                .map(|()| settings)
                .map_err(|e| e.to_string())
        }) {
        Ok(settings) => Some(settings),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "saved link settings ignored");
            None
        }
    }
}

/// Why a link settings change from the fleet was refused; the running settings stay
/// and the text goes to the fleet in the reported state and an event.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkSettingsRefused {
    /// Malformed or out of bounds; the wire type's check names the member and bound.
    #[error(transparent)]
    Invalid(#[from] LinkSettingsError),
    /// A replay or an old change: the version must grow.
    #[error("link settings: version {proposed} is not above the running version {running}")]
    NotNewer {
        /// The version offered.
        proposed: u64,
        /// The version running.
        running: u64,
    },
    /// They could not be saved, so they are not used (they would not survive a restart).
    #[error("link settings: {0}")]
    NotSaved(#[source] warden_files::FileError),
}

/// Applies a link settings change from the twin, whole or not at all: validated,
/// newer than the running one, saved (atomically) before it takes effect. Returns the
/// settings to use from now on, if they changed; every outcome is reported.
pub(super) fn change_link_settings(
    change: Result<Option<LinkSettings>, LinkSettingsError>,
    running: &mut Option<LinkSettings>,
    path: &Path,
    control: &ControlSender,
) -> Option<LinkSettings> {
    let proposed = match change {
        Ok(None) => return None,
        Ok(Some(settings)) if running.as_ref() == Some(&settings) => return None,
        Ok(Some(settings)) => settings,
        Err(why) => {
            return refuse_link_settings(&LinkSettingsRefused::Invalid(why), running, control);
        }
    };
    if let Err(why) = proposed.validate() {
        return refuse_link_settings(&LinkSettingsRefused::Invalid(why), running, control);
    }
    if let Some(current) = running.as_ref()
        && proposed.version <= current.version
    {
        let why = LinkSettingsRefused::NotNewer {
            proposed: proposed.version,
            running: current.version,
        };
        return refuse_link_settings(&why, running, control);
    }
    if let Err(error) = save_link_settings(path, &proposed) {
        // The error names the operation and the file.
        return refuse_link_settings(&LinkSettingsRefused::NotSaved(error), running, control);
    }
    tracing::info!(
        version = proposed.version,
        "link settings from the fleet applied"
    );
    *running = Some(proposed.clone());
    if let Err(error) = control
        .lock()
        .set_link_settings(Some(proposed.clone()), None)
    {
        tracing::error!(%error, "cannot report the new link settings");
    }
    control.send_or_log(&ControlMessage::Event(DeviceEvent::now(
        event_kind::CONFIG_APPLIED,
        format!(
            "link settings version {}: batches every {} ms, at most {} messages/s",
            proposed.version, proposed.batch_interval_ms, proposed.max_send_per_second
        ),
    )));
    Some(proposed)
}

pub(super) fn refuse_link_settings(
    why: &LinkSettingsRefused,
    running: &Option<LinkSettings>,
    control: &ControlSender,
) -> Option<LinkSettings> {
    let why = why.to_string();
    tracing::warn!(%why, "link settings refused; the running ones stay");
    if let Err(error) = control
        .lock()
        .set_link_settings(running.clone(), Some(why.clone()))
    {
        tracing::error!(%error, "cannot report the refused link settings");
    }
    control.send_or_log(&ControlMessage::Event(DeviceEvent::now(
        event_kind::CONFIG_REFUSED,
        format!("{why}; nothing was changed"),
    )));
    None
}

pub(super) fn save_link_settings(
    path: &Path,
    settings: &LinkSettings,
) -> Result<(), warden_files::FileError> {
    warden_files::write_file_atomically(path, &warden_wire::topics::encode(settings))
}
