use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use waypost_core::{ContactId, Error, Page, PageRequest, PhoneNumber, Timestamp};
use waypost_store::{ConsentEvent, ConsentSettings, Contact, ContactKey, MARKETING};

use crate::{
    ApiError, AppState,
    auth::{Actor, Auth},
    limits::{FILTER_MAX, NAME_MAX, NOTE_MAX, at_most, at_most_opt},
    problem::{ApiJson, ApiPath, ApiQuery, Problem},
    redact::Redact,
};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ContactQuery {
    /// A contact id, a phone number in any international format, or (for callers who see
    /// personal data) part of a number or name; at most 200 characters. Analysts and masked
    /// operators may search only by a contact id or a whole number; anything else is refused
    /// (422), so a search cannot reveal a number or name piece by piece.
    pub search: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// How a contact search reads.
enum Search<'a> {
    Everyone,
    Exactly(ContactKey),
    /// Part of a number or name.
    Text(&'a str),
}

impl<'a> Search<'a> {
    /// A contact id is exact for everyone; masked callers get exact numbers and nothing else.
    fn parse(raw: Option<&'a str>, auth: &Auth) -> Result<Self, Error> {
        let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(Search::Everyone);
        };
        if let Ok(id) = raw.parse::<ContactId>() {
            return Ok(Search::Exactly(ContactKey::Id(id)));
        }
        if auth.unmasked {
            return Ok(Search::Text(raw));
        }
        PhoneNumber::parse(raw)
            .map(|phone| Search::Exactly(ContactKey::Phone(phone)))
            .map_err(|_| {
                Error::validation(
                    "with personal data masked, search by a contact id or a whole phone number \
                     in international form (e.g. +14155550100)",
                )
            })
    }
}

/// The tenant's contacts; reading them is audited.
#[utoipa::path(get, path = "/api/v1/contacts", tag = "contacts",
    params(ContactQuery),
    responses((status = OK, body = Page<Contact>), (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json")))]
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
    let search = Search::parse(query.search.as_deref(), &auth)?;
    let tenant = auth.tenant()?;
    let page = {
        let mut tx = state.store.tenant_read(tenant).await?;
        match search {
            Search::Everyone => tx.list_contacts(None, limit, cursor).await?,
            Search::Text(text) => tx.list_contacts(Some(text), limit, cursor).await?,
            Search::Exactly(key) => Page {
                data: tx.contacts_by_key(&key).await?,
                next_cursor: None,
            },
        }
    };
    let mut tx = state.store.tenant(tenant).await?;
    tx.audit(auth.event("contact.list", "contacts", page.data.len()))
        .await?;
    tx.commit().await?;
    Ok(Json(auth.shown(page)))
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
    Ok((StatusCode::CREATED, Json(auth.shown(contact))))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContactDetail {
    #[serde(flatten)]
    pub contact: Contact,
    /// Every opt-in and opt-out, oldest first.
    pub consent_history: Vec<ConsentEvent>,
}

impl Redact for ContactDetail {
    fn redact(self) -> Self {
        let ContactDetail {
            contact,
            consent_history,
        } = self;
        ContactDetail {
            contact: contact.redact(),
            consent_history: consent_history.redact(),
        }
    }
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
    Ok(auth.shown(ContactDetail {
        contact,
        consent_history: history,
    }))
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

/// Erases a contact with its conversations, messages and consent history, and every raw copy
/// that quotes it: stored webhook bodies (blanked whole), channel events and early statuses.
/// The audit record names the contact by id only.
#[utoipa::path(delete, path = "/api/v1/contacts/{id}", tag = "contacts",
    params(("id" = ContactId, Path, description = "Contact id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_contact(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<ContactId>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    waypost_inbound::erase_contact(&mut tx, id).await?;
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
