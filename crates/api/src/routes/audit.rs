use axum::{
    Json,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use waypost_core::{Error, Page, PageRequest, Timestamp};
use waypost_store::{AuditFilter, AuditRecord};

use crate::{
    ApiError, AppState,
    auth::Auth,
    limits::{FILTER_MAX, at_most_opt},
    problem::ApiQuery,
};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this actor (user, API key or operator id); at most 200 characters.
    pub actor: Option<String>,
    /// Only this action, e.g. `auth.sign_in`; at most 200 characters.
    pub action: Option<String>,
    /// At most 200 characters.
    pub target_type: Option<String>,
    /// At most 200 characters.
    pub target_id: Option<String>,
    /// RFC 3339; inclusive.
    pub from: Option<String>,
    /// RFC 3339; inclusive.
    pub until: Option<String>,
    /// `json` (default, paginated), `csv` or `jsonl` (whole export).
    pub format: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn instant(raw: Option<&str>, field: &str) -> Result<Option<Timestamp>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let parsed = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| Error::validation(format!("{field} must be an RFC 3339 instant")))?;
    let millis = i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| Error::validation(format!("{field} is out of range")))?;
    Ok(Some(Timestamp::from_millis(millis)))
}

const EXPORT_LIMIT: usize = 1_000_000;

/// The tenant's audit trail, filtered; `format=csv` or `format=jsonl` exports every matching
/// record. Reading and exporting are themselves audited.
#[utoipa::path(get, path = "/api/v1/audit-events", tag = "audit",
    params(AuditQuery),
    responses(
        (status = OK, body = Page<AuditRecord>, description = "JSON page, or CSV / JSON Lines with format"),
        (status = FORBIDDEN, body = crate::problem::Problem, content_type = "application/problem+json")
    ))]
pub async fn list_audit_events(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let tenant = auth.tenant()?;
    for (field, value) in [
        ("actor", &query.actor),
        ("action", &query.action),
        ("target_type", &query.target_type),
        ("target_id", &query.target_id),
    ] {
        at_most_opt(field, value.as_deref(), FILTER_MAX)?;
    }
    let page = PageRequest {
        limit: query.limit,
        cursor: None,
    };
    let (limit, _) = page.parse()?;
    let after_seq = match query.cursor.as_deref() {
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            waypost_core::Error::new(
                waypost_core::ErrorCode::InvalidRequest,
                "invalid pagination cursor",
            )
        })?),
        None => None,
    };
    let mut filter = AuditFilter {
        actor_id: query.actor.clone(),
        action: query.action.clone(),
        target_type: query.target_type.clone(),
        target_id: query.target_id.clone(),
        from: instant(query.from.as_deref(), "from")?,
        until: instant(query.until.as_deref(), "until")?,
        after_seq,
    };
    let format = query.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv" | "jsonl") {
        return Err(Error::validation("format must be json, csv or jsonl").into());
    }

    let mut found = Vec::new();
    {
        let mut tx = state.store.tenant_read(tenant).await?;
        loop {
            let batch_limit = if format == "json" { limit + 1 } else { 1000 };
            let batch = tx.list_audit(&filter, batch_limit).await?;
            let full = batch.len() == batch_limit as usize;
            filter.after_seq = batch.last().map(|r| r.seq).or(filter.after_seq);
            found.extend(batch);
            if format == "json" || !full || found.len() >= EXPORT_LIMIT {
                break;
            }
        }
    }
    let action = if format == "json" {
        "audit.read"
    } else {
        "audit.export"
    };
    let mut tx = state.store.tenant(tenant).await?;
    tx.audit(auth.event(action, "audit_events", format)).await?;
    tx.commit().await?;
    // Exports too: a CSV is as much an answer as a page.
    let mut records = auth.shown(found);

    Ok(match format {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&records)?,
        )
            .into_response(),
        "jsonl" => {
            let mut text = String::new();
            for r in &records {
                text.push_str(
                    &serde_json::to_string(r).map_err(|e| Error::internal("exporting", e))?,
                );
                text.push('\n');
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], text).into_response()
        }
        _ => {
            let has_more = records.len() > limit as usize;
            records.truncate(limit as usize);
            let next_cursor = if has_more {
                records.last().map(|r| r.seq.to_string())
            } else {
                None
            };
            Json(Page {
                data: records,
                next_cursor,
            })
            .into_response()
        }
    })
}

/// A cell a spreadsheet would run as a formula gets a leading quote.
fn defuse(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_string()
    }
}

fn to_csv(records: &[AuditRecord]) -> Result<String, ApiError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let csv_error = |e: csv::Error| ApiError(Error::internal("writing CSV", e));
    writer
        .write_record([
            "seq",
            "id",
            "occurred_at",
            "actor_type",
            "actor_id",
            "action",
            "target_type",
            "target_id",
            "reason",
            "ip",
            "user_agent",
            "request_id",
            "outcome",
            "prev_hash",
            "hash",
        ])
        .map_err(csv_error)?;
    for r in records {
        let opt = |v: &Option<String>| defuse(v.as_deref().unwrap_or(""));
        writer
            .write_record([
                r.seq.to_string(),
                r.id.to_string(),
                Timestamp::from_millis(r.occurred_at).rfc3339(),
                defuse(&r.actor_type),
                opt(&r.actor_id),
                defuse(&r.action),
                opt(&r.target_type),
                opt(&r.target_id),
                opt(&r.reason),
                opt(&r.ip),
                opt(&r.user_agent),
                opt(&r.request_id),
                defuse(&r.outcome),
                hex::encode(&r.prev_hash),
                hex::encode(&r.hash),
            ])
            .map_err(csv_error)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| ApiError(Error::internal("writing CSV", e.to_string())))?;
    String::from_utf8(bytes).map_err(|e| ApiError(Error::internal("writing CSV", e)))
}
