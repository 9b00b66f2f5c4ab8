//! The telemetry store's contract on a given database: grouped ingest with duplicates,
//! latest values, read-time ranges and retention by receive time. Runs on SQLite here
//! and on PostgreSQL in `postgres.rs`.

use warden_fleet::store::{Ingested, Store};
use warden_wire::topics::{Reading, TelemetryBatch};

fn reading(point: &str, value: f64, ts_ms: u64) -> Reading {
    Reading::number(point.into(), value, "bar".into(), ts_ms)
}

fn batch(seq: u64, readings: Vec<Reading>) -> TelemetryBatch {
    TelemetryBatch {
        v: 1,
        stream: "telemetry".into(),
        epoch: 3,
        seq,
        readings,
    }
}

const DAY_MS: i64 = 24 * 3600 * 1000;

pub async fn telemetry_store_contract(url: &str) {
    let store = Store::open(url).await.expect("open");
    let first = batch(
        0,
        vec![
            // The same point twice in one batch, read later first: the later read wins.
            reading("line1/p", 2.0, 2_000),
            reading("line1/p", 1.0, 1_000),
            Reading::text("line1/serial".into(), "AB-17".into(), "bar".into(), 1_000),
        ],
    );
    let second = batch(1, vec![reading("line1/p", 3.0, 3_000)]);
    let other = batch(0, vec![reading("line1/p", 9.0, 500)]);
    // One group: a batch twice, and another device's batch with the same key.
    let outcomes = store
        .ingest_many(
            &[
                ("wd-a", &first),
                ("wd-a", &second),
                ("wd-a", &first),
                ("wd-b", &other),
            ],
            10 * DAY_MS,
        )
        .await
        .expect("ingest group");
    assert_eq!(
        outcomes,
        [
            Ingested::Stored,
            Ingested::Stored,
            Ingested::Duplicate,
            Ingested::Stored
        ]
    );
    // Redelivered in a later group: refused as a duplicate, nothing stored twice.
    assert_eq!(
        store
            .ingest_many(&[("wd-a", &second)], 11 * DAY_MS)
            .await
            .expect("ingest"),
        [Ingested::Duplicate]
    );
    let series = store
        .telemetry("wd-a", Some("line1/p"), 100)
        .await
        .expect("series");
    let values: Vec<f64> = series
        .iter()
        .map(|r| r.number().expect("a number"))
        .collect();
    assert_eq!(values, [3.0, 2.0, 1.0], "newest first, each once");
    let latest = store.latest_values("wd-a").await.expect("latest");
    let by_point = |point: &str| {
        latest
            .iter()
            .find(|r| r.point == point)
            .unwrap_or_else(|| panic!("{point} in {latest:?}"))
    };
    assert_eq!(by_point("line1/p").number(), Some(3.0));
    assert_eq!(by_point("line1/serial").text(), Some("AB-17"));
    assert_eq!(by_point("line1/serial").number(), None);
    // Every device with its own latest values (one query for all of them).
    let devices = store.devices().await.expect("devices");
    let summary: Vec<(&str, Vec<&str>)> = devices
        .iter()
        .map(|d| {
            (
                d.id.as_str(),
                d.latest.iter().map(|r| r.point.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("wd-a", vec!["line1/p", "line1/serial"]),
            ("wd-b", vec!["line1/p"])
        ]
    );
    assert_eq!(devices[1].latest[0].number(), Some(9.0));
    let second = store.devices_page(1, 5).await.expect("page");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, "wd-b");
    assert_eq!(second[0].latest.len(), 1, "only its own latest values");
    let between = store
        .telemetry_between("wd-a", None, 1_000..3_000, 100)
        .await
        .expect("range");
    assert_eq!(between.len(), 3, "{between:?}");
    assert!(between.iter().all(|r| (1_000..3_000).contains(&r.ts_ms)));

    // Values that must survive however the store carries them (PostgreSQL takes a
    // group as array literals): quotes, backslashes, braces, commas, the word NULL, an
    // empty text, non-ASCII, flags, extreme numbers; and a tie in read time, which the
    // reading that came last wins.
    let awkward = [
        "say \"hi\"",
        "C:\\path\\",
        "{a,b}",
        "NULL",
        "",
        "Grüße, 温度",
    ];
    let mut readings: Vec<Reading> = awkward
        .iter()
        .enumerate()
        .map(|(i, text)| {
            Reading::text(
                format!("odd/{i}"),
                (*text).to_owned(),
                "\"u\"".into(),
                1_000,
            )
        })
        .collect();
    for (point, value) in [
        ("odd/huge", 1e300),
        ("odd/tiny", 5e-324),
        ("odd/negative", -0.1),
    ] {
        readings.push(reading(point, value, 1_000));
    }
    readings.push(Reading::new(
        "odd/flag".into(),
        warden_wire::value::Value::Bool(true),
        String::new(),
        1_000,
    ));
    readings.push(reading("odd/tie", 1.0, 1_000));
    readings.push(reading("odd/tie", 2.0, 1_000));
    let odd = batch(0, readings);
    assert_eq!(
        store
            .ingest_many(&[("wd-\"c\"", &odd)], 20 * DAY_MS)
            .await
            .expect("ingest awkward values"),
        [Ingested::Stored]
    );
    let latest = store.latest_values("wd-\"c\"").await.expect("latest");
    let value = |point: &str| {
        latest
            .iter()
            .find(|r| r.point == point)
            .unwrap_or_else(|| panic!("{point} in {latest:?}"))
    };
    for (i, text) in awkward.iter().enumerate() {
        let stored = value(&format!("odd/{i}"));
        assert_eq!(stored.text(), Some(*text));
        assert_eq!(stored.unit, "\"u\"");
    }
    assert_eq!(value("odd/huge").number(), Some(1e300));
    assert_eq!(value("odd/tiny").number(), Some(5e-324));
    assert_eq!(value("odd/negative").number(), Some(-0.1));
    assert_eq!(
        value("odd/flag").value,
        warden_wire::value::Value::Bool(true)
    );
    assert_eq!(value("odd/tie").number(), Some(2.0), "the later of a tie");
    assert_eq!(
        store
            .telemetry("wd-\"c\"", None, 100)
            .await
            .expect("series")
            .len(),
        12
    );

    // A later batch whose device clock reads 1970 but which arrived recently.
    store
        .ingest_many(
            &[("wd-a", &batch(2, vec![reading("line1/p", 4.0, 7)]))],
            40 * DAY_MS,
        )
        .await
        .expect("ingest");
    // Keep 30 days at day 41: the batches received on days 10 and 11 go.
    let pruned = store.prune_telemetry(11 * DAY_MS).await.expect("prune");
    assert_eq!(pruned, 5, "every reading received on day 10");
    let left = store.telemetry("wd-a", None, 100).await.expect("series");
    assert_eq!(
        left.iter()
            .map(|r| r.number().expect("a number"))
            .collect::<Vec<_>>(),
        [4.0],
        "read in 1970, received recently: kept"
    );
    assert_eq!(
        store.latest_values("wd-a").await.expect("latest").len(),
        2,
        "latest values stay"
    );
    store.close().await;
}

#[tokio::test]
async fn telemetry_contract_holds_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
    telemetry_store_contract(&url).await;
}
