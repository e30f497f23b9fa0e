use std::collections::BTreeSet;

use waypost_store::testkit::{Flavor, TestDb, test_databases};

use crate::process::{Scratch, Server, run_json};

#[tokio::test]
async fn first_run_prints_a_working_owner_key_once_and_sigterm_stops_cleanly() {
    let client = reqwest::Client::new();
    // The README's first command: no flags beyond the port, SQLite in ./waypost-data.
    let scratch = Scratch::new();
    let mut server = Server::start(&scratch.0, &["--listen", "127.0.0.1:0"], &[]);
    let key_line = server.wait_for_stdout("  wp_");
    let key = key_line.trim().to_string();
    assert!(scratch.0.join("waypost-data/waypost.db").exists());
    let tenant = client
        .get(server.url("/api/v1/tenant"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(tenant.status(), 200);
    assert_eq!(
        tenant.json::<serde_json::Value>().await.unwrap()["name"],
        "Default"
    );
    let (status, stderr) = server.terminate();
    assert!(status.success(), "exit {status}: {stderr:?}");
    assert!(stderr.iter().any(|l| l.contains("stopped")), "{stderr:?}");

    let again = Server::start(&scratch.0, &["serve", "--listen", "127.0.0.1:0"], &[]);
    assert!(
        !again.stdout().iter().any(|l| l.contains("wp_")),
        "the key was printed twice"
    );
    let still = client
        .get(again.url("/api/v1/tenant"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 200);
    drop(again);

    for db in test_databases()
        .await
        .into_iter()
        .filter(|d| d.flavor != Flavor::Sqlite)
    {
        let dir = Scratch::new();
        let mut server = Server::start(
            &dir.0,
            &["--listen", "127.0.0.1:0", "--database-url", &db.url],
            &[],
        );
        let key = server.wait_for_stdout("  wp_").trim().to_string();
        let tenant = client
            .get(server.url("/api/v1/tenant"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(tenant.status(), 200);
        assert!(
            !dir.0.join("waypost-data").exists(),
            "PostgreSQL mode created a SQLite file"
        );
        let (status, _) = server.terminate();
        assert!(status.success());
    }
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The embedded database holds every tenant's data: owner-only files in an owner-only folder,
/// on the first run and after an older release left them readable to all.
#[cfg(unix)]
#[test]
fn the_embedded_database_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let data = scratch.0.join("waypost-data");
    let files = [
        "waypost.db",
        "waypost.db-wal",
        "waypost.db-shm",
        "master.key",
    ];
    let check = |when: &str| {
        assert_eq!(mode(&data), 0o700, "{when}: the data folder");
        for file in files {
            assert_eq!(mode(&data.join(file)), 0o600, "{when}: {file}");
        }
    };
    let server = Server::start(&scratch.0, &["--listen", "127.0.0.1:0"], &[]);
    check("first run");
    let (status, _) = server.terminate();
    assert!(status.success());

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in files {
        let path = data.join(file);
        // A clean shutdown may remove -wal and -shm; an older release's would be 0644.
        if !path.exists() {
            std::fs::write(&path, b"").unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = Server::start(&scratch.0, &["serve", "--listen", "127.0.0.1:0"], &[]);
    check("an older release's files");
    drop(server);
}

/// `/metrics` as text, with an optional bearer token; `Err` carries a non-200 answer.
async fn scrape(server: &Server, token: Option<&str>) -> Result<String, (u16, serde_json::Value)> {
    let mut request = reqwest::Client::new()
        .get(server.url("/metrics"))
        .timeout(std::time::Duration::from_secs(2));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    match response.status().as_u16() {
        200 => Ok(response.text().await.unwrap()),
        status => Err((status, response.json().await.unwrap())),
    }
}

#[tokio::test]
async fn metrics_ask_for_the_configured_token() {
    for db in test_databases().await {
        let scratch = Scratch::new();
        let server = Server::start(
            &scratch.0,
            &["--listen", "127.0.0.1:0", "--database-url", &db.url],
            &[("WAYPOST_METRICS__TOKEN", "scrape-me-7d2f")],
        );
        for token in [None, Some("scrape-me"), Some("scrape-me-7d2f0")] {
            let (status, problem) = scrape(&server, token).await.unwrap_err();
            assert_eq!(
                (status, problem["code"].as_str()),
                (401, Some("unauthorized")),
                "{token:?}: {problem}"
            );
        }
        let text = scrape(&server, Some("scrape-me-7d2f")).await.unwrap();
        assert!(text.contains("waypost_http_requests_total"), "{text}");
        let health = reqwest::get(server.url("/healthz")).await.unwrap();
        assert_eq!(health.status(), 200, "only /metrics asks for the token");
    }
}

/// A scrape renders what a background task read; it never queries the database. So a job
/// enqueued after the last reading is not in any scrape until the next one (the old scrape
/// queried the queue and showed it at once), and on PostgreSQL scrapes answer while the job
/// table is locked.
#[tokio::test]
async fn a_scrape_renders_cached_queue_gauges_without_touching_the_database() {
    for db in test_databases().await {
        let scratch = Scratch::new();
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--no-workers",
            "--no-scheduler",
            "--database-url",
            &db.url,
        ];
        let server = Server::start(
            &scratch.0,
            &args,
            &[("WAYPOST_METRICS__REFRESH_SECS", "3600")],
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !scrape(&server, None)
            .await
            .unwrap()
            .contains("waypost_queue_stats_age_seconds")
        {
            assert!(std::time::Instant::now() < deadline, "no first reading");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let store = db.store().await;
        let mut tx = store.platform().await.unwrap();
        tx.enqueue(waypost_store::NewJob::new("cache.probe", ()).unwrap())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let lock = match db.flavor {
            Flavor::Sqlite => None,
            _ => Some(
                db.hold_as_superuser("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
                    .await,
            ),
        };
        for _ in 0..50 {
            let text = scrape(&server, None).await.unwrap();
            assert!(
                !text.contains("cache.probe") && text.contains("waypost_database_up 1"),
                "{:?}: {text}",
                db.flavor
            );
        }
        drop((server, lock));

        // A process that reads often shows it.
        let server = Server::start(&scratch.0, &args, &[("WAYPOST_METRICS__REFRESH_SECS", "1")]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = scrape(&server, None).await.unwrap();
            if text.contains("waypost_jobs{kind=\"cache.probe\",state=\"pending\"} 1") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

fn worker_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("WAYPOST_JOBS__POLL_INTERVAL_MS", "20"),
        ("WAYPOST_JOBS__CONCURRENCY", "4"),
    ]
}

#[tokio::test]
async fn two_processes_on_one_postgres_run_every_job_exactly_once() {
    let Some(db) = TestDb::postgres(Flavor::Postgres).await else {
        return;
    };
    let scratch = Scratch::new();
    let url = db.url.as_str();
    let args = [
        "serve",
        "--no-http",
        "--no-scheduler",
        "--database-url",
        url,
    ];
    let a = Server::start(&scratch.0, &args, &worker_env());
    let b = Server::start(&scratch.0, &args, &worker_env());
    let status = run_json(
        &scratch.0,
        &[
            "jobs",
            "probe",
            "--count",
            "1000",
            "--json",
            "--database-url",
            url,
        ],
    );
    assert_eq!(status["completed"], 1000, "{status}");
    assert_eq!(status["duplicated"], 0, "{status}");
    let by_worker = status["by_worker"].as_object().unwrap();
    assert_eq!(
        by_worker.len(),
        2,
        "both processes should have taken jobs: {status}"
    );
    assert!(by_worker.values().all(|n| n.as_u64().unwrap() > 0));
    for server in [a, b] {
        let (exit, _) = server.terminate();
        assert!(exit.success());
    }
}

#[tokio::test]
async fn a_recurring_job_runs_once_per_period_across_processes() {
    for db in test_databases().await {
        if db.flavor == Flavor::Sqlite {
            // SQLite is the single-process embedded mode; one scheduler is enough there.
            continue;
        }
        let scratch = Scratch::new();
        let url = db.url.as_str();
        let mut env = worker_env();
        env.extend([
            ("WAYPOST_JOBS__PRUNE_EVERY_SECS", "1"),
            ("WAYPOST_JOBS__PRUNE_OFFSET_SECS", "0"),
            ("WAYPOST_SCHEDULER__TICK_MS", "50"),
        ]);
        let args = ["serve", "--no-http", "--database-url", url];
        let a = Server::start(&scratch.0, &args, &env);
        let b = Server::start(&scratch.0, &args, &env);
        tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
        for server in [a, b] {
            assert!(server.terminate().0.success());
        }
        let jobs = run_json(
            &scratch.0,
            &[
                "jobs",
                "list",
                "--state",
                "done",
                "--limit",
                "1000",
                "--json",
                "--database-url",
                url,
            ],
        );
        let mut periods = BTreeSet::new();
        for job in jobs
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["kind"] == "system.prune_jobs")
        {
            assert_eq!(job["attempts"], 1, "{job}");
            let key = job["dedupe_key"].as_str().unwrap();
            let period: i64 = key.rsplit(':').next().unwrap().parse().unwrap();
            assert!(periods.insert(period), "period {period} ran twice");
        }
        assert!(
            periods.len() >= 3,
            "only {} periods ran: {periods:?}",
            periods.len()
        );
        let first = *periods.first().unwrap();
        let expected: BTreeSet<i64> = (0..periods.len() as i64)
            .map(|i| first + i * 1000)
            .collect();
        assert_eq!(periods, expected, "a period was skipped");
        let pending = run_json(
            &scratch.0,
            &[
                "jobs",
                "list",
                "--state",
                "pending",
                "--json",
                "--database-url",
                url,
            ],
        );
        assert!(
            pending
                .as_array()
                .unwrap()
                .iter()
                .all(|j| j["kind"] != "system.prune_jobs" || j["attempts"] == 0)
        );
    }
}
