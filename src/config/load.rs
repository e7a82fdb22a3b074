//! Reading a configuration: TOML text or a file, deserialized and then validated.

use std::path::Path;

use super::{Config, ConfigError};

impl Config {
    /// Parse and validate TOML text; errors carry the dotted key path.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let reason = e.inner().message().trim().to_owned();
            let key = match e.path().to_string() {
                // A syntax error has no key path: name the line instead.
                path if path == "." => match e.inner().span() {
                    Some(span) => format!("line {}", text[..span.start].matches('\n').count() + 1),
                    None => "(file)".to_owned(),
                },
                path => path,
            };
            ConfigError::Invalid { key, reason }
        })?;
        config.validate()
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }
}
