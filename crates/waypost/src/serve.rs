use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use waypost_api::{ApiKeySecret, AppState};
use waypost_core::{Error, ErrorCode, Result, Role};
use waypost_jobs::{Registry, Scheduler, Worker, audit_retention_schedule, prune_schedule};
use waypost_outbound::Dispatcher;
use waypost_store::{NewApiKey, Store};

use crate::{
    commands::{master_key, open_store, open_vault, system_event},
    config::Config,
};

pub async fn run(config: Config) -> Result<()> {
    if !config.http.enabled && !config.jobs.enabled && !config.scheduler.enabled {
        return Err(Error::new(
            ErrorCode::InvalidConfig,
            "--no-http, --no-workers and --no-scheduler together leave nothing to run",
        ));
    }
    // Bind first: a port in use should fail before anything touches the database.
    let listener = if config.http.enabled {
        let addr = config.listen_addr()?;
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Error::new(
                ErrorCode::InvalidConfig,
                format!("cannot listen on {addr}: {e}"),
            )
        })?;
        Some(listener)
    } else {
        None
    };

    let master = master_key(&config)?;
    let store = open_store(&config).await?;
    let vault = open_vault(&store, master).await?;
    let new_tenant = bootstrap(&store).await?;

    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    let mut tasks = tokio::task::JoinSet::new();

    let bound = listener.as_ref().and_then(|l| l.local_addr().ok());
    // The demo only ever runs on the embedded database, never in production.
    let demo_at = bound
        .filter(|addr| config.database.url.trim().is_empty() && config.demo.runs_on(*addr))
        .map(crate::demo::simulator_addr);
    let http = provider_http(&config, demo_at)?;
    let worker = config.jobs.enabled.then(|| {
        let keep = Duration::from_secs(config.jobs.keep_done_hours.saturating_mul(3600));
        let audit_keep =
            Duration::from_secs(config.audit.platform_retention_days.saturating_mul(86_400));
        Worker::new(
            store.clone(),
            Registry::with_builtins(keep, audit_keep)
                .register(
                    waypost_inbound::PROCESS_KIND,
                    waypost_inbound::ProcessInboxHandler,
                )
                .register(
                    waypost_outbound::jobs::MARK_READ_KIND,
                    waypost_outbound::jobs::MarkReadHandler {
                        vault: vault.clone(),
                        http: http.clone(),
                    },
                )
                .register(
                    waypost_outbound::jobs::VERIFY_KIND,
                    waypost_outbound::jobs::VerifyChannelHandler {
                        vault: vault.clone(),
                        http: http.clone(),
                    },
                ),
            config.worker(),
        )
    });
    let worker_wake = worker.as_ref().map(Worker::waker);
    if let Some(worker) = worker {
        tasks.spawn(worker.run(shutdown.clone()));
    }
    // The dispatcher sends where the workers run: `--no-workers` turns both off.
    let dispatcher = config.jobs.enabled.then(|| {
        let public = bound.map_or_else(
            || config.http.public_base_url.clone(),
            |addr| config.public_base_url(addr),
        );
        Dispatcher::new(
            store.clone(),
            vault.clone(),
            http.clone(),
            config.dispatcher(public),
        )
    });
    let dispatch_wake = dispatcher.as_ref().map(Dispatcher::waker);
    if let Some(dispatcher) = dispatcher {
        tasks.spawn(dispatcher.run(shutdown.clone()));
    }
    if config.scheduler.enabled {
        let schedules = vec![
            prune_schedule(
                Duration::from_secs(config.jobs.prune_every_secs),
                Duration::from_secs(config.jobs.prune_offset_secs),
            ),
            audit_retention_schedule(
                Duration::from_secs(config.audit.retention_every_secs),
                Duration::from_secs(config.audit.retention_offset_secs),
            ),
        ];
        let scheduler = Scheduler::new(
            store.clone(),
            schedules,
            Duration::from_millis(config.scheduler.tick_ms),
        );
        let token = shutdown.clone();
        tasks.spawn(async move {
            scheduler.run(token).await;
            Ok(())
        });
    }
    if let Some(listener) = listener {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::internal("reading the bound address", e))?;
        let mut state = AppState::new(store.clone(), vault.clone(), config.auth())?;
        state.webhooks = Arc::new(config.webhooks(addr)?);
        state.http = http.clone();
        state.trusted_proxies = config.trusted_proxies()?.into();
        state.metrics_token = Some(config.metrics.token.trim())
            .filter(|t| !t.is_empty())
            .map(Arc::from);
        let gauges = state.queue_gauges.clone().run(
            store.clone(),
            Duration::from_secs(config.metrics.refresh_secs),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            gauges.await;
            Ok(())
        });
        state.worker_wake = worker_wake;
        state.dispatch_wake = dispatch_wake;
        let mut app = waypost_api::router(state);
        let demo = match demo_at {
            Some(at) => crate::demo::prepare(&store, &vault, new_tenant, at).await?,
            None => None,
        };
        println!(
            "Waypost listening on http://{addr} (database: {})",
            store.url()
        );
        if let Some(demo) = demo {
            app = app.merge(demo.simulator.router());
            demo_banner(addr, &demo.token, config.demo.enabled == Some(true));
            if demo.created {
                tasks.spawn(async move {
                    crate::demo::greet(demo.simulator).await;
                    Ok(())
                });
            }
        } else {
            demo_off_note(&config, addr);
        }
        let token = shutdown.clone();
        tasks.spawn(async move {
            waypost_api::serve_app(listener, app, token)
                .await
                .map_err(|e| Error::internal("serving HTTP", e))
        });
    } else {
        println!("Waypost running without HTTP (database: {})", store.url());
    }
    tracing::info!(
        http = config.http.enabled,
        workers = config.jobs.enabled,
        scheduler = config.scheduler.enabled,
        "started"
    );

    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined
            .map_err(|e| Error::internal("a server task panicked", e))
            .and_then(|r| r);
        if let Err(err) = outcome {
            tracing::error!(error = %err, "server task failed; shutting down");
            shutdown.cancel();
            result = Err(err);
        }
    }
    store.close().await;
    tracing::info!("stopped");
    result
}

/// The egress-checked client every provider call goes through; the demo's own simulator (and
/// only that address and port) is allowed besides `[egress] allow`.
fn provider_http(
    config: &Config,
    demo_at: Option<std::net::SocketAddr>,
) -> Result<waypost_outbound::provider::ProviderHttp> {
    let mut policy = config.egress.policy()?;
    if let Some(at) = demo_at {
        policy = policy.allowing_socket(at);
    }
    let client = waypost_egress::EgressClient::build(
        policy,
        waypost_egress::ClientOptions::default(),
        Arc::new(waypost_egress::SystemLookup),
    )?;
    Ok(waypost_outbound::provider::ProviderHttp {
        client,
        media_hosts: Arc::new(config.egress.media_hosts()),
    })
}

fn demo_banner(addr: std::net::SocketAddr, token: &str, explicit: bool) {
    println!(
        "Demo: a SIMULATED WhatsApp number (+1 555 000 0001) is connected to tenant \"Default\", \
         served by the built-in Cloud API simulator at http://{addr}/simulator."
    );
    println!("  Simulator token (its control routes need it): {token}");
    println!(
        "  Conversations: curl -H \"Authorization: Bearer <key>\" http://{addr}/api/v1/conversations"
    );
    println!(
        "  Write as another customer: waypost simulator inject --url http://{addr} --from 15550100002 --text hello"
    );
    if explicit && !addr.ip().is_loopback() {
        println!(
            "  Note: [demo] enabled = true on a non-loopback address: the simulator is reachable \
             from the network (its control routes only with the token)."
        );
    }
}

/// Why the demo is off, when the only reason is the address.
fn demo_off_note(config: &Config, addr: std::net::SocketAddr) {
    if config.database.url.trim().is_empty()
        && config.demo.enabled.is_none()
        && !addr.ip().is_loopback()
    {
        println!(
            "Demo: off (listening on {addr}, not a loopback address); set [demo] enabled = true to run it anyway."
        );
    }
}

/// On the very first start against an empty database, creates a tenant and an owner API key
/// and prints the key once. Exactly one process ever does this, however many start together.
/// Returns the tenant when it created one.
async fn bootstrap(store: &Store) -> Result<Option<waypost_core::TenantId>> {
    let mut tx = store.platform().await?;
    if !tx.claim_first_run().await? {
        tx.rollback().await?;
        return Ok(None);
    }
    if !tx.list_tenants().await?.is_empty() {
        // Tenants were created by the CLI before the first serve: nothing to bootstrap.
        tx.commit().await?;
        return Ok(None);
    }
    let tenant = tx.create_tenant("Default").await?;
    tx.audit(system_event("tenant.create", "tenant", tenant.id))
        .await?;
    let secret = ApiKeySecret::generate(tenant.id)?;
    let mut tx = tx.enter_tenant(tenant.id).await?;
    let key = tx
        .create_api_key(NewApiKey {
            prefix: secret.prefix,
            secret_hash: secret.secret_hash,
            name: "bootstrap".into(),
            role: Role::Owner,
            expires_at: None,
        })
        .await?;
    tx.audit(system_event("api_key.create", "api_key", key.id))
        .await?;
    tx.commit().await?;
    println!(
        "First run: created tenant \"Default\" ({}) with this owner API key:",
        tenant.id
    );
    println!("  {}", secret.token);
    println!("It is shown only this once; keep it somewhere safe.");
    Ok(Some(tenant.id))
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: no new requests or jobs; finishing what is in flight");
    shutdown.cancel();
}
