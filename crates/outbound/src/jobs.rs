//! Provider calls that are not sends but still side effects, run as jobs so a request that
//! asked for them answers at once and a crash retries them (marking read and verifying a
//! number are idempotent).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use waypost_core::{ChannelId, Error, ErrorCode, MessageId};
use waypost_jobs::{Handler, JobContext, JobError};
use waypost_store::{Channel, NewJob, Verification};
use waypost_vault::Vault;

use crate::provider::{ClientConfig, Provider, ProviderHttp, client_for, load_credentials};

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
    pub http: ProviderHttp,
}

#[async_trait]
impl Handler for MarkReadHandler {
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let job: MarkRead = serde_json::from_value(ctx.job().payload.clone())
            .map_err(|e| JobError::Permanent(format!("bad payload: {e}")))?;
        let provider_message_id = {
            let mut tx = ctx.store().tenant_read(channel_tenant(ctx)?).await?;
            match tx.get_message(job.message_id).await {
                Ok(message) => message.provider_message_id,
                // Erased since: there is nothing left to mark read.
                Err(err) if err.code() == ErrorCode::NotFound => None,
                Err(err) => return Err(err.into()),
            }
        };
        let Some(provider_message_id) = provider_message_id else {
            return Ok(());
        };
        let (_, client) = channel_client(ctx, &self.vault, &self.http, job.channel_id).await?;
        client
            .mark_read(&provider_message_id)
            .await
            .map_err(|e| match e.code() {
                ErrorCode::EgressRefused => JobError::Permanent(e.to_string()),
                _ => JobError::Retry(e.to_string()),
            })
    }
}

/// A job's channel and a client for its provider, with its credentials.
async fn channel_client(
    ctx: &JobContext,
    vault: &Vault,
    http: &ProviderHttp,
    channel_id: ChannelId,
) -> Result<(Channel, Box<dyn Provider>), JobError> {
    let (channel, credentials) = {
        let mut tx = ctx.store().tenant_read(channel_tenant(ctx)?).await?;
        let channel = tx.get_channel(channel_id).await?;
        let credentials = load_credentials(&mut tx, vault, &channel).await?;
        (channel, credentials)
    };
    let client = client_for(
        &channel,
        &credentials,
        ClientConfig {
            http: http.clone(),
            status_callback: None,
        },
    )?;
    Ok((channel, client))
}

pub const VERIFY_KIND: &str = "channel.verify";

#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyChannel {
    pub channel_id: ChannelId,
}

/// Checks a Meta channel's number with its own token; retried while Meta cannot be reached.
pub fn verify_job(channel_id: ChannelId) -> Result<NewJob, Error> {
    Ok(NewJob::new(VERIFY_KIND, VerifyChannel { channel_id })?.max_attempts(8))
}

/// Until a channel's number is verified, the platform app's webhooks are not routed to it: a
/// tenant cannot receive the messages of a number it merely claims.
pub struct VerifyChannelHandler {
    pub vault: Arc<Vault>,
    pub http: ProviderHttp,
}

#[async_trait]
impl Handler for VerifyChannelHandler {
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let job: VerifyChannel = serde_json::from_value(ctx.job().payload.clone())
            .map_err(|e| JobError::Permanent(format!("bad payload: {e}")))?;
        let (channel, client) =
            channel_client(ctx, &self.vault, &self.http, job.channel_id).await?;
        if channel.provider != "meta" {
            return Ok(());
        }
        let (state, reason) = match client.verify_number().await {
            Ok(_) => (Verification::Verified, None),
            Err(err)
                if err.code() == ErrorCode::Unavailable
                    && ctx.job().attempts < ctx.job().max_attempts =>
            {
                return Err(JobError::Retry(err.to_string()));
            }
            Err(err) => (Verification::Failed, Some(err.public_message().to_string())),
        };
        let verified = state == Verification::Verified;
        let mut tx = ctx.store().platform().await?;
        let waba = channel.waba_id.as_deref().filter(|_| verified);
        tx.set_route_verified(channel.id, waba, verified).await?;
        let mut tx = tx.enter_tenant(channel_tenant(ctx)?).await?;
        tx.set_verification(channel.id, state, reason.as_deref())
            .await?;
        let event = serde_json::json!({"state": state, "reason": reason});
        tx.record_channel_event(channel.id, "verification", &event)
            .await?;
        ctx.complete_with(tx).await?;
        Ok(())
    }
}

fn channel_tenant(ctx: &JobContext) -> Result<waypost_core::TenantId, JobError> {
    ctx.job()
        .tenant_id
        .ok_or_else(|| JobError::Permanent("a channel job without a tenant".into()))
}
