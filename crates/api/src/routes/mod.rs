mod api_keys;
mod audit;
mod auth;
pub mod channels;
mod contacts;
mod conversations;
mod media;
mod messages;
mod operator;
mod ops;
mod settings;
mod templates;
mod tenant;
mod webhooks;

use utoipa::{
    Modify, OpenApi,
    openapi::{
        HttpMethod,
        security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        },
    },
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    authz::{Permission, permission_for},
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Waypost API",
        description = "WhatsApp Business messaging, attribution and business-system connector. \
                       Errors are RFC 9457 problem documents with a stable `code`."
    ),
    modifiers(&SecuritySchemes),
    components(schemas(crate::problem::Problem)),
    tags(
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "auth", description = "Sign-in, sessions and passwords"),
        (name = "tenant", description = "The caller's tenant"),
        (name = "api-keys", description = "API keys of the tenant"),
        (name = "settings", description = "Tenant settings and write-only secrets"),
        (name = "audit", description = "The tenant's tamper-evident audit trail"),
        (name = "operator", description = "Platform operators"),
        (name = "channels", description = "Connected WhatsApp numbers"),
        (name = "contacts", description = "Contacts and their consent history (reads are audited)"),
        (name = "conversations", description = "Threads and messages (reads are audited)"),
        (name = "messages", description = "Sending: paced, exactly once, with idempotency keys"),
        (name = "templates", description = "Message templates: sync, submit, preview"),
        (name = "webhooks", description = "Inbound provider webhooks, authenticated by signature")
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A tenant API key: `Authorization: Bearer wp_…`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::SESSION_COOKIE,
                "The session cookie from POST /api/v1/auth/login; unsafe methods also need the \
                 X-CSRF-Token header",
            ))),
        );
    }
}

/// Declares on every operation the credentials the authorization table asks for, so the
/// document cannot disagree with what the server enforces.
fn declare_security(doc: &mut utoipa::openapi::OpenApi) {
    let methods = [
        (HttpMethod::Get, "GET"),
        (HttpMethod::Post, "POST"),
        (HttpMethod::Put, "PUT"),
        (HttpMethod::Patch, "PATCH"),
        (HttpMethod::Delete, "DELETE"),
    ];
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, name) in &methods {
            let operation = match method {
                HttpMethod::Get => item.get.as_mut(),
                HttpMethod::Post => item.post.as_mut(),
                HttpMethod::Put => item.put.as_mut(),
                HttpMethod::Patch => item.patch.as_mut(),
                HttpMethod::Delete => item.delete.as_mut(),
                _ => None,
            };
            let (Some(operation), Some(permission)) = (operation, permission_for(name, path))
            else {
                continue;
            };
            let empty: [&str; 0] = [];
            operation.security = match permission {
                Permission::Public => None,
                Permission::SignedIn | Permission::Operate => {
                    Some(vec![SecurityRequirement::new("session", empty)])
                }
                _ => Some(vec![
                    SecurityRequirement::new("api_key", empty),
                    SecurityRequirement::new("session", empty),
                ]),
            };
        }
    }
}

pub fn router() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi_json))
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(auth::switch_tenant))
        .routes(routes!(auth::change_password))
        .routes(routes!(auth::list_sessions))
        .routes(routes!(auth::revoke_session))
        .routes(routes!(tenant::get_tenant))
        .routes(routes!(api_keys::list_api_keys, api_keys::create_api_key))
        .routes(routes!(api_keys::get_api_key, api_keys::revoke_api_key))
        .routes(routes!(settings::get_settings, settings::put_settings))
        .routes(routes!(
            settings::get_ai_settings,
            settings::put_ai_settings
        ))
        .routes(routes!(audit::list_audit_events))
        .routes(routes!(operator::list_tenants, operator::create_tenant))
        .routes(routes!(operator::open_tenant))
        .routes(routes!(channels::list_channels, channels::create_channel))
        .routes(routes!(channels::get_channel))
        .routes(routes!(channels::put_credentials))
        .routes(routes!(channels::resume_channel))
        .routes(routes!(channels::verify_channel))
        .routes(routes!(templates::sync_templates))
        .routes(routes!(templates::create_template))
        .routes(routes!(templates::list_templates))
        .routes(routes!(templates::get_template, templates::delete_template))
        .routes(routes!(templates::preview_template))
        .routes(routes!(messages::send_message))
        .routes(routes!(messages::get_message))
        .routes(routes!(messages::mark_read))
        .routes(routes!(messages::upload_media))
        .routes(routes!(contacts::list_contacts, contacts::create_contact))
        .routes(routes!(
            contacts::get_contact,
            contacts::update_contact,
            contacts::delete_contact
        ))
        .routes(routes!(
            contacts::get_consent_settings,
            contacts::put_consent_settings
        ))
        .routes(routes!(conversations::list_conversations))
        .routes(routes!(conversations::list_messages))
        .routes(routes!(
            webhooks::meta_channel_handshake,
            webhooks::meta_channel_event
        ))
        .routes(routes!(
            webhooks::meta_platform_handshake,
            webhooks::meta_platform_event
        ))
        .routes(routes!(webhooks::d360_event))
        .routes(routes!(webhooks::twilio_event))
        .routes(routes!(media::get_media))
        .routes(routes!(media::get_message_media))
        .routes(routes!(webhooks::gupshup_event))
        .routes(routes!(webhooks::bird_event))
        .split_for_parts();
    declare_security(&mut doc);
    (router, doc)
}
