//! `pier-client`: the one typed HTTP client of a Pier controller's API, used by the `pier` CLI, the
//! standalone `pier-router` and the end-to-end tests.
//!
//! ```text
//! pier (CLI) ─┐
//! pier-router ├─► Client ── reqwest (HTTP/1.1, bearer token) ──► pier-controller
//! e2e tests  ─┘     │  typed requests and answers: pier-api's *Request / *Response
//!                   ├─ build      → BuildEvents: NDJSON, one BuildEvent per line
//!                   └─ log_stream → LogEvents:   server-sent events, resumable by seq
//! ```
//!
//! One method per endpoint of the table in [`pier_api`]'s crate docs; names and bodies are the
//! wire types, so a caller never writes a path or parses JSON.
//!
//! **Errors.** Every failure is a [`ClientError`]: the controller refused (a 4xx/5xx with its
//! decoded [`pier_api::ApiError`] and status, or a status with a body that is not one), the
//! request got no answer (unreachable, timed out, cut off), or the answer could not be used
//! (undecodable, over a size limit). Messages name the controller's address; what to tell a
//! user beyond them (how to log in, say) is the caller's to add.
//!
//! **Time limits.** Connecting has its own limit. A plain call (JSON in, JSON out) is limited as a
//! whole by the client's timeout, 120 s unless set; [`Client::with_timeout`] gives one call
//! another (the router's long-poll, `pier logs --recent`). Uploads and the two streams have no
//! overall limit: they last as long as the build, the upload or the reader.
//!
//! **Streams.** [`Client::build`] and [`Client::log_stream`] return once the controller has
//! answered with success; their items then arrive as the controller writes them, lines split
//! across reads put back together. A log stream is one connection: [`LogEvents::last_event_id`]
//! is where to resume with [`LogStart::After`] once it ends (the reconnect policy, and what to
//! say meanwhile, belongs to the caller).
//!
//! **Transport.** reqwest without default features: HTTP/1.1 over plain TCP for `http://`, over
//! rustls (ring) for `https://`. A controller's certificate is checked against webpki's roots
//! and the system's store, plus the PEM CA certificates [`ClientBuilder::ca_cert_file`] adds
//! (a private CA, or a self-signed certificate itself). A certificate the client cannot trust,
//! or a controller that does not speak TLS, is [`ClientError::Tls`], never "unreachable".

mod brokers;
mod error;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStream, TryStreamExt};
use pier_api::{
    ApiError, AppAction, AppConfigRequest, AppEvent, AppName, AppResponse, AssignQuotaRequest,
    AuditEntry, AuditQuery, BindingResponse, BuildRequest, BuildpackResponse,
    CreateBuildpackRequest, CreateNamedRequest, CreateQuotaRequest, CreateServiceInstanceRequest,
    CreateUserRequest, DeployRequest, DeploymentAction, DeploymentResponse, EnvPatchRequest,
    EnvResponse, ErrorCode, InfoResponse, LogLine, OAuthError, OrgResponse, PackageResponse,
    ProcessConfigRequest, ProcessType, QuotaLimits, QuotaResponse, RevisionResponse, Role,
    RoleHolder, RouteMapping, RouteRequest, RouteSpec, RouteTable, RouterLogBatch,
    ServiceInstanceResponse, SetPasswordRequest, SpaceResponse, TokenResponse,
    UpdateBuildpackRequest, UpdateUserProvidedRequest, UserResponse, WhoAmIResponse,
};
use reqwest::{header, Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;

pub use error::{check_base_url, is_cleartext_remote, BaseUrlError, ClientError, Result};
pub use reqwest::StatusCode;
pub use stream::{BuildEvents, LogEvents, LogStart};

use stream::{LineStream, Ndjson, Sse};

/// How long a plain call may take unless the builder says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long connecting may take unless the builder says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The deployment id that names an app's deployment in progress.
pub const CURRENT_DEPLOYMENT: &str = "current";

/// The most of a refusal's body that is read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A controller's API at one base URL, with or without a token. Cheap to clone: clones share one
/// connection pool, and one login (a renewed access token is every clone's).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    auth: Arc<Auth>,
    http: reqwest::Client,
    timeout: Option<Duration>,
    /// `org=..&space=..` sent with every app call (none: the controller's default space).
    space: Vec<(&'static str, String)>,
}

/// Called with the new pair each time the client renews a user's access token (the CLI saves it).
#[derive(Clone)]
pub struct OnRefresh(Arc<dyn Fn(&TokenResponse) + Send + Sync>);

impl std::fmt::Debug for OnRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnRefresh")
    }
}

/// The bearer token, and the login that can renew it.
struct Auth {
    token: RwLock<Option<String>>,
    session: Option<Session>,
}

struct Session {
    /// Held while renewing, so concurrent calls renew once (a refresh token works once).
    refresh_token: futures_util::lock::Mutex<String>,
    on_refresh: OnRefresh,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("renews", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Client`]; see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    token: Option<String>,
    session: Option<(String, OnRefresh)>,
    connect_timeout: Duration,
    timeout: Option<Duration>,
    user_agent: String,
    ca_cert: Option<PathBuf>,
    skip_tls_verify: bool,
    space: Vec<(&'static str, String)>,
}

impl ClientBuilder {
    /// The org and space app calls act in (`?org=&space=`); each `None` is the controller's
    /// default (`default`).
    pub fn space(mut self, org: Option<String>, space: Option<String>) -> Self {
        self.space = [
            (pier_api::orgs::ORG_PARAM, org),
            (pier_api::orgs::SPACE_PARAM, space),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        self
    }

    /// Also trust the CA certificates (PEM, one or more) in this file for `https://`.
    pub fn ca_cert_file(mut self, file: Option<PathBuf>) -> Self {
        self.ca_cert = file;
        self
    }

    /// Accept any certificate, for any name: the connection is encrypted but anyone in the way
    /// can read it. Only for trying things out.
    pub fn danger_skip_tls_verify(mut self, skip: bool) -> Self {
        self.skip_tls_verify = skip;
        self
    }

    /// The bearer token sent with every call; an empty one sends none.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// A user's login: when the controller says the access token expired (or it has, by its
    /// `exp`), the client gets a new pair with `refresh_token` once, calls `on_refresh` with it,
    /// and sends the call again. If that fails the call fails with [`ClientError::LoginExpired`].
    pub fn session(
        mut self,
        refresh_token: Option<String>,
        on_refresh: impl Fn(&TokenResponse) + Send + Sync + 'static,
    ) -> Self {
        self.session = refresh_token
            .filter(|t| !t.is_empty())
            .map(|t| (t, OnRefresh(Arc::new(on_refresh))));
        self
    }

    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// The limit on a plain call as a whole (None: no limit).
    pub fn timeout(mut self, limit: Option<Duration>) -> Self {
        self.timeout = limit;
        self
    }

    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = agent.into();
        self
    }

    pub fn build(self) -> Result<Client> {
        let base = self.base.trim().trim_end_matches('/').to_string();
        check_base_url(&base).map_err(|reason| ClientError::BadUrl {
            url: self.base.clone(),
            reason,
        })?;
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .user_agent(self.user_agent)
            .danger_accept_invalid_certs(self.skip_tls_verify);
        if let Some(file) = &self.ca_cert {
            for cert in read_ca_certs(file)? {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().map_err(|source| ClientError::Transport {
            url: base.clone(),
            source,
        })?;
        let session = self.session.map(|(refresh_token, on_refresh)| Session {
            refresh_token: futures_util::lock::Mutex::new(refresh_token),
            on_refresh,
        });
        Ok(Client {
            base,
            auth: Arc::new(Auth {
                token: RwLock::new(self.token),
                session,
            }),
            http,
            timeout: self.timeout,
            space: self.space,
        })
    }
}

/// The CA certificates in a PEM file; refused when there are none.
fn read_ca_certs(file: &Path) -> Result<Vec<reqwest::Certificate>> {
    let bad = |reason: String| ClientError::CaCert {
        file: file.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(file).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| bad(format!("it is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)".into(),
        ));
    }
    Ok(certs)
}

/// What `GET /v1/routes` is asked: a table newer than (`epoch`, `version`). The controller answers
/// at once when its table differs and otherwise holds the request (about 30 s) before answering
/// "not modified"; give the call a timeout longer than that ([`Client::with_timeout`]).
#[derive(Debug, Clone, Copy)]
pub struct RoutesPoll<'a> {
    pub epoch: &'a str,
    pub version: u64,
    /// The asking router's id: the controller records which table each router holds.
    pub router: Option<&'a str>,
    /// The largest table accepted, in bytes.
    pub max_bytes: usize,
    /// Instances no longer in the table the router holds that it still has requests in flight
    /// to: the controller drains them until no router names them.
    pub draining: &'a [String],
}

/// What a route-table poll learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutesAnswer {
    /// A table (possibly the same one again).
    Table(RouteTable),
    /// 304: unchanged.
    NotModified,
}

impl Client {
    /// A client with the default limits. `base` is the controller's URL, like
    /// `http://127.0.0.1:9000` (a trailing slash is dropped).
    pub fn new(base: &str, token: Option<String>) -> Result<Client> {
        Client::builder(base).token(token).build()
    }

    pub fn builder(base: &str) -> ClientBuilder {
        ClientBuilder {
            base: base.to_string(),
            token: None,
            session: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: Some(DEFAULT_TIMEOUT),
            user_agent: concat!("pier-client/", env!("CARGO_PKG_VERSION")).to_string(),
            ca_cert: None,
            skip_tls_verify: false,
            space: Vec::new(),
        }
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same client (same pool) with another limit on plain calls.
    pub fn with_timeout(&self, limit: Option<Duration>) -> Client {
        Client {
            timeout: limit,
            ..self.clone()
        }
    }

    // ---- plumbing ----

    /// The bearer token calls carry now (a user's is renewed as it expires).
    pub fn token(&self) -> Option<String> {
        self.auth
            .token
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if in_space(path) && !self.space.is_empty() {
            req = req.query(&self.space);
        }
        match self.token() {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    fn authorize(&self, req: &mut reqwest::Request) {
        if let Some(v) = self
            .token()
            .and_then(|t| header::HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
    }

    /// A plain call: the client's timeout applies to all of it.
    fn call(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.request(method, path);
        match self.timeout {
            Some(limit) => req.timeout(limit),
            None => req,
        }
    }

    /// Sends; anything but a 2xx becomes the matching [`ClientError`]. With a user's login, an
    /// expired access token is renewed once and the call sent again.
    async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let Some(session) = &self.auth.session else {
            return self.send_once(req).await;
        };
        let (_, built) = req.build_split();
        let mut built = built.map_err(|e| self.transport(e))?;
        // A streamed body cannot be sent twice: renew before sending what has expired by its exp.
        if self.token().as_deref().is_some_and(jwt_expired) {
            self.renew(session, self.token()).await?;
            self.authorize(&mut built);
        }
        let again = built.try_clone();
        let sent = self.token();
        let resp = self
            .http
            .execute(built)
            .await
            .map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let refused = self.refusal(resp).await;
        let Some(mut again) = again.filter(|_| refused.code() == Some(ErrorCode::TokenExpired))
        else {
            return Err(refused);
        };
        self.renew(session, sent).await?;
        self.authorize(&mut again);
        let resp = self
            .http
            .execute(again)
            .await
            .map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.refusal(resp).await)
        }
    }

    async fn send_once(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.refusal(resp).await)
        }
    }

    /// Gets a new pair with the refresh token, unless another call did since `sent` was sent.
    async fn renew(&self, session: &Session, sent: Option<String>) -> Result<()> {
        let mut refresh = session.refresh_token.lock().await;
        if self.token() != sent {
            return Ok(());
        }
        let answer = self
            .refresh_grant(&refresh)
            .await
            .map_err(|e| ClientError::LoginExpired {
                url: self.base.clone(),
                reason: e.to_string(),
            })?;
        refresh.clone_from(&answer.refresh_token);
        *self
            .auth
            .token
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(answer.access_token.clone());
        (session.on_refresh.0)(&answer);
        Ok(())
    }

    /// A form POST to an OAuth endpoint as the client `cf` (empty secret); OAuth's refusals
    /// become [`ClientError::OAuth`].
    async fn oauth(&self, path: &str, form: &[(&str, &str)]) -> Result<Response> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth("cf", Some(""))
            .header(header::ACCEPT, "application/json")
            .form(form);
        if let Some(limit) = self.timeout {
            req = req.timeout(limit);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = self
            .read(resp, MAX_ERROR_BODY, "error")
            .await
            .unwrap_or_default();
        match serde_json::from_slice::<OAuthError>(&body) {
            Ok(error) => Err(ClientError::OAuth {
                url: self.base.clone(),
                status,
                error,
            }),
            Err(_) => Err(ClientError::Http {
                url: self.base.clone(),
                status,
                body: String::from_utf8_lossy(&body).chars().take(500).collect(),
            }),
        }
    }

    async fn refusal(&self, resp: Response) -> ClientError {
        let status = resp.status();
        let body = self
            .read(resp, MAX_ERROR_BODY, "error")
            .await
            .unwrap_or_default();
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(error) => ClientError::Api {
                url: self.base.clone(),
                status,
                error,
            },
            Err(_) => {
                let body = String::from_utf8_lossy(&body);
                let body = body.trim();
                let body = if body.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("no explanation")
                        .to_string()
                } else {
                    body.chars().take(500).collect()
                };
                ClientError::Http {
                    url: self.base.clone(),
                    status,
                    body,
                }
            }
        }
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        let url = self.base.clone();
        if let Some((reason, untrusted)) = error::tls_failure(&e) {
            ClientError::Tls {
                url,
                reason,
                untrusted,
            }
        } else if e.is_connect() {
            let reason =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            ClientError::Unreachable { url, reason }
        } else if e.is_timeout() {
            ClientError::Timeout {
                url,
                after: self.timeout.unwrap_or_default(),
            }
        } else {
            ClientError::Transport { url, source: e }
        }
    }

    /// The whole body, refused past `limit` bytes.
    async fn read(&self, mut resp: Response, limit: usize, what: &'static str) -> Result<Bytes> {
        let too_large = || ClientError::TooLarge { what, limit };
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.into())
    }

    fn decode<T: DeserializeOwned>(body: &[u8], what: &'static str) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| ClientError::Decode {
            what,
            detail: e.to_string(),
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        what: &'static str,
    ) -> Result<T> {
        let resp = self.send(req).await?;
        let body = self.read(resp, usize::MAX, what).await?;
        Self::decode(&body, what)
    }

    async fn empty(&self, req: RequestBuilder) -> Result<()> {
        self.send(req).await.map(drop)
    }

    fn body_stream(
        &self,
        resp: Response,
    ) -> futures_util::stream::BoxStream<'static, Result<Bytes>> {
        let this = self.clone();
        resp.bytes_stream()
            .map_err(move |e| this.transport(e))
            .boxed()
    }

    // ---- endpoints ----

    /// `POST /oauth/token`, `grant_type=password`: a user's login.
    pub async fn password_grant(&self, username: &str, password: &str) -> Result<TokenResponse> {
        let form = [
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
        ];
        let resp = self.oauth("/oauth/token", &form).await?;
        let body = self.read(resp, MAX_ERROR_BODY, "token").await?;
        Self::decode(&body, "token")
    }

    /// `POST /oauth/token`, `grant_type=refresh_token`: a new pair (the old refresh token stops
    /// working).
    pub async fn refresh_grant(&self, refresh_token: &str) -> Result<TokenResponse> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        let resp = self.oauth("/oauth/token", &form).await?;
        let body = self.read(resp, MAX_ERROR_BODY, "token").await?;
        Self::decode(&body, "token")
    }

    /// `POST /oauth/revoke`: ends the login session of a refresh token.
    pub async fn revoke(&self, refresh_token: &str) -> Result<()> {
        self.oauth("/oauth/revoke", &[("token", refresh_token)])
            .await
            .map(drop)
    }

    /// `GET /v1/whoami`.
    pub async fn whoami(&self) -> Result<WhoAmIResponse> {
        self.json(self.call(Method::GET, "/v1/whoami"), "whoami")
            .await
    }

    /// `GET /v1/users`.
    pub async fn users(&self) -> Result<Vec<UserResponse>> {
        self.json(self.call(Method::GET, "/v1/users"), "users")
            .await
    }

    /// `POST /v1/users`.
    pub async fn create_user(&self, req: &CreateUserRequest) -> Result<UserResponse> {
        self.json(self.call(Method::POST, "/v1/users").json(req), "user")
            .await
    }

    /// `DELETE /v1/users/{name}`.
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let path = format!("/v1/users/{}", segment(name));
        self.empty(self.call(Method::DELETE, &path)).await
    }

    /// `PUT /v1/users/{name}/password`.
    pub async fn set_password(&self, name: &str, req: &SetPasswordRequest) -> Result<()> {
        let path = format!("/v1/users/{}/password", segment(name));
        self.empty(self.call(Method::PUT, &path).json(req)).await
    }

    /// `GET /v1/info` (needs no token).
    pub async fn info(&self) -> Result<InfoResponse> {
        self.json(self.call(Method::GET, "/v1/info"), "info").await
    }

    /// `POST /v1/packages`: uploads a gzipped tar. `body` yields the file's bytes; `len` becomes
    /// the Content-Length, so the controller can refuse an oversized package before reading it.
    /// No overall time limit.
    pub async fn upload_package<S>(&self, body: S, len: u64) -> Result<PackageResponse>
    where
        S: TryStream + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        Bytes: From<S::Ok>,
    {
        let req = self
            .request(Method::POST, "/v1/packages")
            .header(header::CONTENT_TYPE, "application/gzip")
            .header(header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body));
        self.json(req, "package").await
    }

    /// `GET /v1/apps`.
    pub async fn apps(&self) -> Result<Vec<AppResponse>> {
        self.json(self.call(Method::GET, "/v1/apps"), "app list")
            .await
    }

    /// `GET /v1/apps/{name}`.
    pub async fn app(&self, name: &AppName) -> Result<AppResponse> {
        self.json(self.call(Method::GET, &format!("/v1/apps/{name}")), "app")
            .await
    }

    /// `GET /v1/apps/{name}?wait_after=V`: the app once the controller's change counter has
    /// passed `seen` (an earlier answer's `state_version`), or after `wait` (at most 30 s) with
    /// nothing changed. A controller without long-polls answers at once with `state_version` 0.
    pub async fn app_after(
        &self,
        name: &AppName,
        seen: u64,
        wait: std::time::Duration,
    ) -> Result<AppResponse> {
        let secs = wait.as_secs().clamp(1, 30).to_string();
        let req = self.call(Method::GET, &format!("/v1/apps/{name}")).query(&[
            ("wait_after", seen.to_string().as_str()),
            ("wait_secs", &secs),
        ]);
        self.json(req, "app").await
    }

    /// `GET /v1/apps/{name}?stats=true`: with each running instance's latest sampled CPU, memory
    /// and disk use (the controller samples in the background).
    pub async fn app_with_stats(&self, name: &AppName) -> Result<AppResponse> {
        let req = self
            .call(Method::GET, &format!("/v1/apps/{name}"))
            .query(&[("stats", "true")]);
        self.json(req, "app").await
    }

    /// `PUT /v1/apps/{name}`: creates or updates the app.
    pub async fn put_app(&self, name: &AppName, config: &AppConfigRequest) -> Result<AppResponse> {
        let req = self
            .call(Method::PUT, &format!("/v1/apps/{name}"))
            .json(config);
        self.json(req, "app").await
    }

    /// `GET /v1/apps/{name}/env`.
    pub async fn env(&self, name: &AppName) -> Result<EnvResponse> {
        self.json(
            self.call(Method::GET, &format!("/v1/apps/{name}/env")),
            "env",
        )
        .await
    }

    /// `PATCH /v1/apps/{name}/env`: sets (or, with `None`, unsets) the variables named.
    pub async fn patch_env(&self, name: &AppName, req: &EnvPatchRequest) -> Result<EnvResponse> {
        let req = self
            .call(Method::PATCH, &format!("/v1/apps/{name}/env"))
            .json(req);
        self.json(req, "env").await
    }

    /// `DELETE /v1/apps/{name}`.
    pub async fn delete_app(&self, name: &AppName) -> Result<()> {
        self.empty(self.call(Method::DELETE, &format!("/v1/apps/{name}")))
            .await
    }

    /// `POST /v1/apps/{name}/builds`: starts a build; its events arrive as they happen.
    pub async fn build(&self, name: &AppName, request: &BuildRequest) -> Result<BuildEvents> {
        let req = self
            .request(Method::POST, &format!("/v1/apps/{name}/builds"))
            .json(request);
        let resp = self.send(req).await?;
        Ok(BuildEvents(LineStream::new(
            self.body_stream(resp),
            Ndjson::new("build event"),
        )))
    }

    /// `POST /v1/apps/{name}/actions/{action}`.
    pub async fn action(&self, name: &AppName, action: AppAction) -> Result<AppResponse> {
        let req = self.call(Method::POST, &format!("/v1/apps/{name}/actions/{action}"));
        self.json(req, "app").await
    }

    /// `PUT /v1/apps/{name}/processes/{type}`: scale, or change a health check.
    pub async fn put_process(
        &self,
        name: &AppName,
        process: &ProcessType,
        config: &ProcessConfigRequest,
    ) -> Result<AppResponse> {
        let req = self
            .call(Method::PUT, &format!("/v1/apps/{name}/processes/{process}"))
            .json(config);
        self.json(req, "app").await
    }

    /// `POST /v1/apps/{name}/deployments`.
    pub async fn deploy(&self, name: &AppName, req: &DeployRequest) -> Result<DeploymentResponse> {
        let req = self
            .call(Method::POST, &format!("/v1/apps/{name}/deployments"))
            .json(req);
        self.json(req, "deployment").await
    }

    /// `GET /v1/apps/{name}/deployments`, newest first.
    pub async fn deployments(&self, name: &AppName) -> Result<Vec<DeploymentResponse>> {
        let req = self.call(Method::GET, &format!("/v1/apps/{name}/deployments"));
        self.json(req, "deployments").await
    }

    /// `POST /v1/apps/{name}/deployments/{id}/{action}`; `id` may be [`CURRENT_DEPLOYMENT`].
    pub async fn deployment_action(
        &self,
        name: &AppName,
        id: &str,
        action: DeploymentAction,
    ) -> Result<DeploymentResponse> {
        let path = format!("/v1/apps/{name}/deployments/{}/{action}", segment(id));
        self.json(self.call(Method::POST, &path), "deployment")
            .await
    }

    /// `GET /v1/apps/{name}/revisions`, newest first.
    pub async fn revisions(&self, name: &AppName) -> Result<Vec<RevisionResponse>> {
        let req = self.call(Method::GET, &format!("/v1/apps/{name}/revisions"));
        self.json(req, "revisions").await
    }

    /// `POST /v1/apps/{name}/routes`.
    pub async fn map_route(&self, name: &AppName, route: &RouteSpec) -> Result<AppResponse> {
        self.route(Method::POST, name, route).await
    }

    /// `DELETE /v1/apps/{name}/routes`.
    pub async fn unmap_route(&self, name: &AppName, route: &RouteSpec) -> Result<AppResponse> {
        self.route(Method::DELETE, name, route).await
    }

    async fn route(
        &self,
        method: Method,
        name: &AppName,
        route: &RouteSpec,
    ) -> Result<AppResponse> {
        let req = self
            .call(method, &format!("/v1/apps/{name}/routes"))
            .json(&RouteRequest {
                route: route.clone(),
            });
        self.json(req, "app").await
    }

    /// `GET /v1/route-mappings`.
    pub async fn route_mappings(&self) -> Result<Vec<RouteMapping>> {
        self.json(self.call(Method::GET, "/v1/route-mappings"), "routes")
            .await
    }

    /// `GET /v1/apps/{name}/events`, newest first.
    pub async fn events(&self, name: &AppName) -> Result<Vec<AppEvent>> {
        let req = self.call(Method::GET, &format!("/v1/apps/{name}/events"));
        self.json(req, "events").await
    }

    /// `GET /v1/apps/{name}/logs`: the buffered lines.
    pub async fn recent_logs(&self, name: &AppName) -> Result<Vec<LogLine>> {
        let req = self.call(Method::GET, &format!("/v1/apps/{name}/logs"));
        self.json(req, "log lines").await
    }

    /// `GET /v1/apps/{name}/logs/stream`: one connection of the app's log, from `start`.
    pub async fn log_stream(&self, name: &AppName, start: LogStart) -> Result<LogEvents> {
        let req = self.request(Method::GET, &format!("/v1/apps/{name}/logs/stream"));
        let req = match start {
            LogStart::After(seq) => req.query(&[("after", seq)]),
            LogStart::Recent(Some(n)) => req.query(&[("recent", n)]),
            LogStart::Recent(None) => req,
        };
        let resp = self
            .send(req.header(header::ACCEPT, "text/event-stream"))
            .await?;
        Ok(LogEvents(LineStream::new(
            self.body_stream(resp),
            Sse::default(),
        )))
    }

    /// `GET /v1/routes?epoch=E&version=V&router=ID`: the route-table long-poll of a router.
    pub async fn poll_routes(&self, poll: &RoutesPoll<'_>) -> Result<RoutesAnswer> {
        let version = poll.version.to_string();
        let mut query = vec![("epoch", poll.epoch), ("version", version.as_str())];
        if let Some(router) = poll.router {
            query.push(("router", router));
        }
        let draining = poll.draining.join(",");
        if !draining.is_empty() {
            query.push(("draining", draining.as_str()));
        }
        let req = self
            .call(Method::GET, "/v1/routes")
            .query(&query)
            .header(header::ACCEPT, "application/json");
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        match resp.status() {
            StatusCode::NOT_MODIFIED => Ok(RoutesAnswer::NotModified),
            s if s.is_success() => {
                let body = self.read(resp, poll.max_bytes, "route table").await?;
                Self::decode(&body, "route table").map(RoutesAnswer::Table)
            }
            _ => Err(self.refusal(resp).await),
        }
    }

    /// `POST /v1/router/logs`: a standalone router's access-log lines.
    pub async fn send_router_logs(&self, batch: &RouterLogBatch) -> Result<()> {
        self.empty(self.call(Method::POST, "/v1/router/logs").json(batch))
            .await
    }

    /// `GET /v1/buildpacks`, in position order.
    pub async fn buildpacks(&self) -> Result<Vec<BuildpackResponse>> {
        self.json(self.call(Method::GET, "/v1/buildpacks"), "buildpacks")
            .await
    }

    /// `POST /v1/buildpacks`.
    pub async fn create_buildpack(
        &self,
        req: &CreateBuildpackRequest,
    ) -> Result<BuildpackResponse> {
        let req = self.call(Method::POST, "/v1/buildpacks").json(req);
        self.json(req, "buildpack").await
    }

    /// `PUT /v1/buildpacks/{name}`.
    pub async fn update_buildpack(
        &self,
        name: &str,
        req: &UpdateBuildpackRequest,
    ) -> Result<BuildpackResponse> {
        let req = self
            .call(Method::PUT, &format!("/v1/buildpacks/{}", segment(name)))
            .json(req);
        self.json(req, "buildpack").await
    }

    /// `DELETE /v1/buildpacks/{name}`.
    pub async fn delete_buildpack(&self, name: &str) -> Result<()> {
        let path = format!("/v1/buildpacks/{}", segment(name));
        self.empty(self.call(Method::DELETE, &path)).await
    }

    /// `GET /v1/orgs`.
    pub async fn orgs(&self) -> Result<Vec<OrgResponse>> {
        self.json(self.call(Method::GET, "/v1/orgs"), "orgs").await
    }

    /// `GET /v1/orgs/{org}`.
    pub async fn org(&self, org: &str) -> Result<OrgResponse> {
        let req = self.call(Method::GET, &format!("/v1/orgs/{}", segment(org)));
        self.json(req, "org").await
    }

    /// `POST /v1/orgs`.
    pub async fn create_org(&self, name: &str) -> Result<OrgResponse> {
        let req = self
            .call(Method::POST, "/v1/orgs")
            .json(&CreateNamedRequest { name: name.into() });
        self.json(req, "org").await
    }

    /// `DELETE /v1/orgs/{org}`: the org, its spaces and their apps.
    pub async fn delete_org(&self, org: &str) -> Result<()> {
        let req = self.call(Method::DELETE, &format!("/v1/orgs/{}", segment(org)));
        self.empty(req).await
    }

    /// `GET /v1/orgs/{org}/spaces`.
    pub async fn spaces(&self, org: &str) -> Result<Vec<SpaceResponse>> {
        let path = format!("/v1/orgs/{}/spaces", segment(org));
        self.json(self.call(Method::GET, &path), "spaces").await
    }

    /// `GET /v1/orgs/{org}/spaces/{space}`.
    pub async fn space(&self, org: &str, space: &str) -> Result<SpaceResponse> {
        let path = format!("/v1/orgs/{}/spaces/{}", segment(org), segment(space));
        self.json(self.call(Method::GET, &path), "space").await
    }

    /// `POST /v1/orgs/{org}/spaces`.
    pub async fn create_space(&self, org: &str, name: &str) -> Result<SpaceResponse> {
        let path = format!("/v1/orgs/{}/spaces", segment(org));
        let req = self
            .call(Method::POST, &path)
            .json(&CreateNamedRequest { name: name.into() });
        self.json(req, "space").await
    }

    /// `DELETE /v1/orgs/{org}/spaces/{space}`: the space and its apps.
    pub async fn delete_space(&self, org: &str, space: &str) -> Result<()> {
        let path = format!("/v1/orgs/{}/spaces/{}", segment(org), segment(space));
        self.empty(self.call(Method::DELETE, &path)).await
    }

    /// `GET /v1/audit?since=&limit=`: the platform's audit log, newest first (platform admin).
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let req = self.call(Method::GET, "/v1/audit").query(query);
        self.json(req, "audit log").await
    }

    /// `GET /v1/quotas`.
    pub async fn quotas(&self) -> Result<Vec<QuotaResponse>> {
        self.json(self.call(Method::GET, "/v1/quotas"), "quotas")
            .await
    }

    /// `GET /v1/quotas/{name}`.
    pub async fn quota(&self, name: &str) -> Result<QuotaResponse> {
        let path = format!("/v1/quotas/{}", segment(name));
        self.json(self.call(Method::GET, &path), "quota").await
    }

    /// `POST /v1/quotas`.
    pub async fn create_quota(&self, req: &CreateQuotaRequest) -> Result<QuotaResponse> {
        self.json(self.call(Method::POST, "/v1/quotas").json(req), "quota")
            .await
    }

    /// `PUT /v1/quotas/{name}`: replaces all four limits.
    pub async fn update_quota(&self, name: &str, limits: &QuotaLimits) -> Result<QuotaResponse> {
        let path = format!("/v1/quotas/{}", segment(name));
        self.json(self.call(Method::PUT, &path).json(limits), "quota")
            .await
    }

    /// `DELETE /v1/quotas/{name}` (refused while an org or a space has it).
    pub async fn delete_quota(&self, name: &str) -> Result<()> {
        let path = format!("/v1/quotas/{}", segment(name));
        self.empty(self.call(Method::DELETE, &path)).await
    }

    /// `PUT /v1/orgs/{org}/quota`: assigns a quota, or none (`None`: unlimited).
    pub async fn set_org_quota(&self, org: &str, quota: Option<&str>) -> Result<OrgResponse> {
        let path = format!("/v1/orgs/{}/quota", segment(org));
        let body = AssignQuotaRequest {
            quota: quota.map(str::to_string),
        };
        self.json(self.call(Method::PUT, &path).json(&body), "org")
            .await
    }

    /// `PUT /v1/orgs/{org}/spaces/{space}/quota`: assigns a quota, or none.
    pub async fn set_space_quota(
        &self,
        org: &str,
        space: &str,
        quota: Option<&str>,
    ) -> Result<SpaceResponse> {
        let path = format!("/v1/orgs/{}/spaces/{}/quota", segment(org), segment(space));
        let body = AssignQuotaRequest {
            quota: quota.map(str::to_string),
        };
        self.json(self.call(Method::PUT, &path).json(&body), "space")
            .await
    }

    /// The path of the org's role holders, or the space's when `space` is given.
    fn role_users_path(org: &str, space: Option<&str>) -> String {
        match space {
            None => format!("/v1/orgs/{}/users", segment(org)),
            Some(sp) => format!("/v1/orgs/{}/spaces/{}/users", segment(org), segment(sp)),
        }
    }

    /// `GET /v1/orgs/{org}/users`, or `.../spaces/{space}/users`: who holds which role there.
    pub async fn role_holders(&self, org: &str, space: Option<&str>) -> Result<Vec<RoleHolder>> {
        let path = Self::role_users_path(org, space);
        self.json(self.call(Method::GET, &path), "users").await
    }

    /// `PUT` (`give`) or `DELETE` `.../users/{user}/roles/{role}` of the org, or of the space when
    /// `space` is given.
    pub async fn set_role(
        &self,
        org: &str,
        space: Option<&str>,
        user: &str,
        role: Role,
        give: bool,
    ) -> Result<()> {
        let path = format!(
            "{}/{}/roles/{role}",
            Self::role_users_path(org, space),
            segment(user)
        );
        let method = if give { Method::PUT } else { Method::DELETE };
        self.empty(self.call(method, &path)).await
    }

    /// `GET /v1/service-instances`: the space's service instances.
    pub async fn services(&self) -> Result<Vec<ServiceInstanceResponse>> {
        self.json(self.call(Method::GET, "/v1/service-instances"), "services")
            .await
    }

    /// `GET /v1/service-instances/{name}`.
    pub async fn service(&self, name: &str) -> Result<ServiceInstanceResponse> {
        let path = format!("/v1/service-instances/{}", segment(name));
        self.json(self.call(Method::GET, &path), "service").await
    }

    /// `POST /v1/service-instances`.
    pub async fn create_service(
        &self,
        req: &CreateServiceInstanceRequest,
    ) -> Result<ServiceInstanceResponse> {
        let req = self.call(Method::POST, "/v1/service-instances").json(req);
        self.json(req, "service").await
    }

    /// `PATCH /v1/service-instances/{name}`.
    pub async fn update_service(
        &self,
        name: &str,
        req: &UpdateUserProvidedRequest,
    ) -> Result<ServiceInstanceResponse> {
        let path = format!("/v1/service-instances/{}", segment(name));
        self.json(self.call(Method::PATCH, &path).json(req), "service")
            .await
    }

    /// `DELETE /v1/service-instances/{name}`.
    pub async fn delete_service(&self, name: &str) -> Result<()> {
        let path = format!("/v1/service-instances/{}", segment(name));
        self.empty(self.call(Method::DELETE, &path)).await
    }

    /// `PUT` (`bind`) or `DELETE /v1/apps/{name}/bindings/{service}`.
    pub async fn bind_service(&self, app: &AppName, service: &str, bind: bool) -> Result<()> {
        let path = format!("/v1/apps/{app}/bindings/{}", segment(service));
        if bind {
            let req = self.call(Method::PUT, &path);
            let _: BindingResponse = self.json(req, "binding").await?;
            Ok(())
        } else {
            self.empty(self.call(Method::DELETE, &path)).await
        }
    }

    /// `DELETE /v1/apps/{name}/cache`: clears the app's buildpack cache.
    pub async fn clear_cache(&self, name: &AppName) -> Result<()> {
        self.empty(self.call(Method::DELETE, &format!("/v1/apps/{name}/cache")))
            .await
    }
}

/// App and service calls act in a space; the rest (orgs, buildpacks, the route table) do not.
fn in_space(path: &str) -> bool {
    path == "/v1/apps"
        || path.starts_with("/v1/apps/")
        || path == "/v1/route-mappings"
        || path == "/v1/service-instances"
        || path.starts_with("/v1/service-instances/")
        || path == "/v1/marketplace"
        || path == "/v1/space-service-brokers"
        || path.starts_with("/v1/space-service-brokers/")
}

/// True when a JWT's `exp` (read, not verified: the controller verifies) has passed. Anything
/// that is not a JWT with an `exp` is not expired.
fn jwt_expired(token: &str) -> bool {
    use base64::Engine as _;
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    let exp = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["exp"].as_i64());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    exp.is_some_and(|exp| now >= exp)
}

/// A path segment from a string the caller did not validate: everything but unreserved
/// characters percent-encoded, so a `/` or `..` cannot change the path.
fn segment(s: &str) -> String {
    let dots = s == "." || s == "..";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || (!dots && matches!(b, b'-' | b'_' | b'.' | b'~')) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_app_calls_name_the_space() {
        for p in [
            "/v1/apps",
            "/v1/apps/web",
            "/v1/apps/web/logs/stream",
            "/v1/route-mappings",
        ] {
            assert!(in_space(p), "{p}");
        }
        for p in [
            "/v1/orgs",
            "/v1/orgs/acme/spaces",
            "/v1/buildpacks",
            "/v1/routes",
            "/v1/info",
            "/v1/appsx",
        ] {
            assert!(!in_space(p), "{p}");
        }
    }

    #[test]
    fn segments_cannot_change_the_path() {
        assert_eq!(segment("my-bp_2.0~"), "my-bp_2.0~");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(segment(".."), "%2E%2E");
    }

    #[test]
    fn base_urls_are_checked_and_trimmed() {
        let c = Client::new("http://127.0.0.1:9000/", None).unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:9000");
        assert!(Client::new("https://pier.example.com", None).is_ok());
        for (bad, why) in [
            ("127.0.0.1:9000", None),
            ("ftp://x", Some(BaseUrlError::Scheme)),
            ("not a url", None),
        ] {
            match Client::new(bad, None) {
                Err(ClientError::BadUrl { reason, .. }) => {
                    if let Some(why) = why {
                        assert_eq!(reason, why, "{bad}");
                    }
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
