//! Attacks on the fleet's HTTP API (issue #22 items 1, 2, 4, 5, 8, 10).
//!
//! Each case starts a real `warden-fleet` (under `prlimit --nofile=1024:8192` where
//! prlimit exists: the default soft limit the issue's fd exhaustion hit) with a PKI of
//! its own, attacks it from loopback addresses other than 127.0.0.1 (all of 127/8 is
//! loopback on Linux, so per-address limits can be exercised), and checks that a real
//! request from 127.0.0.1 is still answered, the broker still takes a device, memory
//! stays bounded and the log does not storm.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use warden_hil::demo_pki::DemoPki;

use super::tally::{Row, record};

/// The fleet's header timeout in these cases (seconds).
const HEADER_TIMEOUT_SECS: u64 = 3;
/// Image downloads the fleet serves at once in these cases.
const MAX_DOWNLOADS: usize = 12;
/// A viewer token these cases configure.
const VIEWER_TOKEN: &str = "hostile-viewer-token";

/// A `warden-fleet` process, killed when dropped.
struct Fleet {
    child: Child,
    http: SocketAddr,
    mqtt_port: u16,
    pki: DemoPki,
    admin_token: String,
    log: PathBuf,
    images: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary of this workspace build (beside this test's `deps/`).
fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p warden-fleet --bins`",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// The config the cases run the fleet with (`api_extra` goes in `[api]`).
fn fleet_toml(
    dir: &Path,
    pki: &DemoPki,
    http_listen: &str,
    mqtt_port: u16,
    header_timeout_secs: u64,
    api_extra: &str,
) -> String {
    let admin = pki.fleet_token().expect("admin token");
    format!(
        r#"http_listen = "{http_listen}"
mqtt_listen = "127.0.0.1:{mqtt_port}"
database_url = "sqlite://{db}"
server_cert = "{cert}"
server_key = "{key}"
manufacturer_ca = "{ca}"

[http]
header_timeout_secs = {header_timeout_secs}
max_downloads = {MAX_DOWNLOADS}

[images]
dir = "{images}"

[api]
{api_extra}

[[api.tokens]]
name = "admin"
role = "admin"
sha256 = "{admin_hash}"

[[api.tokens]]
name = "viewer"
role = "viewer"
sha256 = "{viewer_hash}"
"#,
        db = dir.join("fleet.db").display(),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
        ca = pki.manufacturer_ca.display(),
        images = dir.join("images").display(),
        admin_hash = warden_fleet::auth::hash_token(&admin),
        viewer_hash = warden_fleet::auth::hash_token(VIEWER_TOKEN),
    )
}

/// The fleet binary, under prlimit's default soft descriptor limit where it exists.
fn fleet_command(config: &Path) -> Command {
    let binary = workspace_binary("warden-fleet");
    let mut command = if Path::new("/usr/bin/prlimit").exists() {
        let mut command = Command::new("/usr/bin/prlimit");
        command.arg("--nofile=1024:8192").arg(binary);
        command
    } else {
        Command::new(binary)
    };
    command
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info,sqlx=warn");
    command
}

impl Fleet {
    async fn start() -> Self {
        Self::start_with(HEADER_TIMEOUT_SECS).await
    }

    /// With a header timeout of `header_timeout_secs` (a connection that sends nothing
    /// is closed after it).
    async fn start_with(header_timeout_secs: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = DemoPki::generate(&dir.path().join("pki")).expect("pki");
        let (http_port, mqtt_port) = (free_port(), free_port());
        let config = dir.path().join("fleet.toml");
        std::fs::write(
            &config,
            fleet_toml(
                dir.path(),
                &pki,
                &format!("127.0.0.1:{http_port}"),
                mqtt_port,
                header_timeout_secs,
                "",
            ),
        )
        .expect("config");
        let log = dir.path().join("fleet.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = fleet_command(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("warden-fleet starts");
        let mut fleet = Self {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            mqtt_port,
            admin_token: pki.fleet_token().expect("admin token"),
            pki,
            log,
            images: dir.path().join("images"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while fleet.get("/api/v1/openapi.json", None).await.is_err() {
            if let Ok(Some(status)) = fleet.child.try_wait() {
                panic!(
                    "the fleet exited at start ({status}):\n{}",
                    fleet.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the fleet did not answer:\n{}",
                fleet.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fleet
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_lines(&self) -> usize {
        self.log_text().lines().count()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// A GET from 127.0.0.1 on a fresh connection; its status and how long it took.
    async fn get(&self, path: &str, token: Option<&str>) -> Result<(u16, Duration), String> {
        get_from(self, IpAddr::V4(Ipv4Addr::LOCALHOST), path, token).await
    }

    /// Whether the broker completes a device's TLS handshake and CONNECT (CONNACK).
    async fn device_connects(&self) -> bool {
        let Ok(identity) = warden_wire::tls::ClientIdentity::from_pem_files(
            &self.pki.device_cert,
            &self.pki.device_key,
        ) else {
            return false;
        };
        let Ok(tls) = warden_wire::tls::client_config(&self.pki.fleet_ca, identity) else {
            return false;
        };
        let mut options =
            rumqttc::MqttOptions::new(self.pki.device_id.clone(), "127.0.0.1", self.mqtt_port);
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
        ));
        let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
        let connack = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                        return ack.code == rumqttc::ConnectReturnCode::Success;
                    }
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        connack.unwrap_or(false)
    }
}

/// A GET from `source` on a fresh connection.
async fn get_from(
    fleet: &Fleet,
    source: IpAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, Duration), String> {
    let client = reqwest::Client::builder()
        .local_address(source)
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let mut request = client.get(fleet.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let started = Instant::now();
    let response = request.send().await.map_err(|e| e.to_string())?;
    Ok((response.status().as_u16(), started.elapsed()))
}

/// A TCP connection to the fleet's HTTP port from `source`.
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(to).await
}

/// Resident memory of a process (kB), from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn verdict(problems: &[String]) -> String {
    if problems.is_empty() {
        "pass".into()
    } else {
        format!("FAIL: {}", problems.join("; "))
    }
}

/// Whether a connection is closed by the fleet (read returns 0 or an error) within
/// `within`; how long it stayed open.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + within),
            stream.read(&mut buffer),
        )
        .await
        {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test]
#[ignore = "needs the warden-fleet binary built"]
async fn idle_connections_do_not_exhaust_the_fleet() {
    // A header timeout longer than the case, so the idle connections stay until the
    // connection cap (1024 here) is what holds them.
    let fleet = Fleet::start_with(60).await;
    let lines_before = fleet.log_lines();
    // ~1,100 idle connections from 20 addresses (55 each, within the per-address cap),
    // opened 20 at a time: more than the connection cap.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..55 {
        let mut opening = Vec::new();
        for address in 0..20u8 {
            let source = Ipv4Addr::new(127, 0, 0, 2 + address);
            let to = fleet.http;
            opening.push(tokio::spawn(async move { connect_from(source, to).await }));
        }
        for open in opening {
            match open.await.expect("connect task") {
                Ok(stream) => held.push(stream),
                Err(_) => refused += 1,
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_under_attack = open_fds(fleet.pid());
    // The connections the fleet has closed (at its cap) read end-of-file at once.
    let mut closed_by_fleet = 0;
    for stream in &mut held {
        if closed_within(stream, Duration::from_millis(1))
            .await
            .is_some()
        {
            closed_by_fleet += 1;
        }
    }
    let answered = fleet.get("/api/v1/devices", Some(VIEWER_TOKEN)).await;
    let device = fleet.device_connects().await;
    let lines = fleet.log_lines() - lines_before;
    let mut problems = Vec::new();
    match &answered {
        Ok((200, took)) if *took < Duration::from_secs(2) => {}
        other => problems.push(format!("a real request got {other:?}")),
    }
    if !device {
        problems.push("the broker did not take a device".into());
    }
    if lines > 50 {
        problems.push(format!("{lines} log lines"));
    }
    if closed_by_fleet == 0 || fds_under_attack > 1024 + 64 {
        problems.push(format!(
            "the cap did not hold: {closed_by_fleet} closed, {fds_under_attack} fds"
        ));
    }
    record(Row {
        attack: "1 fd exhaustion: 1,100 idle connections to fleet HTTP".into(),
        outcome: format!(
            "{} connected ({refused} refused at connect), {closed_by_fleet} closed by the \
             fleet at its cap of 1024; fleet fds {fds_under_attack} (soft limit 1024 raised \
             to 8192); real request {answered:?}; device CONNACK {device}; {lines} log lines",
            held.len()
        ),
        bound: "real request 200 in < 2 s, device connects, ≤ 50 log lines".into(),
        result: verdict(&problems),
    });
    drop(held);
    if std::env::var_os("HOSTILE_SHOW_LOG").is_some() {
        println!("{}", fleet.log_text());
    }
    assert!(problems.is_empty(), "{problems:?}\n{}", fleet.log_text());
}

#[tokio::test]
#[ignore = "needs the warden-fleet binary built"]
async fn slowloris_connections_are_closed_at_the_header_timeout() {
    let fleet = Fleet::start().await;
    let lines_before = fleet.log_lines();
    // 200 partial-header connections from 4 addresses (50 each), one more header
    // byte each second.
    let mut streams = Vec::new();
    for index in 0..200u32 {
        let source = Ipv4Addr::new(127, 0, 1, 1 + u8::try_from(index % 4).expect("small"));
        let mut stream = connect_from(source, fleet.http).await.expect("connect");
        stream
            .write_all(b"GET /api/v1/devices HTTP/1.1\r\nHost: fleet\r\nX-Slow: ")
            .await
            .expect("partial header");
        streams.push(stream);
    }
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let mut longest = Duration::ZERO;
        let mut open = 0;
        let bound = Duration::from_secs(HEADER_TIMEOUT_SECS + 3);
        let mut handles = Vec::new();
        for mut stream in streams {
            handles.push(tokio::spawn(async move {
                let opened = Instant::now();
                loop {
                    if stream.write_all(b"a").await.is_err() {
                        return Some(opened.elapsed());
                    }
                    if let Some(after) = closed_within(&mut stream, Duration::from_secs(1)).await {
                        let _ = after;
                        return Some(opened.elapsed());
                    }
                    if opened.elapsed() > bound {
                        return None;
                    }
                }
            }));
        }
        for handle in handles {
            match handle.await.ok().flatten() {
                Some(held) => longest = longest.max(held),
                None => open += 1,
            }
        }
        (longest, open)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answered = fleet.get("/api/v1/devices", Some(VIEWER_TOKEN)).await;
    let (longest, still_open) = trickle.await.expect("trickle");
    let lines = fleet.log_lines() - lines_before;
    let mut problems = Vec::new();
    if still_open > 0 {
        problems.push(format!(
            "{still_open} still open after {:?}",
            started.elapsed()
        ));
    }
    match &answered {
        Ok((200, _)) => {}
        other => problems.push(format!("a real request got {other:?}")),
    }
    if lines > 50 {
        problems.push(format!("{lines} log lines"));
    }
    record(Row {
        attack: "2 slowloris: 200 partial-header connections to fleet HTTP".into(),
        outcome: format!(
            "longest held {longest:.1?} (header timeout {HEADER_TIMEOUT_SECS} s); real request \
             during it {answered:?}; {lines} log lines"
        ),
        bound: format!(
            "each closed within {} s; real request 200; ≤ 50 log lines",
            HEADER_TIMEOUT_SECS + 3
        ),
        result: verdict(&problems),
    });
    assert!(problems.is_empty(), "{problems:?}\n{}", fleet.log_text());
}

#[tokio::test]
#[ignore = "needs the warden-fleet binary built"]
async fn a_wrong_token_flood_never_locks_out_the_right_token() {
    let fleet = Arc::new(Fleet::start().await);
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1));
    let flood = {
        let fleet = Arc::clone(&fleet);
        tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
            let mut workers = Vec::new();
            for _ in 0..16 {
                let fleet = Arc::clone(&fleet);
                workers.push(tokio::spawn(async move {
                    let mut seen = Vec::new();
                    for guess in 0..12 {
                        let token = format!("guess-{guess}");
                        if let Ok((status, _)) =
                            get_from(&fleet, attacker, "/api/v1/devices", Some(&token)).await
                        {
                            seen.push(status);
                        }
                    }
                    seen
                }));
            }
            for worker in workers {
                for status in worker.await.unwrap_or_default() {
                    *statuses.entry(status).or_default() += 1;
                }
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The right token, from the attacking address and from another, during the flood.
    let mut valid = Vec::new();
    for _ in 0..10 {
        valid.push(
            get_from(
                &fleet,
                attacker,
                "/api/v1/devices",
                Some(&fleet.admin_token),
            )
            .await,
        );
        valid.push(fleet.get("/api/v1/devices", Some(VIEWER_TOKEN)).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let statuses = flood.await.expect("flood");
    let refused_valid = valid
        .iter()
        .filter(|answer| !matches!(answer, Ok((200, _))))
        .count();
    let slowest_valid = valid
        .iter()
        .filter_map(|answer| answer.as_ref().ok().map(|(_, took)| *took))
        .max()
        .unwrap_or_default();
    let mut problems = Vec::new();
    if refused_valid > 0 {
        problems.push(format!("{refused_valid} valid requests refused: {valid:?}"));
    }
    if !statuses.contains_key(&429) {
        problems.push(format!("the flood was never slowed: {statuses:?}"));
    }
    record(Row {
        attack: "4 token lockout: 192 wrong bearer tokens from one address".into(),
        outcome: format!(
            "flood answered {statuses:?}; 20 valid requests (10 from the flooding address): \
             {refused_valid} refused, slowest {slowest_valid:.0?}"
        ),
        bound: "every valid token answered 200; the flood gets 429 after a backoff".into(),
        result: verdict(&problems),
    });
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
#[ignore = "needs the warden-fleet binary built"]
async fn slow_image_downloads_are_streamed_and_capped() {
    let fleet = Fleet::start().await;
    // A 64 MiB image file in the fleet's image directory (downloads are served by
    // content address; what verified it at upload does not matter here).
    let mut image = vec![0u8; 64 * 1024 * 1024];
    for (index, byte) in image.iter_mut().enumerate() {
        *byte = (index.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let sha256 = "ab".repeat(32);
    std::fs::create_dir_all(&fleet.images).expect("image dir");
    std::fs::write(fleet.images.join(&sha256), &image).expect("image");
    drop(image);
    let path = format!("/images/{sha256}");
    let baseline = rss_kib(fleet.pid());

    // 12 slow downloads: each reads a little every 50 ms.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut downloads = Vec::new();
    for index in 0..MAX_DOWNLOADS {
        let source = Ipv4Addr::new(127, 0, 3, 1 + u8::try_from(index).expect("small"));
        let mut stream = connect_from(source, fleet.http).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: fleet\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let stop = stop.clone();
        downloads.push(tokio::spawn(async move {
            let mut buffer = vec![0u8; 16 * 1024];
            let mut read = 0usize;
            while !stop.is_cancelled() {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            read
        }));
    }
    let mut peak = baseline;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_kib(fleet.pid()));
    }
    // One more, beyond the cap: 503 with Retry-After.
    let beyond = reqwest::Client::new()
        .get(fleet.url(&path))
        .send()
        .await
        .map(|r| {
            (
                r.status().as_u16(),
                r.headers().get("retry-after").is_some(),
            )
        });
    // Ranges, once the slow downloads have ended (the cap is full until then).
    stop.cancel();
    let mut read = 0;
    for download in downloads {
        read += download.await.unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let range = reqwest::Client::new()
        .get(fleet.url(&path))
        .header("Range", "bytes=1048576-1048585")
        .send()
        .await
        .map(|r| {
            (
                r.status().as_u16(),
                r.headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            )
        });
    let bad_range = reqwest::Client::new()
        .get(fleet.url(&path))
        .header("Range", "bytes=99999999-")
        .send()
        .await
        .map(|r| r.status().as_u16());
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    let mut problems = Vec::new();
    if growth_mib > 32 {
        problems.push(format!("RSS grew {growth_mib} MiB"));
    }
    if !matches!(beyond, Ok((503, true))) {
        problems.push(format!("download beyond the cap: {beyond:?}"));
    }
    if !matches!(&range, Ok((206, Some(r))) if r == "bytes 1048576-1048585/67108864") {
        problems.push(format!("range: {range:?}"));
    }
    if !matches!(bad_range, Ok(416)) {
        problems.push(format!("bad range: {bad_range:?}"));
    }
    record(Row {
        attack: "5 image downloads: 12 slow downloads of a 64 MiB image".into(),
        outcome: format!(
            "fleet RSS {} MiB → peak {} MiB (+{growth_mib} MiB) while {} MiB were read; 13th \
             download {beyond:?}; Range {range:?}; bad range {bad_range:?}",
            baseline / 1024,
            peak / 1024,
            read / (1024 * 1024)
        ),
        bound: "RSS growth ≤ 32 MiB (half of one image, for 12 clients); 503 + Retry-After \
                beyond the cap; 206/416"
            .into(),
        result: verdict(&problems),
    });
    assert!(problems.is_empty(), "{problems:?}\n{}", fleet.log_text());
}

#[tokio::test]
#[ignore = "needs the warden-fleet binary built"]
async fn the_audit_log_and_headers_and_anonymous_access_are_guarded() {
    let fleet = Fleet::start().await;
    let viewer = fleet.get("/api/v1/audit", Some(VIEWER_TOKEN)).await;
    let admin = fleet.get("/api/v1/audit", Some(&fleet.admin_token)).await;
    let headers = reqwest::Client::new()
        .get(fleet.url("/api/v1/devices"))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .map(|r| {
            (
                r.headers()
                    .get("x-content-type-options")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                r.headers()
                    .get("cache-control")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            )
        });
    // A config that opens the API without a token on every interface.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fleet.toml");
    let open = fleet_toml(
        dir.path(),
        &fleet.pki,
        &format!("0.0.0.0:{}", free_port()),
        free_port(),
        HEADER_TIMEOUT_SECS,
        "anonymous_role = \"viewer\"",
    );
    std::fs::write(&config, open).expect("config");
    let refused = fleet_command(&config)
        .stdin(Stdio::null())
        .output()
        .expect("warden-fleet runs");
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    let mut problems = Vec::new();
    if !matches!(viewer, Ok((403, _))) {
        problems.push(format!("a viewer reading the audit log got {viewer:?}"));
    }
    if !matches!(admin, Ok((200, _))) {
        problems.push(format!("an admin reading the audit log got {admin:?}"));
    }
    if !matches!(&headers, Ok((Some(n), Some(c))) if n == "nosniff" && c == "no-store") {
        problems.push(format!("headers {headers:?}"));
    }
    let named =
        message.contains(&config.display().to_string()) && message.contains("api.anonymous_role");
    if refused.status.success() || !named {
        problems.push(format!(
            "anonymous_role on 0.0.0.0: {:?} {message}",
            refused.status
        ));
    }
    record(Row {
        attack: "8/10 audit log read by a viewer; API headers; anonymous_role off loopback".into(),
        outcome: format!(
            "viewer {viewer:?}, admin {admin:?}; headers {headers:?}; 0.0.0.0 + anonymous: \
             exit {:?}, \"{}\"",
            refused.status.code(),
            message.lines().next().unwrap_or("")
        ),
        bound: "viewer 403, admin 200; nosniff + no-store; refused at load naming file and field"
            .into(),
        result: verdict(&problems),
    });
    assert!(problems.is_empty(), "{problems:?}");
}
