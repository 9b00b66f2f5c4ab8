//! `appliance-e2e-bench`: the whole appliance under load, as a process.
//!
//! Starts `DEVICES` simulated Modbus TCP devices and the fleet (embedded broker, SQLite
//! store) in this process, writes an appliance config that polls every device every
//! `INTERVAL` ms through the policy and publishes every reading over mutual TLS 1.3 with
//! the durable outbox on (`fsync = "always"`), runs `warden run --config` as a child, and
//! measures the child alone: CPU time (utime + stime from `/proc/PID/stat`) over wall
//! time, polls per second (from its `/metrics`), resident memory (VmRSS, VmHWM). Then it
//! stops the equipment, waits for the outbox to drain and checks that the fleet stored
//! exactly as many readings as the appliance read: zero loss.
//!
//! With `--manifest` (as root: compartments drop to their own uids) the appliance runs
//! as in production, `warden run --manifest`: the security monitor and its pluton,
//! bridges, link and status-page compartments, each sandboxed with the grants the
//! bench writes into its manifest. CPU and memory are then summed over the monitor and
//! every process below it (found by walking `/proc` for descendants), and each
//! process's VmRSS is listed.
//!
//! ```text
//! cargo build --release -p warden -p warden-hil
//! target/release/appliance-e2e-bench --warden target/release/warden
//! target/release/appliance-e2e-bench --warden target/release/warden \
//!     --devices 32 --points 100 --interval-ms 1000      # the memory footprint case
//! sudo target/release/appliance-e2e-bench --warden target/release/warden \
//!     --devices 32 --points 100 --interval-ms 1000 --manifest   # ... in compartments
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;
use warden_hil::demo_pki::DemoPki;
use warden_hil::modbus_tcp_slave::{DeviceModel, SimulatedSlave};

/// What to run.
#[derive(Debug, Clone)]
struct Options {
    warden: PathBuf,
    devices: usize,
    points: u16,
    interval_ms: u64,
    warmup: Duration,
    measure: Duration,
    /// Run `warden run --manifest` (monitor and compartments) instead of `--config`.
    manifest: bool,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            warden: PathBuf::from("target/release/warden"),
            devices: 100,
            points: 1,
            interval_ms: 10,
            warmup: Duration::from_secs(5),
            measure: Duration::from_secs(30),
            manifest: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--warden" => options.warden = PathBuf::from(value()?),
                "--devices" => options.devices = value()?.parse().context("--devices")?,
                "--points" => options.points = value()?.parse().context("--points")?,
                "--interval-ms" => {
                    options.interval_ms = value()?.parse().context("--interval-ms")?;
                }
                "--warmup-secs" => {
                    options.warmup =
                        Duration::from_secs(value()?.parse().context("--warmup-secs")?);
                }
                "--seconds" => {
                    options.measure = Duration::from_secs(value()?.parse().context("--seconds")?);
                }
                "--manifest" => options.manifest = true,
                "--help" | "-h" => {
                    println!(
                        "appliance-e2e-bench [--warden PATH] [--devices N] [--points N] \
                         [--interval-ms MS] [--warmup-secs S] [--seconds S] [--manifest]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown option {other} (see --help)"),
            }
        }
        if !(1..=125).contains(&options.points) {
            bail!("--points must be 1..=125 (one read request per device)");
        }
        if options.devices == 0 || options.interval_ms == 0 {
            bail!("--devices and --interval-ms must be positive");
        }
        Ok(options)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    if !options.warden.exists() {
        bail!(
            "{} does not exist: build it first (cargo build --release -p warden)",
            options.warden.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("warden-e2e-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run(&options, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(options: &Options, dir: &Path) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let pki = DemoPki::generate(&dir.join("pki"))?;
    let fleet = warden_fleet::start(&pki.fleet_config(dir, 0, 0), shutdown.clone()).await?;

    let equipment_stop = CancellationToken::new();
    let model = device_model(options)?;
    let mut equipment = Vec::with_capacity(options.devices);
    for _ in 0..options.devices {
        equipment.push(
            SimulatedSlave::start("127.0.0.1:0", model.clone(), equipment_stop.clone()).await?,
        );
    }
    let metrics_port = free_port()?;
    let page_port = free_port()?;
    let config = write_appliance_config(
        options,
        dir,
        &pki,
        &equipment,
        fleet.mqtt_address.port(),
        (page_port, metrics_port),
    )?;

    let mut appliance = if options.manifest {
        let manifest = write_manifest(
            dir,
            &config,
            &pki,
            &equipment,
            fleet.mqtt_address.port(),
            (page_port, metrics_port),
        )?;
        Appliance::start(&options.warden, &["run", "--manifest"], &manifest)?
    } else {
        Appliance::start(&options.warden, &["run", "--config"], &config)?
    };
    let metrics = Metrics::new(metrics_port);
    metrics.wait_until_up(Duration::from_secs(20)).await?;
    tokio::time::sleep(options.warmup).await;

    let before = (
        appliance.cpu_ticks()?,
        metrics.scrape().await?,
        Instant::now(),
    );
    tokio::time::sleep(options.measure).await;
    let after = (
        appliance.cpu_ticks()?,
        metrics.scrape().await?,
        Instant::now(),
    );
    let memory = appliance.memory()?;
    let processes = appliance.processes()?;

    // Stop the equipment; every reading taken so far must reach the fleet.
    equipment_stop.cancel();
    let final_metrics = metrics.wait_until_drained(Duration::from_secs(60)).await?;
    appliance.stop()?;
    let stored = count_stored(dir, &pki.device_id).await?;
    shutdown.cancel();
    fleet.stopped().await;

    let wall = after.2.duration_since(before.2).as_secs_f64();
    let ticks_per_second = clock_ticks_per_second();
    let cpu = (after.0 - before.0) as f64 / ticks_per_second / wall;
    let polls = (after.1.reads_ok - before.1.reads_ok) / wall;
    let target = options.devices as f64 * 1000.0 / options.interval_ms as f64;
    let readings = final_metrics.reads_ok * f64::from(options.points);

    println!(
        "appliance end to end ({} devices × {} points every {} ms, target {target:.0} polls/s, {})",
        options.devices,
        options.points,
        options.interval_ms,
        if options.manifest {
            "monitor and compartments: warden run --manifest"
        } else {
            "one process: warden run --config"
        }
    );
    println!(
        "  polls/s achieved           {polls:>10.0}  ({:.1} % of target)",
        polls / target * 100.0
    );
    println!(
        "  appliance CPU              {:>10.1} % of one core",
        cpu * 100.0
    );
    println!(
        "  CPU per poll               {:>10.1} µs",
        cpu * 1e6 / polls.max(1.0)
    );
    println!(
        "  errors during measurement  {:>10.0}",
        after.1.errors - before.1.errors
    );
    println!(
        "  resident memory (VmRSS)    {:>10.1} MiB{}",
        memory.rss_kib as f64 / 1024.0,
        if processes.len() > 1 {
            format!(", summed over {} processes:", processes.len())
        } else {
            String::new()
        }
    );
    if processes.len() > 1 {
        for process in &processes {
            println!(
                "      {:>6} {:<28} {:>8.1} MiB (PSS {:.1} MiB)",
                process.pid,
                process.name,
                process.memory.rss_kib as f64 / 1024.0,
                process.memory.pss_kib as f64 / 1024.0
            );
        }
    }
    println!(
        "  of which allocated (RssAnon) {:>8.1} MiB (heap, arenas, stacks; the rest is code pages)",
        memory.anon_kib as f64 / 1024.0
    );
    println!(
        "  proportional (PSS)         {:>10.1} MiB (shared pages split between processes)",
        memory.pss_kib as f64 / 1024.0
    );
    println!(
        "  peak resident (VmHWM)      {:>10.1} MiB{}",
        memory.hwm_kib as f64 / 1024.0,
        if processes.len() > 1 {
            " (sum of each process's peak)"
        } else {
            ""
        }
    );
    println!("  readings read              {readings:>10.0}");
    println!("  readings stored by fleet   {stored:>10}");
    println!(
        "  outbox refused / dropped   {:>10.0} / {:.0}",
        final_metrics.refused, final_metrics.dropped
    );
    if readings as u64 != stored {
        bail!(
            "readings lost or duplicated: the appliance read {readings}, the fleet stored {stored}"
        );
    }
    println!("  zero loss: every reading read was stored exactly once");
    Ok(())
}

/// Every device: unit 1, `points` holding registers counting up once per poll interval.
fn device_model(options: &Options) -> anyhow::Result<DeviceModel> {
    let mut text = String::from("unit = 1\n");
    for address in 0..options.points {
        writeln!(
            text,
            "[holding.{address}]\nmodel = \"counter\"\nperiod_ms = {}",
            options.interval_ms
        )?;
    }
    toml::from_str(&text).context("bench device model")
}

fn write_appliance_config(
    options: &Options,
    dir: &Path,
    pki: &DemoPki,
    equipment: &[SimulatedSlave],
    broker_port: u16,
    (page_port, metrics_port): (u16, u16),
) -> anyhow::Result<PathBuf> {
    let mut policy = String::from("[policy]\nname = \"e2e-bench\"\n");
    let mut config = String::new();
    writeln!(
        config,
        "[device]\nid = \"{}\"\nproduct = \"warden-demo\"\n\n[policy]\nfile = \"policy.toml\"\n",
        pki.device_id
    )?;
    let last = options.points - 1;
    for (index, slave) in equipment.iter().enumerate() {
        let name = format!("dev{index:03}");
        writeln!(
            policy,
            "[[modbus]]\nname = \"{name}-poll\"\nbridge = \"{name}\"\nunits = 1\n\
             functions = [\"read_holding_registers\"]\naddresses = \"0..={last}\"\nsources = [\"poll\"]\n"
        )?;
        writeln!(
            config,
            "[[bridges.modbus_tcp]]\nname = \"{name}\"\naddress = \"{}\"\nunit = 1\ntimeout_ms = 1000\n",
            slave.address()
        )?;
        for point in 0..options.points {
            writeln!(
                config,
                "[[bridges.modbus_tcp.points]]\nname = \"r{point}\"\nkind = \"holding\"\n\
                 address = {point}\ntype = \"u16\"\npoll_interval_ms = {}\n",
                options.interval_ms
            )?;
        }
    }
    writeln!(
        config,
        "[link]\nbroker_host = \"127.0.0.1\"\nbroker_port = {broker_port}\n\
         fleet_ca = \"{}\"\ndevice_cert = \"{}\"\ndevice_key = \"{}\"\nbatch_interval_ms = 200\n\n\
         [link.outbox]\ndir = \"outbox\"\nmax_bytes = 268435456\nfsync = \"always\"\noverflow = \"refuse\"\n\n\
         [status_page]\nlisten = \"127.0.0.1:{page_port}\"\npassword_file = \"status-page/password.phc\"\n\
         state_dir = \"status-page\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nsession_idle_secs = 900",
        pki.fleet_ca.display(),
        pki.device_cert.display(),
        pki.device_key.display(),
    )?;
    std::fs::write(dir.join("policy.toml"), policy)?;
    std::fs::create_dir_all(dir.join("status-page"))?;
    std::fs::write(dir.join("status-page/password.phc"), bench_password_hash()?)?;
    let path = dir.join("warden.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// The compartment manifest for `--manifest`: the production layout (pluton, bridges,
/// link, status page, each with only what it needs) over the bench's directory.
/// Compartments run under their own uids, so the directory is made searchable and the
/// device key (a file here; pluton holds it in production) is handed to the link's uid.
fn write_manifest(
    dir: &Path,
    config: &Path,
    pki: &DemoPki,
    equipment: &[SimulatedSlave],
    broker_port: u16,
    (page_port, metrics_port): (u16, u16),
) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    const LINK_UID: u32 = 63003;
    for sub in [
        "reports",
        "outbox",
        "bridges",
        "status-page",
        "pluton",
        "pluton-run",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    for path in [dir.to_path_buf(), dir.join("pki")] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    for file in [
        config.to_path_buf(),
        dir.join("policy.toml"),
        pki.fleet_ca.clone(),
        pki.device_cert.clone(),
    ] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    }
    std::os::unix::fs::chown(&pki.device_key, Some(LINK_UID), Some(LINK_UID))
        .context("chown the device key to the link's uid (run the bench as root)")?;
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let path = |name: &str| dir.join(name).display().to_string();
    let config = config.display().to_string();
    let socket = path("pluton-run/pluton.sock");
    let devices: Vec<String> = equipment
        .iter()
        .map(|slave| slave.address().to_string())
        .collect();
    let compartment = |name: &str, args: &[String], grants: &[(&str, String)], uid: u32| {
        let mut text = format!(
            "[compartment.{name}]\nrole = {name:?}\nargs = {}\n",
            list(args)
        );
        for key in [
            "read",
            "read_write",
            "serial",
            "connect",
            "listen",
            "unix_listen",
            "unix_connect",
            "peers",
        ] {
            let value = grants
                .iter()
                .find(|(granted, _)| *granted == key)
                .map_or_else(|| "[]".to_owned(), |(_, value)| value.clone());
            text.push_str(&format!("{key} = {value}\n"));
        }
        text.push_str(&format!(
            "memory_mib = 256\nopen_files = 1024\nuid = {uid}\n\n"
        ));
        text
    };
    let mut manifest = format!(
        "[monitor]\nheartbeat_interval_ms = 1000\nwatchdog_timeout_ms = 10000\n\
         restart_backoff_initial_ms = 500\nrestart_backoff_max_ms = 5000\n\
         report_dir = {:?}\nreport_capacity = 256\n\n",
        path("reports")
    );
    manifest += &compartment(
        "pluton",
        &[
            "--socket".into(),
            socket.clone(),
            "--state-dir".into(),
            path("pluton"),
        ],
        &[
            ("read_write", list(&[path("pluton"), path("pluton-run")])),
            ("unix_listen", list(std::slice::from_ref(&socket))),
        ],
        63001,
    );
    manifest += &compartment(
        "bridges",
        &[
            "--config".into(),
            config.clone(),
            "--state-dir".into(),
            path("bridges"),
        ],
        &[
            ("read", list(&[config.clone(), path("policy.toml")])),
            ("read_write", list(&[path("bridges")])),
            ("connect", list(&devices)),
            ("peers", list(&["link".into(), "status-page".into()])),
        ],
        63002,
    );
    manifest += &compartment(
        "link",
        &["--config".into(), config.clone()],
        &[
            (
                "read",
                list(&[config.clone(), path("pki"), path("reports")]),
            ),
            ("read_write", list(&[path("outbox")])),
            ("connect", list(&[format!("127.0.0.1:{broker_port}")])),
            ("peers", list(&["status-page".into()])),
        ],
        LINK_UID,
    );
    manifest += &compartment(
        "status-page",
        &["--config".into(), config.clone()],
        &[
            ("read", list(std::slice::from_ref(&config))),
            ("read_write", list(&[path("status-page")])),
            ("listen", format!("[{page_port}, {metrics_port}]")),
        ],
        63004,
    );
    let manifest_path = dir.join("manifest.toml");
    std::fs::write(&manifest_path, manifest)?;
    Ok(manifest_path)
}

/// A random password's Argon2id hash: nobody logs in during the bench.
fn bench_password_hash() -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(&secret, &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(format!("{hash}\n"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn count_stored(dir: &Path, device_id: &str) -> anyhow::Result<u64> {
    let url = format!("sqlite://{}", dir.join("fleet.db").display());
    let store = warden_fleet::store::Store::open(&url).await?;
    let rows = store.telemetry(device_id, None, i64::MAX).await?;
    store.close().await;
    Ok(rows.len() as u64)
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux ABI we run on; getconf would say the same.
    100.0
}

/// The appliance process.
struct Appliance {
    child: Child,
}

/// Resident memory of the appliance, KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
    /// Proportional set size (`/proc/PID/smaps_rollup`): shared pages (the one binary's
    /// code, mapped by every process) divided among the processes that map them.
    pss_kib: u64,
    /// RssAnon: the resident memory the appliance allocated itself (heap, malloc
    /// arenas, stacks). The rest of VmRSS is file pages, almost all the binary's code:
    /// clean, shared by every process of the binary and given back under pressure.
    anon_kib: u64,
}

/// One process of the appliance (the monitor or a compartment).
struct ApplianceProcess {
    pid: u32,
    /// `warden run`, or the compartment's role.
    name: String,
    memory: Memory,
    /// utime + stime, clock ticks.
    cpu_ticks: u64,
}

fn proc_file(pid: u32, name: &str) -> anyhow::Result<String> {
    let path = format!("/proc/{pid}/{name}");
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces), so
/// index 0 is field 3 (state) of stat(5).
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let stat = proc_file(pid, "stat")?;
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// `pid` and every process below it, parents first.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Field 4 of stat(5), the parent's pid.
        if let Some(parent) = stat_fields(child)
            .ok()
            .and_then(|fields| fields.get(1).and_then(|p| p.parse::<u32>().ok()))
        {
            parents.push((child, parent));
        }
    }
    let mut tree = vec![pid];
    let mut index = 0;
    while index < tree.len() {
        let parent = tree[index];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        index += 1;
    }
    tree
}

fn process_info(pid: u32) -> anyhow::Result<ApplianceProcess> {
    let status = proc_file(pid, "status")?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of stat(5).
    let utime: u64 = fields.get(11).context("stat utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stat stime")?.parse()?;
    let args: Vec<String> = proc_file(pid, "cmdline")
        .unwrap_or_default()
        .split('\0')
        .map(str::to_owned)
        .collect();
    let name = match args.iter().position(|a| a == "compartment") {
        Some(at) => format!(
            "compartment {}",
            args.get(at + 1).cloned().unwrap_or_default()
        ),
        None => args
            .iter()
            .skip(1)
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .join(" "),
    };
    Ok(ApplianceProcess {
        pid,
        name,
        memory: Memory {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            anon_kib: field("RssAnon:"),
            pss_kib: proc_file(pid, "smaps_rollup")
                .ok()
                .and_then(|rollup| {
                    rollup
                        .lines()
                        .find_map(|line| line.strip_prefix("Pss:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse().ok())
                })
                .unwrap_or(0),
        },
        cpu_ticks: utime + stime,
    })
}

impl Appliance {
    fn start(warden: &Path, args: &[&str], file: &Path) -> anyhow::Result<Self> {
        let child = Command::new(warden)
            .args(args)
            .arg(file)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", warden.display()))?;
        Ok(Self { child })
    }

    /// The appliance's processes: the child and, in compartment mode, everything below
    /// it (a process that exits while being read is left out).
    fn processes(&mut self) -> anyhow::Result<Vec<ApplianceProcess>> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the appliance exited early: {status}");
        }
        let mut processes = vec![process_info(self.child.id())?];
        for pid in process_tree(self.child.id()).into_iter().skip(1) {
            if let Ok(process) = process_info(pid) {
                processes.push(process);
            }
        }
        Ok(processes)
    }

    /// utime + stime of every process of the appliance, in clock ticks. (A
    /// compartment restarted during the measurement would lose its ticks; the bench's
    /// compartments are not restarted.)
    fn cpu_ticks(&mut self) -> anyhow::Result<u64> {
        Ok(self.processes()?.iter().map(|p| p.cpu_ticks).sum())
    }

    /// VmRSS and VmHWM summed over every process of the appliance.
    fn memory(&mut self) -> anyhow::Result<Memory> {
        Ok(self
            .processes()?
            .iter()
            .fold(Memory::default(), |sum, p| Memory {
                rss_kib: sum.rss_kib + p.memory.rss_kib,
                hwm_kib: sum.hwm_kib + p.memory.hwm_kib,
                pss_kib: sum.pss_kib + p.memory.pss_kib,
                anon_kib: sum.anon_kib + p.memory.anon_kib,
            }))
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        nix_kill(self.child.id())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the appliance stopped with {status}");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        bail!("the appliance did not stop within 20 s of SIGTERM")
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn nix_kill(pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -TERM {pid} failed");
    }
    Ok(())
}

/// Sums of the appliance's Prometheus counters that the bench reads.
#[derive(Debug, Clone, Copy, Default)]
struct Scrape {
    reads_ok: f64,
    errors: f64,
    outbox_depth: f64,
    refused: f64,
    dropped: f64,
}

struct Metrics {
    url: String,
    client: reqwest::Client,
}

impl Metrics {
    fn new(port: u16) -> Self {
        Self {
            url: format!("http://127.0.0.1:{port}/metrics"),
            client: reqwest::Client::new(),
        }
    }

    async fn scrape(&self) -> anyhow::Result<Scrape> {
        let text = self.client.get(&self.url).send().await?.text().await?;
        let mut sums: BTreeMap<&str, f64> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name_labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = name_labels.split('{').next().unwrap_or_default();
            if let Ok(value) = value.parse::<f64>() {
                *sums.entry(name).or_default() += value;
            }
        }
        let get = |name: &str| sums.get(name).copied().unwrap_or(0.0);
        Ok(Scrape {
            reads_ok: get("warden_bridge_reads_ok_total"),
            errors: get("warden_bridge_errors_total") + get("warden_bridge_timeouts_total"),
            outbox_depth: get("warden_outbox_depth"),
            refused: get("warden_outbox_refused_total"),
            dropped: get("warden_outbox_dropped_oldest_total")
                + get("warden_link_readings_dropped_total"),
        })
    }

    async fn wait_until_up(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            match self.scrape().await {
                Ok(scrape) if scrape.reads_ok > 0.0 => return Ok(()),
                _ if Instant::now() > deadline => {
                    bail!("the appliance's metrics showed no reading within {limit:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until no reading has been taken for a second and the outbox is empty.
    async fn wait_until_drained(&self, limit: Duration) -> anyhow::Result<Scrape> {
        let deadline = Instant::now() + limit;
        let mut last = self.scrape().await?;
        let mut quiet_since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.scrape().await?;
            if now.reads_ok != last.reads_ok {
                quiet_since = Instant::now();
            }
            if now.outbox_depth == 0.0 && quiet_since.elapsed() > Duration::from_secs(2) {
                return Ok(now);
            }
            if Instant::now() > deadline {
                bail!(
                    "the outbox did not drain within {limit:?} (depth {})",
                    now.outbox_depth
                );
            }
            last = now;
        }
    }
}
