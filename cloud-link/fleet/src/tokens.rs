//! `warden-fleet token create`: a new API token in an existing `fleet.toml`, stored as
//! `warden-fleet init` stores the admin token — only its SHA-256, in `[api] tokens` —
//! and returned to be shown once, so a station gets a `provisioner` token of its own
//! and never the admin's.
//!
//! The config is edited in place keeping its comments (toml_edit), checked as the fleet
//! would load it, and replaced atomically with mode 0600. A running fleet reads tokens
//! at start: restart it to admit the new one.

use std::path::{Path, PathBuf};

use crate::auth::{Role, generate_token, hash_token};

/// Why no token was added (the config is then unchanged).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// The config could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config is not TOML, or `[api] tokens` is not an array of tables.
    #[error("{}: {field}: {message}", path.display())]
    Shape {
        /// The config file.
        path: PathBuf,
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A token of that name exists.
    #[error("{}: api.tokens already has a token named {name:?}; pick another --name", path.display())]
    Exists {
        /// The config file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// The edited config would not load (e.g. an empty name).
    #[error(transparent)]
    Invalid(#[from] crate::ConfigError),
    /// No random source for the token.
    #[error(transparent)]
    Random(#[from] crate::auth::TokenError),
    /// The config could not be written.
    #[error(transparent)]
    Write(#[from] warden_files::FileError),
}

/// Adds a token named `name` with `role` to the config at `path`; returns the token
/// (the config keeps only its SHA-256).
pub fn create_token(path: &Path, name: &str, role: Role) -> Result<String, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let shape = |field, message: String| TokenFileError::Shape {
        path: path.to_owned(),
        field,
        message,
    };
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .map_err(|error: toml_edit::TomlError| shape("fleet.toml", error.to_string()))?;
    let api = document
        .entry("api")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
        .as_table_like_mut()
        .ok_or_else(|| shape("api", "is not a table".into()))?;
    let tokens = api
        .entry("tokens")
        .or_insert(toml_edit::value(toml_edit::Array::new()));
    let token = generate_token()?;
    let mut entry = toml_edit::InlineTable::new();
    entry.insert("name", name.into());
    entry.insert("role", role.name().into());
    entry.insert("sha256", hash_token(&token).into());
    if let Some(array) = tokens.as_array_mut() {
        let exists = array.iter().any(|item| {
            item.as_inline_table()
                .and_then(|table| table.get("name"))
                .and_then(toml_edit::Value::as_str)
                == Some(name)
        });
        if exists {
            return Err(TokenFileError::Exists {
                path: path.to_owned(),
                name: name.to_owned(),
            });
        }
        entry.decor_mut().set_prefix("\n  ");
        array.push(entry);
        // One token a line, as init writes them, the closing bracket on its own line.
        array.set_trailing("\n");
        array.set_trailing_comma(true);
    } else if let Some(array) = tokens.as_array_of_tables_mut() {
        let exists = array
            .iter()
            .any(|table| table.get("name").and_then(toml_edit::Item::as_str) == Some(name));
        if exists {
            return Err(TokenFileError::Exists {
                path: path.to_owned(),
                name: name.to_owned(),
            });
        }
        array.push(entry.into_table());
    } else {
        return Err(shape("api.tokens", "is not an array of tokens".into()));
    }
    let edited = document.to_string();
    // Checked as the fleet will load it, before anything is written.
    crate::FleetConfig::from_toml(&edited, path)?;
    warden_files::write_file_atomically(path, edited.as_bytes())?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn fleet(dir: &Path) -> PathBuf {
        crate::init::init(&crate::init::InitRequest {
            dir: dir.to_owned(),
            state_dir: None,
            hostnames: vec!["127.0.0.1".into()],
            http_listen: "127.0.0.1:0".into(),
            mqtt_listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            pki: crate::init::Pki::Generate,
            vendor_roots: Vec::new(),
        })
        .expect("init")
        .config
    }

    #[test]
    fn a_token_is_added_by_its_hash_keeping_the_comments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = fleet(dir.path());
        let token = create_token(&config, "station-1", Role::Provisioner).expect("token");
        let text = std::fs::read_to_string(&config).expect("config");
        assert!(!text.contains(&token), "the token itself is not stored");
        assert!(text.contains(&hash_token(&token)));
        assert!(
            text.contains("# Only SHA-256 hashes of tokens are kept."),
            "{text}"
        );
        let loaded = crate::FleetConfig::load(&config).expect("loads");
        let tokens = &loaded.api.tokens;
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[1].name, "station-1");
        assert_eq!(tokens[1].role, Role::Provisioner);
        let mode = std::fs::metadata(&config)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);

        let refused = create_token(&config, "station-1", Role::Viewer).expect_err("twice");
        assert!(refused.to_string().contains("station-1"), "{refused}");
        let again = create_token(&config, "ops", Role::Operator).expect("second");
        assert_ne!(again, token);
        assert_eq!(
            crate::FleetConfig::load(&config)
                .expect("loads")
                .api
                .tokens
                .len(),
            3
        );
    }

    #[test]
    fn a_config_without_tokens_gets_an_api_section() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = fleet(dir.path());
        let text = std::fs::read_to_string(&config).expect("config");
        let start = text.find("[api]").expect("api");
        let end = text.find("[images]").expect("images");
        let without = format!("{}{}", &text[..start], &text[end..]);
        std::fs::write(&config, without).expect("write");
        create_token(&config, "station-1", Role::Provisioner).expect("token");
        let loaded = crate::FleetConfig::load(&config).expect("loads");
        assert_eq!(loaded.api.tokens.len(), 1);
    }
}
