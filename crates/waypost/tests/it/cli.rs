use std::net::TcpListener;

use waypost_store::testkit::test_databases;

use crate::process::{Scratch, Server, assert_one_line_error, run, run_json};

#[test]
fn help_lists_the_subcommands() {
    let scratch = Scratch::new();
    let out = run(&scratch.0, &["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "migrate", "config", "tenant", "apikey", "jobs"] {
        assert!(help.contains(sub), "--help does not list {sub}: {help}");
    }
}

#[tokio::test]
async fn tenants_and_keys_round_trip_through_the_cli_and_the_api() {
    for db in test_databases().await {
        let scratch = Scratch::new();
        let dir = &scratch.0;
        let url = db.url.as_str();
        let migrated = run_json(dir, &["migrate", "--database-url", url, "--json"]);
        let latest = waypost_store::Engine::Sqlite.migrations().last().unwrap().0;
        assert_eq!(migrated["schema_version"], latest);
        let tenant = run_json(
            dir,
            &[
                "tenant",
                "create",
                "--name",
                "Acme",
                "--database-url",
                url,
                "--json",
            ],
        );
        let id = tenant["id"].as_str().unwrap().to_string();
        let listed = run_json(dir, &["tenant", "list", "--json", "--database-url", url]);
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["id"] == id.as_str())
        );
        let key = run_json(
            dir,
            &[
                "apikey",
                "create",
                "--tenant",
                &id,
                "--role",
                "admin",
                "--json",
                "--database-url",
                url,
            ],
        );
        let token = key["key"].as_str().unwrap().to_string();

        // Tenants made by the CLI before the first serve: no bootstrap tenant is added.
        let server = Server::start(
            dir,
            &["serve", "--listen", "127.0.0.1:0", "--database-url", url],
            &[],
        );
        assert!(!server.stdout().iter().any(|l| l.contains("First run")));
        let client = reqwest::Client::new();
        let tenant = client
            .get(server.url("/api/v1/tenant"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(tenant.status(), 200);
        assert_eq!(
            tenant.json::<serde_json::Value>().await.unwrap()["name"],
            "Acme"
        );

        let key_id = key["id"].as_str().unwrap();
        let revoked = run_json(
            dir,
            &[
                "apikey",
                "revoke",
                "--tenant",
                &id,
                key_id,
                "--json",
                "--database-url",
                url,
            ],
        );
        assert!(revoked["revoked_at"].is_string());
        let refused = client
            .get(server.url("/api/v1/tenant"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{:?}", db.flavor);
        let keys = run_json(
            dir,
            &[
                "apikey",
                "list",
                "--tenant",
                &id,
                "--json",
                "--database-url",
                url,
            ],
        );
        assert_eq!(keys.as_array().unwrap().len(), 1);
        assert!(
            keys[0].get("key").is_none(),
            "the secret must never be listed"
        );
        let (status, _) = server.terminate();
        assert!(status.success());
    }
}

#[test]
fn config_prints_the_effective_configuration_with_secrets_masked() {
    let scratch = Scratch::new();
    std::fs::write(scratch.0.join("waypost.toml"), "[jobs]\nconcurrency = 3\n").unwrap();
    let out = run(
        &scratch.0,
        &[
            "config",
            "--json",
            "--database-url",
            "postgres://waypost:hunter2@db.internal/waypost",
        ],
        &[("WAYPOST_HTTP__LISTEN", "0.0.0.0:9999")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("hunter2"), "{text}");
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["jobs"]["concurrency"], 3, "file layer");
    assert_eq!(
        config["http"]["listen"], "0.0.0.0:9999",
        "environment layer"
    );
    assert_eq!(
        config["database"]["url"], "postgres://waypost:***@db.internal/waypost",
        "flag layer"
    );
    // And it touched no database.
    assert!(!scratch.0.join("waypost-data").exists());
}

#[test]
fn bad_input_is_one_clear_line_and_a_non_zero_exit() {
    let scratch = Scratch::new();
    let dir = &scratch.0;
    let occupied = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = occupied.local_addr().unwrap().to_string();
    std::fs::write(dir.join("typo.toml"), "[htp]\nlisten = \"127.0.0.1:1\"\n").unwrap();

    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                "tenant",
                "list",
                "--database-url",
                "postgress://u@localhost/db",
            ],
            vec![],
            "unsupported scheme",
        ),
        (
            vec!["tenant", "list", "--database-url", "mysql://localhost/db"],
            vec![],
            "invalid database URL",
        ),
        (
            vec!["tenant", "list"],
            vec![("DATABASE_URL", "postgres://u@/")],
            "host",
        ),
        (
            vec![
                "tenant",
                "list",
                "--database-url",
                "postgres://postgres@127.0.0.1:1/waypost",
            ],
            vec![],
            "cannot connect",
        ),
        (vec!["config"], vec![("WAYPOST_HTTP__LISTN", "x")], "listn"),
        (vec!["config", "--config", "typo.toml"], vec![], "htp"),
        (
            vec!["config", "--config", "missing.toml"],
            vec![],
            "does not exist",
        ),
        (vec!["serve", "--listen", "nonsense"], vec![], "http.listen"),
        (
            vec!["serve", "--no-http", "--no-workers", "--no-scheduler"],
            vec![],
            "nothing to run",
        ),
    ];
    for (args, env, needle) in cases {
        let out = run(dir, &args, &env);
        assert_one_line_error(&out, needle);
        // A mistyped PostgreSQL URL must never become a fresh SQLite file.
        assert!(
            !dir.join("waypost-data").exists(),
            "{args:?} created a SQLite database"
        );
    }
    let out = run(dir, &["serve", "--listen", &busy], &[]);
    assert_one_line_error(&out, "cannot listen");
    assert!(
        !dir.join("waypost-data").exists(),
        "a port in use still opened the database"
    );
    drop(occupied);
}

#[tokio::test]
async fn bad_operator_input_changes_nothing() {
    for db in test_databases().await {
        let scratch = Scratch::new();
        let dir = &scratch.0;
        let url = db.url.as_str();
        let tenant = run_json(
            dir,
            &[
                "tenant",
                "create",
                "--name",
                "Acme",
                "--json",
                "--database-url",
                url,
            ],
        );
        let id = tenant["id"].as_str().unwrap();
        let unknown = uuid::Uuid::now_v7().to_string();
        for (args, needle) in [
            (vec!["tenant", "create", "--name", "  "], "tenant name"),
            (
                vec!["apikey", "create", "--tenant", "nope", "--role", "admin"],
                "not a tenant id",
            ),
            (
                vec!["apikey", "create", "--tenant", &unknown, "--role", "admin"],
                "no tenant",
            ),
            (
                vec!["apikey", "create", "--tenant", id, "--role", "root"],
                "unknown role",
            ),
            (
                vec!["apikey", "revoke", "--tenant", id, &unknown],
                "not found",
            ),
            (vec!["jobs", "replay", &unknown], "not found"),
            (
                vec!["jobs", "list", "--state", "zombie"],
                "unknown job state",
            ),
        ] {
            let mut full = args.clone();
            full.extend(["--database-url", url]);
            assert_one_line_error(&run(dir, &full, &[]), needle);
        }
        let tenants = run_json(dir, &["tenant", "list", "--json", "--database-url", url]);
        assert_eq!(tenants.as_array().unwrap().len(), 1, "{:?}", db.flavor);
        let keys = run_json(
            dir,
            &[
                "apikey",
                "list",
                "--tenant",
                id,
                "--json",
                "--database-url",
                url,
            ],
        );
        assert!(keys.as_array().unwrap().is_empty());
    }
}
