use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use waypost_core::{ContactId, Error, Page, PageRequest, PhoneNumber, Timestamp};
use waypost_store::{ConsentEvent, ConsentSettings, Contact, MARKETING};

use crate::{
    ApiError, AppState,
    auth::{Actor, Auth},
    limits::{FILTER_MAX, NAME_MAX, NOTE_MAX, at_most, at_most_opt},
    problem::{ApiJson, ApiPath, ApiQuery, Problem},
    redact::mask,
};

fn redact(mut c: Contact) -> Contact {
    c.phone = c.phone.as_deref().map(mask);
    c.wa_id = c.wa_id.as_deref().map(mask);
    c.bsuid = c.bsuid.as_deref().map(mask);
    c.name = c
        .name
        .map(|n| n.chars().take(1).collect::<String>() + "•••");
    c.username = c.username.map(|_| "•••".into());
    c
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ContactQuery {
    /// A phone number in any international format, or part of a name; at most 200 characters.
    pub search: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The tenant's contacts; reading them is audited.
#[utoipa::path(get, path = "/api/v1/contacts", tag = "contacts",
    params(ContactQuery),
    responses((status = OK, body = Page<Contact>)))]
pub async fn list_contacts(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(query): ApiQuery<ContactQuery>,
) -> Result<Json<Page<Contact>>, ApiError> {
    at_most_opt("search", query.search.as_deref(), FILTER_MAX)?;
    let (limit, cursor) = PageRequest {
        limit: query.limit,
        cursor: query.cursor,
    }
    .parse()?;
    let tenant = auth.tenant()?;
    let mut page = state
        .store
        .tenant_read(tenant)
        .await?
        .list_contacts(query.search.as_deref(), limit, cursor)
        .await?;
    let mut tx = state.store.tenant(tenant).await?;
    tx.audit(auth.event("contact.list", "contacts", page.data.len()))
        .await?;
    tx.commit().await?;
    if !auth.unmasked {
        page.data = page.data.into_iter().map(redact).collect();
    }
    Ok(Json(page))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContact {
    /// International form, e.g. `+14155550100`, at most 64 characters; normalized to E.164.
    pub phone: String,
    /// At most 200 characters.
    pub name: Option<String>,
    /// Record a marketing opt-in now (source `api`).
    #[serde(default)]
    pub opted_in: bool,
}

fn valid_name(name: Option<&str>) -> Result<Option<String>, Error> {
    let name = name.map(str::trim);
    at_most_opt("name", name, NAME_MAX)?;
    Ok(name.filter(|n| !n.is_empty()).map(str::to_string))
}

/// Longer than any way of writing a phone number.
const PHONE_MAX: usize = 64;

fn consent_source(auth: &Auth) -> &'static str {
    match auth.actor {
        Actor::ApiKey(_) => "api",
        Actor::User(_) | Actor::Operator(_) => "agent",
    }
}

/// Adds a contact by phone number.
#[utoipa::path(post, path = "/api/v1/contacts", tag = "contacts",
    request_body = CreateContact,
    responses((status = CREATED, body = Contact), (status = CONFLICT, body = Problem, content_type = "application/problem+json"), (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json")))]
pub async fn create_contact(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateContact>,
) -> Result<(StatusCode, Json<Contact>), ApiError> {
    at_most("phone", &body.phone, PHONE_MAX)?;
    let phone = PhoneNumber::parse(&body.phone)?;
    let name = valid_name(body.name.as_deref())?;
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    let mut contact = tx.create_contact(&phone, name.as_deref()).await?;
    if body.opted_in {
        tx.record_consent(
            contact.id,
            MARKETING,
            "opt_in",
            consent_source(&auth),
            None,
            Timestamp::now(),
        )
        .await?;
        contact = tx.get_contact(contact.id).await?;
    }
    tx.audit(auth.event("contact.create", "contact", contact.id))
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(contact)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContactDetail {
    #[serde(flatten)]
    pub contact: Contact,
    /// Every opt-in and opt-out, oldest first.
    pub consent_history: Vec<ConsentEvent>,
}

async fn detail(
    state: &AppState,
    auth: &Auth,
    id: ContactId,
    action: &str,
) -> Result<ContactDetail, ApiError> {
    let tenant = auth.tenant()?;
    let (contact, history) = {
        let mut tx = state.store.tenant_read(tenant).await?;
        (tx.get_contact(id).await?, tx.consent_history(id).await?)
    };
    let mut tx = state.store.tenant(tenant).await?;
    tx.audit(auth.event(action, "contact", id)).await?;
    tx.commit().await?;
    let contact = if auth.unmasked {
        contact
    } else {
        redact(contact)
    };
    Ok(ContactDetail {
        contact,
        consent_history: history,
    })
}

/// One contact with its consent history. Another tenant's contact answers 404.
#[utoipa::path(get, path = "/api/v1/contacts/{id}", tag = "contacts",
    params(("id" = ContactId, Path, description = "Contact id")),
    responses((status = OK, body = ContactDetail), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn get_contact(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<ContactId>,
) -> Result<Json<ContactDetail>, ApiError> {
    Ok(Json(detail(&state, &auth, id, "contact.read").await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateContact {
    /// At most 200 characters; empty clears the name.
    pub name: Option<String>,
    /// `opt_in` or `opt_out` of marketing, recorded in the history.
    pub marketing_consent: Option<String>,
    /// Why (kept with the consent event); at most 500 characters.
    pub note: Option<String>,
}

/// Renames a contact or records a consent change.
#[utoipa::path(patch, path = "/api/v1/contacts/{id}", tag = "contacts",
    params(("id" = ContactId, Path, description = "Contact id")),
    request_body = UpdateContact,
    responses((status = OK, body = ContactDetail), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn update_contact(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<ContactId>,
    ApiJson(body): ApiJson<UpdateContact>,
) -> Result<Json<ContactDetail>, ApiError> {
    let consent = match body.marketing_consent.as_deref() {
        None => None,
        Some(action @ ("opt_in" | "opt_out")) => Some(action),
        Some(_) => {
            return Err(Error::validation("marketing_consent must be opt_in or opt_out").into());
        }
    };
    let name = valid_name(body.name.as_deref())?;
    at_most_opt("note", body.note.as_deref(), NOTE_MAX)?;
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    tx.get_contact(id).await?;
    if body.name.is_some() {
        tx.rename_contact(id, name.as_deref()).await?;
    }
    if let Some(action) = consent {
        tx.record_consent(
            id,
            MARKETING,
            action,
            consent_source(&auth),
            body.note.as_deref(),
            Timestamp::now(),
        )
        .await?;
    }
    tx.audit(auth.event("contact.update", "contact", id))
        .await?;
    tx.commit().await?;
    Ok(Json(detail(&state, &auth, id, "contact.read").await?))
}

/// Erases a contact with its conversations, messages and consent history.
#[utoipa::path(delete, path = "/api/v1/contacts/{id}", tag = "contacts",
    params(("id" = ContactId, Path, description = "Contact id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_contact(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<ContactId>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    tx.delete_contact(id).await?;
    tx.audit(auth.event("contact.delete", "contact", id))
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Opt-out and opt-in keywords (STOP, START, ... plus any language the tenant adds).
#[utoipa::path(get, path = "/api/v1/settings/consent", tag = "settings",
    responses((status = OK, body = ConsentSettings)))]
pub async fn get_consent_settings(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<ConsentSettings>, ApiError> {
    Ok(Json(
        state
            .store
            .tenant_read(auth.tenant()?)
            .await?
            .consent_settings()
            .await?,
    ))
}

#[utoipa::path(put, path = "/api/v1/settings/consent", tag = "settings",
    request_body = ConsentSettings,
    responses((status = OK, body = ConsentSettings), (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json")))]
pub async fn put_consent_settings(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<ConsentSettings>,
) -> Result<Json<ConsentSettings>, ApiError> {
    let words = body.opt_out_keywords.iter().chain(&body.opt_in_keywords);
    if body.opt_out_keywords.is_empty()
        || body.opt_out_keywords.len() + body.opt_in_keywords.len() > ConsentSettings::MAX_KEYWORDS
    {
        return Err(
            Error::validation("give 1 to 100 keywords, at least one opt-out keyword").into(),
        );
    }
    if words
        .clone()
        .any(|w| w.trim().is_empty() || w.chars().count() > ConsentSettings::KEYWORD_MAX)
    {
        return Err(Error::validation("keywords must be 1 to 32 characters").into());
    }
    at_most_opt(
        "confirmation_reply",
        body.confirmation_reply.as_deref(),
        ConsentSettings::REPLY_MAX,
    )?;
    let tenant = auth.tenant()?;
    let mut tx = state.store.tenant(tenant).await?;
    tx.put_consent_settings(&body).await?;
    tx.audit(auth.event("settings.update", "consent_settings", tenant))
        .await?;
    tx.commit().await?;
    Ok(Json(body))
}
