//! One declarative table says what every route needs; one middleware enforces it before any
//! handler runs. A route missing from the table answers 500 (fail closed), and tests walk
//! the OpenAPI document to make sure the table and the router agree.

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use waypost_core::{Error, ErrorCode, Role};

use crate::{
    AppState,
    auth::{Actor, Auth, authenticate},
    problem::ApiError,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// No credentials needed.
    Public,
    /// A signed-in person (session cookie), not an API key: self-service.
    SignedIn,
    /// A platform operator.
    Operate,
    /// Read the tenant's own profile.
    ReadTenant,
    ManageApiKeys,
    ManageSettings,
    /// Read and export the audit trail (customer-data access: denials are audited too).
    ReadAudit,
    ManageChannels,
    /// Read conversations, messages and contacts (customer data; analysts see it masked).
    ReadConversations,
    /// Create, change and erase contacts, record consent (agents too: they work the inbox).
    ManageContacts,
    /// Send messages, upload media, mark messages read, preview templates.
    SendMessages,
}

impl Permission {
    /// Whether a tenant role grants this permission.
    pub fn granted_to(self, role: Role) -> bool {
        match self {
            Permission::Public | Permission::ReadTenant | Permission::ReadConversations => true,
            Permission::ManageApiKeys
            | Permission::ManageSettings
            | Permission::ReadAudit
            | Permission::ManageChannels => role.can_administer(),
            Permission::ManageContacts | Permission::SendMessages => {
                matches!(role, Role::Owner | Role::Admin | Role::Agent)
            }
            Permission::SignedIn | Permission::Operate => false,
        }
    }

    fn is_tenant_scoped(self) -> bool {
        !matches!(
            self,
            Permission::Public | Permission::SignedIn | Permission::Operate
        )
    }
}

/// Every route, by method and path template.
#[rustfmt::skip]
pub const ROUTE_PERMISSIONS: &[(&str, &str, Permission)] = &[
    ("GET", "/healthz", Permission::Public),
    ("GET", "/readyz", Permission::Public),
    ("GET", "/metrics", Permission::Public),
    ("GET", "/api/openapi.json", Permission::Public),
    ("POST", "/api/v1/auth/login", Permission::Public),
    ("POST", "/api/v1/auth/logout", Permission::SignedIn),
    ("GET", "/api/v1/auth/me", Permission::SignedIn),
    ("POST", "/api/v1/auth/tenant", Permission::SignedIn),
    ("POST", "/api/v1/auth/password", Permission::SignedIn),
    ("GET", "/api/v1/auth/sessions", Permission::SignedIn),
    ("DELETE", "/api/v1/auth/sessions/{id}", Permission::SignedIn),
    ("GET", "/api/v1/tenant", Permission::ReadTenant),
    ("GET", "/api/v1/api-keys", Permission::ManageApiKeys),
    ("POST", "/api/v1/api-keys", Permission::ManageApiKeys),
    ("GET", "/api/v1/api-keys/{id}", Permission::ManageApiKeys),
    ("DELETE", "/api/v1/api-keys/{id}", Permission::ManageApiKeys),
    ("GET", "/api/v1/settings", Permission::ManageSettings),
    ("PUT", "/api/v1/settings", Permission::ManageSettings),
    ("GET", "/api/v1/settings/ai", Permission::ManageSettings),
    ("PUT", "/api/v1/settings/ai", Permission::ManageSettings),
    ("GET", "/api/v1/audit-events", Permission::ReadAudit),
    ("GET", "/api/v1/operator/tenants", Permission::Operate),
    ("POST", "/api/v1/operator/tenants", Permission::Operate),
    ("POST", "/api/v1/operator/access", Permission::Operate),
    ("GET", "/api/v1/channels", Permission::ReadTenant),
    ("POST", "/api/v1/channels", Permission::ManageChannels),
    ("GET", "/api/v1/channels/{id}", Permission::ManageChannels),
    ("GET", "/api/v1/contacts", Permission::ReadConversations),
    ("POST", "/api/v1/contacts", Permission::ManageContacts),
    ("GET", "/api/v1/contacts/{id}", Permission::ReadConversations),
    ("PATCH", "/api/v1/contacts/{id}", Permission::ManageContacts),
    ("DELETE", "/api/v1/contacts/{id}", Permission::ManageContacts),
    ("GET", "/api/v1/settings/consent", Permission::ManageSettings),
    ("PUT", "/api/v1/settings/consent", Permission::ManageSettings),
    ("GET", "/api/v1/conversations", Permission::ReadConversations),
    ("GET", "/api/v1/conversations/{id}/messages", Permission::ReadConversations),
    ("GET", "/api/v1/media/{id}", Permission::ReadConversations),
    ("GET", "/api/v1/messages/{id}/media", Permission::ReadConversations),
    ("POST", "/api/v1/media", Permission::SendMessages),
    ("POST", "/api/v1/messages", Permission::SendMessages),
    ("GET", "/api/v1/messages/{id}", Permission::ReadConversations),
    ("POST", "/api/v1/messages/{id}/read", Permission::SendMessages),
    ("PUT", "/api/v1/channels/{id}/credentials", Permission::ManageChannels),
    ("POST", "/api/v1/channels/{id}/resume", Permission::ManageChannels),
    ("POST", "/api/v1/channels/{id}/verify", Permission::ManageChannels),
    ("POST", "/api/v1/channels/{id}/templates/sync", Permission::ManageChannels),
    ("POST", "/api/v1/channels/{id}/templates", Permission::ManageChannels),
    ("GET", "/api/v1/templates", Permission::ReadTenant),
    ("GET", "/api/v1/templates/{id}", Permission::ReadTenant),
    ("DELETE", "/api/v1/templates/{id}", Permission::ManageChannels),
    ("POST", "/api/v1/templates/{id}/preview", Permission::SendMessages),
    // Authenticated by the provider's signature or verify token, in the handler.
    ("GET", "/webhooks/meta/{channel_id}", Permission::Public),
    ("POST", "/webhooks/meta/{channel_id}", Permission::Public),
    ("GET", "/webhooks/meta", Permission::Public),
    ("POST", "/webhooks/meta", Permission::Public),
    ("POST", "/webhooks/360dialog/{channel_id}", Permission::Public),
    ("POST", "/webhooks/twilio/{channel_id}", Permission::Public),
    ("POST", "/webhooks/gupshup/{channel_id}/{path_secret}", Permission::Public),
    ("POST", "/webhooks/bird/{channel_id}", Permission::Public),
];

pub fn permission_for(method: &str, path: &str) -> Option<Permission> {
    ROUTE_PERMISSIONS
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, perm)| *perm)
}

fn forbidden(detail: impl Into<String>) -> ApiError {
    ApiError(Error::new(ErrorCode::Forbidden, detail))
}

/// Whether `auth` may use a route that needs `permission`.
pub fn check(permission: Permission, auth: &Auth) -> Result<(), ApiError> {
    match permission {
        Permission::Public => Ok(()),
        Permission::SignedIn if auth.session.is_some() => Ok(()),
        Permission::SignedIn => Err(forbidden("this route is for signed-in users, not API keys")),
        Permission::Operate if matches!(auth.actor, Actor::Operator(_)) => Ok(()),
        Permission::Operate => Err(forbidden("only platform operators may do this")),
        tenant_permission => {
            let role = match (auth.tenant, auth.role) {
                (Some(_), Some(role)) => role,
                _ => {
                    return Err(forbidden(
                        "select a tenant first (POST /api/v1/auth/tenant)",
                    ));
                }
            };
            if tenant_permission.granted_to(role) {
                Ok(())
            } else {
                Err(forbidden(format!("the {role} role cannot do this")))
            }
        }
    }
}

pub async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .extensions
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    // axum answers HEAD with the GET handler; so does the table.
    let method = if parts.method == axum::http::Method::HEAD {
        "GET"
    } else {
        parts.method.as_str()
    };
    let Some(permission) = permission_for(method, &path) else {
        tracing::error!(method = %parts.method, path, "route has no authorization entry; refusing");
        return ApiError(Error::new(
            ErrorCode::Internal,
            "route has no authorization entry",
        ))
        .into_response();
    };
    if permission != Permission::Public {
        let auth = match authenticate(&parts, &state).await {
            Ok(auth) => auth,
            Err(err) => return err.into_response(),
        };
        if let Err(err) = check(permission, &auth) {
            if matches!(
                permission,
                Permission::ReadAudit | Permission::ReadConversations
            ) {
                audit_denial(&state, &auth, &path).await;
            }
            return err.into_response();
        }
        if permission.is_tenant_scoped() && auth.tenant.is_none() {
            return forbidden("select a tenant first").into_response();
        }
        parts.extensions.insert(auth);
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Records a refused attempt at customer data in the tenant's trail (best effort).
async fn audit_denial(state: &AppState, auth: &Auth, route: &str) {
    let Some(tenant) = auth.tenant else { return };
    let event = waypost_store::AuditEvent {
        target_type: Some("route".into()),
        target_id: Some(route.into()),
        ..auth.meta.event(Some(auth.actor), "access.denied", "denied")
    };
    let result = async {
        let mut tx = state.store.tenant(tenant).await?;
        tx.audit(event).await?;
        tx.commit().await
    };
    if let Err(err) = result.await {
        tracing::warn!(error = %err, "auditing a denied request failed");
    }
}
