//! The unit's appliance config, written from the station's template.

use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHasher as _, SaltString};
use zeroize::Zeroizing;

use crate::files::{FileError, write_atomically};
use crate::layout::{DEVICE_CERT_NAME, FLEET_CA_NAME, UnitLayout};

/// Template fields that must be relative paths (resolved against `etc/warden` on the
/// unit), as TOML paths.
const PATH_FIELDS: [&[&str]; 6] = [
    &["policy", "file"],
    &["policy", "bundle_dir"],
    &["link", "pluton_socket"],
    &["link", "outbox", "dir"],
    &["status_page", "password_file"],
    &["status_page", "state_dir"],
];

fn lookup<'t>(table: &'t toml::Table, path: &[&str]) -> Option<&'t toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut current = table;
    for key in parents {
        current = current.get(*key)?.as_table()?;
    }
    current.get(*last)
}

/// The config template is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A path field is missing or not a string.
    #[error("`{field}` must be set to a relative path")]
    PathNotSet {
        /// The TOML path of the field (`policy.file`).
        field: String,
    },
    /// A path field is absolute.
    #[error("`{field}` = {value:?} must be relative to the config's directory")]
    PathAbsolute {
        /// The TOML path of the field.
        field: String,
        /// Its value.
        value: String,
    },
    /// A section the station fills in is not a table.
    #[error("`{0}` is not a table")]
    NotATable(&'static str),
    /// Reading the template failed.
    #[error(transparent)]
    Read(std::io::Error),
    /// The template is not TOML.
    #[error(transparent)]
    Syntax(#[from] toml::de::Error),
    /// The filled-in config does not serialise.
    #[error(transparent)]
    Serialize(#[from] toml::ser::Error),
}

fn path_field(table: &toml::Table, path: &[&str]) -> Result<PathBuf, TemplateError> {
    let value = lookup(table, path)
        .and_then(toml::Value::as_str)
        .ok_or_else(|| TemplateError::PathNotSet {
            field: path.join("."),
        })?;
    let path_buf = PathBuf::from(value);
    if path_buf.is_absolute() {
        return Err(TemplateError::PathAbsolute {
            field: path.join("."),
            value: value.to_string(),
        });
    }
    Ok(path_buf)
}

/// Read and check the template: TOML, and every unit path relative.
pub fn load_template(path: &Path) -> Result<toml::Table, TemplateError> {
    let text = std::fs::read_to_string(path).map_err(TemplateError::Read)?;
    let table: toml::Table = toml::from_str(&text)?;
    for field in PATH_FIELDS {
        path_field(&table, field)?;
    }
    Ok(table)
}

/// A path the template names, on the unit.
pub fn unit_path(
    layout: &UnitLayout,
    table: &toml::Table,
    field: &[&str],
) -> Result<PathBuf, TemplateError> {
    Ok(layout.config_dir().join(path_field(table, field)?))
}

/// What writing the config produced.
#[derive(Debug)]
pub struct WrittenConfig {
    /// The operator password for the label.
    pub status_password: Zeroizing<String>,
    /// The policy bundle directory on the unit.
    pub bundle_dir: PathBuf,
}

/// Why the config could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnitConfigError {
    /// A file operation failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The template is unusable.
    #[error("config template: {0}")]
    Template(#[from] TemplateError),
    /// The password could not be made or hashed.
    #[error("status page password: {0}")]
    Password(String),
}

/// Write `etc/warden/warden.toml` (device ID, product, certificate and CA filled in),
/// the policy source, the fleet CA, the status page password hash, and the directories
/// the config names.
pub fn write_unit_config(
    layout: &UnitLayout,
    template: &toml::Table,
    device_id: &str,
    product: &str,
    policy_file: &Path,
    fleet_ca: &Path,
) -> Result<WrittenConfig, UnitConfigError> {
    let mut table = template.clone();
    let device = table
        .entry("device")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let device = device
        .as_table_mut()
        .ok_or(TemplateError::NotATable("device"))?;
    device.insert("id".into(), device_id.into());
    device.insert("product".into(), product.into());
    let link = table
        .get_mut("link")
        .and_then(toml::Value::as_table_mut)
        .ok_or(TemplateError::NotATable("link"))?;
    link.insert("device_cert".into(), DEVICE_CERT_NAME.into());
    link.insert("fleet_ca".into(), FLEET_CA_NAME.into());

    let path = |field: &[&str]| unit_path(layout, &table, field);
    let policy_target = path(&["policy", "file"])?;
    let bundle_dir = path(&["policy", "bundle_dir"])?;
    let outbox = path(&["link", "outbox", "dir"])?;
    let password_file = path(&["status_page", "password_file"])?;
    let page_state = path(&["status_page", "state_dir"])?;

    let text = toml::to_string(&table).map_err(TemplateError::from)?;
    let header =
        "# Appliance config written by warden-provision. Paths are relative to this file.\n\n";
    write_atomically(
        &layout.config_file(),
        format!("{header}{text}").as_bytes(),
        0o644,
    )?;
    write_atomically(
        &policy_target,
        &crate::files::read_bytes(policy_file)?,
        0o644,
    )?;
    write_atomically(
        &layout.fleet_ca(),
        &crate::files::read_bytes(fleet_ca)?,
        0o644,
    )?;
    for dir in [&bundle_dir, &outbox, &page_state] {
        crate::files::create_dir(dir)?;
    }
    let status_password = generate_password()?;
    write_atomically(
        &password_file,
        hash_password(&status_password)?.as_bytes(),
        0o600,
    )?;
    Ok(WrittenConfig {
        status_password,
        bundle_dir,
    })
}

/// A random operator password: 4 groups of 4 from an unambiguous alphabet (~78 bits).
fn generate_password() -> Result<Zeroizing<String>, UnitConfigError> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut bytes = Zeroizing::new([0u8; 64]);
    getrandom::fill(bytes.as_mut()).map_err(|e| UnitConfigError::Password(e.to_string()))?;
    let mut password = Zeroizing::new(String::with_capacity(19));
    // Rejection sampling keeps the choice uniform (31 letters; 248 = 8 * 31).
    for byte in bytes.iter().filter(|byte| **byte < 248) {
        let count = password.len();
        if count == 19 {
            break;
        }
        if count % 5 == 4 {
            password.push('-');
        }
        password.push(char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]));
    }
    if password.len() != 19 {
        return Err(UnitConfigError::Password("not enough random bytes".into()));
    }
    Ok(password)
}

/// The salted Argon2id PHC string the appliance's status page checks.
fn hash_password(password: &str) -> Result<String, UnitConfigError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| UnitConfigError::Password(e.to_string()))?;
    let salt =
        SaltString::encode_b64(&salt).map_err(|e| UnitConfigError::Password(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| UnitConfigError::Password(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_shape() {
        let password = generate_password().expect("password");
        assert_eq!(password.len(), 19);
        assert_eq!(password.matches('-').count(), 3);
        assert_ne!(*password, *generate_password().expect("second"));
    }

    #[test]
    fn absolute_template_paths_are_refused() {
        let table: toml::Table = toml::from_str(
            r#"
            [policy]
            file = "/etc/passwd"
            bundle_dir = "b"
            [link]
            pluton_socket = "s"
            [link.outbox]
            dir = "o"
            [status_page]
            password_file = "p"
            state_dir = "d"
            "#,
        )
        .expect("toml");
        let error = path_field(&table, &["policy", "file"]).expect_err("absolute");
        assert!(error.to_string().contains("policy.file"), "{error}");
        assert!(path_field(&table, &["link", "outbox", "dir"]).is_ok());
    }
}
