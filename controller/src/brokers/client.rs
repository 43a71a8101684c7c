//! The Open Service Broker API client (v2.17): one function per broker endpoint Pier calls, each
//! with `X-Broker-API-Version: 2.17`, basic auth, `X-Broker-API-Originating-Identity` (who asked)
//! and `X-Broker-API-Request-Identity`, and `accepts_incomplete=true` where the spec has it.
//!
//! What a broker can answer is sorted into [`OsbError`]: unreachable (nothing reached it), a
//! timeout, a status with the broker's `description`, or a body that is not what the spec says.
//! Whether a failed provision or bind needs orphan mitigation is [`OsbError::needs_mitigation`]:
//! a timeout, a 5xx, or a 2xx with a body Pier cannot use (spec: "Orphan Mitigation").

use std::time::Duration;

use base64::Engine;
use pier_api::OSB_API_VERSION;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Where one broker is and how to log in to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OsbError {
    /// Nothing reached the broker (connection refused, no route, DNS).
    #[error("cannot connect to it: {0}")]
    Unreachable(String),
    #[error("it did not answer within {0} s")]
    Timeout(u64),
    /// Another failure of the request (the connection broke mid-answer).
    #[error("the request failed: {0}")]
    Transport(String),
    /// A status the operation does not succeed with, and the broker's `error`/`description`.
    #[error("it answered {status}{}", describe(.error, .description))]
    Status {
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
    /// A success status with a body the spec does not allow.
    #[error("it answered {status} with {what}")]
    Garbage { status: u16, what: String },
}

fn describe(error: &Option<String>, description: &Option<String>) -> String {
    match (error, description) {
        (Some(e), Some(d)) => format!(" ({e}: {d})"),
        (None, Some(d)) => format!(": {d}"),
        (Some(e), None) => format!(" ({e})"),
        (None, None) => String::new(),
    }
}

impl OsbError {
    /// Whether the broker may have made what it was asked to and must be asked to remove it.
    pub fn needs_mitigation(&self) -> bool {
        match self {
            OsbError::Timeout(_) | OsbError::Transport(_) => true,
            OsbError::Status { status, .. } => *status >= 500,
            OsbError::Garbage { status, .. } => (200..300).contains(status),
            OsbError::Unreachable(_) => false,
        }
    }

    /// The OSB error code (`ConcurrencyError`, `AsyncRequired`, ...) when there was one.
    pub fn code(&self) -> Option<&str> {
        match self {
            OsbError::Status { error, .. } => error.as_deref(),
            _ => None,
        }
    }
}

/// What a provision, update, deprovision, bind or unbind came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<T> {
    /// Done (200, 201; 410 for a delete).
    Done(T),
    /// 202: the broker works on it; follow `last_operation` with this `operation`.
    Accepted { operation: Option<String> },
}

/// A binding's result (OSB bind response).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Bound {
    #[serde(default)]
    pub credentials: Map<String, Value>,
    #[serde(default)]
    pub syslog_drain_url: Option<String>,
    #[serde(default)]
    pub volume_mounts: Vec<Value>,
}

/// A `last_operation` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastOperation {
    /// `in progress`, `succeeded`, `failed`; `gone` for a 410 (the broker has no such instance
    /// or binding: a delete succeeded).
    pub state: String,
    pub description: Option<String>,
    /// Retry-After, when the broker sent one.
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Osb {
    http: reqwest::Client,
    timeout: Duration,
}

/// The `operation` of a 202's body, when a body is there.
#[derive(Deserialize, Default)]
struct Accepted {
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    dashboard_url: Option<String>,
}

#[derive(Deserialize)]
struct BrokerError {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// Who asked, for `X-Broker-API-Originating-Identity` (Cloud Foundry's form).
fn identity(user: &str) -> String {
    let json = serde_json::json!({ "user_id": user }).to_string();
    format!(
        "cloudfoundry {}",
        base64::engine::general_purpose::STANDARD.encode(json)
    )
}

impl Osb {
    pub fn new(timeout: Duration) -> Osb {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Osb { http, timeout }
    }

    fn url(t: &Target, path: &str) -> String {
        format!("{}{path}", t.url.trim_end_matches('/'))
    }

    async fn send(
        &self,
        t: &Target,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        user: &str,
    ) -> Result<(u16, reqwest::header::HeaderMap, bytes::Bytes), OsbError> {
        let mut req = self
            .http
            .request(method, Self::url(t, path))
            .query(query)
            .basic_auth(&t.username, Some(&t.password))
            .header("X-Broker-API-Version", OSB_API_VERSION)
            .header("X-Broker-API-Originating-Identity", identity(user))
            .header(
                "X-Broker-API-Request-Identity",
                uuid::Uuid::new_v4().to_string(),
            );
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        Ok((status, headers, bytes))
    }

    fn transport(&self, e: reqwest::Error) -> OsbError {
        // reqwest's words name the URL; the source chain says why.
        let mut why = String::new();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            why = s.to_string();
            src = s.source();
        }
        if why.is_empty() {
            why = e.to_string();
        }
        if e.is_timeout() {
            OsbError::Timeout(self.timeout.as_secs())
        } else if e.is_connect() {
            OsbError::Unreachable(why)
        } else {
            OsbError::Transport(why)
        }
    }

    fn status_error(status: u16, bytes: &[u8]) -> OsbError {
        let e: Option<BrokerError> = serde_json::from_slice(bytes).ok();
        OsbError::Status {
            status,
            error: e.as_ref().and_then(|e| e.error.clone()),
            description: e.and_then(|e| e.description),
        }
    }

    fn json(status: u16, bytes: &[u8]) -> Result<Value, OsbError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| OsbError::Garbage {
            status,
            what: format!("a body that is not JSON ({e})"),
        })?;
        if !v.is_object() {
            return Err(OsbError::Garbage {
                status,
                what: "a body that is not a JSON object".into(),
            });
        }
        Ok(v)
    }

    fn accepted(status: u16, bytes: &[u8]) -> Result<Accepted, OsbError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Accepted::default());
        }
        serde_json::from_value(Self::json(status, bytes)?).map_err(|e| OsbError::Garbage {
            status,
            what: format!("a body the OSB API does not allow ({e})"),
        })
    }

    /// `GET /v2/catalog`: the body, as JSON (validated by [`super::catalog`]).
    pub async fn catalog(&self, t: &Target) -> Result<Value, OsbError> {
        let (status, _, bytes) = self
            .send(t, reqwest::Method::GET, "/v2/catalog", &[], None, "pier")
            .await?;
        if status != 200 {
            return Err(Self::status_error(status, &bytes));
        }
        Self::json(status, &bytes)
    }

    /// `PUT /v2/service_instances/:id?accepts_incomplete=true`: the dashboard URL when done.
    pub async fn provision(
        &self,
        t: &Target,
        instance: &str,
        body: &Value,
        user: &str,
    ) -> Result<(Outcome<()>, Option<String>), OsbError> {
        let path = format!("/v2/service_instances/{instance}");
        let q = [("accepts_incomplete", "true")];
        let (status, _, bytes) = self
            .send(t, reqwest::Method::PUT, &path, &q, Some(body), user)
            .await?;
        match status {
            200..=202 => {
                let a = Self::accepted(status, &bytes)?;
                let outcome = if status == 202 {
                    Outcome::Accepted {
                        operation: a.operation,
                    }
                } else {
                    Outcome::Done(())
                };
                Ok((outcome, a.dashboard_url))
            }
            _ => Err(Self::status_error(status, &bytes)),
        }
    }

    /// `PATCH /v2/service_instances/:id?accepts_incomplete=true`.
    pub async fn update(
        &self,
        t: &Target,
        instance: &str,
        body: &Value,
        user: &str,
    ) -> Result<Outcome<()>, OsbError> {
        let path = format!("/v2/service_instances/{instance}");
        let q = [("accepts_incomplete", "true")];
        let (status, _, bytes) = self
            .send(t, reqwest::Method::PATCH, &path, &q, Some(body), user)
            .await?;
        match status {
            200 => Ok(Outcome::Done(())),
            202 => Ok(Outcome::Accepted {
                operation: Self::accepted(status, &bytes)?.operation,
            }),
            _ => Err(Self::status_error(status, &bytes)),
        }
    }

    /// `DELETE /v2/service_instances/:id?service_id&plan_id&accepts_incomplete=true`; 410 Gone
    /// is done too.
    pub async fn deprovision(
        &self,
        t: &Target,
        instance: &str,
        service_id: &str,
        plan_id: &str,
        user: &str,
    ) -> Result<Outcome<()>, OsbError> {
        let path = format!("/v2/service_instances/{instance}");
        let q = [
            ("service_id", service_id),
            ("plan_id", plan_id),
            ("accepts_incomplete", "true"),
        ];
        self.delete(t, &path, &q, user).await
    }

    async fn delete(
        &self,
        t: &Target,
        path: &str,
        q: &[(&str, &str)],
        user: &str,
    ) -> Result<Outcome<()>, OsbError> {
        let (status, _, bytes) = self
            .send(t, reqwest::Method::DELETE, path, q, None, user)
            .await?;
        match status {
            200 | 410 => Ok(Outcome::Done(())),
            202 => Ok(Outcome::Accepted {
                operation: Self::accepted(status, &bytes)?.operation,
            }),
            _ => Err(Self::status_error(status, &bytes)),
        }
    }

    /// `GET .../last_operation` of an instance (`binding` None) or a binding.
    pub async fn last_operation(
        &self,
        t: &Target,
        instance: &str,
        binding: Option<&str>,
        ids: (&str, &str),
        operation: Option<&str>,
    ) -> Result<LastOperation, OsbError> {
        let path = match binding {
            None => format!("/v2/service_instances/{instance}/last_operation"),
            Some(b) => {
                format!("/v2/service_instances/{instance}/service_bindings/{b}/last_operation")
            }
        };
        let mut q = vec![("service_id", ids.0), ("plan_id", ids.1)];
        if let Some(op) = operation {
            q.push(("operation", op));
        }
        let (status, headers, bytes) = self
            .send(t, reqwest::Method::GET, &path, &q, None, "pier")
            .await?;
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if status == 410 {
            return Ok(LastOperation {
                state: "gone".into(),
                description: None,
                retry_after,
            });
        }
        if status != 200 {
            return Err(Self::status_error(status, &bytes));
        }
        #[derive(Deserialize)]
        struct Answer {
            state: String,
            #[serde(default)]
            description: Option<String>,
        }
        let a: Answer =
            serde_json::from_value(Self::json(status, &bytes)?).map_err(|e| OsbError::Garbage {
                status,
                what: format!("a last_operation body without a state ({e})"),
            })?;
        if !matches!(a.state.as_str(), "in progress" | "succeeded" | "failed") {
            return Err(OsbError::Garbage {
                status,
                what: format!(
                    "the state {:?} (not \"in progress\", \"succeeded\" or \"failed\")",
                    a.state
                ),
            });
        }
        Ok(LastOperation {
            state: a.state,
            description: a.description,
            retry_after,
        })
    }

    /// `PUT /v2/service_instances/:id/service_bindings/:binding?accepts_incomplete=true`.
    pub async fn bind(
        &self,
        t: &Target,
        instance: &str,
        binding: &str,
        body: &Value,
        user: &str,
    ) -> Result<Outcome<Bound>, OsbError> {
        let path = format!("/v2/service_instances/{instance}/service_bindings/{binding}");
        let q = [("accepts_incomplete", "true")];
        let (status, _, bytes) = self
            .send(t, reqwest::Method::PUT, &path, &q, Some(body), user)
            .await?;
        match status {
            200 | 201 => Ok(Outcome::Done(Self::bound(status, &bytes)?)),
            202 => Ok(Outcome::Accepted {
                operation: Self::accepted(status, &bytes)?.operation,
            }),
            _ => Err(Self::status_error(status, &bytes)),
        }
    }

    fn bound(status: u16, bytes: &[u8]) -> Result<Bound, OsbError> {
        serde_json::from_value(Self::json(status, bytes)?).map_err(|e| OsbError::Garbage {
            status,
            what: format!("a binding the OSB API does not allow ({e})"),
        })
    }

    /// `GET /v2/service_instances/:id/service_bindings/:binding`: an asynchronous binding's
    /// credentials once its last operation succeeded.
    pub async fn fetch_binding(
        &self,
        t: &Target,
        instance: &str,
        binding: &str,
    ) -> Result<Bound, OsbError> {
        let path = format!("/v2/service_instances/{instance}/service_bindings/{binding}");
        let (status, _, bytes) = self
            .send(t, reqwest::Method::GET, &path, &[], None, "pier")
            .await?;
        if status != 200 {
            return Err(Self::status_error(status, &bytes));
        }
        Self::bound(status, &bytes)
    }

    /// `DELETE /v2/service_instances/:id/service_bindings/:binding?...`; 410 Gone is done too.
    pub async fn unbind(
        &self,
        t: &Target,
        instance: &str,
        binding: &str,
        ids: (&str, &str),
        user: &str,
    ) -> Result<Outcome<()>, OsbError> {
        let path = format!("/v2/service_instances/{instance}/service_bindings/{binding}");
        let q = [
            ("service_id", ids.0),
            ("plan_id", ids.1),
            ("accepts_incomplete", "true"),
        ];
        self.delete(t, &path, &q, user).await
    }
}
