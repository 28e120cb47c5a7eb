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
use serde_json::json;

use crate::domain::{Release, TokenRecord};
use crate::policy::{Dimension, Label, Org};
use crate::service::{
    NewTokenRequest, Principal, ReleaseFilter, Service, ServiceError, TickRequest,
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
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
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
        Ok(svc.authenticate(token)?)
    }
}

/// `GET /healthz`: liveness (the process answers); says nothing of the store.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: readiness: 503 while the store cannot write (a full disk, which heals by
/// itself when space returns, or a failed write, which needs a restart). Reads of releases
/// keep working meanwhile.
pub async fn readyz(State(svc): State<Service>) -> Response {
    use crate::store::Writable;
    match svc.store().writable() {
        Writable::Yes => Json(json!({"status": "ready"})).into_response(),
        Writable::DiskFull => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "disk_full", "message": "the disk holding the data directory is full; writes resume by themselves when space returns"})),
        )
            .into_response(),
        Writable::Failed(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "write_failed", "message": "a write to the data directory failed; restart the service (the log says why)"})),
        )
            .into_response(),
    }
}

/// Query of `GET /api/v1/policy`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LangQuery {
    /// `nb` (default) or `en`.
    #[serde(default)]
    lang: Option<String>,
}

#[derive(Serialize)]
struct LabelledValue<'a> {
    id: &'a str,
    label: &'a str,
    labels: &'a Label,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    sensitive: bool,
}

fn pick(label: &Label, en: bool) -> &str {
    if en { &label.en } else { &label.nb }
}

fn dimension_json(d: &Dimension, en: bool) -> serde_json::Value {
    let values: Vec<_> = d
        .values
        .iter()
        .map(|v| LabelledValue {
            id: &v.id,
            label: pick(&v.label, en),
            labels: &v.label,
            group: v.group.as_deref(),
            sensitive: v.sensitive,
        })
        .collect();
    let groups: Vec<_> = d
        .groups
        .iter()
        .map(|g| json!({"id": g.id, "label": pick(&g.label, en), "labels": g.label}))
        .collect();
    json!({"id": d.id, "label": pick(&d.label, en), "labels": d.label, "values": values, "groups": groups})
}

fn org_json(o: &Org) -> serde_json::Value {
    json!({"id": o.id, "name": o.name, "service_level": o.service_level, "headcount": o.headcount(), "units": o.units})
}

/// `GET /api/v1/policy`: the taxonomy, organisations and caps (any role).
pub async fn get_policy(
    State(svc): State<Service>,
    _who: Principal,
    AppQuery(q): AppQuery<LangQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(json!({
        "name": p.name,
        "period": p.granularity.as_str(),
        "grace_days": p.grace_days,
        "ticks": {
            "max_count_per_request": p.max_count_per_request,
            "max_per_supporter_per_period": p.max_ticks_per_supporter_period,
        },
        "privacy_unit": p.privacy.unit.as_str(),
        "mechanism": p.privacy.mechanism.as_str(),
        "orgs": p.orgs.iter().map(org_json).collect::<Vec<_>>(),
        "dimensions": p.dimensions.iter().map(|d| dimension_json(d, en)).collect::<Vec<_>>(),
    })))
}

/// `POST /api/v1/ticks`: a supporter logs contacts. Answers 201 only once the tick is on disk.
/// With an `Idempotency-Key` header, a resend of the same contact is counted once and answered
/// as the first time (with `Idempotent-Replayed: true`).
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
pub async fn post_token(
    State(svc): State<Service>,
    who: Principal,
    AppJson(req): AppJson<NewTokenRequest>,
) -> Result<Response, ApiError> {
    // Creating a token syncs the store to disk: off the async threads.
    let created = tokio::task::spawn_blocking(move || svc.create_token(&who, req))
        .await
        .map_err(|_| ApiError::internal())??;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /api/v1/tokens`: the tokens the caller may manage, without their secrets.
pub async fn get_tokens(
    State(svc): State<Service>,
    who: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tokens: Vec<TokenRecord> = svc.list_tokens(&who)?;
    Ok(Json(json!({"tokens": tokens})))
}

/// `DELETE /api/v1/tokens/{id}`: revoke a token.
pub async fn delete_token(
    State(svc): State<Service>,
    who: Principal,
    AppPath(id): AppPath<String>,
) -> Result<StatusCode, ApiError> {
    tokio::task::spawn_blocking(move || svc.revoke_token(&who, &id))
        .await
        .map_err(|_| ApiError::internal())??;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/periods`: periods and their states.
pub async fn get_periods(
    State(svc): State<Service>,
    who: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({"periods": svc.periods(&who)?})))
}

/// `POST /api/v1/periods/{period}/release`: release a closed period now (admin; idempotent).
pub async fn post_release(
    State(svc): State<Service>,
    who: Principal,
    AppPath(period): AppPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (state, releases) = svc.release_period(&who, &period).await?;
    let ids: Vec<&str> = releases.iter().map(|r| r.id.as_str()).collect();
    Ok(Json(
        json!({"period": period, "state": state, "releases": ids}),
    ))
}

/// Query of `GET /api/v1/releases`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseQuery {
    #[serde(default)]
    period: Option<String>,
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    marginal: Option<String>,
    /// `json` (default) or `csv`.
    #[serde(default)]
    format: Option<String>,
}

/// `GET /api/v1/releases`: signed releases in the caller's scope, as JSON or CSV.
pub async fn get_releases(
    State(svc): State<Service>,
    who: Principal,
    AppQuery(q): AppQuery<ReleaseQuery>,
) -> Result<Response, ApiError> {
    let csv = match q.format.as_deref() {
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
    let filter = ReleaseFilter {
        period: q.period,
        org: q.org,
        marginal: q.marginal,
    };
    let releases = svc.releases(&who, &filter)?;
    // Normen: who read or exported what (never ticks, never counts).
    tracing::info!(token = %who.token_id, role = who.role.as_str(), period = ?filter.period, org = ?filter.org, marginal = ?filter.marginal, csv, releases = releases.len(), "releases read");
    if csv {
        let body = releases_csv(&releases).map_err(|e| {
            tracing::error!(error = %e, "csv export failed");
            ApiError::internal()
        })?;
        let sig = svc.sign_bytes(body.as_bytes());
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"tellestrek-releases.csv\"".to_string(),
                ),
                (
                    header::HeaderName::from_static("x-tellestrek-signature"),
                    sig,
                ),
                (
                    header::HeaderName::from_static("x-tellestrek-public-key"),
                    svc.public_key(),
                ),
            ],
            body,
        )
            .into_response());
    }
    Ok(Json(svc.signed_export(&releases)?).into_response())
}

/// One row per cell, metadata in columns, and a column per breakdown (empty where a release
/// does not break down by it), so R and pandas read it as a tidy table.
pub fn releases_csv(releases: &[Release]) -> Result<String, csv::Error> {
    let mut axes: Vec<&str> = Vec::new();
    for r in releases {
        for d in &r.dimensions {
            if !axes.contains(&d.as_str()) {
                axes.push(d);
            }
        }
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut head = vec![
        "release_id",
        "period",
        "period_start",
        "period_end",
        "org",
        "marginal",
        "kind",
        "dimensions",
        "noisy",
        "estimate",
        "ci_low",
        "ci_high",
        "suppressed",
        "confidence",
        "mechanism",
        "privacy_unit",
        "epsilon",
        "rho",
        "scale",
        "sensitivity",
        "total_estimate",
    ];
    head.extend(axes.iter().copied());
    w.write_record(&head)?;
    for r in releases {
        for c in &r.cells {
            let mut row = vec![
                r.id.clone(),
                r.period.to_string(),
                r.period.start().to_string(),
                (r.period.end() - time::Duration::days(1)).to_string(),
                r.org.clone(),
                r.marginal.clone(),
                r.kind.clone(),
                r.dimensions.join("+"),
                c.noisy.to_string(),
                c.estimate.to_string(),
                c.ci[0].to_string(),
                c.ci[1].to_string(),
                c.suppressed.to_string(),
                r.confidence.to_string(),
                r.mechanism.clone(),
                r.privacy_unit.clone(),
                r.epsilon.map(|v| v.to_string()).unwrap_or_default(),
                r.rho.map(|v| v.to_string()).unwrap_or_default(),
                r.scale.to_string(),
                r.sensitivity.to_string(),
                r.total_estimate.to_string(),
            ];
            row.extend(
                axes.iter()
                    .map(|a| c.key.get(*a).cloned().unwrap_or_default()),
            );
            w.write_record(&row)?;
        }
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `GET /api/v1/budget`: the privacy ledger in the caller's scope.
pub async fn get_budget(
    State(svc): State<Service>,
    who: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(svc.budget(&who)?))
}

/// `GET /api/v1/signing-key`: the public key exports are signed with (no token needed).
pub async fn get_signing_key(State(svc): State<Service>) -> Json<serde_json::Value> {
    Json(
        json!({"algorithm": "Ed25519", "public_key": svc.public_key(), "encoding": "base64url, no padding"}),
    )
}

/// Query of `GET /api/v1/dashboard`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
