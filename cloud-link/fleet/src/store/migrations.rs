//! The store's schema: numbered migrations, applied in order, each exactly once.
//!
//! Each is the same SQL on SQLite and PostgreSQL unless a backend needs its own text.

/// A schema change: the same SQL on both databases, or one text for each.
pub(super) enum Migration {
    /// Statements both SQLite and PostgreSQL run.
    Both(&'static str),
    /// Statements per database (SQLite cannot drop a column's NOT NULL in place).
    PerBackend {
        /// For SQLite.
        sqlite: &'static str,
        /// For PostgreSQL.
        postgres: &'static str,
    },
}

impl Migration {
    pub(super) fn sql(&self, sqlite: bool) -> &'static str {
        match *self {
            Self::Both(sql) => sql,
            Self::PerBackend { sqlite: lite, .. } if sqlite => lite,
            Self::PerBackend { postgres, .. } => postgres,
        }
    }
}

/// Migration 8: pending attestation challenges and answered nonces (each nonce usable
/// once, across restarts and fleet instances), the index of the trust-lapse sweep, and
/// the control-queue position of the reported twin (the newest one is kept).
const MIGRATION_8: &str = "CREATE TABLE attestation_challenges (
        device_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        issued_ms BIGINT NOT NULL,
        deadline_ms BIGINT NOT NULL,
        PRIMARY KEY (device_id, nonce)
    );
    CREATE INDEX attestation_challenges_by_deadline ON attestation_challenges (deadline_ms);
    CREATE TABLE attestation_answers (
        device_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        quote_sha256 TEXT NOT NULL,
        answered_ms BIGINT NOT NULL,
        PRIMARY KEY (device_id, nonce)
    );
    CREATE INDEX attestation_answers_by_time ON attestation_answers (answered_ms);
    CREATE INDEX registry_by_attestation ON registry (attestation, attested_ms);
    ALTER TABLE twins ADD COLUMN reported_epoch BIGINT;
    ALTER TABLE twins ADD COLUMN reported_seq BIGINT";

/// Migration 11 on SQLite: the tables of readings rebuilt with a nullable `value`
/// and a `flag` column (SQLite has no `ALTER COLUMN … DROP NOT NULL`); the 0 that
/// stood in `value` beside a text becomes NULL.
const MIGRATION_11_SQLITE: &str = "CREATE TABLE telemetry_v11 (
        device_id TEXT NOT NULL,
        point TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        value DOUBLE PRECISION,
        unit TEXT NOT NULL,
        text TEXT,
        received_ms BIGINT,
        flag BIGINT
    );
    INSERT INTO telemetry_v11 (device_id, point, ts_ms, value, unit, text, received_ms)
        SELECT device_id, point, ts_ms, CASE WHEN text IS NULL THEN value END, unit, text,
            received_ms
        FROM telemetry;
    DROP TABLE telemetry;
    ALTER TABLE telemetry_v11 RENAME TO telemetry;
    CREATE INDEX telemetry_by_point ON telemetry (device_id, point, ts_ms);
    CREATE INDEX telemetry_by_received ON telemetry (received_ms);
    CREATE TABLE latest_values_v11 (
        device_id TEXT NOT NULL,
        point TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        value DOUBLE PRECISION,
        unit TEXT NOT NULL,
        text TEXT,
        flag BIGINT,
        PRIMARY KEY (device_id, point)
    );
    INSERT INTO latest_values_v11 (device_id, point, ts_ms, value, unit, text)
        SELECT device_id, point, ts_ms, CASE WHEN text IS NULL THEN value END, unit, text
        FROM latest_values;
    DROP TABLE latest_values;
    ALTER TABLE latest_values_v11 RENAME TO latest_values";

/// Migration 11 on PostgreSQL: the same change in place.
const MIGRATION_11_POSTGRES: &str = "ALTER TABLE telemetry ALTER COLUMN value DROP NOT NULL;
    ALTER TABLE telemetry ADD COLUMN flag BIGINT;
    UPDATE telemetry SET value = NULL WHERE text IS NOT NULL;
    ALTER TABLE latest_values ALTER COLUMN value DROP NOT NULL;
    ALTER TABLE latest_values ADD COLUMN flag BIGINT;
    UPDATE latest_values SET value = NULL WHERE text IS NOT NULL";

/// Migration 13's tables, shared by both backends but the queue's key.
macro_rules! migration_13 {
    ($queue_id:literal, $payload:literal) => {
        concat!(
            "CREATE TABLE fleet_instances (
        instance_id TEXT PRIMARY KEY,
        started_ms BIGINT NOT NULL,
        heartbeat_ms BIGINT NOT NULL
    );
    CREATE TABLE device_presence (
        device_id TEXT PRIMARY KEY,
        instance_id TEXT NOT NULL,
        session BIGINT NOT NULL,
        public_key TEXT NOT NULL,
        connected_ms BIGINT NOT NULL
    );
    CREATE INDEX device_presence_by_instance ON device_presence (instance_id);
    CREATE TABLE device_deliveries (
        id ",
            $queue_id,
            ",
        instance_id TEXT NOT NULL,
        origin TEXT NOT NULL,
        topic TEXT NOT NULL,
        payload ",
            $payload,
            " NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE INDEX device_deliveries_by_instance ON device_deliveries (instance_id, id)"
        )
    };
}
const MIGRATION_13_SQLITE: &str = migration_13!("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB");
const MIGRATION_13_POSTGRES: &str = migration_13!("BIGSERIAL PRIMARY KEY", "BYTEA");

/// Numbered schema migrations, applied in order, each exactly once.
pub(super) const MIGRATIONS: &[(i64, Migration)] = &[
    (
        1,
        Migration::Both(
            "CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        first_seen_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL
    );
    CREATE TABLE telemetry_batches (
        device_id TEXT NOT NULL,
        stream TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        PRIMARY KEY (device_id, stream, epoch, seq)
    );
    CREATE TABLE telemetry (
        device_id TEXT NOT NULL,
        point TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        unit TEXT NOT NULL
    );
    CREATE INDEX telemetry_by_point ON telemetry (device_id, point, ts_ms);
    CREATE TABLE latest_values (
        device_id TEXT NOT NULL,
        point TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        unit TEXT NOT NULL,
        PRIMARY KEY (device_id, point)
    );",
        ),
    ),
    (
        2,
        Migration::Both(
            "CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        request TEXT NOT NULL,
        status TEXT NOT NULL,
        detail TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        completed_ms BIGINT
    );
    CREATE INDEX commands_by_device ON commands (device_id, created_ms)",
        ),
    ),
    (
        3,
        Migration::Both(
            "CREATE TABLE twins (
        device_id TEXT PRIMARY KEY,
        desired TEXT,
        desired_ms BIGINT,
        reported TEXT,
        reported_ms BIGINT
    )",
        ),
    ),
    (
        4,
        Migration::Both(
            "CREATE TABLE products (
        name TEXT PRIMARY KEY,
        manufacturer_ca_pem TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE device_groups (
        product TEXT NOT NULL,
        name TEXT NOT NULL,
        receives_updates BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (product, name)
    );
    CREATE TABLE registry (
        device_id TEXT PRIMARY KEY,
        serial TEXT NOT NULL,
        product TEXT NOT NULL,
        device_group TEXT NOT NULL,
        certificate_pem TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        image_version TEXT NOT NULL,
        policy_version BIGINT,
        attestation TEXT NOT NULL,
        attested_ms BIGINT,
        revoked_ms BIGINT,
        registered_ms BIGINT NOT NULL
    );
    CREATE INDEX registry_by_group ON registry (product, device_group, device_id);
    CREATE TABLE audit_log (
        ts_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        status BIGINT NOT NULL
    )",
        ),
    ),
    (
        5,
        Migration::Both(
            "CREATE TABLE failure_reports (
        device_id TEXT NOT NULL,
        id TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        compartment TEXT NOT NULL,
        kind TEXT NOT NULL,
        image_version TEXT NOT NULL,
        signature TEXT NOT NULL,
        message TEXT NOT NULL,
        PRIMARY KEY (device_id, id)
    );
    CREATE INDEX failure_reports_by_signature ON failure_reports (signature, ts_ms);
    CREATE INDEX failure_reports_by_version ON failure_reports (image_version, kind);
    CREATE TABLE device_events (
        device_id TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX device_events_by_device ON device_events (device_id, ts_ms)",
        ),
    ),
    (
        6,
        Migration::Both(
            "CREATE TABLE images (
        sha256 TEXT PRIMARY KEY,
        product TEXT NOT NULL,
        version TEXT NOT NULL,
        size BIGINT NOT NULL,
        security_counter BIGINT NOT NULL,
        measurement TEXT NOT NULL,
        uploaded_ms BIGINT NOT NULL
    );
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        product TEXT NOT NULL,
        device_group TEXT NOT NULL,
        image_sha256 TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE deployment_members (
        deployment_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        wave BIGINT NOT NULL,
        PRIMARY KEY (deployment_id, device_id)
    );
    CREATE TABLE deployment_events (
        deployment_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ts_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        wave BIGINT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (deployment_id, seq)
    );
    CREATE TABLE deployment_device_states (
        deployment_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ts_ms BIGINT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX deployment_device_states_by_device
        ON deployment_device_states (deployment_id, device_id, seq)",
        ),
    ),
    (
        7,
        Migration::Both("ALTER TABLE registry ADD COLUMN attestation_detail TEXT"),
    ),
    // Pending attestation challenges and answered nonces (single use across restarts),
    // the reported twin's control-queue position, and the trust-lapse sweep's index.
    (8, Migration::Both(MIGRATION_8)),
    (
        9,
        // String points: `text` is set and `value` held 0 (the column was NOT NULL on
        // both backends); migration 11 replaces that 0 with NULL.
        Migration::Both(
            "ALTER TABLE telemetry ADD COLUMN text TEXT;
    ALTER TABLE latest_values ADD COLUMN text TEXT",
        ),
    ),
    (
        10,
        // Retention goes by when the fleet received a reading, not by the device's
        // clock (a device whose clock is not set yet stamps 1970). Rows stored before
        // this migration have none and are pruned by their read time instead.
        Migration::Both(
            "ALTER TABLE telemetry ADD COLUMN received_ms BIGINT;
    CREATE INDEX telemetry_by_received ON telemetry (received_ms)",
        ),
    ),
    (
        11,
        // One value per reading, as `warden_wire::value::Value`: a number in `value`,
        // a text in `text`, a flag (0/1) in `flag`; the other two NULL.
        Migration::PerBackend {
            sqlite: MIGRATION_11_SQLITE,
            postgres: MIGRATION_11_POSTGRES,
        },
    ),
    (
        12,
        // Whether a product's CA may enroll devices that were not registered (off: only
        // registered devices of the product connect).
        Migration::Both(
            "ALTER TABLE products ADD COLUMN open_enrollment BIGINT NOT NULL DEFAULT 0",
        ),
    ),
    (
        13,
        // Several fleet instances on one PostgreSQL (`crate::cluster`): the live
        // instances and their heartbeats, which instance holds each device's session
        // (with the key it authenticated with), and messages for a device whose session
        // another instance holds. Unused by a single instance on SQLite.
        Migration::PerBackend {
            sqlite: MIGRATION_13_SQLITE,
            postgres: MIGRATION_13_POSTGRES,
        },
    ),
    (
        14,
        // Delta images (issue #27): verified deltas stored beside the images, found by
        // the image they produce and the one they apply to.
        Migration::Both(
            "CREATE TABLE deltas (
        sha256 TEXT PRIMARY KEY,
        product TEXT NOT NULL,
        base_sha256 TEXT NOT NULL,
        result_sha256 TEXT NOT NULL,
        result_version TEXT NOT NULL,
        size BIGINT NOT NULL,
        uploaded_ms BIGINT NOT NULL
    );
    CREATE INDEX deltas_by_result ON deltas (result_sha256, base_sha256)",
        ),
    ),
    (
        15,
        // Certificate renewal (`crate::renewal`): per device, the certificate issued
        // and not yet used (accepted beside the registered one until the device first
        // connects with it) and the last outcome, for the device page.
        Migration::Both(
            "CREATE TABLE certificate_renewals (
        device_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        detail TEXT NOT NULL,
        fingerprint TEXT,
        certificate_pem TEXT,
        not_after_ms BIGINT,
        updated_ms BIGINT NOT NULL
    )",
        ),
    ),
    (
        16,
        // Release-key revocation lists (`crate::revocations`; not device certificates):
        // each vendor-signed `WRL1` file the operator uploaded, by sequence, kept as hex
        // (one column type on both backends); the newest goes to every device.
        Migration::Both(
            "CREATE TABLE revocation_lists (
        sequence BIGINT PRIMARY KEY,
        issuer TEXT NOT NULL,
        revoked TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL,
        list_hex TEXT NOT NULL,
        uploaded_ms BIGINT NOT NULL
    )",
        ),
    ),
];
