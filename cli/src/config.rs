//! Where the controller is and the token to show it.
//!
//! A login is either the admin token (`pier login --token`) or a user's (`pier login -u`): then
//! `token` is the user's access token, renewed with `refresh_token` as it expires (the new pair
//! is written back here), and `user` names who logged in.
//!
//! Precedence, highest first, for every setting the CLI resolves:
//!   1. flags (`pier login --api --token`; `-o/--org` and `-s/--space` on every command;
//!      `pier push -i -m ...` for app settings)
//!   2. the environment: `PIER_API`, `PIER_TOKEN`, `PIER_CA_CERT`, `PIER_ORG`, `PIER_SPACE`
//!   3. `manifest.yml` (app settings only; it never names a controller)
//!   4. the config file, `$PIER_HOME/config.json` (default `~/.pier/config.json`), written by `pier login`
//!
//! [`Settings`] holds the environment as values so tests build it directly instead of mutating the
//! process environment.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pier_client::BaseUrlError;
use serde::{Deserialize, Serialize};

use crate::output::Failure;

/// The contents of `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A user's login: the refresh token that renews `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// A user's login: the user's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A PEM file of CA certificates to trust for an `https://` API, besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// `pier login --skip-ssl-validation`: accept any certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_ssl_validation: bool,
    /// `pier target -o ORG -s SPACE`: where app commands act (none: the controller's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
}

/// The environment variables the CLI reads, captured once.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub pier_home: Option<OsString>,
    pub home: Option<OsString>,
    pub api: Option<String>,
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    /// `-o/--org` and `-s/--space` of this command line, else `PIER_ORG`, `PIER_SPACE`.
    pub org: Option<String>,
    pub space: Option<String>,
}

/// The controller to talk to, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub api: String,
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub skip_ssl_validation: bool,
    /// The org and space app commands act in; `None`: the controller's `default`.
    pub org: Option<String>,
    pub space: Option<String>,
    /// A user's login from the config file (not when PIER_TOKEN overrides its token): the
    /// refresh token, and the file a renewed pair is saved to.
    pub session: Option<(String, PathBuf)>,
}

/// `-o/--org` and `-s/--space` from the command line, set once before the command runs.
static FLAGS: std::sync::OnceLock<(Option<String>, Option<String>)> = std::sync::OnceLock::new();

/// Records the command line's `-o/--org` and `-s/--space` (they win over env and config).
pub fn set_space_flags(org: Option<String>, space: Option<String>) {
    let _ = FLAGS.set((org, space));
}

impl Settings {
    pub fn from_env() -> Self {
        let flags = FLAGS.get().cloned().unwrap_or_default();
        let non_empty = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Settings {
            pier_home: std::env::var_os("PIER_HOME").filter(|v| !v.is_empty()),
            home: std::env::var_os("HOME").filter(|v| !v.is_empty()),
            api: non_empty("PIER_API"),
            token: non_empty("PIER_TOKEN"),
            ca_cert: non_empty("PIER_CA_CERT").map(PathBuf::from),
            org: flags.0.clone().or_else(|| non_empty("PIER_ORG")),
            space: flags.1.clone().or_else(|| non_empty("PIER_SPACE")),
        }
    }

    /// `$PIER_HOME`, else `$HOME/.pier`.
    pub fn pier_home(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.pier_home {
            return Ok(PathBuf::from(dir));
        }
        match &self.home {
            Some(home) => Ok(Path::new(home).join(".pier")),
            None => Err(Failure::new("neither PIER_HOME nor HOME is set")
                .hint("set PIER_HOME to the folder pier should keep its config in")
                .into()),
        }
    }

    pub fn config_path(&self) -> Result<PathBuf> {
        Ok(self.pier_home()?.join("config.json"))
    }

    /// Env over the config file (flags are handled by the commands that take them).
    pub fn target(&self) -> Result<Target> {
        let file = load(&self.config_path()?)?;
        let api = self.api.clone().or(file.api).ok_or_else(|| {
            Failure::new("no Pier controller is configured").hint(
                "run `pier login --api URL --token TOKEN` with the token pier-controller printed, \
                 or set PIER_API and PIER_TOKEN",
            )
        })?;
        // A space named without its org is in the targeted org.
        let (org, space) = match (&self.org, &self.space) {
            (Some(o), s) => (Some(o.clone()), s.clone()),
            (None, Some(s)) => (file.org.clone(), Some(s.clone())),
            (None, None) => (file.org.clone(), file.space.clone()),
        };
        let session = match (&self.token, file.refresh_token) {
            (None, Some(refresh)) => Some((refresh, self.config_path()?)),
            _ => None,
        };
        Ok(Target {
            api: normalize_api(&api)?,
            token: self.token.clone().or(file.token),
            ca_cert: self.ca_cert.clone().or(file.ca_cert),
            skip_ssl_validation: file.skip_ssl_validation,
            org,
            space,
            session,
        })
    }
}

/// Checks the URL and drops trailing slashes: `http://127.0.0.1:9000/` → `http://127.0.0.1:9000`.
pub fn normalize_api(api: &str) -> Result<String> {
    let trimmed = api.trim().trim_end_matches('/');
    match pier_client::check_base_url(trimmed) {
        Ok(()) => Ok(trimmed.to_string()),
        Err(e @ BaseUrlError::Parse(_)) => {
            Err(Failure::new(format!("invalid API URL {api:?}: {e}"))
                .hint("give the controller's address with its scheme, like http://127.0.0.1:9000")
                .into())
        }
        Err(e) => Err(Failure::new(format!("invalid API URL {api:?}: {e}")).into()),
    }
}

/// Reads the config file; a missing file is an empty config.
pub fn load(path: &Path) -> Result<ConfigFile> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_str(&text).map_err(|e| {
        Failure::new(format!(
            "{} is not a valid pier config: {e}",
            path.display()
        ))
        .hint("run `pier login --api URL --token TOKEN` to write it again")
        .into()
    })
}

/// Writes the config file with mode 0600 in a directory with mode 0700, atomically (write a
/// temporary file beside it, then rename), so a token never sits in a world-readable file.
pub fn save(path: &Path, config: &ConfigFile) -> Result<()> {
    let dir = path
        .parent()
        .context("the config path has no parent folder")?;
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = dir.join(".config.json.tmp");
    let json = serde_json::to_vec_pretty(config).context("cannot encode the config")?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // The mode above only applies when the file is created; make sure of it either way.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
    file.write_all(&json)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(home: &Path) -> Settings {
        Settings {
            pier_home: Some(home.join("pier").into_os_string()),
            home: None,
            api: None,
            token: None,
            ca_cert: None,
            org: None,
            space: None,
        }
    }

    #[test]
    fn saved_config_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let path = s.config_path().unwrap();
        let config = ConfigFile {
            api: Some("http://127.0.0.1:9000".into()),
            token: Some("secret".into()),
            ..ConfigFile::default()
        };
        save(&path, &config).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(load(&path).unwrap(), config);

        // Saving over a file that somehow became world-readable makes it private again.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        save(&path, &config).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn env_overrides_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        save(
            &s.config_path().unwrap(),
            &ConfigFile {
                api: Some("http://file:9000/".into()),
                token: Some("file-token".into()),
                ca_cert: Some("/file/ca.pem".into()),
                skip_ssl_validation: false,
                org: Some("acme".into()),
                space: Some("dev".into()),
                ..ConfigFile::default()
            },
        )
        .unwrap();
        assert_eq!(
            s.target().unwrap(),
            Target {
                api: "http://file:9000".into(),
                token: Some("file-token".into()),
                ca_cert: Some("/file/ca.pem".into()),
                skip_ssl_validation: false,
                org: Some("acme".into()),
                space: Some("dev".into()),
                session: None,
            }
        );
        // A space named alone is in the targeted org; an org named alone has no space yet.
        s.space = Some("prod".into());
        let t = s.target().unwrap();
        assert_eq!(
            (t.org.as_deref(), t.space.as_deref()),
            (Some("acme"), Some("prod"))
        );
        s.org = Some("other".into());
        s.space = None;
        let t = s.target().unwrap();
        assert_eq!((t.org.as_deref(), t.space), (Some("other"), None));
        s.org = None;
        s.ca_cert = Some("/env/ca.pem".into());
        assert_eq!(
            s.target().unwrap().ca_cert.as_deref(),
            Some(Path::new("/env/ca.pem"))
        );
        s.token = Some("env-token".into());
        assert_eq!(s.target().unwrap().token.as_deref(), Some("env-token"));
        assert_eq!(s.target().unwrap().api, "http://file:9000");
        s.api = Some("http://env:9000".into());
        assert_eq!(s.target().unwrap().api, "http://env:9000");
    }

    #[test]
    fn a_users_refresh_token_is_used_only_with_the_files_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        let path = s.config_path().unwrap();
        save(
            &path,
            &ConfigFile {
                api: Some("http://file:9000".into()),
                token: Some("access".into()),
                refresh_token: Some("refresh".into()),
                user: Some("alice".into()),
                ..ConfigFile::default()
            },
        )
        .unwrap();
        assert_eq!(
            s.target().unwrap().session,
            Some(("refresh".to_string(), path))
        );
        s.token = Some("env-token".into());
        assert_eq!(s.target().unwrap().session, None);
    }

    #[test]
    fn missing_config_says_how_to_log_in() {
        let dir = tempfile::tempdir().unwrap();
        let err = settings(dir.path()).target().unwrap_err();
        let failure = err.downcast_ref::<Failure>().unwrap();
        assert!(failure.hint.as_deref().unwrap().contains("pier login"));
    }

    #[test]
    fn pier_home_defaults_under_home() {
        let s = Settings {
            home: Some("/home/u".into()),
            ..Settings::default()
        };
        assert_eq!(s.pier_home().unwrap(), Path::new("/home/u/.pier"));
    }

    #[test]
    fn api_urls_are_checked() {
        assert_eq!(normalize_api("http://h:1/").unwrap(), "http://h:1");
        assert!(normalize_api("h:1").is_err());
        assert!(normalize_api("ftp://h").is_err());
    }
}
