use serde::Serialize;
use uuid::Uuid;
use waypost_core::{Error, ErrorCode, Result, Role, TenantId, Timestamp, UserId};

use crate::{
    connect::db_error,
    tx::{Conn, Platform, Tx, on_conn},
};

/// Failed sign-ins recorded for one subject (an account, an address, or both) in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureWindow {
    pub count: i64,
    pub oldest: Option<Timestamp>,
    pub latest: Option<Timestamp>,
}

/// A person who signs in. Platform data: users are not owned by one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub is_operator: bool,
    pub created_at: Timestamp,
    pub disabled_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct UserWithPassword {
    pub user: User,
    pub password_hash: String,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    password_hash: String,
    is_operator: bool,
    created_at: i64,
    disabled_at: Option<i64>,
}

impl From<UserRow> for UserWithPassword {
    fn from(row: UserRow) -> Self {
        UserWithPassword {
            user: User {
                id: UserId::from_uuid(row.id),
                email: row.email,
                is_operator: row.is_operator,
                created_at: Timestamp::from_millis(row.created_at),
                disabled_at: row.disabled_at.map(Timestamp::from_millis),
            },
            password_hash: row.password_hash,
        }
    }
}

/// A tenant a user belongs to, with the role they hold there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Membership {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub role: Role,
}

/// A web session as stored: the id is the SHA-256 of the cookie token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: Vec<u8>,
    pub user_id: UserId,
    pub tenant_id: Option<TenantId>,
    pub csrf_token: String,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub expires_at: Timestamp,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub revoked_at: Option<Timestamp>,
    /// An operator who gave a reason may see unredacted data until then.
    pub unmask_until: Option<Timestamp>,
}

pub struct NewSession {
    pub id: Vec<u8>,
    pub user_id: UserId,
    pub tenant_id: Option<TenantId>,
    pub csrf_token: String,
    pub expires_at: Timestamp,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: Vec<u8>,
    user_id: Uuid,
    tenant_id: Option<Uuid>,
    csrf_token: String,
    created_at: i64,
    last_seen_at: i64,
    expires_at: i64,
    ip: Option<String>,
    user_agent: Option<String>,
    revoked_at: Option<i64>,
    unmask_until: Option<i64>,
}

impl From<SessionRow> for SessionRecord {
    fn from(r: SessionRow) -> Self {
        SessionRecord {
            id: r.id,
            user_id: UserId::from_uuid(r.user_id),
            tenant_id: r.tenant_id.map(TenantId::from_uuid),
            csrf_token: r.csrf_token,
            created_at: Timestamp::from_millis(r.created_at),
            last_seen_at: Timestamp::from_millis(r.last_seen_at),
            expires_at: Timestamp::from_millis(r.expires_at),
            ip: r.ip,
            user_agent: r.user_agent,
            revoked_at: r.revoked_at.map(Timestamp::from_millis),
            unmask_until: r.unmask_until.map(Timestamp::from_millis),
        }
    }
}

macro_rules! session_columns {
    () => {
        "id, user_id, tenant_id, csrf_token, created_at, last_seen_at, expires_at, ip, user_agent, \
         revoked_at, unmask_until"
    };
}

/// Normalises and checks an email address (shape only; ownership is the operator's concern).
pub fn normalize_email(raw: &str) -> Result<String> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !email.chars().any(char::is_whitespace);
    if valid {
        Ok(email)
    } else {
        Err(Error::validation("not a valid email address"))
    }
}

impl Tx<Platform> {
    pub async fn create_user(
        &mut self,
        email: &str,
        password_hash: &str,
        is_operator: bool,
    ) -> Result<User> {
        let email = normalize_email(email)?;
        let now = Timestamp::now();
        let user = User {
            id: UserId::new(),
            email,
            is_operator,
            created_at: now,
            disabled_at: None,
        };
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO users (id, email, password_hash, is_operator, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(user.id.as_uuid())
            .bind(&user.email)
            .bind(password_hash)
            .bind(is_operator)
            .bind(now.as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(|e| match db_error(e) {
            err if err.code() == ErrorCode::Conflict => {
                Error::new(ErrorCode::Conflict, "a user with this email already exists")
            }
            err => err,
        })?;
        Ok(user)
    }

    pub async fn find_user_by_email(&mut self, email: &str) -> Result<Option<UserWithPassword>> {
        let Ok(email) = normalize_email(email) else {
            return Ok(None);
        };
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, UserRow>(
                "SELECT id, email, password_hash, is_operator, created_at, disabled_at FROM users \
                 WHERE email = $1",
            )
            .bind(&email)
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        Ok(row.map(UserWithPassword::from))
    }

    pub async fn get_user(&mut self, id: UserId) -> Result<UserWithPassword> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, UserRow>(
                "SELECT id, email, password_hash, is_operator, created_at, disabled_at FROM users \
                 WHERE id = $1",
            )
            .bind(id.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?
        .map(UserWithPassword::from)
        .ok_or_else(|| Error::not_found("user"))
    }

    pub async fn set_password_hash(&mut self, id: UserId, password_hash: &str) -> Result<()> {
        let updated = on_conn!(&mut self.conn, |c| {
            sqlx::query("UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1")
                .bind(id.as_uuid())
                .bind(password_hash)
                .bind(Timestamp::now().as_millis())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        if updated == 1 {
            Ok(())
        } else {
            Err(Error::not_found("user"))
        }
    }

    /// Adds the user to the tenant, or changes their role there.
    pub async fn set_membership(
        &mut self,
        tenant: TenantId,
        user: UserId,
        role: Role,
    ) -> Result<()> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO memberships (tenant_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = $3",
            )
            .bind(tenant.as_uuid())
            .bind(user.as_uuid())
            .bind(role.as_str())
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// The user's tenants, oldest membership first.
    pub async fn memberships_of(&mut self, user: UserId) -> Result<Vec<Membership>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            tenant_id: Uuid,
            role: String,
        }
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, Row>(
                "SELECT tenant_id, role FROM memberships WHERE user_id = $1 \
                 ORDER BY created_at, tenant_id",
            )
            .bind(user.as_uuid())
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        rows.into_iter()
            .map(|r| {
                Ok(Membership {
                    tenant_id: TenantId::from_uuid(r.tenant_id),
                    user_id: user,
                    role: r
                        .role
                        .parse()
                        .map_err(|e| Error::internal("stored role", e))?,
                })
            })
            .collect()
    }

    pub async fn create_session(&mut self, new: NewSession) -> Result<SessionRecord> {
        let now = Timestamp::now();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO sessions (id, user_id, tenant_id, csrf_token, created_at, last_seen_at, \
                 expires_at, ip, user_agent) VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8)",
            )
            .bind(&new.id)
            .bind(new.user_id.as_uuid())
            .bind(new.tenant_id.map(|t| *t.as_uuid()))
            .bind(&new.csrf_token)
            .bind(now.as_millis())
            .bind(new.expires_at.as_millis())
            .bind(&new.ip)
            .bind(&new.user_agent)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(SessionRecord {
            id: new.id,
            user_id: new.user_id,
            tenant_id: new.tenant_id,
            csrf_token: new.csrf_token,
            created_at: now,
            last_seen_at: now,
            expires_at: new.expires_at,
            ip: new.ip,
            user_agent: new.user_agent,
            revoked_at: None,
            unmask_until: None,
        })
    }

    pub async fn find_session(&mut self, id: &[u8]) -> Result<Option<SessionRecord>> {
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, SessionRow>(concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        Ok(row.map(SessionRecord::from))
    }

    /// The user's sessions that are neither revoked nor past their absolute expiry.
    pub async fn list_sessions(
        &mut self,
        user: UserId,
        now: Timestamp,
    ) -> Result<Vec<SessionRecord>> {
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, SessionRow>(concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
                 ORDER BY created_at"
            ))
            .bind(user.as_uuid())
            .bind(now.as_millis())
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        Ok(rows.into_iter().map(SessionRecord::from).collect())
    }

    pub async fn touch_session(&mut self, id: &[u8], now: Timestamp) -> Result<()> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now.as_millis())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// Revokes one of the user's sessions; another user's session id is "not found".
    pub async fn revoke_session(&mut self, user: UserId, id: &[u8]) -> Result<()> {
        let revoked = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE sessions SET revoked_at = $3 \
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(user.as_uuid())
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        if revoked == 1 {
            Ok(())
        } else {
            Err(Error::not_found("session"))
        }
    }

    /// Revokes every session of the user except `keep` (after a password change).
    pub async fn revoke_other_sessions(
        &mut self,
        user: UserId,
        keep: Option<&[u8]>,
    ) -> Result<u64> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE sessions SET revoked_at = $3 \
                 WHERE user_id = $1 AND revoked_at IS NULL AND id <> $2",
            )
            .bind(user.as_uuid())
            .bind(keep.unwrap_or_default())
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)
    }

    pub async fn set_session_scope(
        &mut self,
        id: &[u8],
        tenant: Option<TenantId>,
        unmask_until: Option<Timestamp>,
    ) -> Result<()> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query("UPDATE sessions SET tenant_id = $2, unmask_until = $3 WHERE id = $1")
                .bind(id)
                .bind(tenant.map(|t| *t.as_uuid()))
                .bind(unmask_until.map(Timestamp::as_millis))
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    pub async fn record_auth_failure(&mut self, subject: &str, at: Timestamp) -> Result<()> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query("INSERT INTO auth_failures (subject, at) VALUES ($1, $2)")
                .bind(subject)
                .bind(at.as_millis())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// Moves a failure recorded at `from` to `to` (when the attempt was found to fail).
    pub async fn move_auth_failure(
        &mut self,
        subject: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<()> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query("UPDATE auth_failures SET at = $3 WHERE subject = $1 AND at = $2")
                .bind(subject)
                .bind(from.as_millis())
                .bind(to.as_millis())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// Removes the failure recorded for a sign-in attempt that then succeeded.
    pub async fn forgive_auth_failure(&mut self, subject: &str, at: Timestamp) -> Result<()> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query("DELETE FROM auth_failures WHERE subject = $1 AND at = $2")
                .bind(subject)
                .bind(at.as_millis())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// The failures recorded for `subject` since `since`: how many, the oldest and the newest.
    pub async fn auth_failures_since(
        &mut self,
        subject: &str,
        since: Timestamp,
    ) -> Result<FailureWindow> {
        let (count, oldest, latest) = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, (i64, Option<i64>, Option<i64>)>(
                "SELECT COUNT(*), MIN(at), MAX(at) FROM auth_failures \
                 WHERE subject = $1 AND at >= $2",
            )
            .bind(subject)
            .bind(since.as_millis())
            .fetch_one(c)
            .await
        })
        .map_err(db_error)?;
        Ok(FailureWindow {
            count,
            oldest: oldest.map(Timestamp::from_millis),
            latest: latest.map(Timestamp::from_millis),
        })
    }

    /// Serialises sign-in attempts on `subject` until this transaction ends, so a burst of
    /// parallel guesses cannot all read the failure count before any of them adds to it.
    /// (SQLite transactions already run one at a time.)
    pub async fn lock_auth_subject(&mut self, subject: &str) -> Result<()> {
        if let Conn::Postgres(c) = &mut self.conn {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(subject)
                .execute(&mut **c)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// Drops failure records and sessions that can no longer matter.
    pub async fn prune_auth_state(&mut self, before: Timestamp) -> Result<u64> {
        let failures = on_conn!(&mut self.conn, |c| {
            sqlx::query("DELETE FROM auth_failures WHERE at < $1")
                .bind(before.as_millis())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        let sessions = on_conn!(&mut self.conn, |c| {
            sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
                .bind(before.as_millis())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(failures + sessions)
    }
}
