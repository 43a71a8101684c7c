//! Validated names. A value of these types is always valid, so code that holds one never checks again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("app name must not be empty")]
    Empty,
    #[error("app name {0:?} is longer than 63 characters")]
    TooLong(String),
    #[error(
        "app name {0:?} is not a DNS label: use lowercase letters, digits and hyphens, \
         starting and ending with a letter or digit"
    )]
    NotDnsLabel(String),
    #[error(
        "process type {0:?} is invalid: use 1-63 lowercase letters, digits, '-' or '_', \
         starting with a letter"
    )]
    InvalidProcessType(String),
}

/// An app's name: a DNS label (lowercase letters, digits and hyphens, 1 to 63 characters, not
/// starting or ending with a hyphen), because it becomes a host name under the platform's domain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

impl AppName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True when `s` is a DNS label as RFC 1123 allows for host names, lowercase only.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl FromStr for AppName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > 63 {
            return Err(NameError::TooLong(s.to_string()));
        }
        if !is_dns_label(s) {
            return Err(NameError::NotDnsLabel(s.to_string()));
        }
        Ok(AppName(s.to_string()))
    }
}

impl TryFrom<String> for AppName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AppName> for String {
    fn from(n: AppName) -> String {
        n.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A process type from a Procfile or manifest: `web`, `worker`, ...
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProcessType(String);

impl ProcessType {
    pub fn web() -> Self {
        ProcessType("web".to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_web(&self) -> bool {
        self.0 == "web"
    }
}

impl FromStr for ProcessType {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(ProcessType(s.to_string()))
        } else {
            Err(NameError::InvalidProcessType(s.to_string()))
        }
    }
}

impl TryFrom<String> for ProcessType {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ProcessType> for String {
    fn from(n: ProcessType) -> String {
        n.0
    }
}

impl fmt::Display for ProcessType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        for ok in ["a", "hello", "my-app-2", "0abc", &"a".repeat(63)] {
            assert!(ok.parse::<AppName>().is_ok(), "{ok}");
        }
        assert_eq!("".parse::<AppName>(), Err(NameError::Empty));
        assert!(matches!(
            "a".repeat(64).parse::<AppName>(),
            Err(NameError::TooLong(_))
        ));
        for bad in ["Hello", "-a", "a-", "a_b", "a.b", "a b", "ü", "../x"] {
            assert!(
                matches!(bad.parse::<AppName>(), Err(NameError::NotDnsLabel(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn app_name_serde_validates() {
        assert!(serde_json::from_str::<AppName>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<AppName>("\"NOT_OK\"").is_err());
    }

    #[test]
    fn process_types() {
        assert!("web".parse::<ProcessType>().unwrap().is_web());
        assert!("worker_2".parse::<ProcessType>().is_ok());
        assert!("2worker".parse::<ProcessType>().is_err());
        assert!("Web".parse::<ProcessType>().is_err());
    }
}
