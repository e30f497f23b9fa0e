//! Provider calls that are not sends but still side effects, run as jobs so a request that
//! asked for them answers at once and a crash retries them (marking read is idempotent).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use waypost_core::{ChannelId, Error, ErrorCode, MessageId};
use waypost_jobs::{Handler, JobContext, JobError};
use waypost_store::NewJob;
use waypost_vault::Vault;

use crate::provider::{ClientConfig, client_for, load_credentials};

pub const MARK_READ_KIND: &str = "outbound.mark_read";

/// Our ids only, never content, and not the provider's message id either: Meta's encodes
/// the customer's number, and a job outlives the erasure of its contact.
#[derive(Debug, Serialize, Deserialize)]
pub struct MarkRead {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
}

pub fn mark_read_job(channel_id: ChannelId, message_id: MessageId) -> Result<NewJob, Error> {
    NewJob::new(
        MARK_READ_KIND,
        MarkRead {
            channel_id,
            message_id,
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
        let (channel, credentials, provider_message_id) = {
            let mut tx = ctx.store().tenant_read(tenant).await?;
            let provider_message_id = match tx.get_message(job.message_id).await {
                Ok(message) => message.provider_message_id,
                // Erased since: there is nothing left to mark read.
                Err(err) if err.code() == ErrorCode::NotFound => None,
                Err(err) => return Err(err.into()),
            };
            let Some(provider_message_id) = provider_message_id else {
                return Ok(());
            };
            let channel = tx.get_channel(job.channel_id).await?;
            let credentials = load_credentials(&mut tx, &self.vault, &channel).await?;
            (channel, credentials, provider_message_id)
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
            .mark_read(&provider_message_id)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))
    }
}
