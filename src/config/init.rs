//! `cedargate init`: a commented starting config with a policy directory, and a development
//! token whose SHA-256 alone goes into the file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::model::SecretDigest;
use crate::policy::SCHEMA;

const CONFIG: &str = include_str!("../../config/init/cedargate.yaml");
const POLICIES: &str = include_str!("../../config/init/policies.cedar");
/// Where the template's token digest goes.
const DIGEST_PLACEHOLDER: &str = "DEV_TOKEN_SHA256";
/// Prefix of a development token, so one found somewhere is recognizable.
pub const DEV_TOKEN_PREFIX: &str = "cgdev_";

/// What `init` wrote.
#[derive(Debug)]
pub struct Written {
    /// The config file.
    pub config: PathBuf,
    /// Every file written, the config first.
    pub files: Vec<PathBuf>,
    /// The development token: shown to the user once, stored nowhere.
    pub dev_token: String,
}

/// Why `init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A file it would write is already there; nothing was written.
    #[error("`{0}` already exists; nothing was written (choose another directory)")]
    Exists(PathBuf),
    /// The file system refused.
    #[error("cannot write `{path}`: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes `cedargate.yaml`, `policies/schema.cedarschema` and `policies/policies.cedar` into
/// `dir` (created if missing).
///
/// Fails, writing nothing, when any of the three exists; a file created between the check and
/// the write is never overwritten either (`create_new`).
pub fn write(dir: &Path) -> Result<Written, InitError> {
    let config = dir.join("cedargate.yaml");
    let policies = dir.join("policies");
    let schema = policies.join("schema.cedarschema");
    let rules = policies.join("policies.cedar");
    // `symlink_metadata`: a dangling symlink is there too (`exists` would follow it and say no).
    if let Some(existing) =
        [&config, &schema, &rules].into_iter().find(|path| path.symlink_metadata().is_ok())
    {
        return Err(InitError::Exists(existing.clone()));
    }
    let dev_token = format!("{DEV_TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 24]>()));
    let config_text = CONFIG.replace(DIGEST_PLACEHOLDER, &SecretDigest::of(dev_token.as_bytes()).to_hex());
    std::fs::create_dir_all(&policies)
        .map_err(|source| InitError::Write { path: policies.clone(), source })?;
    for (path, text) in [(&config, config_text.as_str()), (&schema, SCHEMA), (&rules, POLICIES)] {
        create_new(path, text)?;
    }
    Ok(Written { config: config.clone(), files: vec![config, schema, rules], dev_token })
}

fn create_new(path: &Path, text: &str) -> Result<(), InitError> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => InitError::Exists(path.to_path_buf()),
            _ => InitError::Write { path: path.to_path_buf(), source },
        })?;
    file.write_all(text.as_bytes()).map_err(|source| InitError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_starting_config_loads_and_keeps_only_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path()).unwrap();
        let text = std::fs::read_to_string(&written.config).unwrap();
        assert!(!text.contains(&written.dev_token));
        assert!(text.contains(&SecretDigest::of(written.dev_token.as_bytes()).to_hex()));
        let config = Config::load(&written.config).unwrap();
        assert_eq!(config.policy_dir().unwrap(), dir.path().join("./policies"));
        assert_eq!(config.credentials.static_tokens.len(), 1);
    }

    #[test]
    fn an_existing_file_stops_it_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/policies.cedar"), "mine").unwrap();
        let error = write(dir.path()).unwrap_err();
        assert!(matches!(&error, InitError::Exists(path) if path.ends_with("policies.cedar")), "{error}");
        assert!(!dir.path().join("cedargate.yaml").exists());
        assert_eq!(std::fs::read_to_string(dir.path().join("policies/policies.cedar")).unwrap(), "mine");
    }

    #[test]
    fn a_dangling_symlink_counts_as_existing_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("policies/policies.cedar"))
            .unwrap();
        let error = write(dir.path()).unwrap_err();
        assert!(matches!(&error, InitError::Exists(path) if path.ends_with("policies.cedar")), "{error}");
        assert!(!dir.path().join("cedargate.yaml").exists(), "nothing was written");
        assert!(!dir.path().join("nowhere").exists(), "nothing was written through the link");
    }

    #[test]
    fn every_token_is_new() {
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        assert_ne!(write(first.path()).unwrap().dev_token, write(second.path()).unwrap().dev_token);
    }
}
