//! Deployments and revisions: how a running app moves from one droplet/env/command to another.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStrategy {
    /// New instances start beside the old ones, at most `max_in_flight` at a time; each old one
    /// is drained only once a new one is healthy and routed.
    #[default]
    Rolling,
    /// Stop every old instance, then start the new ones (for apps that can't run two versions).
    Recreate,
    /// One new instance takes a growing share of traffic, promoted step by step while the router's
    /// figures say it is no worse than the others.
    Canary,
}

impl std::str::FromStr for DeploymentStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rolling" => Ok(DeploymentStrategy::Rolling),
            "recreate" => Ok(DeploymentStrategy::Recreate),
            "canary" => Ok(DeploymentStrategy::Canary),
            other => Err(format!(
                "unknown strategy {other:?}: use rolling, recreate or canary"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentState {
    Deploying,
    /// A canary waiting at a step for `continue-deployment`.
    Paused,
    Succeeded,
    Failed,
    Canceled,
}

impl DeploymentState {
    pub fn is_active(self) -> bool {
        matches!(self, DeploymentState::Deploying | DeploymentState::Paused)
    }
}

/// Start a deployment (`POST /v1/apps/{name}/deployments`): of the app's newest droplet, env and
/// command, or of an earlier revision (a rollback).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DeploymentStrategy>,
    /// New instances started at once (rolling). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Canary traffic percentages, ending at 100. Default `[10, 50, 100]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_steps: Option<Vec<u32>>,
    /// Seconds of traffic compared at each canary step. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_window_secs: Option<u32>,
    /// Deploy this revision instead of the newest droplet/env/command (rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Replace every instance even when nothing changed (`restart`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStatus {
    pub steps: Vec<u32>,
    /// Index into `steps` of the share the canary has now.
    pub step: usize,
    pub window_secs: u32,
    /// The last comparison of the canary with the other instances, in words and figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentResponse {
    pub id: String,
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_revision: Option<u64>,
    pub strategy: DeploymentStrategy,
    pub state: DeploymentState,
    pub max_in_flight: u32,
    /// Why it failed or was canceled, or what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionResponse {
    pub version: u64,
    pub droplet: String,
    pub buildpack: String,
    /// `pushed`, `env changed`, `command changed`, `rolled back to 3`, ...
    pub description: String,
    pub current: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}
