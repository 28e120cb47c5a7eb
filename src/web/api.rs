//! The JSON API of invites and follow-up requests (`/api/v1/invites`, `/api/v1/follow-ups`),
//! with the API's extractors and its one error mapping.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::{ApiError, AppJson, AppPath};
use crate::service::{NewInviteRequest, Principal, Service};

/// `POST /api/v1/invites`: a one-time sign-in link (coordinator: supporters of their own
/// organisation; admin: any role). The link is shown only in this answer.
pub async fn post_invite(
    State(svc): State<Service>,
    who: Principal,
    headers: HeaderMap,
    AppJson(req): AppJson<NewInviteRequest>,
) -> Result<Response, ApiError> {
    let invite = tokio::task::spawn_blocking(move || svc.create_invite(&who, req))
        .await
        .map_err(|_| ApiError::internal())??;
    // The absolute link from the Host the caller used (their own view of this server).
    let link = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|host| {
            let https = headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("https"));
            format!(
                "{}://{host}{}",
                if https { "https" } else { "http" },
                invite.path
            )
        });
    let mut body = serde_json::to_value(&invite).map_err(|_| ApiError::internal())?;
    if let (Some(link), Some(obj)) = (link, body.as_object_mut()) {
        obj.insert("link".into(), json!(link));
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /api/v1/invites`: the open invites the caller may manage (never their links).
pub async fn get_invites(
    State(svc): State<Service>,
    who: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    let invites = svc.list_invites(&who)?;
    Ok(Json(json!({"invites": invites})))
}

/// `DELETE /api/v1/invites/{id}`: revoke an open invite.
pub async fn delete_invite(
    State(svc): State<Service>,
    who: Principal,
    AppPath(id): AppPath<String>,
) -> Result<StatusCode, ApiError> {
    tokio::task::spawn_blocking(move || svc.revoke_invite(&who, &id))
        .await
        .map_err(|_| ApiError::internal())??;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/follow-ups`: open follow-up requests of the coordinator's organisation, under
/// the names given at invite.
pub async fn get_follow_ups(
    State(svc): State<Service>,
    who: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = svc.followups(&who)?;
    Ok(Json(json!({"follow_ups": list})))
}
