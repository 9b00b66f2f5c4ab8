//! The operator's status page over real HTTPS: login, lockout, CSRF, headers, metrics.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use warden_pluton_api::launch_tokens::LaunchTokens;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use warden_hil::scenario;
use warden_test_support::browser;

/// Accepts exactly the certificate whose SHA-256 the demo printed (what an operator
/// does with the fingerprint on the label).
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if warden::status_page::tls::fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate fingerprint differs".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One HTTP/1.1 response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn set_cookies(&self) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn request_bytes(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Vec<u8> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    request.into_bytes()
}

/// A tiny HTTPS client with a cookie jar, one connection per request.
struct Browserless {
    host: String,
    connector: tokio_rustls::TlsConnector,
    cookies: BTreeMap<String, String>,
}

impl Browserless {
    fn new(url: &str, fingerprint: &str) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                fingerprint: fingerprint.to_owned(),
                provider,
            }))
            .with_no_client_auth();
        Self {
            host: url.trim_start_matches("https://").to_owned(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            cookies: BTreeMap::new(),
        }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> Response {
        let mut all: Vec<(&str, String)> = headers.to_vec();
        if !self.cookies.is_empty() {
            all.push(("Cookie", self.cookie_jar()));
        }
        let mut tls = self.connect().await;
        tls.write_all(&request_bytes(method, path, &self.host, &all, body))
            .await
            .expect("send");
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => panic!("reading {method} {path}: {e}"),
        }
        let response = parse_response(&raw);
        for cookie in response.set_cookies() {
            let pair = cookie.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() || cookie.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        response
    }

    /// The cookies as one `Cookie` header value.
    fn cookie_jar(&self) -> String {
        self.cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A new TLS connection to the page.
    async fn connect(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(&self.host)
            .await
            .expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        self.connector
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    }

    /// Fetches the login form, then posts `password` with its CSRF token.
    async fn login(&mut self, password: &str) -> Response {
        let form = self.send("GET", "/login", &[], "").await;
        assert_eq!(form.status, 200);
        let token = self
            .cookies
            .get(warden::status_page::LOGIN_COOKIE)
            .cloned()
            .expect("login cookie");
        assert!(form.body.contains(&token), "the form carries the token");
        let body = format!("csrf={token}&password={}", urlencode(password));
        self.send(
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded".into())],
            &body,
        )
        .await
    }

    async fn csrf_token(&mut self) -> String {
        let session = self.send("GET", "/api/session", &[], "").await;
        assert_eq!(session.status, 200, "{session:?}");
        session.json()["csrf_token"]
            .as_str()
            .expect("token")
            .to_owned()
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn plain_get(url: &str) -> Response {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut tcp = tokio::net::TcpStream::connect(host).await.expect("connect");
    tcp.write_all(&request_bytes("GET", &format!("/{path}"), host, &[], ""))
        .await
        .expect("send");
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.expect("read");
    parse_response(&raw)
}

/// Login, lockout, CSRF, security headers and `/metrics`, against the demo's page
/// over real TLS (the certificate pinned by the printed fingerprint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_login_lockout_csrf_headers_and_metrics() {
    let state = tempfile::tempdir().expect("tempdir");
    let demo = scenario::DemoProcess::start(Path::new(env!("CARGO_BIN_EXE_warden")), state.path())
        .await
        .expect("demo starts");
    let urls = demo.urls.clone();
    assert!(urls.status_page.starts_with("https://"), "{urls:?}");
    assert!(
        !urls.status_password.is_empty() && !urls.status_fingerprint.is_empty(),
        "{urls:?}"
    );
    let setpoint = scenario::wait_for_reading(&demo, "line1/spindle_setpoint")
        .await
        .expect("reading");
    let mut client = Browserless::new(&urls.status_page, &urls.status_fingerprint);

    // Nothing without a session.
    assert_eq!(client.send("GET", "/api/status", &[], "").await.status, 401);
    let root = client.send("GET", "/", &[], "").await;
    assert_eq!(
        (root.status, root.header("location")),
        (303, Some("/login"))
    );

    // Security headers on every response; the login cookie's attributes.
    let form = client.send("GET", "/login", &[], "").await;
    let csp = form.header("content-security-policy").expect("CSP");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        form.header("strict-transport-security")
            .is_some_and(|v| v.contains("max-age="))
    );
    assert_eq!(form.header("x-frame-options"), Some("DENY"));
    assert_eq!(form.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(form.header("referrer-policy"), Some("no-referrer"));

    // A login without the form's CSRF token is refused before the password is looked at.
    let forged = client
        .send(
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded".into())],
            &format!("password={}", urlencode(&urls.status_password)),
        )
        .await;
    assert_eq!(forged.status, 403);

    // Wrong password: 401. Right one: a session cookie with all three attributes.
    assert_eq!(client.login("not-the-password").await.status, 401);
    let logged_in = client.login(&urls.status_password).await;
    assert_eq!(
        (logged_in.status, logged_in.header("location")),
        (303, Some("/"))
    );
    let session_cookie = logged_in
        .set_cookies()
        .find(|c| c.starts_with(warden::status_page::SESSION_COOKIE))
        .expect("session cookie")
        .to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(session_cookie.contains(attribute), "{session_cookie}");
    }

    // The page's data shows the simulated device.
    let status = client.send("GET", "/api/status", &[], "").await;
    assert_eq!(status.status, 200);
    let status = status.json();
    assert_eq!(status["device_id"], urls.device_id.as_str());
    let points = status["bridges"][0]["points"].as_array().expect("points");
    let spindle = points
        .iter()
        .find(|p| p["name"] == "spindle_setpoint")
        .expect("spindle_setpoint");
    assert_eq!(spindle["last"]["value"].as_f64(), Some(setpoint));
    assert!(!spindle["recent"].as_array().expect("recent").is_empty());
    assert!(
        status["bridges"][0]["health"]["denied"].as_u64() >= Some(1),
        "{status}"
    );

    // Defer: refused without the CSRF token or with a wrong one, accepted with it.
    let before = client.send("GET", "/api/updates", &[], "").await.json();
    assert!(before["deferred_until_ms"].is_null(), "{before}");
    assert_eq!(
        client
            .send("POST", "/api/updates/defer", &[], "")
            .await
            .status,
        403
    );
    let wrong = [("X-CSRF-Token", "0".repeat(64))];
    assert_eq!(
        client
            .send("POST", "/api/updates/defer", &wrong, "")
            .await
            .status,
        403
    );
    assert!(
        client.send("GET", "/api/updates", &[], "").await.json()["deferred_until_ms"].is_null()
    );
    let token = client.csrf_token().await;
    let deferred = client
        .send(
            "POST",
            "/api/updates/defer",
            &[("X-CSRF-Token", token.clone())],
            "",
        )
        .await;
    assert_eq!(deferred.status, 200, "{deferred:?}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let until = client.send("GET", "/api/updates", &[], "").await.json()["deferred_until_ms"]
        .as_u64()
        .expect("deferred");
    assert!(until > now_ms, "{until} <= {now_ms}");
    // The token also works as a form field.
    let allowed = client
        .send(
            "POST",
            "/api/updates/allow",
            &[("Content-Type", "application/x-www-form-urlencoded".into())],
            &format!("csrf={token}"),
        )
        .await;
    assert_eq!(allowed.status, 200);
    assert!(allowed.json()["deferred_until_ms"].is_null());

    // Metrics on their own plain-HTTP loopback port.
    let metrics = plain_get(&urls.metrics).await;
    assert_eq!(metrics.status, 200);
    for needle in [
        "warden_bridge_reads_ok_total{bridge=\"line1\"}",
        "warden_bridge_policy_denials_total{bridge=\"line1\"}",
        "warden_link_batches_acknowledged_total",
        "warden_outbox_depth",
        "warden_outbox_bytes",
    ] {
        assert!(
            metrics.body.contains(needle),
            "{needle} missing:\n{}",
            metrics.body
        );
    }

    // Backoff: the third wrong password from an address makes it wait 1 s, each later
    // one twice as long; while it waits, even the right password is refused, with
    // Retry-After. Waited out twice, the wait is 4 s (room for a slow machine).
    let mut other = Browserless::new(&urls.status_page, &urls.status_fingerprint);
    let mut statuses = Vec::new();
    for _ in 0..warden::status_page::auth::FREE_FAILURES_PER_CLIENT {
        statuses.push(other.login("guess").await.status);
    }
    assert_eq!(statuses, [401, 401, 429]);
    for expected_wait in [2, 4] {
        tokio::time::sleep(Duration::from_secs(expected_wait / 2)).await;
        let guessed = other.login("guess").await;
        assert_eq!(guessed.status, 429);
        assert_eq!(
            guessed.header("retry-after"),
            Some(expected_wait.to_string().as_str())
        );
    }
    let locked = other.login(&urls.status_password).await;
    assert_eq!(locked.status, 429);
    assert!(locked.header("retry-after").is_some());
    assert!(locked.body.contains("locked out"), "{}", locked.body);
    // A session made before the lockout keeps working.
    assert_eq!(client.send("GET", "/api/status", &[], "").await.status, 200);

    demo.stop().await.expect("clean stop");
}

/// Saves screenshots of `drivers` and panics with `error` and where they are.
async fn fail_with_screenshots(drivers: Vec<browser::WebDriver>, error: anyhow::Error) -> ! {
    let mut shots = Vec::new();
    for (index, driver) in drivers.into_iter().enumerate() {
        let path = std::env::temp_dir().join(format!(
            "warden-status-page-failure-{}-{index}.png",
            std::process::id()
        ));
        if driver.screenshot(&path).await.is_ok() {
            shots.push(path.display().to_string());
        }
        if let Ok(dom) = driver.dom().await {
            eprintln!("DOM of browser {index}:\n{dom}");
        }
        driver.quit().await;
    }
    panic!("{error:#} (screenshots: {shots:?})");
}

/// In a real Chromium: a wrong password fails, repeated failures lock out, the page
/// shows the simulated device's values, and Defer works with its CSRF token while a
/// POST without it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver (Debian packages)"]
async fn status_page_login_lockout_and_defer_in_chromium() {
    let state = tempfile::tempdir().expect("tempdir");
    let demo = scenario::DemoProcess::start(Path::new(env!("CARGO_BIN_EXE_warden")), state.path())
        .await
        .expect("demo starts");
    let setpoint = scenario::wait_for_reading(&demo, "line1/spindle_setpoint")
        .await
        .expect("reading");
    let operator = browser::WebDriver::start()
        .await
        .expect("chromedriver starts");
    let intruder = browser::WebDriver::start()
        .await
        .expect("chromedriver starts");
    let urls = demo.urls.clone();
    let wait = Duration::from_secs(15);
    let steps = async {
        let login = format!("{}/login", urls.status_page);
        // A wrong password: the form says so and no session starts.
        operator.goto(&login).await?;
        operator.type_into("#password", "wrong-password").await?;
        operator.click_and_wait_for_navigation("#submit").await?;
        operator
            .wait_for_text("#message", wait, |t| t.contains("Wrong password"))
            .await?;
        // The right one: the page, with the device's live values.
        operator
            .type_into("#password", &urls.status_password)
            .await?;
        operator.click_and_wait_for_navigation("#submit").await?;
        operator
            .wait_for_text("#overview-device", wait, |t| t == urls.device_id)
            .await?;
        let expected = setpoint.to_string();
        operator
            .wait_for_text(
                "tr[data-point=\"spindle_setpoint\"] td:nth-child(2)",
                wait,
                |t| t == expected,
            )
            .await?;
        operator
            .wait_for_text("#link", wait, |t| t == "connected")
            .await?;
        operator
            .wait_for_text("#outbox-depth", wait, |t| t.contains("batches"))
            .await?;
        // The demo has no report ring and no A/B state: the page says so. Its link
        // answers the fleet's attestation challenge (sent on connect) with a quote
        // from pluton, and the fleet's verdict comes back (the demo fleet has no
        // releases: trusted, the image not checked).
        operator
            .wait_for_text("#reports-summary", wait, |t| {
                t == "no [reports] ring configured"
            })
            .await?;
        operator
            .wait_for_text("#overview-slots", wait, |t| {
                t == "no [updates] state directory configured"
            })
            .await?;
        operator
            .wait_for_text("#overview-attestation", wait, |t| {
                t.starts_with("trusted by the fleet")
                    && t.contains("; last challenge answered ")
                    && t.contains(", with a quote (")
            })
            .await?;
        operator
            .wait_for_text("tr[data-bridge=\"line1\"] td:nth-child(2)", wait, |t| {
                t.parse::<u64>().is_ok_and(|denied| denied >= 1)
            })
            .await?;
        // Per-unit counters: the demo's PLC is unit 1 of line1.
        operator
            .wait_for_text(
                "table[data-units=\"line1\"] tr[data-unit=\"1\"] td:nth-child(2)",
                wait,
                |t| t.parse::<u64>().is_ok_and(|reads| reads >= 1),
            )
            .await?;
        let polylines = operator
            .execute("return document.querySelectorAll('tr[data-point=\"oil_temperature\"] svg polyline').length;", serde_json::json!([]))
            .await?;
        anyhow::ensure!(
            polylines == 1,
            "no trend chart for oil_temperature: {polylines}"
        );

        // Defer through the button (the page sends its CSRF token).
        operator.click("#update-defer").await?;
        operator
            .wait_for_text("#update-decision", wait, |t| t.contains("deferred until"))
            .await?;
        // A POST from the same logged-in browser without the token is refused and
        // changes nothing.
        let refused = operator
            .execute(
                "return fetch('/api/updates/allow', {method: 'POST', credentials: 'same-origin'}).then(r => r.status);",
                serde_json::json!([]),
            )
            .await?;
        anyhow::ensure!(refused == 403, "allow without CSRF answered {refused}");
        let decision = operator
            .execute(
                "return fetch('/api/updates').then(r => r.json());",
                serde_json::json!([]),
            )
            .await?;
        anyhow::ensure!(
            decision["deferred_until_ms"].as_u64().is_some(),
            "the refused POST changed the decision: {decision}"
        );

        // Another browser guesses: after the third wrong password it must wait (1 s,
        // doubling with each later one), and while it waits even the right password is
        // refused. Waited out twice, the wait is 4 s (room for a slow browser).
        intruder.goto(&login).await?;
        for round in 0..warden::status_page::auth::FREE_FAILURES_PER_CLIENT + 2 {
            if round >= warden::status_page::auth::FREE_FAILURES_PER_CLIENT {
                tokio::time::sleep(Duration::from_secs(
                    1 << (round - warden::status_page::auth::FREE_FAILURES_PER_CLIENT),
                ))
                .await;
            }
            intruder.type_into("#password", "guess").await?;
            intruder.click_and_wait_for_navigation("#submit").await?;
            intruder
                .wait_for_text("#message", wait, |t| !t.is_empty())
                .await?;
        }
        intruder
            .wait_for_text("#message", wait, |t| t.contains("locked out"))
            .await?;
        intruder
            .type_into("#password", &urls.status_password)
            .await?;
        intruder.click_and_wait_for_navigation("#submit").await?;
        intruder
            .wait_for_text("#message", wait, |t| t.contains("locked out"))
            .await?;
        anyhow::ensure!(
            intruder.current_url().await?.ends_with("/login"),
            "a locked-out browser got past the login"
        );
        anyhow::Ok(())
    };
    if let Err(error) = steps.await {
        fail_with_screenshots(vec![operator, intruder], error).await;
    }
    operator.quit().await;
    intruder.quit().await;
    demo.stop().await.expect("clean stop");
}

/// `warden pluton` serving its socket for the test (killed when dropped), with the
/// unit's identity created in it.
struct PlutonProcess(std::process::Child);

impl Drop for PlutonProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_pluton(
    socket: &Path,
    state: &Path,
    tokens: &LaunchTokens,
) -> (PlutonProcess, warden_hil::demo::DeviceIdentity) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_warden"));
    tokens.hand_to(&mut command);
    let child = command
        .arg("pluton")
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("pluton starts");
    let process = PlutonProcess(child);
    let mut client = None;
    for _ in 0..200 {
        if let Ok(connected) = warden_pluton_api::PlutonClient::connect(socket) {
            client = Some(connected);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(client.expect("pluton listens"));
    // The factory is the boot role: it presents the provisioning capability.
    let capability = warden_pluton::server::read_capability_file(
        &state.join(warden_pluton::server::DEFAULT_CAPABILITY_FILE_NAME),
    )
    .expect("capability");
    let identity = warden_pluton_api::PlutonClient::connect_as_boot(socket, &capability)
        .expect("boot role")
        .create_identity(None)
        .expect("identity");
    (
        process,
        warden_hil::demo::DeviceIdentity {
            device_id: identity.device_id.to_string(),
            public_key: identity.public_key.0,
            pluton_socket: socket.to_owned(),
        },
    )
}

/// Pluton on `state/pluton.sock` with the unit's identity (the role tokens minted as
/// `warden boot` would: pluton and the appliance get them), then the demo's fleet and
/// equipment for that identity.
async fn world_with_pluton(
    state: &Path,
) -> (
    PlutonProcess,
    LaunchTokens,
    warden_hil::demo::DemoWorld,
    tokio_util::sync::CancellationToken,
) {
    let tokens = LaunchTokens::mint().expect("role tokens");
    let (pluton, identity) =
        start_pluton(&state.join("pluton.sock"), &state.join("pluton"), &tokens);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let world = warden_hil::demo::DemoWorld::start(
        state,
        warden_hil::demo::DemoPorts::EPHEMERAL,
        Some(identity),
        shutdown.clone(),
    )
    .await
    .expect("fleet and equipment start");
    (pluton, tokens, world, shutdown)
}

/// A boot monitor record as `warden boot` leaves it after an update was installed:
/// slot A confirmed (1.4.0, primary), slot B installed and pending (1.5.0).
fn write_boot_record(state_dir: &Path) {
    use warden_os::slots::{BootState, ImageSummary, Slot};
    let image = |minor: u32| ImageSummary {
        version: [1, minor, 0],
        security_counter: 1,
        measurement: [minor as u8; 32],
    };
    let mut state = BootState::rebuilt(&[(Slot::A, image(4))]);
    state.begin_install(Slot::B).expect("install B");
    state.finish_install(Slot::B, image(5)).expect("installed");
    let dir = state_dir.join(warden_os::boot::BOOT_DIR);
    std::fs::create_dir_all(&dir).expect("boot dir");
    std::fs::write(dir.join("state"), state.encode()).expect("boot record");
}

/// In a real Chromium, against `warden run --config` with the fleet, pluton, a report
/// ring and an A/B boot record: the overview shows the image slots and what the unit
/// answered the fleet's attestation challenge; the failure reports are listed with
/// compartment, kind and message, become "uploaded" once the link queued them for the
/// fleet (which stores them), and open in a detail view with the backtrace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver (Debian packages)"]
async fn status_page_shows_slots_attestation_and_failure_reports_in_chromium() {
    use warden_os::reports::{FailureKind, ReportStore};
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    let (_pluton, tokens, world, shutdown) = world_with_pluton(state).await;

    let reports = state.join("reports");
    let ring = ReportStore::open(&reports, 64, "1.4.0").expect("ring");
    ring.record("bridges", FailureKind::WatchdogExpired { silent_ms: 5000 })
        .expect("report");
    ring.record(
        "link",
        FailureKind::Panic {
            message: "index out of bounds at link.rs:42".into(),
            backtrace: "0: warden::compartments::link::run".into(),
        },
    )
    .expect("report");
    let updates = state.join("updates");
    write_boot_record(&updates);
    let page_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = std::fs::read_to_string(&world.appliance_config).expect("config");
    let config = config.replace(
        &format!("\nlisten = {:?}", world.status_listen),
        &format!("\nlisten = \"127.0.0.1:{page_port}\""),
    );
    let config = format!(
        "{config}\n[reports]\ndir = \"reports\"\nscan_interval_secs = 1\n\n\
         [updates]\nstate_dir = \"updates\"\ndownload_dir = \"downloads\"\n\
         capability_file = \"pluton/provisioning.capability\"\n"
    );
    std::fs::write(&world.appliance_config, config).expect("config");
    let password = "slot-and-report-check";
    let hash = warden::status_page::auth::hash_password(password).expect("hash");
    warden::status_page::auth::write_password_hash(&state.join("status-page/password.phc"), &hash)
        .expect("password");
    let mut appliance = std::process::Command::new(env!("CARGO_BIN_EXE_warden"));
    tokens.hand_to(&mut appliance);
    let mut appliance = appliance
        .args(["run", "--config"])
        .arg(&world.appliance_config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("warden run");
    let page = format!("https://127.0.0.1:{page_port}");
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", page_port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let operator = browser::WebDriver::start()
        .await
        .expect("chromedriver starts");
    let wait = Duration::from_secs(30);
    let steps = async {
        operator.goto(&format!("{page}/login")).await?;
        operator.type_into("#password", password).await?;
        operator.click_and_wait_for_navigation("#submit").await?;
        operator
            .wait_for_text("#overview-slots", wait, |t| {
                t == "a: 1.4.0 confirmed (primary); b: 1.5.0 pending"
            })
            .await?;
        operator
            .wait_for_text("#overview-attestation", wait, |t| {
                t.contains("; last challenge answered ") && t.contains(", with a quote (")
            })
            .await?;
        operator
            .wait_for_text("#reports-summary", wait, |t| t == "2 in the ring")
            .await?;
        let cells =
            |id: u32, column: u32| format!("tr[data-report=\"{id}\"] td:nth-child({column})");
        operator
            .wait_for_text(&cells(2, 3), wait, |t| t == "link")
            .await?;
        operator
            .wait_for_text(&cells(2, 4), wait, |t| t == "panic")
            .await?;
        operator
            .wait_for_text(&cells(2, 5), wait, |t| {
                t == "panicked: index out of bounds at link.rs:42"
            })
            .await?;
        operator
            .wait_for_text(&cells(1, 4), wait, |t| t == "watchdog")
            .await?;
        // The link queues both for the fleet and marks them in the ring.
        for id in [1, 2] {
            operator
                .wait_for_text(&cells(id, 6), wait, |t| t == "yes")
                .await?;
        }
        operator.click(&format!("{} a", cells(2, 1))).await?;
        operator
            .wait_for_text("#report-detail-backtrace", wait, |t| {
                t == "0: warden::compartments::link::run"
            })
            .await?;
        operator
            .wait_for_text("#report-detail-image", wait, |t| t == "1.4.0")
            .await?;
        anyhow::Ok(())
    };
    if let Err(error) = steps.await {
        let _ = appliance.kill();
        fail_with_screenshots(vec![operator], error).await;
    }
    operator.quit().await;
    let _ = appliance.kill();
    let _ = appliance.wait();
    shutdown.cancel();
    world.fleet.stopped().await;
}

/// `warden run --config` started with `config`: its stdout's status page and metrics
/// addresses; killed when dropped.
struct RunningUnit {
    child: tokio::process::Child,
    page: String,
    fingerprint: String,
    metrics: String,
}

impl RunningUnit {
    async fn start(config: &Path) -> Self {
        Self::start_with(config, None).await
    }

    /// `warden run --config`, with the role tokens pluton expects if given.
    async fn start_with(config: &Path, tokens: Option<&LaunchTokens>) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_warden"));
        if let Some(tokens) = tokens {
            tokens.hand_to(&mut command);
        }
        let mut child = tokio::process::Command::from(command)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("warden run");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut page, mut fingerprint, mut metrics) =
            (String::new(), String::new(), String::new());
        let read = async {
            while let Some(line) = lines.next_line().await.expect("stdout") {
                if let Some(url) = line.strip_prefix("status page: ") {
                    page = url.trim_end_matches('/').to_owned();
                } else if let Some(sha) = line.strip_prefix("status page cert: SHA-256 ") {
                    fingerprint = sha.trim().to_owned();
                } else if let Some(url) = line.strip_prefix("metrics: ") {
                    metrics = url.to_owned();
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("warden run prints its addresses");
        assert!(!page.is_empty() && !fingerprint.is_empty() && !metrics.is_empty());
        Self {
            child,
            page,
            fingerprint,
            metrics,
        }
    }
}

/// Polls `/metrics` until `line` is in it (up to 30 s); the body.
async fn metrics_with(url: &str, line: &str) -> String {
    let mut body = String::new();
    for _ in 0..300 {
        body = plain_get(url).await.body;
        if body.lines().any(|l| l == line) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{line:?} never appeared in /metrics:\n{body}");
}

/// A unit whose link is NOT connected says so everywhere, with the cause: first with
/// the broker's port closed (link down), then without its fleet CA (the link cannot
/// run: unavailable, and the process keeps serving the page). Neither `/metrics`,
/// `/api/status` nor `warden status` claims "connected".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_is_not_connected_is_shown_with_its_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let world = warden_hil::demo::DemoWorld::start(
        state,
        warden_hil::demo::DemoPorts::EPHEMERAL,
        None,
        shutdown.clone(),
    )
    .await
    .expect("fleet and equipment start");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = std::fs::read_to_string(&world.appliance_config).expect("config");
    let config: String = config
        .lines()
        .map(|line| {
            if line.starts_with("broker_port") {
                format!("broker_port = {closed}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(&world.appliance_config, &config).expect("config");
    let password = "link-down-check";
    let hash = warden::status_page::auth::hash_password(password).expect("hash");
    warden::status_page::auth::write_password_hash(&state.join("status-page/password.phc"), &hash)
        .expect("password");

    for (case, expected_state, summary_starts) in [
        ("broker port closed", "disconnected", "link down: "),
        ("no fleet CA", "unavailable", "unavailable: "),
    ] {
        if case == "no fleet CA" {
            std::fs::remove_file(state.join("pki/fleet-ca.pem")).expect("remove the CA");
        }
        let unit = RunningUnit::start(&world.appliance_config).await;
        let metrics = metrics_with(
            &unit.metrics,
            &format!("warden_link_state{{state=\"{expected_state}\"}} 1"),
        )
        .await;
        assert!(
            metrics.lines().any(|l| l == "warden_link_up 0"),
            "{case}:\n{metrics}"
        );
        assert!(
            metrics
                .lines()
                .any(|l| l == "warden_link_state{state=\"connected\"} 0"),
            "{case}:\n{metrics}"
        );
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("warden_link_last_ack_age_seconds ")),
            "{case}: never acknowledged, so no age:\n{metrics}"
        );

        let mut client = Browserless::new(&unit.page, &unit.fingerprint);
        assert_eq!(client.login(password).await.status, 303, "{case}");
        let status = client.send("GET", "/api/status", &[], "").await.json();
        let summary = status["link_summary"].as_str().expect("summary");
        assert!(
            summary.starts_with(summary_starts) && summary.len() > summary_starts.len(),
            "{case}: {status:#}"
        );
        assert_eq!(status["link"]["state"], expected_state, "{case}");
        assert!(status["last_ack_age_secs"].is_null(), "{case}: {status:#}");

        let output = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["status", "--config"])
            .arg(&world.appliance_config)
            .output()
            .expect("warden status");
        let text = String::from_utf8_lossy(&output.stdout);
        let link = text
            .lines()
            .find(|l| l.starts_with("link "))
            .unwrap_or_else(|| panic!("{case}: no link line:\n{text}"));
        assert!(
            link.contains(summary_starts) && link.contains("no ack since start"),
            "{case}: {link}"
        );
        let json = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["status", "--json", "--config"])
            .arg(&world.appliance_config)
            .output()
            .expect("warden status --json");
        let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
        assert_eq!(json["link"]["state"], expected_state, "{case}");
        assert!(
            json["link_summary"]
                .as_str()
                .is_some_and(|s| s.starts_with(summary_starts)),
            "{case}: {json:#}"
        );
        // Still running: a link that cannot connect is no reason to exit.
        let mut unit = unit;
        assert!(unit.child.try_wait().expect("wait").is_none(), "{case}");
        unit.child.kill().await.expect("kill");
    }
    shutdown.cancel();
    world.fleet.stopped().await;
}

impl Browserless {
    /// `POST /api/updates/upload` with `body` as the image and `declared` as its
    /// Content-Length (the session cookie, and `csrf` in the header if given).
    async fn upload(&mut self, csrf: Option<&str>, body: &[u8], declared: u64) -> Response {
        let mut request = format!(
            "POST /api/updates/upload HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n",
            self.host
        );
        if let Some(csrf) = csrf {
            request.push_str(&format!("{}: {csrf}\r\n", warden::status_page::CSRF_HEADER));
        }
        request.push_str(&format!("Cookie: {}\r\n\r\n", self.cookie_jar()));
        let mut tls = self.connect().await;
        tls.write_all(request.as_bytes()).await.expect("send");
        // The server may answer (and close) before the whole body is sent.
        let _ = tls.write_all(body).await;
        let _ = tls.flush().await;
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw).await {
            Ok(_) => {}
            Err(_) if !raw.is_empty() => {}
            Err(e) => panic!("reading the upload's answer: {e}"),
        }
        parse_response(&raw)
    }
}

/// The upload form over real HTTPS against `warden run` with the fleet, pluton (the
/// vendor root installed) and `[updates]`: login required, a POST without the CSRF
/// token refused, a file over `max_local_image_mib` refused before it is read, a
/// tampered image refused by name with nothing changed, and a good one verified and
/// installed into a slot that boots on trial; its statuses reach the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_uploaded_on_the_page_is_verified_and_installed() {
    use warden_keychain::Purpose;
    use warden_keychain::tooling::{SecretSigningKey, issue_release_cert, load_secret_key};
    use warden_os::image::build::build_signed_image;
    use warden_os::image::{BuildId, ImageHeader, ProductId, SemanticVersion};

    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    let socket = state.join("pluton.sock");
    let (_pluton, tokens, world, shutdown) = world_with_pluton(state).await;
    // The factory installs the vendor root: images are verified against it.
    let capability = warden_pluton::server::read_capability_file(
        &state
            .join("pluton")
            .join(warden_pluton::server::DEFAULT_CAPABILITY_FILE_NAME),
    )
    .expect("capability");
    let vendor_root = load_secret_key(&world.pki.vendor_root_key).expect("vendor root");
    warden_pluton_api::PlutonClient::connect_as_boot(&socket, &capability)
        .expect("boot role")
        .install_root_key(
            &capability,
            &world.pki.vendor_root_public_key().expect("root"),
            Purpose::ALL.bits(),
        )
        .expect("vendor root installed");

    let config = std::fs::read_to_string(&world.appliance_config).expect("config");
    let product =
        warden::config::ApplianceConfig::parse_unchecked(&config, &world.appliance_config)
            .expect("config")
            .device
            .product;
    let config = format!(
        "{config}\n[updates]\nstate_dir = \"updates\"\ndownload_dir = \"downloads\"\n\
         capability_file = \"pluton/provisioning.capability\"\nmax_local_image_mib = 1\n"
    );
    std::fs::write(&world.appliance_config, config).expect("config");
    let password = "upload-check";
    let hash = warden::status_page::auth::hash_password(password).expect("hash");
    warden::status_page::auth::write_password_hash(&state.join("status-page/password.phc"), &hash)
        .expect("password");
    let unit = RunningUnit::start_with(&world.appliance_config, Some(&tokens)).await;

    let image = |version: u32, counter: u64| {
        let release = SecretSigningKey::generate().expect("rng");
        let cert = issue_release_cert(&vendor_root, &release.public_key(), Purpose::IMAGE, 1)
            .expect("cert");
        let template = ImageHeader {
            product: ProductId::new(&product).expect("product"),
            version: SemanticVersion::new(1, version, 0),
            security_counter: counter,
            build_id: BuildId([version as u8; 16]),
            created_at: 1_790_000_000,
            payload_len: 0,
            payload_sha256: [0; 32],
        };
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        build_signed_image(template, &payload, &release, &cert).expect("image")
    };
    let good = image(5, 1);
    let mut tampered = image(6, 1);
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;

    let mut client = Browserless::new(&unit.page, &unit.fingerprint);
    // Not logged in: nothing.
    let anonymous = client.upload(None, &good, good.len() as u64).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(client.login(password).await.status, 303);
    let csrf = client.csrf_token().await;
    // Logged in, but no CSRF token: refused.
    let forged = client.upload(None, &good, good.len() as u64).await;
    assert_eq!(forged.status, 403, "{forged:?}");
    // Over the limit (1 MiB): refused from its length, before any byte is read.
    let large = client.upload(Some(&csrf), &[], 2 << 20).await;
    assert_eq!(large.status, 413, "{large:?}");
    assert_eq!(large.json()["reason"], "too-large", "{large:?}");
    let boot_state = state.join("updates/boot/state");
    assert!(!boot_state.exists(), "nothing installed yet");
    // Tampered: refused by name, nothing changed.
    let refused = client
        .upload(Some(&csrf), &tampered, tampered.len() as u64)
        .await;
    assert_eq!(refused.status, 422, "{refused:?}");
    let detail = refused.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("altered"), "{detail}");
    assert!(!boot_state.exists(), "a refused image touched the slots");
    // A good image: verified, installed, boots on trial next.
    let installed = client.upload(Some(&csrf), &good, good.len() as u64).await;
    assert_eq!(installed.status, 200, "{installed:?}");
    let answer = installed.json();
    assert_eq!(answer["state"], "installed", "{answer}");
    assert_eq!(answer["version"], "1.5.0", "{answer}");
    let id = answer["id"].as_str().expect("id").to_owned();
    let recorded = warden_os::slots::BootState::decode(&std::fs::read(&boot_state).expect("state"))
        .expect("boot state");
    let slot = warden_os::Slot::ALL
        .into_iter()
        .find(|slot| answer["slot"] == slot.to_string())
        .unwrap_or_else(|| panic!("a slot: {answer}"));
    assert!(
        matches!(recorded.slot(slot), warden_os::SlotStatus::Pending(image) if image.version == [1, 5, 0]),
        "{recorded:?}"
    );

    // The link is up: the statuses (marked local) reach the fleet as events.
    let api = format!("http://{}", world.fleet.http_address);
    let token = world.pki.fleet_token().expect("token");
    let http = reqwest::Client::new();
    let mut seen = String::new();
    for _ in 0..150 {
        seen = http
            .get(format!("{api}/api/v1/events"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("events")
            .text()
            .await
            .unwrap_or_default();
        if seen.contains(&format!("update {id}: installed")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen.contains(&format!("update {id}: installed")),
        "the fleet has no installed event for {id}: {seen}"
    );
    drop(unit);
    shutdown.cancel();
}
