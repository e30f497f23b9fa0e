use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use waypost_core::{ErrorCode, Timestamp};
use waypost_store::{Enqueued, JobKinds, JobState, NewJob, Store, testkit::test_databases};

const LEASE: Duration = Duration::from_secs(30);

/// Every kind these tests enqueue.
fn kinds() -> JobKinds {
    JobKinds::new(["t", "nightly", "bulk"])
}

async fn enqueue(store: &Store, job: NewJob) -> Enqueued {
    let mut tx = store.platform().await.unwrap();
    let result = tx.enqueue(job).await.unwrap();
    tx.commit().await.unwrap();
    result
}

#[tokio::test]
async fn enqueue_is_transactional_and_deduplicated() {
    for db in test_databases().await {
        let store = db.store().await;
        let mut tx = store.platform().await.unwrap();
        tx.enqueue(NewJob::new("t", ()).unwrap()).await.unwrap();
        tx.rollback().await.unwrap();
        assert!(
            store
                .claim_jobs("w", &kinds(), 10, LEASE, Timestamp::now())
                .await
                .unwrap()
                .is_empty()
        );

        let first = enqueue(&store, NewJob::new("t", 1).unwrap().dedupe_key("k")).await;
        assert!(matches!(first, Enqueued::Created(_)));
        let again = enqueue(&store, NewJob::new("t", 2).unwrap().dedupe_key("k")).await;
        assert_eq!(again, Enqueued::Duplicate, "{:?}", db.flavor);

        // Still deduplicating once done, until pruned.
        let claimed = store
            .claim_jobs("w", &kinds(), 10, LEASE, Timestamp::now())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].payload, serde_json::json!(1));
        let mut tx = store.platform().await.unwrap();
        tx.complete_job(&claimed[0]).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            enqueue(&store, NewJob::new("t", 3).unwrap().dedupe_key("k")).await,
            Enqueued::Duplicate
        );
        assert_eq!(
            store
                .prune_done_jobs(Timestamp::now().plus(Duration::from_secs(1)))
                .await
                .unwrap(),
            1
        );
        assert!(matches!(
            enqueue(&store, NewJob::new("t", 4).unwrap().dedupe_key("k")).await,
            Enqueued::Created(_)
        ));
    }
}

#[tokio::test]
async fn leases_hide_jobs_and_expire_and_fence_stale_workers() {
    for db in test_databases().await {
        let store = db.store().await;
        let Enqueued::Created(id) = enqueue(&store, NewJob::new("t", ()).unwrap()).await else {
            panic!("not created")
        };
        let now = Timestamp::now();
        let first = store
            .claim_jobs("a", &kinds(), 10, LEASE, now)
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].attempts, 1);
        // Leased: invisible to others until the lease runs out.
        assert!(
            store
                .claim_jobs("b", &kinds(), 10, LEASE, now)
                .await
                .unwrap()
                .is_empty()
        );
        let after_expiry = now.plus(LEASE).plus(Duration::from_millis(1));
        let second = store
            .claim_jobs("b", &kinds(), 10, LEASE, after_expiry)
            .await
            .unwrap();
        assert_eq!(second.len(), 1, "{:?}", db.flavor);
        assert_eq!((second[0].id, second[0].attempts), (id, 2));

        // The first worker woke up late: it can neither complete nor fail the job.
        let mut tx = store.platform().await.unwrap();
        assert_eq!(
            tx.complete_job(&first[0]).await.unwrap_err().code(),
            ErrorCode::Conflict
        );
        tx.rollback().await.unwrap();
        assert_eq!(
            store
                .fail_job(&first[0], "late", None)
                .await
                .unwrap_err()
                .code(),
            ErrorCode::Conflict
        );

        let mut tx = store.platform().await.unwrap();
        tx.complete_job(&second[0]).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            store.get_job(id).await.unwrap_err().code(),
            ErrorCode::NotFound
        );
    }
}

#[tokio::test]
async fn delayed_jobs_wait_for_their_time() {
    for db in test_databases().await {
        let store = db.store().await;
        let later = Timestamp::now().plus(Duration::from_secs(60));
        enqueue(&store, NewJob::new("t", ()).unwrap().run_at(later)).await;
        assert!(
            store
                .claim_jobs("w", &kinds(), 10, LEASE, Timestamp::now())
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .claim_jobs("w", &kinds(), 10, LEASE, later)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}

#[tokio::test]
async fn failures_retry_then_dead_letter_and_replay() {
    for db in test_databases().await {
        let store = db.store().await;
        let Enqueued::Created(id) =
            enqueue(&store, NewJob::new("t", ()).unwrap().max_attempts(2)).await
        else {
            panic!()
        };
        let now = Timestamp::now();
        let job = store
            .claim_jobs("w", &kinds(), 1, LEASE, now)
            .await
            .unwrap()
            .remove(0);
        let retry_at = now.plus(Duration::from_secs(5));
        assert_eq!(
            store.fail_job(&job, "boom", Some(retry_at)).await.unwrap(),
            JobState::Pending
        );
        let record = store.get_job(id).await.unwrap();
        assert_eq!(
            (record.run_at, record.last_error.as_deref()),
            (retry_at, Some("boom"))
        );
        assert!(
            store
                .claim_jobs("w", &kinds(), 1, LEASE, now)
                .await
                .unwrap()
                .is_empty()
        );

        let job = store
            .claim_jobs("w", &kinds(), 1, LEASE, retry_at)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(job.attempts, 2);
        assert_eq!(
            store.fail_job(&job, "boom again", None).await.unwrap(),
            JobState::Dead
        );
        let dead = store.list_jobs(Some(JobState::Dead), 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, id);
        assert!(
            store
                .claim_jobs("w", &kinds(), 1, LEASE, retry_at.plus(LEASE))
                .await
                .unwrap()
                .is_empty()
        );
        let stats = store.queue_stats().await.unwrap();
        assert!(
            stats
                .iter()
                .any(|s| s.state == JobState::Dead && s.count == 1)
        );

        let replayed = store.replay_job(id).await.unwrap();
        assert_eq!((replayed.state, replayed.attempts), (JobState::Pending, 0));
        assert_eq!(
            store.replay_job(id).await.unwrap_err().code(),
            ErrorCode::Conflict
        );
        let job = store
            .claim_jobs("w", &kinds(), 1, LEASE, Timestamp::now())
            .await
            .unwrap()
            .remove(0);
        assert_eq!(job.attempts, 1, "{:?}", db.flavor);
    }
}

#[tokio::test]
async fn release_and_heartbeat_act_only_on_the_owners_leases() {
    for db in test_databases().await {
        let store = db.store().await;
        for _ in 0..3 {
            enqueue(&store, NewJob::new("t", ()).unwrap()).await;
        }
        let now = Timestamp::now();
        let mine = store
            .claim_jobs("me", &kinds(), 2, LEASE, now)
            .await
            .unwrap();
        let theirs = store
            .claim_jobs("them", &kinds(), 2, LEASE, now)
            .await
            .unwrap();
        assert_eq!((mine.len(), theirs.len()), (2, 1));
        let until = now.plus(LEASE * 4);
        assert!(store.extend_lease(&mine[0], until).await.unwrap());
        let mut forged = theirs[0].clone();
        forged.lease_owner = "me".into();
        assert!(
            !store.extend_lease(&forged, until).await.unwrap(),
            "extended a lease it does not hold"
        );
        assert_eq!(store.get_job(mine[0].id).await.unwrap().run_at, until);
        assert!(store.get_job(mine[1].id).await.unwrap().run_at < until);
        assert_eq!(store.release_jobs("me").await.unwrap(), 2);
        let released = store.get_job(mine[1].id).await.unwrap();
        assert_eq!(released.attempts, 0, "a released attempt does not count");
        let again = store
            .claim_jobs("other", &kinds(), 10, LEASE, Timestamp::now())
            .await
            .unwrap();
        assert_eq!(again.len(), 2, "{:?}", db.flavor);
    }
}

#[tokio::test]
async fn concurrent_claimers_complete_every_job_exactly_once() {
    const JOBS: usize = 600;
    for db in test_databases().await {
        let setup = db.store().await;
        let mut tx = setup.platform().await.unwrap();
        for i in 0..JOBS {
            tx.enqueue(NewJob::new("t", i).unwrap()).await.unwrap();
        }
        tx.commit().await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        // Eight workers over two pools, as two processes would be.
        let pools = [db.store().await, db.store().await];
        for w in 0..8 {
            let store = pools[w % 2].clone();
            let seen = seen.clone();
            workers.push(tokio::spawn(async move {
                let owner = format!("w{w}");
                loop {
                    let jobs = store
                        .claim_jobs(&owner, &kinds(), 4, LEASE, Timestamp::now())
                        .await
                        .unwrap();
                    if jobs.is_empty() {
                        break;
                    }
                    for job in jobs {
                        let mut tx = store.platform().await.unwrap();
                        tx.complete_job(&job).await.unwrap();
                        tx.commit().await.unwrap();
                        seen.lock().unwrap().push(job.payload.as_u64().unwrap());
                    }
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(seen.len(), JOBS, "{:?}: duplicates or losses", db.flavor);
        assert_eq!(unique.len(), JOBS);
        assert!(setup.list_jobs(None, 10).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_recurring_period_fires_once_across_processes() {
    for db in test_databases().await {
        let (a, b) = (db.store().await, db.store().await);
        let period = Timestamp::from_millis(1_000_000);
        let job = || NewJob::new("nightly", ()).unwrap();
        let mut fired = 0;
        for _ in 0..10 {
            let (x, y) = tokio::join!(
                a.fire_schedule("nightly", period, job()),
                b.fire_schedule("nightly", period, job())
            );
            fired += usize::from(x.unwrap().is_some()) + usize::from(y.unwrap().is_some());
        }
        assert_eq!(fired, 1, "{:?}", db.flavor);
        let next = Timestamp::from_millis(2_000_000);
        assert!(
            a.fire_schedule("nightly", next, job())
                .await
                .unwrap()
                .is_some()
        );
        // An older period never fires again.
        assert!(
            b.fire_schedule("nightly", period, job())
                .await
                .unwrap()
                .is_none()
        );
        let jobs = a.list_jobs(None, 10).await.unwrap();
        assert_eq!(jobs.len(), 2);
    }
}

#[tokio::test]
async fn many_jobs_enqueue_in_one_statement_and_still_deduplicate() {
    for db in test_databases().await {
        let store = db.store().await;
        let mut tx = store.platform().await.unwrap();
        let jobs = (0..300)
            .map(|i| NewJob::new("bulk", i).unwrap())
            .chain([NewJob::new("bulk", "k").unwrap().dedupe_key("k")])
            .collect();
        assert_eq!(tx.enqueue_many(jobs).await.unwrap(), 301);
        let again = vec![
            NewJob::new("bulk", "k2").unwrap().dedupe_key("k"),
            NewJob::new("bulk", "new").unwrap(),
        ];
        assert_eq!(tx.enqueue_many(again).await.unwrap(), 1, "{:?}", db.flavor);
        tx.commit().await.unwrap();
        let claimed = store
            .claim_jobs("w", &kinds(), 1000, LEASE, Timestamp::now())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 302);
    }
}
