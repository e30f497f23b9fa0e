//! Users, the audit chain, encryption keys and the sentinel scan, through the binary.

use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::header;
use serde_json::{Value, json};
use waypost_store::testkit::{Flavor, test_databases};

use crate::process::{BIN, Scratch, Server, TEST_MASTER_KEY, assert_one_line_error, run, run_json};

/// Runs a command with `input` on stdin.
fn run_with_stdin(dir: &std::path::Path, args: &[&str], input: &str) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("WAYPOST_MASTER_KEY");
    // SQLite keeps its key file in the folder, as `process::run` does.
    if args.iter().any(|a| a.starts_with("postgres")) {
        cmd.env("WAYPOST_MASTER_KEY", TEST_MASTER_KEY);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

async fn login(
    client: &reqwest::Client,
    server: &Server,
    email: &str,
    password: &str,
) -> (u16, Option<String>, Value) {
    let resp = client
        .post(server.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let cookie = resp
        .headers()
        .get(header::SET_COOKIE)
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string());
    (status, cookie, resp.json().await.unwrap())
}

#[tokio::test]
async fn users_are_created_and_reset_from_the_cli_and_sign_in_over_http() {
    for db in test_databases().await {
        let scratch = Scratch::new();
        let (dir, url) = (&scratch.0, db.url.as_str());
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
        let created = run_json(
            dir,
            &[
                "user",
                "create",
                "--email",
                "ada@example.com",
                "--tenant",
                id,
                "--role",
                "agent",
                "--json",
                "--database-url",
                url,
            ],
        );
        let password = created["password"].as_str().unwrap().to_string();
        assert!(password.len() >= 20);
        assert_one_line_error(
            &run(
                dir,
                &[
                    "user",
                    "create",
                    "--email",
                    "ada@example.com",
                    "--database-url",
                    url,
                ],
                &[],
            ),
            "already exists",
        );
        assert_one_line_error(
            &run(
                dir,
                &["user", "create", "--email", "nope", "--database-url", url],
                &[],
            ),
            "email",
        );
        let out = run_with_stdin(
            dir,
            &[
                "user",
                "create",
                "--email",
                "bob@example.com",
                "--password-stdin",
                "--database-url",
                url,
            ],
            "short\n",
        );
        assert_one_line_error(&out, "12 to 256 characters");

        let server = Server::start(
            dir,
            &["serve", "--listen", "127.0.0.1:0", "--database-url", url],
            &[],
        );
        let client = reqwest::Client::new();
        let (status, cookie, body) = login(&client, &server, "ada@example.com", &password).await;
        assert_eq!(
            (status, body["role"].as_str()),
            (200, Some("agent")),
            "{body}"
        );
        let cookie = cookie.unwrap();

        let out = run_with_stdin(
            dir,
            &[
                "user",
                "reset-password",
                "--email",
                "ada@example.com",
                "--password-stdin",
                "--json",
                "--database-url",
                url,
            ],
            "a completely new password\n",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reset: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reset["sessions_ended"], 1);
        assert!(
            reset.get("password").is_none(),
            "a password read from stdin is never printed"
        );
        let me = client
            .get(server.url("/api/v1/auth/me"))
            .header(header::COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 401, "a reset must end existing sessions");
        assert_eq!(
            login(&client, &server, "ada@example.com", &password)
                .await
                .0,
            401
        );
        assert_eq!(
            login(
                &client,
                &server,
                "ada@example.com",
                "a completely new password"
            )
            .await
            .0,
            200,
            "{:?}",
            db.flavor
        );
    }
}

/// A sign-in from `client` (sent as X-Forwarded-For): the status and any Retry-After.
async fn login_from(
    server: &Server,
    client: &str,
    email: &str,
    password: &str,
) -> (u16, Option<u64>) {
    let resp = reqwest::Client::new()
        .post(server.url("/api/v1/auth/login"))
        .header("x-forwarded-for", client)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (resp.status().as_u16(), retry_after)
}

/// A user made with the CLI; its generated password.
fn cli_user(dir: &std::path::Path, url: &str, tenant: &str, email: &str) -> String {
    let created = run_json(
        dir,
        &[
            "user",
            "create",
            "--email",
            email,
            "--tenant",
            tenant,
            "--role",
            "owner",
            "--json",
            "--database-url",
            url,
        ],
    );
    created["password"].as_str().unwrap().to_string()
}

/// Twenty and more wrong passwords from one address slow that address down, more with every
/// failure, and lock no one out: the owner signs in from elsewhere, even after more guessers
/// have failed from other addresses than the old per-account limit (20) allowed.
#[tokio::test]
async fn a_password_guesser_slows_down_without_locking_the_owner_out() {
    for db in test_databases().await {
        let scratch = Scratch::new();
        let (dir, url) = (&scratch.0, db.url.as_str());
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
        let tenant = tenant["id"].as_str().unwrap();
        let password = cli_user(dir, url, tenant, "owner@example.com");
        // The tests reach the server from 127.0.0.1: a trusted proxy here.
        let server = Server::start(
            dir,
            &["serve", "--listen", "127.0.0.1:0", "--database-url", url],
            &[("WAYPOST_HTTP__TRUSTED_PROXIES", "10.9.0.0/16, 127.0.0.1")],
        );
        let (guesser, owner) = ("203.0.113.66", "198.51.100.7");
        let email = "owner@example.com";
        for _ in 0..5 {
            assert_eq!(
                login_from(&server, guesser, email, "wrong password!")
                    .await
                    .0,
                401
            );
        }
        // Each failure from here doubles the wait.
        for expected in [1, 2, 4] {
            let (status, retry_after) =
                login_from(&server, guesser, email, "wrong password!").await;
            assert_eq!(
                (status, retry_after),
                (429, Some(expected)),
                "{:?}",
                db.flavor
            );
            tokio::time::sleep(std::time::Duration::from_secs(expected)).await;
            assert_eq!(
                login_from(&server, guesser, email, "wrong password!")
                    .await
                    .0,
                401
            );
        }
        // Waiting is the only way on from that address, whatever the guess.
        for guess in std::iter::repeat_n("wrong password!", 20).chain([password.as_str()]) {
            let (status, retry_after) = login_from(&server, guesser, email, guess).await;
            assert_eq!(status, 429);
            assert!(
                retry_after.is_some_and(|s| (1..=8).contains(&s)),
                "{retry_after:?}"
            );
        }
        assert_eq!(login_from(&server, owner, email, &password).await.0, 200);

        // Guessers at four more addresses, five failures each: 28 failures in all.
        let mut guessers = tokio::task::JoinSet::new();
        for i in 1..=4 {
            let url = server.url("/api/v1/auth/login");
            guessers.spawn(async move {
                for _ in 0..5 {
                    let resp = reqwest::Client::new()
                        .post(&url)
                        .header("x-forwarded-for", format!("192.0.2.{i}"))
                        .json(&json!({"email": "owner@example.com", "password": "wrong password!"}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 401);
                }
            });
        }
        while let Some(done) = guessers.join_next().await {
            done.unwrap();
        }
        assert_eq!(
            login_from(&server, owner, email, &password).await.0,
            200,
            "{:?}",
            db.flavor
        );
    }
}

/// X-Forwarded-For names the client only when a trusted proxy sent it: otherwise anyone could
/// pick a fresh address per guess, or a place on an allowlist.
#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    for db in test_databases().await {
        let scratch = Scratch::new();
        let (dir, url) = (&scratch.0, db.url.as_str());
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
        let tenant = tenant["id"].as_str().unwrap();
        let password = cli_user(dir, url, tenant, "ada@example.com");
        let email = "ada@example.com";

        // 127.0.0.1 is not a trusted proxy: a new address per guess changes nothing.
        let server = Server::start(
            dir,
            &["serve", "--listen", "127.0.0.1:0", "--database-url", url],
            &[("WAYPOST_HTTP__TRUSTED_PROXIES", "10.0.0.1")],
        );
        for i in 0..5 {
            let spoofed = format!("203.0.113.{i}");
            assert_eq!(
                login_from(&server, &spoofed, email, "wrong password!")
                    .await
                    .0,
                401
            );
        }
        let (status, _) = login_from(&server, "203.0.113.99", email, &password).await;
        assert_eq!(
            status, 429,
            "{:?}: X-Forwarded-For from an untrusted peer was believed",
            db.flavor
        );
        drop(server);

        // Behind a trusted proxy the client it names signs in, and is the one recorded.
        let server = Server::start(
            dir,
            &["serve", "--listen", "127.0.0.1:0", "--database-url", url],
            &[("WAYPOST_HTTP__TRUSTED_PROXIES", "127.0.0.1")],
        );
        let resp = reqwest::Client::new()
            .post(server.url("/api/v1/auth/login"))
            .header("x-forwarded-for", "203.0.113.99, 198.51.100.23")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let cookie = resp.headers()[header::SET_COOKIE].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_string();
        let get = |path: &str| {
            reqwest::Client::new()
                .get(server.url(path))
                .header(header::COOKIE, &cookie)
                .send()
        };
        let sessions: Value = get("/api/v1/auth/sessions")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(sessions[0]["ip"], "198.51.100.23", "{sessions}");
        let audit: Value = get("/api/v1/audit-events?action=auth.sign_in")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(audit["data"][0]["ip"], "198.51.100.23", "{audit}");
    }
}

#[tokio::test]
async fn audit_verify_reports_the_first_broken_link() {
    for db in test_databases().await {
        let scratch = Scratch::new();
        let (dir, url) = (&scratch.0, db.url.as_str());
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
        let id = tenant["id"].as_str().unwrap().to_string();
        for email in ["a@example.com", "b@example.com", "c@example.com"] {
            run_json(
                dir,
                &[
                    "user",
                    "create",
                    "--email",
                    email,
                    "--tenant",
                    &id,
                    "--role",
                    "viewer",
                    "--json",
                    "--database-url",
                    url,
                ],
            );
        }
        let reports = run_json(dir, &["audit", "verify", "--json", "--database-url", url]);
        let reports = reports.as_array().unwrap();
        assert_eq!(reports.len(), 2, "platform and one tenant");
        assert!(
            reports.iter().all(|r| r["first_broken_seq"].is_null()),
            "{reports:?}"
        );
        assert_eq!(reports[1]["records"], 3);

        db.execute_as_superuser("UPDATE audit_events SET reason = 'role owner' WHERE seq = 2")
            .await;
        let out = run(
            dir,
            &["audit", "verify", "--tenant", &id, "--database-url", url],
            &[],
        );
        assert_one_line_error(&out, &format!("audit chain {id} is broken at record 2"));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("BROKEN at record 2"),
            "{:?}",
            db.flavor
        );
    }
}

/// Anyone with write access to the database can edit a record and recompute plain SHA-256
/// links consistently, head included; with keyed links that is not enough. Verifying needs
/// the master key.
#[tokio::test]
async fn audit_verify_needs_the_master_key_and_sees_through_a_rehashed_edit() {
    for db in test_databases().await {
        let scratch = Scratch::new();
        let (dir, url) = (&scratch.0, db.url.as_str());
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
        let id = tenant["id"].as_str().unwrap().to_string();
        for email in ["a@example.com", "b@example.com", "c@example.com"] {
            cli_user(dir, url, &id, email);
        }
        let verify = [
            "audit",
            "verify",
            "--tenant",
            &id,
            "--json",
            "--database-url",
            url,
        ];
        assert_eq!(
            run_json(dir, &verify)[0],
            json!({"chain": id, "records": 3, "legacy_records": 0, "first_broken_seq": null})
        );
        let other_key = [(
            "WAYPOST_MASTER_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )];
        assert_one_line_error(&run(dir, &verify, &other_key), "master key does not match");

        db.execute_as_superuser("UPDATE audit_events SET reason = 'role owner' WHERE seq = 2")
            .await;
        db.relink_audit_as_sha256(id.parse().unwrap(), 2, false)
            .await;
        let out = run(
            dir,
            &["audit", "verify", "--tenant", &id, "--database-url", url],
            &[],
        );
        assert_one_line_error(&out, &format!("audit chain {id} is broken at record 2"));
    }
}

#[tokio::test]
async fn keys_rotate_online_and_old_keys_retire() {
    for db in test_databases().await {
        let scratch = Scratch::new();
        let (dir, url) = (&scratch.0, db.url.as_str());
        let mut server = Server::start(
            dir,
            &["serve", "--listen", "127.0.0.1:0", "--database-url", url],
            &[],
        );
        let key = server.wait_for_stdout("  wp_").trim().to_string();
        let client = reqwest::Client::new();
        let put = |api_key: &'static str| {
            client
                .put(server.url("/api/v1/settings/ai"))
                .bearer_auth(&key)
                .json(&json!({"provider": "openai_compatible", "base_url": "https://api.example.com", "model": "m", "enabled": true, "api_key": api_key}))
                .send()
        };
        assert_eq!(
            put("sk-first-secret-value-0001").await.unwrap().status(),
            200
        );
        let keys = run_json(dir, &["keys", "list", "--json", "--database-url", url]);
        assert_eq!(keys.as_array().unwrap().len(), 1);
        let first = keys[0]["id"].as_i64().unwrap();

        let rotated = run_json(dir, &["keys", "rotate", "--json", "--database-url", url]);
        assert_eq!(rotated["reencrypted"], 1, "{rotated}");
        let keys = run_json(dir, &["keys", "list", "--json", "--database-url", url]);
        let states: Vec<_> = keys
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["state"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(states, ["previous", "active"]);
        // The running server keeps working: it writes with the new key without a restart.
        assert_eq!(
            put("sk-second-secret-value-002").await.unwrap().status(),
            200
        );
        // The first key chained the audit records before the rotation: it stays to verify
        // them until retention removes them.
        assert_one_line_error(
            &run(
                dir,
                &["keys", "retire", &first.to_string(), "--database-url", url],
                &[],
            ),
            "audit record",
        );
        let verified = run_json(dir, &["audit", "verify", "--json", "--database-url", url]);
        assert!(
            verified
                .as_array()
                .unwrap()
                .iter()
                .all(|chain| chain["first_broken_seq"].is_null() && chain["legacy_records"] == 0),
            "{verified}"
        );
        assert_one_line_error(
            &run(
                dir,
                &[
                    "keys",
                    "retire",
                    &rotated["active_key"].to_string(),
                    "--database-url",
                    url,
                ],
                &[],
            ),
            "not a previous key",
        );
        let settings: Value = client
            .get(server.url("/api/v1/settings/ai"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(settings["api_key"], json!({"set": true, "last4": "-002"}));
        assert!(server.terminate().0.success());
        // A restart loads the rotated keyring.
        let again = Server::start(
            dir,
            &["serve", "--listen", "127.0.0.1:0", "--database-url", url],
            &[],
        );
        let status = client
            .get(again.url("/api/v1/settings/ai"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{:?}", db.flavor);
    }
}

#[test]
fn the_master_key_file_is_made_once_for_sqlite_and_required_for_postgres() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch.0, &["--listen", "127.0.0.1:0"], &[]);
    let path = scratch.0.join("waypost-data/master.key");
    assert!(
        server
            .stderr()
            .iter()
            .any(|l| l.contains("master key file") && l.contains("Back it up"))
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    drop(server);
    let again = Server::start(&scratch.0, &["--listen", "127.0.0.1:0"], &[]);
    assert!(!again.stderr().iter().any(|l| l.contains("master key file")));
    drop(again);
    // A different key for the same database is refused.
    let out = run(
        &scratch.0,
        &["keys", "rotate"],
        &[("WAYPOST_MASTER_KEY", TEST_MASTER_KEY)],
    );
    assert_one_line_error(&out, "master key does not match");
    // PostgreSQL (given through DATABASE_URL, so no test key is added) needs an explicit key.
    let out = run(
        &scratch.0,
        &["keys", "rotate"],
        &[("DATABASE_URL", "postgres://u@127.0.0.1:1/db")],
    );
    assert_one_line_error(&out, "WAYPOST_MASTER_KEY");
}

/// Runs the main flows with sentinel secrets and finds them in no log line, no API response
/// and no plaintext byte of the database.
#[tokio::test]
async fn sentinel_secrets_leak_nowhere() {
    const API_SECRET: &str = "sk-SENTINEL-ai-3f9b27c4e1";
    const PASSWORD: &str = "SENTINEL-password-8c1d5e";
    for db in test_databases().await {
        let scratch = Scratch::new();
        let (dir, url) = (&scratch.0, db.url.as_str());
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
        let id = tenant["id"].as_str().unwrap().to_string();
        let out = run_with_stdin(
            dir,
            &[
                "user",
                "create",
                "--email",
                "ada@example.com",
                "--tenant",
                &id,
                "--role",
                "owner",
                "--password-stdin",
                "--json",
                "--database-url",
                url,
            ],
            &format!("{PASSWORD}\n"),
        );
        assert!(out.status.success());
        let mut seen = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);

        let server = Server::start(
            dir,
            &["serve", "--listen", "127.0.0.1:0", "--database-url", url],
            &[("RUST_LOG", "debug")],
        );
        let client = reqwest::Client::new();
        let (status, cookie, body) = login(&client, &server, "ada@example.com", PASSWORD).await;
        assert_eq!(status, 200);
        seen.push_str(&body.to_string());
        let (_, _, wrong) =
            login(&client, &server, "ada@example.com", &format!("{PASSWORD}x")).await;
        seen.push_str(&wrong.to_string());
        let cookie = cookie.unwrap();
        let csrf = body["csrf_token"].as_str().unwrap().to_string();
        let requests = [
            (
                "PUT",
                "/api/v1/settings/ai",
                Some(
                    json!({"provider": "openai_compatible", "base_url": "https://api.example.com", "model": "m", "enabled": true, "api_key": API_SECRET}),
                ),
            ),
            ("GET", "/api/v1/settings/ai", None),
            ("GET", "/api/v1/audit-events?format=jsonl", None),
            ("GET", "/api/v1/audit-events", None),
            ("GET", "/metrics", None),
            ("GET", "/api/v1/auth/me", None),
        ];
        for (method, path, body) in requests {
            let mut req = client
                .request(method.parse().unwrap(), server.url(path))
                .header(header::COOKIE, &cookie)
                .header("x-csrf-token", &csrf);
            if let Some(body) = body {
                req = req.json(&body);
            }
            let resp = req.send().await.unwrap();
            assert!(
                resp.status().is_success(),
                "{method} {path}: {}",
                resp.status()
            );
            seen.push_str(&resp.text().await.unwrap());
        }
        let (status, mut logs) = server.terminate();
        assert!(status.success());
        assert!(
            logs.len() > 10,
            "debug logging produced too little to prove anything"
        );
        logs.push(seen);
        let dump = db.dump().await;
        assert!(!dump.is_empty());
        for sentinel in [API_SECRET, PASSWORD] {
            for line in &logs {
                assert!(!line.contains(sentinel), "{sentinel} leaked: {line}");
            }
            assert!(
                !dump
                    .windows(sentinel.len())
                    .any(|w| w == sentinel.as_bytes()),
                "{sentinel} is stored in plain text ({:?})",
                db.flavor
            );
        }
        let _ = Flavor::Sqlite;
    }
}
