//! A real headless Chromium for page tests (Debian's `chromium` and `chromium-driver`).
//!
//! `dump_dom` and `screenshot` start Chromium per call with a throwaway profile;
//! [`WebDriver`] drives one session for tests that log in, type and click. Chromium is
//! started with the flags a closed network needs (no background networking, no
//! component updates), else its connections are refused many at a time.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The window a page is rendered in when the caller does not say.
pub const DEFAULT_WINDOW: (u32, u32) = (1200, 900);

/// Chromium's flags for a closed network and a throwaway profile.
fn chromium(profile: &Path, window: (u32, u32)) -> Command {
    let mut command =
        Command::new(std::env::var_os("WARDEN_CHROMIUM").unwrap_or_else(|| "chromium".into()));
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--window-size={},{}", window.0, window.1))
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The DOM of `url` after its scripts ran for a few (virtual) seconds.
pub fn dump_dom(url: &str) -> anyhow::Result<String> {
    dump_dom_in_window(url, DEFAULT_WINDOW)
}

/// [`dump_dom`] in a window of the given size (a tall page lays out differently).
pub fn dump_dom_in_window(url: &str, window: (u32, u32)) -> anyhow::Result<String> {
    let profile = tempfile_dir()?;
    let output = chromium(&profile, window)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot start chromium: {error} (Debian package chromium, or WARDEN_CHROMIUM)"
            )
        })?;
    let _ = std::fs::remove_dir_all(&profile);
    anyhow::ensure!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Saves a PNG screenshot of `url` to `path` (used when a page test fails).
pub fn screenshot(url: &str, path: &Path) -> anyhow::Result<()> {
    screenshot_in_window(url, path, DEFAULT_WINDOW)
}

/// [`screenshot`] in a window of the given size.
pub fn screenshot_in_window(url: &str, path: &Path, window: (u32, u32)) -> anyhow::Result<()> {
    let profile = tempfile_dir()?;
    let status = chromium(&profile, window)
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .status()?;
    let _ = std::fs::remove_dir_all(&profile);
    anyhow::ensure!(status.success(), "chromium screenshot failed");
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "warden-chromium-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A real Chromium driven over WebDriver (Debian's `chromium-driver`), for page tests
/// that log in, type and click. The page's self-signed certificate is accepted
/// (`--ignore-certificate-errors`): test-only; operators pin its fingerprint.
pub struct WebDriver {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: std::process::Child,
    profile: PathBuf,
}

/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl WebDriver {
    /// Starts `chromedriver` (or `$WARDEN_CHROMEDRIVER`) on a free port and opens a
    /// headless Chromium session with a throwaway profile.
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let program =
            std::env::var_os("WARDEN_CHROMEDRIVER").unwrap_or_else(|| "chromedriver".into());
        let driver = Command::new(&program)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start {}: {e} (Debian package chromium-driver)",
                    program.to_string_lossy()
                )
            })?;
        let profile = tempfile_dir()?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut this = Self {
            http,
            base,
            session: String::new(),
            driver,
            profile,
        };
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(response) = this.http.get(format!("{}/status", this.base)).send().await
                && response.status().is_success()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        anyhow::ensure!(ready, "chromedriver did not answer on port {port}");
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--ignore-certificate-errors".to_owned(),
            "--window-size=1200,1000".to_owned(),
            format!("--user-data-dir={}", this.profile.display()),
        ];
        args.extend(
            [
                "--no-first-run",
                "--disable-background-networking",
                "--disable-sync",
            ]
            .map(str::to_owned),
        );
        let mut options = serde_json::json!({ "args": args });
        if let Some(binary) = std::env::var_os("WARDEN_CHROMIUM") {
            options["binary"] = binary.to_string_lossy().into_owned().into();
        }
        let created = this
            .command(
                reqwest::Method::POST,
                "/session",
                serde_json::json!({
                    "capabilities": {
                        "alwaysMatch": {
                            "browserName": "chrome",
                            "acceptInsecureCerts": true,
                            "goog:chromeOptions": options
                        }
                    }
                }),
            )
            .await?;
        this.session = created["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("chromedriver returned no session: {created}"))?
            .to_owned();
        Ok(this)
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let request = self.http.request(method.clone(), &url);
        // GET and DELETE carry no body (chromedriver refuses a `null` one).
        let request = if body.is_null() {
            request
        } else {
            request.json(&body)
        };
        let response = request.send().await?;
        let status = response.status();
        let value: serde_json::Value = response.json().await?;
        anyhow::ensure!(
            status.is_success(),
            "webdriver {method} {path}: {status}: {value}"
        );
        Ok(value["value"].clone())
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command(
            reqwest::Method::POST,
            &self.session_path("/url"),
            serde_json::json!({ "url": url }),
        )
        .await
        .map(drop)
    }

    /// The URL the browser shows now.
    pub async fn current_url(&self) -> anyhow::Result<String> {
        let value = self
            .command(
                reqwest::Method::GET,
                &self.session_path("/url"),
                serde_json::Value::Null,
            )
            .await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let value = self
            .command(
                reqwest::Method::POST,
                &self.session_path("/element"),
                serde_json::json!({ "using": "css selector", "value": css }),
            )
            .await?;
        value[ELEMENT_KEY]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no element {css}"))
    }

    /// Types `text` into the element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.command(
            reqwest::Method::POST,
            &self.session_path(&format!("/element/{element}/clear")),
            serde_json::json!({}),
        )
        .await?;
        self.command(
            reqwest::Method::POST,
            &self.session_path(&format!("/element/{element}/value")),
            serde_json::json!({ "text": text }),
        )
        .await
        .map(drop)
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.command(
            reqwest::Method::POST,
            &self.session_path(&format!("/element/{element}/click")),
            serde_json::json!({}),
        )
        .await
        .map(drop)
    }

    /// Clicks the element matching `css` (a submit button) and waits (up to 15 s)
    /// until the next document has loaded, so later lookups never see the old page.
    pub async fn click_and_wait_for_navigation(&self, css: &str) -> anyhow::Result<()> {
        self.execute(
            "window.__wardenOldPage = true; return null;",
            serde_json::json!([]),
        )
        .await?;
        self.click(css).await?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let loaded = self
                .execute(
                    "return window.__wardenOldPage !== true && document.readyState === 'complete';",
                    serde_json::json!([]),
                )
                .await;
            // During the navigation itself the script may fail; try again.
            if matches!(loaded, Ok(serde_json::Value::Bool(true))) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "clicking {css} loaded no new page within 15 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The rendered text of the element matching `css` (empty if there is none).
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let value = self
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
                serde_json::json!([css]),
            )
            .await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value;
    /// a returned promise is awaited.
    pub async fn execute(
        &self,
        script: &str,
        args: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.command(
            reqwest::Method::POST,
            &self.session_path("/execute/sync"),
            serde_json::json!({ "script": script, "args": args }),
        )
        .await
    }

    /// The current DOM as HTML.
    pub async fn dom(&self) -> anyhow::Result<String> {
        let value = self
            .execute(
                "return document.documentElement.outerHTML;",
                serde_json::json!([]),
            )
            .await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Waits (up to `limit`) until the text of `css` satisfies `accept`; returns it.
    pub async fn wait_for_text(
        &self,
        css: &str,
        limit: std::time::Duration,
        accept: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let text = self.text(css).await?;
            if accept(&text) {
                return Ok(text);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{css} still shows {text:?} after {limit:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Saves a PNG screenshot of the current page to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        use base64::Engine as _;
        let value = self
            .command(
                reqwest::Method::GET,
                &self.session_path("/screenshot"),
                serde_json::Value::Null,
            )
            .await?;
        let png =
            base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap_or_default())?;
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Ends the session and stops chromedriver.
    pub async fn quit(mut self) {
        let _ = self
            .command(
                reqwest::Method::DELETE,
                &self.session_path(""),
                serde_json::Value::Null,
            )
            .await;
        self.session.clear();
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Not quit (a test panicked): close the browser so it does not outlive
            // chromedriver, with a blocking request (no runtime in `drop`).
            use std::io::{Read as _, Write as _};
            let address = self.base.trim_start_matches("http://");
            if let Ok(mut stream) = std::net::TcpStream::connect(address) {
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let _ = write!(
                    stream,
                    "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.session
                );
                let _ = stream.read(&mut [0u8; 512]);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
