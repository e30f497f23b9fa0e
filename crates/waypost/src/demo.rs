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
/// Where the in-process simulator's control token is kept (a secret of the demo tenant).
const TOKEN_PURPOSE: &str = "demo:simulator_token";
const DEMO_NUMBER_ID: &str = "100000000000001";
const DEMO_DISPLAY: &str = "+15550000001";

/// The demo's simulator, whether the demo channel was created just now, and the token its
/// control routes (inject, stats, numbers, faults) require.
pub struct Demo {
    pub simulator: Simulator,
    pub created: bool,
    pub token: String,
}

/// The address the demo channel calls the simulator at: the server's own, or loopback on the
/// same port when it listens on every address.
pub fn simulator_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

async fn demo_ids(store: &Store) -> Result<Option<(TenantId, ChannelId)>> {
    Ok(store
        .platform_read()
        .await?
        .platform_value(DEMO_KEY)
        .await?
        .as_deref()
        .and_then(parse_ids))
}

fn random_token() -> Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(waypost_api::random_bytes::<24>()?))
}

/// The embedded demo's simulator token, for `waypost simulator inject`; `None` without a demo.
pub async fn stored_token(store: &Store, vault: &Vault) -> Result<Option<String>> {
    let Some((tenant, _)) = demo_ids(store).await? else {
        return Ok(None);
    };
    let mut tx = store.tenant_read(tenant).await?;
    Ok(vault
        .reveal(&mut tx, TOKEN_PURPOSE)
        .await?
        .map(|t| t.as_str().to_string()))
}

/// The demo's simulator token, made on first use (demos created before tokens existed too).
async fn token(store: &Store, vault: &Vault, tenant: TenantId) -> Result<String> {
    let mut tx = store.tenant(tenant).await?;
    if let Some(token) = vault.reveal(&mut tx, TOKEN_PURPOSE).await? {
        return Ok(token.as_str().to_string());
    }
    let token = random_token()?;
    vault.put_secret(&mut tx, TOKEN_PURPOSE, &token).await?;
    tx.commit().await?;
    Ok(token)
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
    let existing = demo_ids(store).await?;
    let (tenant, channel, created) = match (existing, new_tenant) {
        (Some((tenant, channel)), _) => (tenant, channel, false),
        (None, Some(tenant)) => (tenant, create(store, vault, tenant, addr).await?, true),
        (None, None) => return Ok(None),
    };
    let (app_secret, access_token) = {
        let mut tx = store.tenant_read(tenant).await?;
        let mut secret = async |name: &str| -> Result<String> {
            vault
                .reveal(&mut tx, &channel_secret_purpose(channel, name))
                .await?
                .map(|s| s.as_str().to_string())
                .ok_or_else(|| Error::internal("the demo channel lost a secret", name.to_string()))
        };
        (secret("app_secret").await?, secret("access_token").await?)
    };
    let token = token(store, vault, tenant).await?;
    let simulator = Simulator::new(SimulatorConfig {
        webhook_url: format!("http://{addr}/webhooks/meta/{channel}"),
        app_secret,
        phone_number_id: DEMO_NUMBER_ID.into(),
        display_number: DEMO_DISPLAY.trim_start_matches('+').into(),
        // Graph calls need the channel's own token, like Meta; the rest the simulator token.
        access_token: Some(access_token),
        control_token: Some(token.clone()),
        ..SimulatorConfig::default()
    });
    Ok(Some(Demo {
        simulator,
        created,
        token,
    }))
}

async fn create(
    store: &Store,
    vault: &Vault,
    tenant: TenantId,
    addr: SocketAddr,
) -> Result<ChannelId> {
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
        ("access_token", random_token()?),
        ("app_secret", random_token()?),
        ("verify_token", random_token()?),
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
