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

use crate::domain::TokenRecord;
use crate::export::Lang;
use crate::policy::{Dimension, Label, Org};
use crate::service::{
    NewTokenRequest, PageRequest, Principal, ReleaseFilter, ReleasePage, Service, ServiceError,
    TickRequest,
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
    let by = (who.token_id.clone(), who.role.as_str());
    let created = tokio::task::spawn_blocking(move || svc.create_token(&who, req))
        .await
        .map_err(|_| ApiError::internal())??;
    // Normen: who changed access, and how (never the token itself).
    tracing::info!(by = %by.0, by_role = by.1, id = %created.id, role = created.role.as_str(), org = ?created.org, "token created");
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
    let (by, by_role, revoked) = (who.token_id.clone(), who.role.as_str(), id.clone());
    tokio::task::spawn_blocking(move || svc.revoke_token(&who, &id))
        .await
        .map_err(|_| ApiError::internal())??;
    tracing::info!(by = %by, by_role, id = %revoked, "token revoked");
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

/// Query of `GET /api/v1/releases` and `GET /api/v1/releases.sig`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseQuery {
    #[serde(default)]
    period: Option<String>,
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    marginal: Option<String>,
    /// First period of a range (see [`ReleaseFilter::from`]).
    #[serde(default)]
    from: Option<String>,
    /// Last period of a range.
    #[serde(default)]
    to: Option<String>,
    /// Releases per page (default 100, at most 1000).
    #[serde(default)]
    limit: Option<u64>,
    /// The `next` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
    /// `json` (default) or `csv`.
    #[serde(default)]
    format: Option<String>,
    /// Labels in the CSV: `nb` (default) or `en`.
    #[serde(default)]
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

/// `GET /api/v1/releases`: one page of the signed releases in the caller's scope, as JSON
/// (streamed as it is decoded, signature at the end) or CSV (signature in a header, and from
/// `GET /api/v1/releases.sig`). The next page's cursor is `next` in the JSON, and the
/// `x-tellestrek-next` and `Link` headers of both forms.
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

/// `GET /api/v1/budget`: the privacy ledger in the caller's scope.
pub async fn get_budget(
    State(svc): State<Service>,
    who: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    let budget = svc.budget(&who)?;
    tracing::info!(token = %who.token_id, role = who.role.as_str(), "ledger read");
    Ok(Json(budget))
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
