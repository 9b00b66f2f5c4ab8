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
