//! The built-in demo: with the embedded database, the first run connects a simulated WhatsApp
//! number to the Default tenant, served by the in-process Cloud API simulator, and a simulated
//! customer writes to it, so a newcomer sees messages flow without a Meta account.

use std::net::SocketAddr;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use waypost_api::channel_secret_purpose;
use waypost_core::{ChannelId, Error, Result, TenantId};
use waypost_simulator::{Inject, Simulator, SimulatorConfig};
use waypost_store::{AuditEvent, NewChannel, Store};
use waypost_vault::Vault;

const DEMO_KEY: &str = "demo_channel";
const DEMO_NUMBER_ID: &str = "100000000000001";
const DEMO_DISPLAY: &str = "+15550000001";

/// The demo's simulator, and whether the demo channel was created just now.
pub struct Demo {
    pub simulator: Simulator,
    pub created: bool,
}

fn parse_ids(value: &str) -> Option<(TenantId, ChannelId)> {
    let (tenant, channel) = value.split_once('/')?;
    Some((tenant.parse().ok()?, channel.parse().ok()?))
}

/// Finds the demo channel, creating it in `new_tenant` (the Default tenant the first run just
/// made). `None` when there is no demo (tenants existed before the first run).
pub async fn prepare(
    store: &Store,
    vault: &Vault,
    new_tenant: Option<TenantId>,
    addr: SocketAddr,
) -> Result<Option<Demo>> {
    let existing = store
        .platform_read()
        .await?
        .platform_value(DEMO_KEY)
        .await?
        .as_deref()
        .and_then(parse_ids);
    let (tenant, channel, created) = match (existing, new_tenant) {
        (Some((tenant, channel)), _) => (tenant, channel, false),
        (None, Some(tenant)) => (tenant, create(store, vault, tenant, addr).await?, true),
        (None, None) => return Ok(None),
    };
    let app_secret = {
        let mut tx = store.tenant_read(tenant).await?;
        vault
            .reveal(&mut tx, &channel_secret_purpose(channel, "app_secret"))
            .await?
            .map(|s| s.as_str().to_string())
            .ok_or_else(|| {
                Error::internal("the demo channel lost its app secret", "missing secret")
            })?
    };
    let simulator = Simulator::new(SimulatorConfig {
        webhook_url: format!("http://{addr}/webhooks/meta/{channel}"),
        app_secret,
        phone_number_id: DEMO_NUMBER_ID.into(),
        display_number: DEMO_DISPLAY.trim_start_matches('+').into(),
        ..SimulatorConfig::default()
    });
    Ok(Some(Demo { simulator, created }))
}

async fn create(
    store: &Store,
    vault: &Vault,
    tenant: TenantId,
    addr: SocketAddr,
) -> Result<ChannelId> {
    let random =
        || -> Result<String> { Ok(URL_SAFE_NO_PAD.encode(waypost_api::random_bytes::<24>()?)) };
    let (mut tx, channel) = store
        .platform()
        .await?
        .create_channel(
            tenant,
            NewChannel {
                provider: "meta".into(),
                name: "Demo number (simulated)".into(),
                phone_number_id: Some(DEMO_NUMBER_ID.into()),
                waba_id: Some("200000000000001".into()),
                display_number: Some(DEMO_DISPLAY.into()),
                provider_account: None,
                throughput_mps: 80,
                graph_api_base_url: format!("http://{addr}/simulator/graph"),
                graph_api_version: "v25.0".into(),
            },
        )
        .await?;
    for (name, value) in [
        ("access_token", "simulated-token".to_string()),
        ("app_secret", random()?),
        ("verify_token", random()?),
    ] {
        vault
            .put_secret(&mut tx, &channel_secret_purpose(channel.id, name), &value)
            .await?;
    }
    tx.audit(AuditEvent {
        actor_type: "system",
        actor_id: Some("demo".into()),
        action: "channel.create".into(),
        target_type: Some("channel".into()),
        target_id: Some(channel.id.to_string()),
        outcome: "success",
        ..AuditEvent::default()
    })
    .await?;
    tx.commit().await?;
    let mut tx = store.platform().await?;
    tx.set_platform_value(DEMO_KEY, &format!("{tenant}/{}", channel.id))
        .await?;
    tx.commit().await?;
    Ok(channel.id)
}

/// The first simulated customer message, sent once the server answers.
pub async fn greet(simulator: Simulator) {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let injected = simulator
        .inject(Inject {
            from: Some("15550100001".into()),
            name: Some("Demo customer".into()),
            text: Some("Hi! I am a simulated customer writing to your demo number.".into()),
            ..Inject::default()
        })
        .await;
    tracing::info!(wamid = %injected.wamid, status = injected.webhook_status, "demo: simulated customer message delivered");
}
