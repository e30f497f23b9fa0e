//! Provider calls that are not sends but still side effects, run as jobs so a request that
//! asked for them answers at once and a crash retries them (marking read is idempotent).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use waypost_core::{ChannelId, Error};
use waypost_jobs::{Handler, JobContext, JobError};
use waypost_store::NewJob;
use waypost_vault::Vault;

use crate::provider::{ClientConfig, client_for, load_credentials};

pub const MARK_READ_KIND: &str = "outbound.mark_read";

/// Ids only, never content.
#[derive(Debug, Serialize, Deserialize)]
pub struct MarkRead {
    pub channel_id: ChannelId,
    pub provider_message_id: String,
}

pub fn mark_read_job(channel_id: ChannelId, provider_message_id: String) -> Result<NewJob, Error> {
    NewJob::new(
        MARK_READ_KIND,
        MarkRead {
            channel_id,
            provider_message_id,
        },
    )
}

pub struct MarkReadHandler {
    pub vault: Arc<Vault>,
    pub http: reqwest::Client,
}

#[async_trait]
impl Handler for MarkReadHandler {
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let job: MarkRead = serde_json::from_value(ctx.job().payload.clone())
            .map_err(|e| JobError::Permanent(format!("bad payload: {e}")))?;
        let tenant = ctx
            .job()
            .tenant_id
            .ok_or_else(|| JobError::Permanent("mark-read job without a tenant".into()))?;
        let (channel, credentials) = {
            let mut tx = ctx.store().tenant_read(tenant).await?;
            let channel = tx.get_channel(job.channel_id).await?;
            let credentials = load_credentials(&mut tx, &self.vault, &channel).await?;
            (channel, credentials)
        };
        let client = client_for(
            &channel,
            &credentials,
            ClientConfig {
                http: self.http.clone(),
                status_callback: None,
            },
        )?;
        client
            .mark_read(&job.provider_message_id)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))
    }
}
