//! The same contracts against a real PostgreSQL, started by the test on a temporary
//! directory and a loopback port (Debian's `postgresql` package; run as root, the
//! server runs as the `postgres` user).

use warden_test_support::postgres::TemporaryPostgres;

#[tokio::test]
#[ignore = "needs postgresql (Debian package `postgresql`; .ci/run installs it)"]
async fn every_contract_holds_on_postgresql() {
    let postgres = TemporaryPostgres::start();
    // One database, used in turn: each fixture's rows stay apart by their names, and
    // the migrations run once then are found applied.
    let fx = super::fleet_on(Some(postgres.url().to_owned())).await;
    super::registry::registration_contract(&fx).await;
    fx.stop().await;

    let database = |name: &str| postgres.create_database(name);
    let fx = super::fleet_on(Some(database("reports"))).await;
    super::reports::reports_contract(&fx).await;
    fx.stop().await;
    let fx = super::fleet_on(Some(database("rollout"))).await;
    super::rollout::rollout_contract(&fx).await;
    fx.stop().await;
    let fx = super::fleet_on(Some(database("challenges"))).await;
    super::attestation::challenge_restart_contract(fx)
        .await
        .stop()
        .await;
    let fx = super::fleet_with(
        Some(database("lapse")),
        super::attestation::lapse_after_two_seconds,
    )
    .await;
    super::attestation::trust_lapse_contract(&fx).await;
    fx.stop().await;
    let fx = super::fleet_on(Some(database("twins"))).await;
    super::twin::twin_order_contract(&fx).await;
    fx.stop().await;
    super::telemetry::telemetry_store_contract(&database("telemetry")).await;
    let fx = super::fleet_on(Some(database("dashboard"))).await;
    let _fed = super::dashboard::dashboard_contract(&fx).await;
    fx.stop().await;
    let fx = super::fleet_on(Some(database("revocations"))).await;
    super::revocations::revocation_list_contract(&fx).await;
    fx.stop().await;
}

/// A failed `COMMIT` on PostgreSQL: a deferred constraint trigger on
/// `telemetry_batches` raises `disk_full` at commit while `warden_test_fault` says so.
/// The batch is not acknowledged, and what is acknowledged after recovery is durable.
#[tokio::test]
#[ignore = "needs postgresql (Debian package `postgresql`; .ci/run installs it)"]
async fn a_failed_commit_on_postgresql_is_not_acknowledged() {
    use sqlx::Connection as _;
    let postgres = TemporaryPostgres::start();
    let store = warden_fleet::store::Store::open(postgres.url())
        .await
        .expect("open");
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(postgres.url())
        .await
        .expect("connect");
    for statement in [
        "CREATE TABLE warden_test_fault (fail BOOLEAN NOT NULL)",
        "INSERT INTO warden_test_fault VALUES (false)",
        "CREATE FUNCTION warden_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF (SELECT fail FROM warden_test_fault) THEN
                 RAISE EXCEPTION 'could not extend file: no space left on device (simulated)'
                     USING ERRCODE = 'disk_full';
             END IF;
             RETURN NULL;
         END $$",
        "CREATE CONSTRAINT TRIGGER warden_test_fault AFTER INSERT ON telemetry_batches
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION warden_test_fault()",
    ] {
        sqlx::query(statement)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let _ = admin.close().await;
    super::store_failure::unstored_batches_are_not_acknowledged(
        store,
        postgres.url(),
        "UPDATE warden_test_fault SET fail = true",
        "UPDATE warden_test_fault SET fail = false",
    )
    .await;
}

/// What instances share: a session's end removes only that session's presence, a
/// message is queued for the holding instance only and taken once, in order, and a
/// silent instance is reaped with its sessions and its queue.
#[tokio::test]
#[ignore = "needs postgresql (Debian package `postgresql`; .ci/run installs it)"]
async fn instances_share_presence_and_deliveries_on_postgresql() {
    let postgres = TemporaryPostgres::start();
    let store = warden_fleet::store::Store::open(&postgres.create_database("cluster"))
        .await
        .expect("store");
    for instance in ["a", "b"] {
        store.register_instance(instance).await.expect("register");
    }
    store
        .set_present("wd-1", "a", 1, "04aa")
        .await
        .expect("present");
    // The device reconnects to b; a's old session ends afterwards.
    store
        .set_present("wd-1", "b", 7, "04bb")
        .await
        .expect("present");
    store.set_absent("wd-1", "a", 1).await.expect("absent");
    let presence = store
        .presence("wd-1")
        .await
        .expect("presence")
        .expect("online");
    assert_eq!(presence.instance_id, "b");
    assert_eq!(presence.public_key_hex, "04bb");
    assert_eq!(store.online_devices().await.expect("online"), ["wd-1"]);

    // Queued for b (the holder); nothing when the sender is the holder or nobody is.
    assert!(
        store
            .queue_for_device("wd-1", "a", "t/1", b"one")
            .await
            .expect("queue")
    );
    assert!(
        store
            .queue_for_device("wd-1", "a", "t/2", b"two")
            .await
            .expect("queue")
    );
    assert!(
        !store
            .queue_for_device("wd-1", "b", "t/3", b"x")
            .await
            .expect("queue")
    );
    assert!(
        !store
            .queue_for_device("wd-9", "a", "t/4", b"x")
            .await
            .expect("queue")
    );
    assert!(
        store
            .take_deliveries("a", 10)
            .await
            .expect("take")
            .is_empty()
    );
    let taken = store.take_deliveries("b", 10).await.expect("take");
    let topics: Vec<&str> = taken.iter().map(|d| d.topic.as_str()).collect();
    assert_eq!(topics, ["t/1", "t/2"]);
    assert_eq!(taken[0].payload, b"one");
    assert_eq!(taken[0].origin, "a");
    assert!(
        store
            .take_deliveries("b", 10)
            .await
            .expect("take")
            .is_empty(),
        "taken once"
    );

    // b falls silent: reaped with its sessions and its queue; a beats on.
    store
        .queue_for_instance("b", "a", "t/5", b"x")
        .await
        .expect("queue");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(store.heartbeat("a").await.expect("beat"));
    let dead = store.reap_dead_instances(200).await.expect("reap");
    assert_eq!(dead, ["b"]);
    assert!(store.presence("wd-1").await.expect("presence").is_none());
    assert!(
        store
            .take_deliveries("b", 10)
            .await
            .expect("take")
            .is_empty()
    );
    assert!(
        !store.heartbeat("b").await.expect("beat"),
        "b must register again"
    );
    assert!(store.heartbeat("a").await.expect("beat"));
    store.leave_cluster("a").await.expect("leave");
    assert!(!store.heartbeat("a").await.expect("beat"));
    store.close().await;
}

/// `database_replica_url`: the dashboard's read-only queries come from the replica
/// (here a second database with the same schema and its own rows, so where an answer
/// came from shows), writes and the reads that decide something stay on the primary,
/// and an unreachable replica sends those reads to the primary.
#[tokio::test]
#[ignore = "needs postgresql (Debian package `postgresql`; .ci/run installs it)"]
async fn dashboard_reads_come_from_the_replica_on_postgresql() {
    use warden_fleet::store::Store;
    use warden_wire::topics::{Reading, TelemetryBatch};
    let batch = |value: f64| TelemetryBatch {
        v: 1,
        stream: "telemetry".into(),
        epoch: 1,
        seq: 0,
        readings: vec![Reading::number(
            "line1/p".into(),
            value,
            "bar".into(),
            1_000,
        )],
    };
    let postgres = TemporaryPostgres::start();
    let primary_url = postgres.create_database("primary");
    let replica_url = postgres.create_database("replica");
    let replica_side = Store::open(&replica_url).await.expect("replica schema");
    replica_side
        .ingest("wd-on-replica", &batch(1.0), 1)
        .await
        .expect("replica row");

    let store = Store::open(&primary_url)
        .await
        .expect("primary")
        .with_replica(&replica_url)
        .expect("replica");
    store
        .ingest("wd-on-primary", &batch(2.0), 2)
        .await
        .expect("ingest");
    let ids = |devices: Vec<warden_wire::fleet_api::Device>| {
        devices.into_iter().map(|d| d.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.devices_page(0, 10).await.expect("page")),
        ["wd-on-replica"],
        "listings read the replica"
    );
    let rows = store.device_page("", 0, 10).await.expect("dashboard rows");
    assert_eq!(
        rows.iter()
            .map(|r| r.device_id.as_str())
            .collect::<Vec<_>>(),
        ["wd-on-replica"]
    );
    assert_eq!(
        store.latest_values("wd-on-replica").await.expect("latest")[0].number(),
        Some(1.0)
    );
    assert!(
        store
            .telemetry("wd-on-primary", None, 10)
            .await
            .expect("series")
            .is_empty(),
        "the replica has not seen the primary's write (a real standby lags like this)"
    );
    assert_eq!(
        store
            .fleet_counts()
            .await
            .expect("counts")
            .unregistered_seen,
        1
    );
    // Writes went to the primary only; reads that decide something read it.
    assert!(store.device_exists("wd-on-primary").await.expect("exists"));
    assert!(
        store
            .seen_device("wd-on-primary")
            .await
            .expect("seen")
            .is_some()
    );
    assert!(
        !replica_side
            .device_exists("wd-on-primary")
            .await
            .expect("exists")
    );
    store.close().await;

    // A replica nobody answers on: the same reads come from the primary.
    let closed = warden_test_support::ports::free_port();
    let store = Store::open(&primary_url)
        .await
        .expect("primary")
        .with_replica(&format!("postgres://warden@127.0.0.1:{closed}/replica"))
        .expect("replica (lazy)");
    assert_eq!(
        ids(store.devices_page(0, 10).await.expect("page")),
        ["wd-on-primary"]
    );
    store.close().await;
    replica_side.close().await;

    // SQLite has no replicas.
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Store::open(&format!("sqlite://{}", dir.path().join("f.db").display()))
        .await
        .expect("sqlite");
    let refused = sqlite
        .with_replica(&replica_url)
        .expect_err("a replica beside SQLite");
    assert!(
        refused.to_string().contains("needs PostgreSQL"),
        "{refused}"
    );
}
