//! A store that stops taking writes: nothing is acknowledged that is not committed,
//! the failure shows on `/metrics`, and everything acknowledged survives a reopen.
//! Runs on SQLite (a full disk by `max_page_count`) here and on PostgreSQL (a failing
//! `COMMIT`) in `postgres.rs`.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Publish, QoS};
use tokio_util::sync::CancellationToken;
use warden_fleet::broker::{LocalPublisher, Router};
use warden_fleet::store::Store;
use warden_wire::topics::{ALL_TELEMETRY, Ack, ack_topic, telemetry_topic};
use warden_wire::topics::{Reading, TelemetryBatch};

/// Readings per batch: enough to need new pages of a SQLite file.
const READINGS: usize = 200;

/// Batch 1 is one 64 KiB text reading: a single-row insert, whose SQLITE_FULL makes
/// SQLite roll back the whole transaction (sqlx's `ROLLBACK` then fails and its depth
/// counter stays at 1). The others have [`READINGS`] readings: a multi-row insert,
/// whose SQLITE_FULL rolls back only the statement. Those two failures in that order
/// left the writer inside a transaction that never committed.
fn big_batch(seq: u64) -> TelemetryBatch {
    let readings = if seq == 1 {
        vec![Reading::text(
            "line1/serial".into(),
            "x".repeat(64 * 1024),
            String::new(),
            1_000 * seq,
        )]
    } else {
        (0..READINGS)
            .map(|i| {
                Reading::number(
                    format!("line1/point-{i:03}-{}", "x".repeat(40)),
                    1.0,
                    "bar".into(),
                    1_000 * seq,
                )
            })
            .collect()
    };
    TelemetryBatch {
        v: 1,
        stream: "telemetry".into(),
        epoch: 7,
        seq,
        readings,
    }
}

/// `/metrics` of `address` as (name, value) pairs.
async fn metrics(address: std::net::SocketAddr) -> Vec<(String, f64)> {
    let text = reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("get /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn metric(all: &[(String, f64)], name: &str) -> f64 {
    all.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("{name} missing from /metrics: {all:?}"))
}

/// Waits until `count` batches were withheld (the ingest loop has handled them).
async fn withheld(store: &Store, count: u64) {
    for _ in 0..200 {
        if store.health().batches_withheld >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{count} batches not withheld: {:?}", store.health());
}

async fn next_ack(acks: &mut tokio::sync::mpsc::Receiver<Publish>) -> u64 {
    let publish = tokio::time::timeout(Duration::from_secs(10), acks.recv())
        .await
        .expect("an ack within 10 s")
        .expect("ack subscription open");
    Ack::decode(&publish.payload).expect("ack").seq
}

/// Drives `store` (at `url`) through the ingest loop: a batch stored, then `fail`
/// (run on every writer connection) makes two batches fail — neither acknowledged,
/// one failure episode on `/metrics` — then `recover` lets the resent and a new batch
/// through. After a reopen, exactly the acknowledged batches are there.
pub async fn unstored_batches_are_not_acknowledged(
    store: Store,
    url: &str,
    fail: &str,
    recover: &str,
) {
    let router = Arc::new(Router::default());
    let telemetry = router.subscribe_local(ALL_TELEMETRY, 64);
    let mut acks = router.subscribe_local(&ack_topic("wd-1"), 64);
    let shutdown = CancellationToken::new();
    let ingest = tokio::spawn(warden_fleet::ingest::run(
        store.clone(),
        telemetry,
        LocalPublisher::new(Arc::clone(&router)),
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let served = tokio::spawn(
        axum::serve(listener, warden_fleet::metrics::router(store.clone(), None)).into_future(),
    );
    let send = |seq: u64| {
        let router = Arc::clone(&router);
        async move {
            let payload = serde_json::to_vec(&big_batch(seq)).expect("encode");
            router
                .route(&Publish::new(
                    telemetry_topic("wd-1"),
                    QoS::AtLeastOnce,
                    payload,
                ))
                .await;
        }
    };

    send(0).await;
    assert_eq!(next_ack(&mut acks).await, 0);
    let before = metrics(address).await;
    assert_eq!(metric(&before, "warden_fleet_store_writable"), 1.0);
    assert_eq!(
        metric(&before, "warden_fleet_telemetry_batches_stored_total"),
        1.0
    );

    store
        .set_writer_pragma(fail)
        .await
        .expect("make writes fail");
    send(1).await;
    withheld(&store, 1).await;
    send(2).await;
    withheld(&store, 2).await;
    // An ack is published before the loop takes the next batch: none is queued.
    assert!(
        acks.try_recv().is_err(),
        "a batch that was not committed was acknowledged"
    );
    let failing = metrics(address).await;
    assert_eq!(metric(&failing, "warden_fleet_store_writable"), 0.0);
    assert_eq!(
        metric(&failing, "warden_fleet_store_failure_episodes_total"),
        1.0
    );
    assert_eq!(
        metric(&failing, "warden_fleet_store_write_failures_total"),
        2.0
    );
    assert_eq!(
        metric(&failing, "warden_fleet_telemetry_batches_withheld_total"),
        2.0
    );

    store.set_writer_pragma(recover).await.expect("recover");
    // The device resends what was not acknowledged; batch 2 it has not resent yet.
    send(1).await;
    assert_eq!(next_ack(&mut acks).await, 1);
    send(3).await;
    assert_eq!(next_ack(&mut acks).await, 3);
    let after = metrics(address).await;
    assert_eq!(metric(&after, "warden_fleet_store_writable"), 1.0);
    assert_eq!(
        metric(&after, "warden_fleet_store_failure_episodes_total"),
        1.0
    );
    assert_eq!(
        metric(&after, "warden_fleet_telemetry_batches_stored_total"),
        3.0
    );

    shutdown.cancel();
    ingest.await.expect("ingest loop");
    served.abort();
    store.close().await;
    let store = Store::open(url).await.expect("reopen");
    let readings = store
        .telemetry("wd-1", None, 10 * READINGS as i64)
        .await
        .expect("readings");
    let mut times: Vec<i64> = readings.iter().map(|r| r.ts_ms).collect();
    times.sort_unstable();
    times.dedup();
    assert_eq!(
        times,
        [0, 1_000, 3_000],
        "exactly the acknowledged batches survive"
    );
    assert_eq!(readings.len(), 2 * READINGS + 1);
    store.close().await;
}

#[tokio::test]
async fn a_full_disk_withholds_acks_and_shows_on_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
    let store = Store::open(&url).await.expect("open");
    unstored_batches_are_not_acknowledged(
        store,
        &url,
        // A limit below the file's size means its size: it may not grow.
        "PRAGMA max_page_count=1",
        "PRAGMA max_page_count=4294967294",
    )
    .await;
}

#[tokio::test]
async fn the_fleet_serves_metrics_without_a_token_on_its_own_listener() {
    let fx = super::fleet_with(None, |config| {
        config.metrics.listen = Some("127.0.0.1:0".into());
    })
    .await;
    let address = fx.fleet.metrics_address.expect("metrics listener");
    let response = reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(text.contains("\nwarden_fleet_store_writable 1\n"), "{text}");
    assert!(
        text.contains("\nwarden_fleet_connected_devices 0\n"),
        "{text}"
    );
    // Not on the API's listener any more.
    let response = reqwest::get(fx.url("/metrics")).await.expect("get");
    assert_eq!(response.status(), 404);
    fx.stop().await;
}
