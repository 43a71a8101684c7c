//! The platform's vocabulary: event kinds, log sources and actions, each an enum with one wire
//! spelling. Code compares these, never strings; the spellings below are the protocol (and what a
//! store written by an earlier Pier holds), so each is pinned by a test.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::ProcessType;

/// What happened to an app, as `pier events` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Updated,
    Staging,
    Staged,
    StagingFailed,
    Stopped,
    Scaled,
    RouteMapped,
    RouteUnmapped,
    CacheCleared,
    Crashed,
    /// A new instance waits because no instance address is free yet.
    NoAddress,
    /// A replacement instance (rolling deployment) failed to start; the old one keeps serving.
    ReplacementFailed,
    /// The platform could not act on a change that was saved (Docker unreachable, say); it keeps
    /// trying.
    ConvergenceFailed,
    DeploymentStarted,
    DeploymentSucceeded,
    DeploymentFailed,
    #[serde(rename = "deployment_cancel")]
    DeploymentCanceled,
    #[serde(rename = "deployment_continue")]
    DeploymentContinued,
    CanaryStarted,
    CanaryStep,
    /// A kind this Pier does not know (written by a newer one).
    #[serde(other)]
    Other,
}

impl EventKind {
    pub const ALL: [EventKind; 22] = [
        EventKind::Created,
        EventKind::Updated,
        EventKind::Staging,
        EventKind::Staged,
        EventKind::StagingFailed,
        EventKind::Stopped,
        EventKind::Scaled,
        EventKind::RouteMapped,
        EventKind::RouteUnmapped,
        EventKind::CacheCleared,
        EventKind::Crashed,
        EventKind::NoAddress,
        EventKind::ReplacementFailed,
        EventKind::ConvergenceFailed,
        EventKind::DeploymentStarted,
        EventKind::DeploymentSucceeded,
        EventKind::DeploymentFailed,
        EventKind::DeploymentCanceled,
        EventKind::DeploymentContinued,
        EventKind::CanaryStarted,
        EventKind::CanaryStep,
        EventKind::Other,
    ];

    /// The wire spelling (`crashed`, `deployment_cancel`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Staging => "staging",
            EventKind::Staged => "staged",
            EventKind::StagingFailed => "staging_failed",
            EventKind::Stopped => "stopped",
            EventKind::Scaled => "scaled",
            EventKind::RouteMapped => "route_mapped",
            EventKind::RouteUnmapped => "route_unmapped",
            EventKind::CacheCleared => "cache_cleared",
            EventKind::Crashed => "crashed",
            EventKind::NoAddress => "no_address",
            EventKind::ReplacementFailed => "replacement_failed",
            EventKind::ConvergenceFailed => "convergence_failed",
            EventKind::DeploymentStarted => "deployment_started",
            EventKind::DeploymentSucceeded => "deployment_succeeded",
            EventKind::DeploymentFailed => "deployment_failed",
            EventKind::DeploymentCanceled => "deployment_cancel",
            EventKind::DeploymentContinued => "deployment_continue",
            EventKind::CanaryStarted => "canary_started",
            EventKind::CanaryStep => "canary_step",
            EventKind::Other => "other",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/apps/{name}/actions/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppAction {
    Start,
    Stop,
    Restart,
}

impl AppAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AppAction::Start => "start",
            AppAction::Stop => "stop",
            AppAction::Restart => "restart",
        }
    }
}

impl fmt::Display for AppAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AppAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "start" => Ok(AppAction::Start),
            "stop" => Ok(AppAction::Stop),
            "restart" => Ok(AppAction::Restart),
            other => Err(format!(
                "unknown action {other:?}: use start, stop or restart"
            )),
        }
    }
}

/// `POST /v1/apps/{name}/deployments/{id}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeploymentAction {
    Cancel,
    Continue,
}

impl DeploymentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentAction::Cancel => "cancel",
            DeploymentAction::Continue => "continue",
        }
    }

    /// The event the action records.
    pub fn event(self) -> EventKind {
        match self {
            DeploymentAction::Cancel => EventKind::DeploymentCanceled,
            DeploymentAction::Continue => EventKind::DeploymentContinued,
        }
    }
}

impl fmt::Display for DeploymentAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeploymentAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cancel" => Ok(DeploymentAction::Cancel),
            "continue" => Ok(DeploymentAction::Continue),
            other => Err(format!(
                "unknown deployment action {other:?}: use cancel or continue"
            )),
        }
    }
}

/// Where a log line comes from, tagged as Cloud Foundry tags it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogSource {
    /// An instance's output: `APP/PROC/WEB/0`.
    App { process: ProcessType, index: u32 },
    /// Staging output: `STG/0`.
    Staging(u32),
    /// A router's access log: `RTR/0` (built-in) or `RTR/<router index>`.
    Router(u32),
    /// Changes made through the API: `API/0`.
    Api(u32),
    /// Instance lifecycle (creating, started, exited): `CELL/<index>`.
    Cell(u32),
    /// Health check failures: `HEALTH/<index>`.
    Health(u32),
    /// The log system itself (drops): `LGR`.
    Logger,
}

impl LogSource {
    pub fn app(process: &ProcessType, index: u32) -> LogSource {
        LogSource::App {
            process: process.clone(),
            index,
        }
    }

    /// App output, the only source the rate limit applies to.
    pub fn is_app(&self) -> bool {
        matches!(self, LogSource::App { .. })
    }

    /// The part before the first `/`: `APP`, `STG`, `RTR`, `API`, `CELL`, `HEALTH`, `LGR`.
    pub fn family(&self) -> &'static str {
        match self {
            LogSource::App { .. } => "APP",
            LogSource::Staging(_) => "STG",
            LogSource::Router(_) => "RTR",
            LogSource::Api(_) => "API",
            LogSource::Cell(_) => "CELL",
            LogSource::Health(_) => "HEALTH",
            LogSource::Logger => "LGR",
        }
    }
}

impl fmt::Display for LogSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogSource::App { process, index } => {
                f.write_str("APP/PROC/")?;
                for c in process.as_str().chars() {
                    fmt::Write::write_char(f, c.to_ascii_uppercase())?;
                }
                write!(f, "/{index}")
            }
            LogSource::Logger => f.write_str("LGR"),
            LogSource::Staging(n)
            | LogSource::Router(n)
            | LogSource::Api(n)
            | LogSource::Cell(n)
            | LogSource::Health(n) => write!(f, "{}/{n}", self.family()),
        }
    }
}

impl FromStr for LogSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("{s:?} is not a log source (APP/PROC/TYPE/N, STG/N, RTR/N, API/N, CELL/N, HEALTH/N or LGR)")
        };
        if s == "LGR" {
            return Ok(LogSource::Logger);
        }
        if let Some(rest) = s.strip_prefix("APP/PROC/") {
            let (kind, index) = rest.rsplit_once('/').ok_or_else(bad)?;
            let process = kind
                .to_ascii_lowercase()
                .parse::<ProcessType>()
                .map_err(|_| bad())?;
            let index = index.parse().map_err(|_| bad())?;
            return Ok(LogSource::App { process, index });
        }
        let (family, n) = s.split_once('/').ok_or_else(bad)?;
        let n: u32 = n.parse().map_err(|_| bad())?;
        match family {
            "STG" => Ok(LogSource::Staging(n)),
            "RTR" => Ok(LogSource::Router(n)),
            "API" => Ok(LogSource::Api(n)),
            "CELL" => Ok(LogSource::Cell(n)),
            "HEALTH" => Ok(LogSource::Health(n)),
            _ => Err(bad()),
        }
    }
}

impl Serialize for LogSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LogSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_keep_their_wire_spelling() {
        let expected = [
            "created",
            "updated",
            "staging",
            "staged",
            "staging_failed",
            "stopped",
            "scaled",
            "route_mapped",
            "route_unmapped",
            "cache_cleared",
            "crashed",
            "no_address",
            "replacement_failed",
            "convergence_failed",
            "deployment_started",
            "deployment_succeeded",
            "deployment_failed",
            "deployment_cancel",
            "deployment_continue",
            "canary_started",
            "canary_step",
            "other",
        ];
        for (k, want) in EventKind::ALL.iter().zip(expected) {
            assert_eq!(k.as_str(), want);
            assert_eq!(
                serde_json::to_string(k).unwrap(),
                format!("\"{want}\""),
                "{k:?}"
            );
            let back: EventKind = serde_json::from_str(&format!("\"{want}\"")).unwrap();
            assert_eq!(back, *k);
        }
        let future: EventKind = serde_json::from_str("\"teleported\"").unwrap();
        assert_eq!(future, EventKind::Other);
    }

    #[test]
    fn actions_parse_and_print() {
        for a in [AppAction::Start, AppAction::Stop, AppAction::Restart] {
            assert_eq!(a.as_str().parse::<AppAction>(), Ok(a));
        }
        assert!("explode".parse::<AppAction>().is_err());
        for a in [DeploymentAction::Cancel, DeploymentAction::Continue] {
            assert_eq!(a.to_string().parse::<DeploymentAction>(), Ok(a));
        }
        assert_eq!(
            DeploymentAction::Cancel.event().as_str(),
            "deployment_cancel"
        );
        assert!("pause".parse::<DeploymentAction>().is_err());
    }

    #[test]
    fn log_sources_keep_their_wire_spelling() {
        let web: ProcessType = "web".parse().unwrap();
        let worker: ProcessType = "my-worker".parse().unwrap();
        let cases = [
            (LogSource::app(&web, 0), "APP/PROC/WEB/0"),
            (LogSource::app(&worker, 12), "APP/PROC/MY-WORKER/12"),
            (LogSource::Staging(0), "STG/0"),
            (LogSource::Router(3), "RTR/3"),
            (LogSource::Api(0), "API/0"),
            (LogSource::Cell(2), "CELL/2"),
            (LogSource::Health(1), "HEALTH/1"),
            (LogSource::Logger, "LGR"),
        ];
        for (src, want) in cases {
            assert_eq!(src.to_string(), want);
            assert_eq!(want.parse::<LogSource>(), Ok(src.clone()));
            assert_eq!(serde_json::to_string(&src).unwrap(), format!("\"{want}\""));
            let back: LogSource = serde_json::from_str(&format!("\"{want}\"")).unwrap();
            assert_eq!(back, src);
            assert_eq!(want.split('/').next(), Some(src.family()));
        }
        assert!(LogSource::app(&web, 0).is_app());
        assert!(!LogSource::Cell(0).is_app());
        for bad in [
            "",
            "APP",
            "APP/PROC/WEB",
            "APP/PROC/WEB/x",
            "STG",
            "XYZ/1",
            "LGR/0",
            "STG/-1",
        ] {
            assert!(bad.parse::<LogSource>().is_err(), "{bad:?}");
        }
    }
}
