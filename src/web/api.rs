//! The JSON API of invites and follow-up requests (`/api/v1/invites`, `/api/v1/follow-ups`),
//! with the API's extractors and its one error mapping.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::api::{ApiError, AppJson, AppPath, ErrorBody};
use crate::service::{FollowUp, InviteInfo, NewInvite, NewInviteRequest, Principal, Service};

/// Answer of `POST /api/v1/invites`: the invite, and its absolute link when the request said
/// which host it was sent to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedInvite {
    /// The invite (its `path` is the link's path).
    #[serde(flatten)]
    pub invite: NewInvite,
    /// `http(s)://HOST/invite/SECRET`, from the request's `Host` (and `X-Forwarded-Proto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// Answer of `GET /api/v1/invites`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InviteList {
    /// Open invites, never their links.
    pub invites: Vec<InviteInfo>,
}

/// Answer of `GET /api/v1/follow-ups`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FollowUpList {
    /// Open requests, under the names given at invite.
    pub follow_ups: Vec<FollowUp>,
}

/// `POST /api/v1/invites`: a one-time sign-in link (coordinator: supporters of their own
/// organisation; admin: any role). The link is shown only in this answer.
#[utoipa::path(
    post,
    path = "/api/v1/invites",
    tag = "invites",
    operation_id = "post_invite",
    request_body = NewInviteRequest,
    responses(
        (status = 201, description = "The invite; its link is shown only in this answer", body = CreatedInvite),
        (status = 400, description = "`malformed_json`, `unreadable_body`: the body is not JSON", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: send `Content-Type: application/json`", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`, `wrong_org`", body = ErrorBody),
        (status = 404, description = "`token_not_found`: no such `account` to invite to", body = ErrorBody),
        (status = 422, description = "`missing_field`, `unknown_field`, `duplicate_field`, `invalid_type`, `invalid_role`, `missing_org`, `unexpected_org`, `unexpected_role`, `unknown_org`, `unknown_unit`, `invalid_name`, `csrf_token_invalid`", body = ErrorBody),
        (status = 503, description = "`storage_full`, `storage_unavailable`: not stored", body = ErrorBody),
    ),
)]
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
    Ok((StatusCode::CREATED, Json(CreatedInvite { invite, link })).into_response())
}

/// `GET /api/v1/invites`: the open invites the caller may manage (never their links).
#[utoipa::path(
    get,
    path = "/api/v1/invites",
    tag = "invites",
    operation_id = "get_invites",
    responses(
        (status = 200, description = "Open invites the caller may manage", body = InviteList),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`", body = ErrorBody),
        (status = 422, description = "`csrf_token_invalid`", body = ErrorBody),
    ),
)]
pub async fn get_invites(
    State(svc): State<Service>,
    who: Principal,
) -> Result<Json<InviteList>, ApiError> {
    let invites = svc.list_invites(&who)?;
    Ok(Json(InviteList { invites }))
}

/// `DELETE /api/v1/invites/{id}`: revoke an open invite.
#[utoipa::path(
    delete,
    path = "/api/v1/invites/{id}",
    tag = "invites",
    operation_id = "delete_invite",
    params(("id" = String, Path, description = "The invite's public id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "`invalid_path`: the id is not UTF-8", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`, `wrong_org`", body = ErrorBody),
        (status = 404, description = "`invite_not_found`", body = ErrorBody),
        (status = 422, description = "`csrf_token_invalid`", body = ErrorBody),
        (status = 503, description = "`storage_full`, `storage_unavailable`: not changed", body = ErrorBody),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/api/v1/follow-ups",
    tag = "invites",
    operation_id = "get_follow_ups",
    responses(
        (status = 200, description = "Open follow-up requests", body = FollowUpList),
        (status = 401, description = "`missing_token`, `invalid_token`: no valid bearer token or session", body = ErrorBody),
        (status = 403, description = "`wrong_role`", body = ErrorBody),
        (status = 422, description = "`csrf_token_invalid`", body = ErrorBody),
    ),
)]
pub async fn get_follow_ups(
    State(svc): State<Service>,
    who: Principal,
) -> Result<Json<FollowUpList>, ApiError> {
    let follow_ups = svc.followups(&who)?;
    Ok(Json(FollowUpList { follow_ups }))
}
