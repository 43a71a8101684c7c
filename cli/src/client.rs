//! A typed HTTP client over the `pier-api` wire types.
//!
//! Every non-2xx answer becomes a [`ClientError`]: an `ApiError` body is decoded and shown as the
//! controller wrote it; 401 and an unreachable controller get messages that say what to do.

use std::time::Duration;

use futures_util::{Stream, StreamExt, TryStreamExt};
use pier_api::{
    ApiError, AppConfigRequest, AppName, AppResponse, BuildEvent, BuildRequest, ErrorCode,
    InfoResponse, PackageResponse,
};
use reqwest::{header, Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

/// How long a plain JSON call may take. Uploads and build streams have no overall limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Pier controller at {url}: is pier-controller running?")]
    Unreachable { url: String },
    #[error("the controller refused the token: run `pier login --api {url} --token TOKEN` with the token pier-controller printed")]
    Unauthorized { url: String },
    #[error("{0}")]
    Api(ApiError),
    #[error("the controller answered {status}: {body}")]
    Http { status: StatusCode, body: String },
    #[error("the controller at {url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("the request to {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the controller sent an answer pier cannot read ({what}): {detail}")]
    Decode { what: String, detail: String },
}

impl ClientError {
    /// What to do next, where there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::Unreachable { .. } => Some(
                "start it, or point pier at the right address with `pier login --api URL --token TOKEN` or PIER_API"
                    .to_string(),
            ),
            ClientError::Api(e) if e.code == ErrorCode::NotFound => {
                Some("`pier apps` lists the apps that exist".to_string())
            }
            _ => None,
        }
    }

    /// The API error code, when the controller sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            ClientError::Unauthorized { .. } => Some(ErrorCode::Unauthorized),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `base` is the controller's URL without a trailing slash (see `config::normalize_api`).
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("pier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Transport {
                url: base.to_string(),
                source,
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Sends and turns every failure into a [`ClientError`].
    async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.error_from(resp).await)
    }

    async fn error_from(&self, resp: Response) -> ClientError {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED {
            return ClientError::Unauthorized {
                url: self.base.clone(),
            };
        }
        match serde_json::from_str::<ApiError>(&body) {
            Ok(e) => ClientError::Api(e),
            Err(_) => {
                let body = body.trim();
                let body = if body.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("no explanation")
                        .to_string()
                } else {
                    body.chars().take(500).collect()
                };
                ClientError::Http { status, body }
            }
        }
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::Unreachable {
                url: self.base.clone(),
            }
        } else if e.is_timeout() {
            ClientError::Timeout {
                url: self.base.clone(),
                secs: CALL_TIMEOUT.as_secs(),
            }
        } else {
            ClientError::Transport {
                url: self.base.clone(),
                source: e,
            }
        }
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder, what: &str) -> Result<T> {
        let resp = self.send(req.timeout(CALL_TIMEOUT)).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            what: what.to_string(),
            detail: e.to_string(),
        })
    }

    pub async fn info(&self) -> Result<InfoResponse> {
        self.json(self.request(Method::GET, "/v1/info"), "info")
            .await
    }

    pub async fn apps(&self) -> Result<Vec<AppResponse>> {
        self.json(self.request(Method::GET, "/v1/apps"), "app list")
            .await
    }

    pub async fn app(&self, name: &AppName) -> Result<AppResponse> {
        self.json(
            self.request(Method::GET, &format!("/v1/apps/{name}")),
            "app",
        )
        .await
    }

    /// The app with each running instance's CPU, memory and disk use (takes about a second).
    pub async fn app_with_stats(&self, name: &AppName) -> Result<AppResponse> {
        self.json(
            self.request(Method::GET, &format!("/v1/apps/{name}?stats=true")),
            "app",
        )
        .await
    }

    pub async fn put_process(
        &self,
        name: &AppName,
        process: &pier_api::ProcessType,
        config: &pier_api::ProcessConfigRequest,
    ) -> Result<AppResponse> {
        let req = self
            .request(Method::PUT, &format!("/v1/apps/{name}/processes/{process}"))
            .json(config);
        self.json(req, "app").await
    }

    pub async fn deploy(
        &self,
        name: &AppName,
        req: &pier_api::DeployRequest,
    ) -> Result<pier_api::DeploymentResponse> {
        let req = self
            .request(Method::POST, &format!("/v1/apps/{name}/deployments"))
            .json(req);
        self.json(req, "deployment").await
    }

    pub async fn deployments(&self, name: &AppName) -> Result<Vec<pier_api::DeploymentResponse>> {
        self.json(
            self.request(Method::GET, &format!("/v1/apps/{name}/deployments")),
            "deployments",
        )
        .await
    }

    /// `cancel` or `continue` the deployment in progress.
    pub async fn deployment_action(
        &self,
        name: &AppName,
        action: &str,
    ) -> Result<pier_api::DeploymentResponse> {
        let req = self.request(
            Method::POST,
            &format!("/v1/apps/{name}/deployments/current/{action}"),
        );
        self.json(req, "deployment").await
    }

    pub async fn revisions(&self, name: &AppName) -> Result<Vec<pier_api::RevisionResponse>> {
        self.json(
            self.request(Method::GET, &format!("/v1/apps/{name}/revisions")),
            "revisions",
        )
        .await
    }

    /// Maps (`map`) or unmaps a route.
    pub async fn route(
        &self,
        name: &AppName,
        route: &pier_api::RouteSpec,
        map: bool,
    ) -> Result<AppResponse> {
        let method = if map { Method::POST } else { Method::DELETE };
        let req = self
            .request(method, &format!("/v1/apps/{name}/routes"))
            .json(&pier_api::RouteRequest {
                route: route.clone(),
            });
        self.json(req, "app").await
    }

    pub async fn route_mappings(&self) -> Result<Vec<pier_api::RouteMapping>> {
        self.json(self.request(Method::GET, "/v1/route-mappings"), "routes")
            .await
    }

    pub async fn events(&self, name: &AppName) -> Result<Vec<pier_api::AppEvent>> {
        self.json(
            self.request(Method::GET, &format!("/v1/apps/{name}/events")),
            "events",
        )
        .await
    }

    pub async fn put_app(&self, name: &AppName, config: &AppConfigRequest) -> Result<AppResponse> {
        let req = self
            .request(Method::PUT, &format!("/v1/apps/{name}"))
            .json(config);
        self.json(req, "app").await
    }

    pub async fn delete_app(&self, name: &AppName) -> Result<()> {
        let req = self
            .request(Method::DELETE, &format!("/v1/apps/{name}"))
            .timeout(CALL_TIMEOUT);
        self.send(req).await.map(drop)
    }

    /// `start`, `stop` or `restart`.
    pub async fn action(&self, name: &AppName, action: &str) -> Result<AppResponse> {
        let req = self.request(Method::POST, &format!("/v1/apps/{name}/actions/{action}"));
        self.json(req, "app").await
    }

    /// Uploads a gzipped tar. `body` yields the file's bytes; `len` becomes the Content-Length so
    /// the controller can refuse an oversized package before reading it.
    pub async fn upload_package<S>(&self, body: S, len: u64) -> Result<PackageResponse>
    where
        S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    {
        let req = self
            .request(Method::POST, "/v1/packages")
            .header(header::CONTENT_TYPE, "application/gzip")
            .header(header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body));
        let resp = self.send(req).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            what: "package".to_string(),
            detail: e.to_string(),
        })
    }

    pub async fn buildpacks(&self) -> Result<Vec<pier_api::BuildpackResponse>> {
        self.json(self.request(Method::GET, "/v1/buildpacks"), "buildpacks")
            .await
    }

    pub async fn create_buildpack(
        &self,
        req: &pier_api::CreateBuildpackRequest,
    ) -> Result<pier_api::BuildpackResponse> {
        let req = self.request(Method::POST, "/v1/buildpacks").json(req);
        self.json(req, "buildpack").await
    }

    pub async fn update_buildpack(
        &self,
        name: &str,
        req: &pier_api::UpdateBuildpackRequest,
    ) -> Result<pier_api::BuildpackResponse> {
        let req = self
            .request(Method::PUT, &format!("/v1/buildpacks/{name}"))
            .json(req);
        self.json(req, "buildpack").await
    }

    pub async fn delete_buildpack(&self, name: &str) -> Result<()> {
        let req = self
            .request(Method::DELETE, &format!("/v1/buildpacks/{name}"))
            .timeout(CALL_TIMEOUT);
        self.send(req).await.map(drop)
    }

    /// Removes the app's buildpack cache (`DELETE /v1/apps/{name}/cache`).
    pub async fn clear_cache(&self, name: &AppName) -> Result<()> {
        let req = self
            .request(Method::DELETE, &format!("/v1/apps/{name}/cache"))
            .timeout(CALL_TIMEOUT);
        self.send(req).await.map(drop)
    }

    /// Starts a build and returns its events as they arrive, one per NDJSON line.
    pub async fn build(
        &self,
        name: &AppName,
        request: &BuildRequest,
    ) -> Result<impl Stream<Item = Result<BuildEvent>> + Unpin> {
        let req = self
            .request(Method::POST, &format!("/v1/apps/{name}/builds"))
            .json(request);
        let resp = self.send(req).await?;
        let this = self.clone();
        let bytes = resp.bytes_stream().map_err(move |e| this.transport(e));
        Ok(Box::pin(ndjson(bytes)))
    }
}

/// Splits a byte stream into lines and decodes each non-empty line as JSON. A line split across
/// chunks is put back together; a last line without a newline still counts.
pub fn ndjson<T, S>(bytes: S) -> impl Stream<Item = Result<T>>
where
    T: DeserializeOwned,
    S: Stream<Item = Result<bytes::Bytes>> + Unpin,
{
    futures_util::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        |(mut bytes, mut buf, mut ended)| async move {
            loop {
                if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some((decode_line(&line), (bytes, buf, ended)));
                }
                if ended {
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    let line = std::mem::take(&mut buf);
                    return Some((decode_line(&line), (bytes, buf, ended)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        ended = true;
                        buf.clear();
                        return Some((Err(e), (bytes, buf, ended)));
                    }
                    None => ended = true,
                }
            }
        },
    )
}

fn decode_line<T: DeserializeOwned>(line: &[u8]) -> Result<T> {
    serde_json::from_slice(line).map_err(|e| ClientError::Decode {
        what: "build event".to_string(),
        detail: format!("{e} in {:?}", String::from_utf8_lossy(line).trim_end()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ndjson_rejoins_split_lines() {
        let chunks: Vec<Result<bytes::Bytes>> = vec![
            Ok(bytes::Bytes::from_static(b"{\"a\":1}\n{\"a\"")),
            Ok(bytes::Bytes::from_static(b":2}\n\n")),
            Ok(bytes::Bytes::from_static(b"{\"a\":3}")),
        ];
        let out: Vec<serde_json::Value> = ndjson(futures_util::stream::iter(chunks))
            .map(|r| r.unwrap())
            .collect()
            .await;
        let a: Vec<i64> = out.iter().map(|v| v["a"].as_i64().unwrap()).collect();
        assert_eq!(a, [1, 2, 3]);
    }
}
