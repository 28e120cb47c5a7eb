//! The JSON API: thin axum handlers, the app's extractors, and the one place where errors
//! become HTTP responses.
//!
//! Handlers extract, call the service, and serialise. Every rejection, including a malformed
//! body, has the shape `{"error":{"code","message"}}`. Must not touch sled, opendp or ring.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::TokenRecord;
use crate::export::Lang;
use crate::policy::{Dimension, Label, Org};
use crate::service::{
    NewToken, NewTokenRequest, PageRequest, Principal, ReleaseFilter, ReleasePage, Service,
    ServiceError, TickAccepted, TickRequest,
};

/// Largest request body accepted, in bytes. A tick is about 300 bytes; 16 KiB leaves room for
/// any policy's tags and nothing for abuse.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// Longest a client may take to send a whole request body, from the first read to the last
/// byte: 10 s. A body is at most [`BODY_LIMIT_BYTES`], which a phone on a poor line sends in
/// well under a second; a client that dribbles it (slowloris on the body) is answered 408 and
/// its connection closed, instead of holding it for hours. It bounds only the reading of the
/// body, never the handler, so it cannot cut a tick between its write and its answer.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An error response: status, stable snake_case code, and a sentence for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// Seconds a client is asked to wait after a 503 before it tries again.
const RETRY_AFTER_SECONDS: &str = "30";

impl ApiError {
    /// An error with the given parts.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The HTTP status of this error (the admin page answers a refusal with the API's).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The generic 500 (the detail goes to the log, never to the client).
    pub fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on the server; nothing was changed, try again",
        )
    }

    /// The 404 for paths that do not exist.
    pub fn not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "there is nothing at this address",
        )
    }

    /// The 405 for a known path with the wrong method.
    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this address does not take that method",
        )
    }

    /// The 408 for a body not received within [`BODY_READ_TIMEOUT`].
    pub fn body_timeout() -> Self {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s; nothing was changed, send it again",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use ServiceError::*;
        let (status, code) = match &e {
            MissingToken => (StatusCode::UNAUTHORIZED, "missing_token"),
            InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            WrongRole { .. } => (StatusCode::FORBIDDEN, "wrong_role"),
            WrongOrg(_) => (StatusCode::FORBIDDEN, "wrong_org"),
            UnknownOrg(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_org"),
            UnknownUnit { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_unit"),
            Tag(crate::policy::TagError::UnknownDimension(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unknown_dimension")
            }
            Tag(crate::policy::TagError::UnknownValue { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unknown_value")
            }
            Tag(crate::policy::TagError::MissingDimension(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "missing_dimension")
            }
            InvalidCount { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_count"),
            InvalidPeriod(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_period"),
            PeriodNotOpen { .. } => (StatusCode::CONFLICT, "period_not_open"),
            OverCap { .. } => (StatusCode::TOO_MANY_REQUESTS, "tick_cap_exceeded"),
            InvalidField { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, *code),
            TokenNotFound(_) => (StatusCode::NOT_FOUND, "token_not_found"),
            InviteNotFound(_) => (StatusCode::NOT_FOUND, "invite_not_found"),
            InviteNotValid => (StatusCode::GONE, "invite_not_valid"),
            LastAdmin => (StatusCode::CONFLICT, "last_admin_token"),
            NotReleasable { .. } => (StatusCode::CONFLICT, "period_not_releasable"),
            BudgetExceeded { .. } => (StatusCode::CONFLICT, "budget_exceeded"),
            UnknownFilter { field: "org", .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_org"),
            UnknownFilter { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_marginal"),
            // The store logs a change of its write health once; nothing is logged per request
            // here, so no log line tells when a tick was attempted.
            NotStored {
                detail: crate::store::StoreError::Full { .. },
                ..
            }
            | Store(crate::store::StoreError::Full { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "storage_full")
            }
            NotStored { .. } | Store(crate::store::StoreError::WriteFailed(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable")
            }
            Store(_) | Auth(_) | Dp(_) | PolicyChange(_) | Regime(_) => {
                // The detail may name internals; it goes to the operator's log, not the client.
                tracing::error!(error = %e, "internal error");
                return ApiError::internal();
            }
        };
        let message = match &e {
            // The detail is the operating system's; the store logged it once.
            Store(crate::store::StoreError::WriteFailed(_)) => {
                "the server could not write to its storage, so the change may or may not have been made; check, and try again later".to_string()
            }
            _ => e.to_string(),
        };
        ApiError::new(status, code, message)
    }
}

/// The body of every error answer: `{"error":{"code","message"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The two parts of an error: a code for programs, a sentence for people.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, such as `missing_field` or `tick_cap_exceeded`; each operation
    /// lists the codes of each status it answers.
    #[schema(pattern = "^[a-z][a-z0-9_]*$", example = "missing_field")]
    pub code: String,
    /// A sentence for people; names the offending field where there is one.
    #[schema(example = "tags: missing field `kanal`")]
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        });
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            return (
                self.status,
                [(header::RETRY_AFTER, RETRY_AFTER_SECONDS)],
                body,
            )
                .into_response();
        }
        (self.status, body).into_response()
    }
}

/// A JSON body whose rejections are [`ApiError`]s that name the offending field.
pub struct AppJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        // The whole body within BODY_READ_TIMEOUT. The router's per-read timeout layer has the
        // same length and starts later, so for this extractor it never fires first.
        let read = tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(req, state)).await;
        let bytes = match read {
            Err(_elapsed) => return Err(ApiError::body_timeout()),
            Ok(Ok(bytes)) => bytes,
            Ok(Err(r)) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the body is larger than the {BODY_LIMIT_BYTES} bytes allowed"),
                ));
            }
            Ok(Err(_)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    "the request body could not be read",
                ));
            }
        };
        parse_json(&bytes).map(AppJson)
    }
}

/// Parses a JSON body, mapping errors to 400 (not JSON) or 422 (JSON of the wrong shape) with
/// the path of the offending field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let text = inner.to_string();
        // serde_json appends " at line L column C"; the field path says more to a person.
        let text = text.split(" at line ").next().unwrap_or(&text).to_string();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let code = if text.starts_with("unknown field") {
                    "unknown_field"
                } else if text.starts_with("duplicate") {
                    "duplicate_field"
                } else if text.starts_with("missing field") {
                    "missing_field"
                } else {
                    "invalid_type"
                };
                let message = if path == "." {
                    text
                } else {
                    format!("{path}: {text}")
                };
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {text}"),
            ),
        }
    })?;
    de.end().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body has text after the JSON value",
        )
    })?;
    Ok(value)
}

/// A query string whose rejections are [`ApiError`]s (422 `invalid_query`, naming the field).
pub struct AppQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        check_query_utf8(parts.uri.query().unwrap_or(""))?;
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| AppQuery(v))
            .map_err(|r| {
                let text = r.body_text();
                let text = text.trim_start_matches("Failed to deserialize query string: ");
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_query",
                    format!("query: {text}"),
                )
            })
    }
}

/// Refuses a query string with a name or value that is not UTF-8 once percent-decoded (400
/// `invalid_query`, naming the parameter). The form decoder would replace the bytes with U+FFFD
/// and the request would go on with a value the client never sent.
fn check_query_utf8(query: &str) -> Result<(), ApiError> {
    let utf8 = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .is_ok()
    };
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let message = if !utf8(name) {
            "query: a parameter name is not valid UTF-8 once percent-decoded".to_string()
        } else if !utf8(value) {
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            format!("query: `{name}` is not valid UTF-8 once percent-decoded")
        } else {
            continue;
        };
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            message,
        ));
    }
    Ok(())
}

/// Typed path parameters whose rejections are [`ApiError`]s: 400 `invalid_path` for a
/// parameter that is not UTF-8 once percent-decoded, 422 `invalid_path` for one of the wrong
/// type, each naming the parameter. Axum's own rejection is plain text.
pub struct AppPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for AppPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::path::ErrorKind;
        let e = match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => return Ok(AppPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => e,
            Err(e) => {
                // A route without the parameters its handler expects: a bug of ours.
                tracing::error!(error = %e, "path extraction failed");
                return Err(ApiError::internal());
            }
        };
        let (status, message) = match e.into_kind() {
            ErrorKind::InvalidUtf8InPathParam { key } => (
                StatusCode::BAD_REQUEST,
                format!("path: `{key}` is not valid UTF-8 once percent-decoded"),
            ),
            ErrorKind::ParseErrorAtKey {
                key, expected_type, ..
            } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("path: `{key}` must be a {expected_type}"),
            ),
            ErrorKind::DeserializeError { key, message, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("path: `{key}`: {message}"),
            ),
            ErrorKind::ParseError { expected_type, .. }
            | ErrorKind::ParseErrorAtIndex { expected_type, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("path: a parameter must be a {expected_type}"),
            ),
            other => {
                // Wrong number of parameters or an unsupported type: a bug of ours.
                tracing::error!(error = %other, "path extraction failed");
                return Err(ApiError::internal());
            }
        };
        Err(ApiError::new(status, "invalid_path", message))
    }
}

impl FromRequestParts<Service> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, svc: &Service) -> Result<Self, ApiError> {
        let token = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| ApiError::from(ServiceError::InvalidToken))?;
                match v.split_once(' ') {
                    Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => Some(t.trim()),
                    _ => {
                        return Err(ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            "invalid_token",
                            "the Authorization header must read `Bearer TOKEN`",
                        ));
                    }
                }
            }
        };
        if token.is_none() {
            // The tick page's offline queue calls the API with the session cookie and the
            // session's form token (src/web).
            if let Some(who) = crate::web::api_session(&parts.headers, svc)? {
                return Ok(who);
            }
        }
        Ok(svc.authenticate(token)?)
    }
}

/// Answer of `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(value_type = String, pattern = "^ok$")]
    pub status: &'static str,
}

/// `GET /healthz`: liveness (the process answers); says nothing of the store.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    operation_id = "healthz",
    security(()),
    responses((status = 200, description = "The process answers", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of this API (no token needed),
/// generated from the code (src/openapi.rs).
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    operation_id = "get_openapi",
    security(()),
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object)),
)]
pub async fn get_openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::json(),
    )
        .into_response()
}

/// Answer of `GET /readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(value_type = String, pattern = "^(ready|not_ready)$")]
    pub status: &'static str,
    /// Why not ready: `disk_full` or `write_failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^(disk_full|write_failed)$")]
    pub reason: Option<&'static str>,
    /// What the operator should do.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub message: Option<&'static str>,
}

/// `GET /readyz`: readiness: 503 while the store cannot write (a full disk, which heals by
/// itself when space returns, or a failed write, which needs a restart). Reads of releases
/// keep working meanwhile.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    operation_id = "readyz",
    security(()),
    responses(
        (status = 200, description = "The store can write: `status` is `ready`", body = Readiness),
        (status = 503, description = "The store cannot write: `reason` is `disk_full` or `write_failed`", body = Readiness),
    ),
)]

/// `GET /readyz`: readiness: 503 while the store cannot write (a full disk, which heals by
/// itself when space returns, or a failed write, which needs a restart). Reads of releases
/// keep working meanwhile.
pub async fn readyz(State(svc): State<Service>) -> Response {
    use crate::store::Writable;
    match svc.store().writable() {
        Writable::Yes => Json(Readiness {
            status: "ready",
            reason: None,
            message: None,
        })
        .into_response(),
        Writable::DiskFull => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: "not_ready",
                reason: Some("disk_full"),
                message: Some(
                    "the disk holding the data directory is full; writes resume by themselves when space returns",
                ),
            }),
        )
            .into_response(),
        Writable::Failed(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: "not_ready",
                reason: Some("write_failed"),
                message: Some(
                    "a write to the data directory failed; restart the service (the log says why)",
                ),
            }),
        )
            .into_response(),
    }
}

/// Query of `GET /api/v1/policy`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LangQuery {
    /// Language of the `label` fields: `nb` (default) or `en`.
    #[serde(default)]
    #[param(pattern = "^(nb|en)$")]
    lang: Option<String>,
}

/// Answer of `GET /api/v1/policy`: what a tick must carry, and the organisations' units.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// The policy's name.
    pub name: String,
    /// Length of a base period: `week`, `month`, `quarter` or `year`.
    pub period: String,
    /// Days after a period's end during which it still accepts ticks.
    pub grace_days: u32,
    /// Caps on ticks.
    pub ticks: TickCaps,
    /// `contact` or `supporter`.
    pub privacy_unit: String,
    /// `discrete_laplace` or `discrete_gaussian`.
    pub mechanism: String,
    /// Organisations and their units.
    pub orgs: Vec<OrgView>,
    /// Tag dimensions: a tick gives one value of each.
    pub dimensions: Vec<DimensionView>,
}

/// The caps on ticks of a policy.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TickCaps {
    /// Most contacts one request may log (`count`).
    pub max_count_per_request: u32,
    /// Most contacts one supporter may log in a base period.
    pub max_per_supporter_per_period: u32,
}

/// An organisation as `GET /api/v1/policy` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrgView {
    /// Stable id.
    pub id: String,
    /// What people see.
    pub name: String,
    /// `spesialist`, `kommunal` or `privat`, if the policy says.
    pub service_level: Option<String>,
    /// Employees of all units together (from HR, not from the data).
    pub headcount: u32,
    /// Units, in display order.
    pub units: Vec<crate::policy::Unit>,
}

/// A tag dimension, with its label in the asked language and in both.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DimensionView {
    /// Stable id: the key in a tick's `tags`.
    pub id: String,
    /// Label in the asked language.
    pub label: String,
    /// Label in both languages.
    pub labels: Label,
    /// Allowed values, in display order.
    pub values: Vec<ValueView>,
    /// Rollup groups; empty if the dimension has none.
    pub groups: Vec<GroupView>,
}

/// One allowed value of a dimension.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ValueView {
    /// Stable id: the value in a tick's `tags`.
    pub id: String,
    /// Label in the asked language.
    pub label: String,
    /// Label in both languages.
    pub labels: Label,
    /// Id of the group the value rolls up to for small units, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Whether its cells get more noise.
    pub sensitive: bool,
}

/// A rollup group of a dimension.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupView {
    /// Stable id.
    pub id: String,
    /// Label in the asked language.
    pub label: String,
    /// Label in both languages.
    pub labels: Label,
}

fn pick(label: &Label, en: bool) -> String {
    if en {
        label.en.clone()
    } else {
        label.nb.clone()
    }
}

fn dimension_view(d: &Dimension, en: bool) -> DimensionView {
    DimensionView {
        id: d.id.clone(),
        label: pick(&d.label, en),
        labels: d.label.clone(),
        values: d
            .values
            .iter()
            .map(|v| ValueView {
                id: v.id.clone(),
                label: pick(&v.label, en),
                labels: v.label.clone(),
                group: v.group.clone(),
                sensitive: v.sensitive,
            })
            .collect(),
        groups: d
            .groups
            .iter()
            .map(|g| GroupView {
                id: g.id.clone(),
                label: pick(&g.label, en),
                labels: g.label.clone(),
            })
            .collect(),
    }
}

fn org_view(o: &Org) -> OrgView {
    OrgView {
        id: o.id.clone(),
        name: o.name.clone(),
        service_level: o.service_level.clone(),
        headcount: o.headcount(),
        units: o.units.clone(),
    }
}

/// `GET /api/v1/policy`: the taxonomy, organisations and caps (any role).
#[utoipa::path(
    get,
    path = "/api/v1/policy",
    tag = "policy",
    operation_id = "get_policy",
    params(LangQuery),
    responses(
        (status = 200, description = "The current period's policy", body = PolicyView),
        (status = 400, description = "`invalid_query`: a parameter is not UTF-8", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`", body = ErrorBody),
        (status = 422, description = "`invalid_query` (unknown parameter), `invalid_lang`, `csrf_token_invalid`", body = ErrorBody),
    ),
)]
pub async fn get_policy(
    State(svc): State<Service>,
    _who: Principal,
    AppQuery(q): AppQuery<LangQuery>,
) -> Result<Json<PolicyView>, ApiError> {
    let en = match q.lang.as_deref() {
        None | Some("nb") => false,
        Some("en") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_lang",
                format!("lang: `{other}` is not a language here; use nb or en"),
            ));
        }
    };
    // The taxonomy a tick must use now: the current period's policy.
    let p = svc.current_policy();
    Ok(Json(PolicyView {
        name: p.name.clone(),
        period: p.granularity.as_str().to_string(),
        grace_days: p.grace_days,
        ticks: TickCaps {
            max_count_per_request: p.max_count_per_request,
            max_per_supporter_per_period: p.max_ticks_per_supporter_period,
        },
        privacy_unit: p.privacy.unit.as_str().to_string(),
        mechanism: p.privacy.mechanism.as_str().to_string(),
        orgs: p.orgs.iter().map(org_view).collect(),
        dimensions: p.dimensions.iter().map(|d| dimension_view(d, en)).collect(),
    }))
}

/// `POST /api/v1/ticks`: a supporter logs contacts. Answers 201 only once the tick is on disk.
/// With an `Idempotency-Key` header, a resend of the same contact is counted once and answered
/// as the first time (with `Idempotent-Replayed: true`).
#[utoipa::path(
    post,
    path = "/api/v1/ticks",
    tag = "ticks",
    operation_id = "post_tick",
    request_body = TickRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters, such as a UUID: a resend with the same key is counted once and answered as the first time"),
    ),
    responses(
        (status = 201, description = "On disk and counted once", body = TickAccepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answers a resend of a request already counted, else `false`"))),
        (status = 400, description = "`malformed_json`, `unreadable_body`: the body is not JSON", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: send `Content-Type: application/json`", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role` (not a supporter), `wrong_org`", body = ErrorBody),
        (status = 409, description = "`period_not_open`: the period no longer (or not yet) accepts ticks", body = ErrorBody),
        (status = 422, description = "`missing_field`, `unknown_field`, `duplicate_field`, `invalid_type`, `unknown_org`, `unknown_unit`, `unknown_dimension`, `unknown_value`, `missing_dimension`, `invalid_count`, `invalid_period`, `invalid_idempotency_key`, `csrf_token_invalid`: nothing was stored", body = ErrorBody),
        (status = 429, description = "`tick_cap_exceeded`: the supporter's cap for the period is reached", body = ErrorBody),
        (status = 503, description = "`storage_full`, `storage_unavailable`: not stored; try again later", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
)]
pub async fn post_tick(
    State(svc): State<Service>,
    who: Principal,
    headers: axum::http::HeaderMap,
    AppJson(req): AppJson<TickRequest>,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_idempotency_key",
                "Idempotency-Key: the header must be 1 to 255 visible ASCII characters, such as a UUID",
            )
        })?),
    };
    let accepted = svc.log_tick_once(&who, req, key).await?;
    let replayed = if accepted.replayed { "true" } else { "false" };
    Ok((
        StatusCode::CREATED,
        [(
            header::HeaderName::from_static("idempotent-replayed"),
            replayed,
        )],
        Json(accepted),
    )
        .into_response())
}

/// `POST /api/v1/tokens`: create a token (shown once).
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    operation_id = "post_token",
    request_body = NewTokenRequest,
    responses(
        (status = 201, description = "The token, shown only in this answer", body = NewToken),
        (status = 400, description = "`malformed_json`, `unreadable_body`: the body is not JSON", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: send `Content-Type: application/json`", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`, `wrong_org`", body = ErrorBody),
        (status = 422, description = "`missing_field`, `unknown_field`, `duplicate_field`, `invalid_type`, `invalid_role`, `missing_org`, `unexpected_org`, `unknown_org`, `csrf_token_invalid`", body = ErrorBody),
        (status = 503, description = "`storage_full`, `storage_unavailable`: not stored", body = ErrorBody),
    ),
)]
pub async fn post_token(
    State(svc): State<Service>,
    who: Principal,
    AppJson(req): AppJson<NewTokenRequest>,
) -> Result<Response, ApiError> {
    // Creating a token syncs the store to disk: off the async threads.
    let by = (who.token_id.clone(), who.role.as_str());
    let created = tokio::task::spawn_blocking(move || svc.create_token(&who, req))
        .await
        .map_err(|_| ApiError::internal())??;
    // Normen: who changed access, and how (never the token itself).
    tracing::info!(by = %by.0, by_role = by.1, id = %created.id, role = created.role.as_str(), org = ?created.org, "token created");
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Answer of `GET /api/v1/tokens`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenList {
    /// The tokens, never their secrets.
    pub tokens: Vec<TokenRecord>,
}

/// `GET /api/v1/tokens`: the tokens the caller may manage, without their secrets.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    operation_id = "get_tokens",
    responses(
        (status = 200, description = "The tokens the caller may manage", body = TokenList),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`", body = ErrorBody),
        (status = 422, description = "`csrf_token_invalid`", body = ErrorBody),
    ),
)]
pub async fn get_tokens(
    State(svc): State<Service>,
    who: Principal,
) -> Result<Json<TokenList>, ApiError> {
    let tokens: Vec<TokenRecord> = svc.list_tokens(&who)?;
    Ok(Json(TokenList { tokens }))
}

/// `DELETE /api/v1/tokens/{id}`: revoke a token.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    operation_id = "delete_token",
    params(("id" = String, Path, description = "The token's public id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "`invalid_path`: the id is not UTF-8", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`, `wrong_org`", body = ErrorBody),
        (status = 404, description = "`token_not_found`", body = ErrorBody),
        (status = 409, description = "`last_admin_token`: the last admin token cannot be revoked", body = ErrorBody),
        (status = 422, description = "`csrf_token_invalid`", body = ErrorBody),
        (status = 503, description = "`storage_full`, `storage_unavailable`: not changed", body = ErrorBody),
    ),
)]
pub async fn delete_token(
    State(svc): State<Service>,
    who: Principal,
    AppPath(id): AppPath<String>,
) -> Result<StatusCode, ApiError> {
    let (by, by_role, revoked) = (who.token_id.clone(), who.role.as_str(), id.clone());
    tokio::task::spawn_blocking(move || svc.revoke_token(&who, &id))
        .await
        .map_err(|_| ApiError::internal())??;
    tracing::info!(by = %by, by_role, id = %revoked, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Answer of `GET /api/v1/periods`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PeriodList {
    /// Every base period since the first, oldest first.
    pub periods: Vec<crate::service::PeriodInfo>,
}

/// `GET /api/v1/periods`: periods and their states.
#[utoipa::path(
    get,
    path = "/api/v1/periods",
    tag = "periods",
    operation_id = "get_periods",
    responses(
        (status = 200, description = "Periods and their states", body = PeriodList),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`", body = ErrorBody),
        (status = 422, description = "`csrf_token_invalid`", body = ErrorBody),
    ),
)]
pub async fn get_periods(
    State(svc): State<Service>,
    who: Principal,
) -> Result<Json<PeriodList>, ApiError> {
    Ok(Json(PeriodList {
        periods: svc.periods(&who)?,
    }))
}

/// Answer of `POST /api/v1/periods/{period}/release`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Released {
    /// The period, as given.
    pub period: String,
    /// Its state now.
    pub state: crate::domain::PeriodState,
    /// Ids of the releases that end with it (drawn now or before).
    pub releases: Vec<String>,
}

/// `POST /api/v1/periods/{period}/release`: release a closed period now (admin; idempotent).
#[utoipa::path(
    post,
    path = "/api/v1/periods/{period}/release",
    tag = "periods",
    operation_id = "post_release",
    params(("period" = String, Path, description = "A closed base period, such as `2026-10`")),
    responses(
        (status = 200, description = "Released (now or before): the releases are on disk", body = Released),
        (status = 400, description = "`invalid_path`: the period is not UTF-8", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`", body = ErrorBody),
        (status = 409, description = "`period_not_releasable` (still open), `budget_exceeded`", body = ErrorBody),
        (status = 422, description = "`invalid_period`, `csrf_token_invalid`", body = ErrorBody),
        (status = 503, description = "`storage_full`, `storage_unavailable`: nothing released", body = ErrorBody),
    ),
)]
pub async fn post_release(
    State(svc): State<Service>,
    who: Principal,
    AppPath(period): AppPath<String>,
) -> Result<Json<Released>, ApiError> {
    let (state, releases) = svc.release_period(&who, &period).await?;
    Ok(Json(Released {
        period,
        state,
        releases: releases.into_iter().map(|r| r.id).collect(),
    }))
}

/// Query of `GET /api/v1/releases` and `GET /api/v1/releases.sig`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReleaseQuery {
    /// Releases of this period only.
    #[serde(default)]
    period: Option<String>,
    /// Releases of this organisation only.
    #[serde(default)]
    org: Option<String>,
    /// Releases of this marginal only (`total`, or a marginal id of the policy).
    #[serde(default)]
    marginal: Option<String>,
    /// First period of a range (included): `from=2025-01&to=2025-12` gives 2025's months,
    /// quarters and the year.
    #[serde(default)]
    from: Option<String>,
    /// Last period of a range (included).
    #[serde(default)]
    to: Option<String>,
    /// Releases per page (default 100, at most 1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// The `next` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
    /// `json` (default) or `csv`.
    #[serde(default)]
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
    /// Labels in the CSV: `nb` (default) or `en`.
    #[serde(default)]
    #[param(pattern = "^(nb|en)$")]
    lang: Option<String>,
}

/// A listing request, checked: CSV or not, the labels' language, the filter and the page.
struct ListingRequest {
    csv: bool,
    lang: Lang,
    filter: ReleaseFilter,
    page: PageRequest,
}

impl ReleaseQuery {
    fn checked(self) -> Result<ListingRequest, ApiError> {
        let csv = match self.format.as_deref() {
            None | Some("json") => false,
            Some("csv") => true,
            Some(other) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_format",
                    format!("format: `{other}` is not a format here; use json or csv"),
                ));
            }
        };
        let lang = match self.lang.as_deref() {
            None => Lang::Nb,
            Some(l) => l.parse().map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_lang",
                    format!("lang: {e}"),
                )
            })?,
        };
        Ok(ListingRequest {
            csv,
            lang,
            filter: ReleaseFilter {
                period: self.period,
                org: self.org,
                marginal: self.marginal,
                from: self.from,
                to: self.to,
            },
            page: PageRequest {
                limit: self.limit,
                cursor: self.cursor,
            },
        })
    }
}

impl ListingRequest {
    /// The address of the next page: this query with `cursor` set to `next`. Every value in it
    /// has passed validation (policy ids, periods, a base64url cursor), so none needs escaping.
    fn next_url(&self, next: &str) -> String {
        let f = &self.filter;
        let mut q: Vec<String> = [
            ("period", f.period.clone()),
            ("org", f.org.clone()),
            ("marginal", f.marginal.clone()),
            ("from", f.from.clone()),
            ("to", f.to.clone()),
            ("limit", self.page.limit.map(|l| l.to_string())),
            ("format", self.csv.then(|| "csv".to_string())),
            ("lang", (self.lang == Lang::En).then(|| "en".to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect();
        q.push(format!("cursor={next}"));
        format!("/api/v1/releases?{}", q.join("&"))
    }
}

/// Finds one page of the caller's releases, off the async threads (index keys only).
async fn find_page(
    svc: &Service,
    who: &Principal,
    req: &ListingRequest,
) -> Result<ReleasePage, ApiError> {
    let (svc, who) = (svc.clone(), who.clone());
    let (filter, page) = (req.filter.clone(), req.page.clone());
    let found = tokio::task::spawn_blocking(move || svc.release_page(&who, &filter, &page))
        .await
        .map_err(|_| ApiError::internal())??;
    Ok(found)
}

/// Renders and signs a CSV page on the export threads.
async fn csv_of(
    svc: &Service,
    page: ReleasePage,
    lang: Lang,
) -> Result<(Vec<u8>, String), ApiError> {
    Ok(svc.export(move |svc| svc.csv_page(&page, lang)).await?)
}

/// The rate at which all exports together are sent, in bytes per second (8 MB/s: the national
/// listing, about 4 MB of JSON, in half a second). Sending bytes costs CPU on the threads that
/// also answer ticks (and on loopback the receiver's too); without a ceiling, readers who
/// download in a loop take as much of it as they can. A second's worth may go at once, so
/// single releases, a year or a first page are never slowed.
const EXPORT_BYTES_PER_SECOND: f64 = 8.0 * 1024.0 * 1024.0;

/// Size of the chunks a CSV export is sent in (the JSON stream's are about the same).
const EXPORT_CHUNK_BYTES: usize = 64 * 1024;

/// Waits until `bytes` more of export may be sent under [`EXPORT_BYTES_PER_SECOND`], shared by
/// every export: a virtual clock that each chunk advances by its sending time, with up to
/// one second of credit.
async fn pace_export(bytes: usize) {
    use std::sync::Mutex;
    use tokio::time::{Duration, Instant};
    static NEXT: Mutex<Option<Instant>> = Mutex::new(None);
    let at = {
        let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let credit = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        let at = next.filter(|n| *n > credit).unwrap_or(credit);
        *next = Some(at + Duration::from_secs_f64(bytes as f64 / EXPORT_BYTES_PER_SECOND));
        at
    };
    tokio::time::sleep_until(at).await;
}

/// One page of `GET /api/v1/releases` in JSON. The service writes it as a stream
/// ([`Service::write_json_page`]); this type is its shape for the OpenAPI document, and
/// tests/it/openapi.rs checks live pages against it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReleasesPage {
    /// The releases, in the canonical JSON that the signature covers.
    pub releases: Vec<crate::domain::Release>,
    /// The cursor of the next page, or null on the last.
    pub next: Option<String>,
    /// The Ed25519 signature of the `releases` value.
    pub signature: ExportSignature,
}

/// The signature at the end of a JSON export.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExportSignature {
    /// `Ed25519`.
    pub algorithm: String,
    /// The public key (base64url, no padding), as `GET /api/v1/signing-key` gives it.
    pub public_key: String,
    /// What is signed: the canonical JSON of the `releases` value.
    pub signed: String,
    /// The signature (base64url, no padding).
    pub value: String,
}

/// `GET /api/v1/releases`: one page of the signed releases in the caller's scope, as JSON
/// (streamed as it is decoded, signature at the end) or CSV (signature in a header, and from
/// `GET /api/v1/releases.sig`). The next page's cursor is `next` in the JSON, and the
/// `x-tellestrek-next` and `Link` headers of both forms.
#[utoipa::path(
    get,
    path = "/api/v1/releases",
    tag = "releases",
    operation_id = "get_releases",
    params(ReleaseQuery),
    responses(
        (status = 200, description = "One page of releases: JSON with its signature at the end, or CSV (`format=csv`) with its signature in `x-tellestrek-signature`",
            content(
                (ReleasesPage = "application/json"),
                (String = "text/csv"),
            ),
            headers(
                ("x-tellestrek-next" = String, description = "Cursor of the next page, if there is one"),
                ("Link" = String, description = "`<URL>; rel=\"next\"` of the next page, if there is one"),
                ("x-tellestrek-signature" = String, description = "CSV only: the detached Ed25519 signature (base64url)"),
                ("x-tellestrek-public-key" = String, description = "CSV only: the public key"),
            )),
        (status = 400, description = "`invalid_query`: a parameter is not UTF-8", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`, `wrong_org`", body = ErrorBody),
        (status = 422, description = "`invalid_query` (unknown parameter or wrong type), `invalid_format`, `invalid_lang`, `invalid_period`, `invalid_limit`, `invalid_cursor`, `conflicting_filters`, `unknown_org`, `unknown_marginal`, `csrf_token_invalid`", body = ErrorBody),
    ),
)]
pub async fn get_releases(
    State(svc): State<Service>,
    who: Principal,
    AppQuery(q): AppQuery<ReleaseQuery>,
) -> Result<Response, ApiError> {
    let req = q.checked()?;
    let page = find_page(&svc, &who, &req).await?;
    // Normen: who read or exported what (never ticks, never counts).
    tracing::info!(token = %who.token_id, role = who.role.as_str(), period = ?req.filter.period, org = ?req.filter.org, marginal = ?req.filter.marginal, from = ?req.filter.from, to = ?req.filter.to, csv = req.csv, releases = page.ids.len(), "releases read");
    let mut headers = axum::http::HeaderMap::new();
    if let Some(next) = &page.next {
        // Cursors and the URL built from validated values are ASCII: the parses cannot fail.
        if let (Ok(cursor), Ok(link)) = (
            header::HeaderValue::from_str(next),
            header::HeaderValue::from_str(&format!("<{}>; rel=\"next\"", req.next_url(next))),
        ) {
            headers.insert(header::HeaderName::from_static("x-tellestrek-next"), cursor);
            headers.insert(header::LINK, link);
        }
    }
    if req.csv {
        let (body, sig) = csv_of(&svc, page, req.lang).await?;
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        headers.insert(
            header::CONTENT_DISPOSITION,
            header::HeaderValue::from_static("attachment; filename=\"tellestrek-releases.csv\""),
        );
        for (name, value) in [
            ("x-tellestrek-signature", sig),
            ("x-tellestrek-public-key", svc.public_key()),
        ] {
            if let Ok(v) = header::HeaderValue::from_str(&value) {
                headers.insert(header::HeaderName::from_static(name), v);
            }
        }
        // Paced like the JSON stream, in chunks.
        let body = Bytes::from(body);
        let chunks: Vec<Bytes> = (0..body.len())
            .step_by(EXPORT_CHUNK_BYTES)
            .map(|at| body.slice(at..body.len().min(at + EXPORT_CHUNK_BYTES)))
            .collect();
        let stream = futures_util::stream::unfold(chunks.into_iter(), |mut chunks| async move {
            let chunk = chunks.next()?;
            pace_export(chunk.len()).await;
            Some((Ok::<_, std::io::Error>(chunk), chunks))
        });
        return Ok((headers, axum::body::Body::from_stream(stream)).into_response());
    }
    // Unbounded, so the export thread never waits for a slow reader: what it can hold is one
    // page (the page size bounds it), which the signature needs in memory anyway.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
    svc.spawn_export(move |svc| {
        let sent = svc.write_json_page(&page, |chunk| tx.send(Ok(Bytes::from(chunk))).is_ok());
        if let Err(e) = sent {
            tracing::error!(error = %e, "json export failed midway");
            // The reader sees a cut connection, not a document that verifies.
            let _ = tx.send(Err(std::io::Error::other("export failed")));
        }
    })?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        if let Ok(bytes) = &chunk {
            pace_export(bytes.len()).await;
        }
        Some((chunk, rx))
    });
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok((headers, axum::body::Body::from_stream(stream)).into_response())
}

/// `GET /api/v1/releases.sig`: the detached Ed25519 signature (base64url, one line) of the
/// CSV that `GET /api/v1/releases?format=csv` serves for the same query, to save beside it
/// and check with `tellestrek verify FILE.csv --signature FILE.csv.sig --public-key KEY`.
#[utoipa::path(
    get,
    path = "/api/v1/releases.sig",
    tag = "releases",
    operation_id = "get_releases_sig",
    params(ReleaseQuery),
    responses(
        (status = 200, description = "The detached signature of the CSV for the same query, one line", content((String = "text/plain")),
            headers(("x-tellestrek-public-key" = String, description = "The public key"))),
        (status = 400, description = "`invalid_query`: a parameter is not UTF-8", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`, `wrong_org`", body = ErrorBody),
        (status = 422, description = "`invalid_query` (unknown parameter or wrong type), `invalid_format`, `invalid_lang`, `invalid_period`, `invalid_limit`, `invalid_cursor`, `conflicting_filters`, `unknown_org`, `unknown_marginal`, `csrf_token_invalid`", body = ErrorBody),
    ),
)]
pub async fn get_releases_sig(
    State(svc): State<Service>,
    who: Principal,
    AppQuery(q): AppQuery<ReleaseQuery>,
) -> Result<Response, ApiError> {
    if q.format.as_deref() == Some("json") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_format",
            "format: the detached signature is of the CSV form; a JSON export carries its own signature",
        ));
    }
    let mut req = q.checked()?;
    req.csv = true;
    let page = find_page(&svc, &who, &req).await?;
    let (_, sig) = csv_of(&svc, page, req.lang).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"tellestrek-releases.csv.sig\"".to_string(),
            ),
            (
                header::HeaderName::from_static("x-tellestrek-public-key"),
                svc.public_key(),
            ),
        ],
        format!("{sig}\n"),
    )
        .into_response())
}

/// The query of a route that takes no parameter: any one given is refused (422).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// `GET /api/v1/budget`: the privacy ledger in the caller's scope.
#[utoipa::path(
    get,
    path = "/api/v1/budget",
    tag = "releases",
    operation_id = "get_budget",
    responses(
        (status = 200, description = "The privacy ledger and what each organisation has spent and has left", body = crate::service::Budget),
        (status = 400, description = "`invalid_query`: the query is not UTF-8", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`", body = ErrorBody),
        (status = 422, description = "`invalid_query` (this route takes no parameter), `csrf_token_invalid`", body = ErrorBody),
    ),
)]
pub async fn get_budget(
    State(svc): State<Service>,
    who: Principal,
    // No parameter: one given is refused like on every other route, not ignored.
    AppQuery(NoQuery {}): AppQuery<NoQuery>,
) -> Result<Json<crate::service::Budget>, ApiError> {
    let budget = svc.budget_typed(&who)?;
    tracing::info!(token = %who.token_id, role = who.role.as_str(), "ledger read");
    Ok(Json(budget))
}

/// Answer of `GET /api/v1/signing-key`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SigningKey {
    /// `Ed25519`.
    #[schema(value_type = String)]
    pub algorithm: &'static str,
    /// The public key.
    pub public_key: String,
    /// How `public_key` is written: `base64url, no padding`.
    #[schema(value_type = String)]
    pub encoding: &'static str,
}

/// `GET /api/v1/signing-key`: the public key exports are signed with (no token needed).
#[utoipa::path(
    get,
    path = "/api/v1/signing-key",
    tag = "releases",
    operation_id = "get_signing_key",
    security(()),
    responses((status = 200, description = "The public half of the release-signing key", body = SigningKey)),
)]
pub async fn get_signing_key(State(svc): State<Service>) -> Json<SigningKey> {
    Json(SigningKey {
        algorithm: "Ed25519",
        public_key: svc.public_key(),
        encoding: "base64url, no padding",
    })
}

/// Query of `GET /api/v1/dashboard`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DashboardQuery {
    /// Organisation id (a leader's or coordinator's own if left out).
    #[serde(default)]
    org: Option<String>,
    /// Calendar year (the latest with releases if left out).
    #[serde(default)]
    year: Option<String>,
}

/// `GET /api/v1/dashboard`: uptake, trend, breakdowns, outreach, hours and alerts of one
/// organisation and year, from its releases (the numbers the dashboard page shows).
#[utoipa::path(
    get,
    path = "/api/v1/dashboard",
    tag = "releases",
    operation_id = "get_dashboard",
    params(DashboardQuery),
    responses(
        (status = 200, description = "The dashboard's numbers, from releases only", body = crate::service::Dashboard),
        (status = 400, description = "`invalid_query`: a parameter is not UTF-8", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`, `wrong_org`", body = ErrorBody),
        (status = 422, description = "`invalid_query` (unknown parameter), `invalid_year`, `unknown_org`, `missing_org` (an admin or researcher must name `org`), `csrf_token_invalid`", body = ErrorBody),
    ),
)]
pub async fn get_dashboard(
    State(svc): State<Service>,
    who: Principal,
    AppQuery(q): AppQuery<DashboardQuery>,
) -> Result<Json<crate::service::Dashboard>, ApiError> {
    let year = match q.year.as_deref() {
        None => None,
        Some(y) => Some(y.parse::<i32>().map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_year",
                format!("year: `{y}` is not a year; use four digits such as 2026"),
            )
        })?),
    };
    let d = svc.dashboard(&who, q.org.as_deref(), year)?;
    // Normen: who read what (never counts).
    tracing::info!(token = %who.token_id, role = who.role.as_str(), org = %d.org, year = d.year, "dashboard read");
    Ok(Json(d))
}

/// Body of `POST /api/v1/admin/backup`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// The directory to write the backup into, on the server's machine: an absolute path,
    /// new or empty. The server writes it as its own user (0700, files 0600).
    pub to: String,
    /// Copy the raw data of unpurged periods too (default false; see `docs/backup.md`).
    #[serde(default)]
    pub include_raw: bool,
}

/// Answer of `POST /api/v1/admin/backup`: where and what, never a count.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackupWritten {
    /// The directory written, as given.
    pub to: String,
    /// Layout version of the backup.
    pub format: u32,
    /// Whether the raw data of unpurged periods is in it.
    pub raw_included: bool,
    /// Periods that had raw data when the copy was taken (copied only if `raw_included`).
    pub raw_periods: Vec<String>,
    /// Where the server key is: in the backup, or outside the data directory.
    pub server_key: String,
    /// How many files the backup holds (with `manifest.json`'s checksums).
    pub files: usize,
}

/// `POST /api/v1/admin/backup` (admin): the running server writes a consistent copy of its
/// data directory into `to` on its own machine (sled's lock keeps every other process out of
/// the store). The answer says where and what, never a count; nothing of the copy is sent back.
#[utoipa::path(
    post,
    path = "/api/v1/admin/backup",
    tag = "backup",
    operation_id = "post_backup",
    request_body = BackupRequest,
    responses(
        (status = 201, description = "The backup is written and its manifest checked", body = BackupWritten),
        (status = 400, description = "`malformed_json`, `unreadable_body`: the body is not JSON", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: send `Content-Type: application/json`", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`: only an admin may take a backup", body = ErrorBody),
        (status = 422, description = "`invalid_backup_target` (relative, not empty, or inside the data directory), `backup_failed`, `missing_field`, `unknown_field`, `duplicate_field`, `invalid_type`, `csrf_token_invalid`", body = ErrorBody),
        (status = 503, description = "`storage_full`, `storage_unavailable`: no backup written", body = ErrorBody),
    ),
)]
pub async fn post_backup(
    State(svc): State<Service>,
    who: Principal,
    AppJson(req): AppJson<BackupRequest>,
) -> Result<Response, ApiError> {
    crate::service::require(&who, &[crate::domain::Role::Admin], "admin")?;
    let to = std::path::PathBuf::from(&req.to);
    let opts = crate::backup::Options {
        include_raw: req.include_raw,
        key_file: None,
        online: true,
    };
    let store = svc.store().clone();
    let target = to.clone();
    let taken = tokio::task::spawn_blocking(move || crate::backup::take(&store, &target, &opts))
        .await
        .map_err(|_| ApiError::internal())?;
    let manifest = match taken {
        Ok(m) => m,
        Err(
            e @ (crate::backup::BackupError::RelativeTarget(_)
            | crate::backup::BackupError::TargetNotEmpty(_)
            | crate::backup::BackupError::InsideData(_)),
        ) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_backup_target",
                format!("to: {e}"),
            ));
        }
        Err(crate::backup::BackupError::Store(e)) => return Err(ServiceError::from(e).into()),
        Err(e) => {
            // Not the path (an admin typed it): only what went wrong.
            tracing::error!(error = %e.log_detail(), "backup failed");
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "backup_failed",
                format!("to: the backup could not be written there: {e}"),
            ));
        }
    };
    // Normen: who copied the data, and whether raw data left the purge schedule.
    // (Not the path: it was typed by a person.)
    tracing::info!(by = %who.token_id, raw_included = req.include_raw, "backup written");
    if req.include_raw {
        tracing::warn!("{}", crate::backup::raw_warning(&manifest.raw_periods));
    }
    Ok((
        StatusCode::CREATED,
        Json(BackupWritten {
            to: to.display().to_string(),
            format: manifest.format,
            raw_included: manifest.raw_included,
            raw_periods: manifest.raw_periods,
            server_key: manifest.server_key,
            files: manifest.files.len(),
        }),
    )
        .into_response())
}
