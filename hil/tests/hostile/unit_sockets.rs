//! Attacks on the unit's Modbus TCP facade and control socket (issue #22 items 1, 2).
//!
//! Each case runs `warden demo --quick --ephemeral-ports` (its config has a facade on a port
//! the kernel picks, named in the log) and attacks the facade from loopback addresses
//! 127.0.0.x, or the control socket (`status-page/control.sock`) as the unit's own
//! user. Throughout, the unit must keep polling line 1 (its read counter in /metrics
//! grows) and a legitimate client must be served.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};

use crate::tally::{self, Row};
use crate::unit_listeners::{Demo, closed_within, connect_from, loopback};

/// A SCADA client's read, retried as a SCADA master reconnects, under attack.
const SERVED_WITHIN: Duration = Duration::from_secs(10);
/// The facade's request deadline (`protocol-bridges/src/facade.rs`), plus slack.
const FACADE_CLOSES_WITHIN: Duration = Duration::from_secs(15 + 10);

/// The facade's address, from the demo's log.
async fn facade_address(demo: &Demo) -> SocketAddr {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&demo.log).unwrap_or_default();
        let found = text
            .lines()
            .filter(|line| line.contains("gateway facade listening"))
            .find_map(|line| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix("address="))
                    .and_then(|address| address.parse().ok())
            });
        if let Some(address) = found {
            return address;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no facade address in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `warden_bridge_reads_ok_total` of line 1, from /metrics.
async fn polls(metrics: SocketAddr) -> Option<u64> {
    let mut stream = TcpStream::connect(metrics).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find(|line| line.starts_with("warden_bridge_reads_ok_total") && line.contains("line1"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
}

/// Waits until line 1 has been polled more than `since` times.
async fn polled_beyond(metrics: SocketAddr, since: u64, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(now) = polls(metrics).await
            && now > since
        {
            return Some(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// One read of holding registers 0..3 of unit 1 through the facade from 127.0.0.1:
/// whether a normal (not exception) answer came.
async fn scada_read(facade: SocketAddr) -> anyhow::Result<bool> {
    let mut stream = connect_from(loopback(1), facade).await?;
    // MBAP: transaction 7, protocol 0, length 6, unit 1; PDU: 0x03, address 0, count 3.
    stream
        .write_all(&[0, 7, 0, 0, 0, 6, 1, 0x03, 0, 0, 0, 3])
        .await?;
    let mut answer = [0u8; 9 + 6];
    tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut answer)).await??;
    Ok(answer[..2] == [0, 7] && answer[7] == 0x03 && answer[8] == 6)
}

/// [`scada_read`] until it succeeds or `within` passes; the attempts made.
async fn served(facade: SocketAddr, within: Duration) -> (bool, u32, Duration) {
    let started = Instant::now();
    let mut attempts = 0;
    while started.elapsed() < within {
        attempts += 1;
        if matches!(scada_read(facade).await, Ok(true)) {
            return (true, attempts, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (false, attempts, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the warden binary built (cargo build -p warden --bins)"]
async fn facade_floods_silent_clients_and_oversized_frames_leave_scada_served() {
    let mut demo = Demo::start(None).await;
    let facade = facade_address(&demo).await;
    let before = polled_beyond(demo.metrics, 0, Duration::from_secs(20))
        .await
        .expect("line 1 is polled before the attack");
    let lines_before = demo.log_lines();

    // A flood of silent connections from one address, slowloris (an MBAP header
    // trickled a byte at a time) from another, and oversized frames from a third.
    let mut silent = Vec::new();
    let mut refused_at_connect = 0;
    for _ in 0..200 {
        match connect_from(loopback(2), facade).await {
            Ok(stream) => silent.push(stream),
            Err(_) => refused_at_connect += 1,
        }
    }
    let mut slow = Vec::new();
    for _ in 0..16 {
        if let Ok(mut stream) = connect_from(loopback(3), facade).await {
            let _ = stream.write_all(&[0]).await;
            slow.push(stream);
        }
    }
    let mut oversized_closed = 0;
    for _ in 0..8 {
        if let Ok(mut stream) = connect_from(loopback(4), facade).await {
            // MBAP length 0xFFFF: far beyond a Modbus frame (260 bytes).
            let mut frame = vec![0, 1, 0, 0, 0xFF, 0xFF, 1, 0x03];
            frame.resize(2048, 0x41);
            let _ = stream.write_all(&frame).await;
            if closed_within(stream, Duration::from_secs(5)).await {
                oversized_closed += 1;
            }
        }
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for stream in &mut slow {
                let _ = stream.write_all(&[0]).await;
            }
        }
        slow
    });

    let (scada_served, attempts, took) = served(facade, SERVED_WITHIN).await;
    let after = polled_beyond(demo.metrics, before, Duration::from_secs(5)).await;
    let still_polling = after.is_some();
    let slow = trickle.await.expect("trickle");
    // Whatever is still open must be closed by the facade's deadlines.
    let mut waits = tokio::task::JoinSet::new();
    for stream in silent.into_iter().chain(slow) {
        waits.spawn(closed_within(stream, FACADE_CLOSES_WITHIN));
    }
    let hostile = waits.len();
    let mut closed = 0;
    while let Some(done) = waits.join_next().await {
        if done.unwrap_or(false) {
            closed += 1;
        }
    }
    let alive = demo.alive();
    let log_growth = demo.log_lines().saturating_sub(lines_before);
    let pass = scada_served
        && still_polling
        && oversized_closed == 8
        && closed == hostile
        && alive
        && log_growth < 2000;
    tally::record(Row {
        attack: "1/2 flood + silent + slowloris + oversized frames: Modbus TCP facade (unit)"
            .into(),
        outcome: format!(
            "200 silent connections from one address ({refused_at_connect} refused at connect), 16 slowloris, 8 frames of MBAP length 65535: SCADA read {} after {attempts} attempt(s) in {} ms, line 1 polls {before} → {}, oversized closed {oversized_closed}/8, {closed}/{hostile} hostile connections closed by the facade, {log_growth} log lines",
            if scada_served { "served" } else { "NOT served" },
            took.as_millis(),
            after.map_or_else(|| "stalled".to_owned(), |n| n.to_string()),
        ),
        bound: format!(
            "SCADA served < {} s; polling goes on; oversized frames closed < 5 s; every hostile connection closed < {} s; < 2000 log lines",
            SERVED_WITHIN.as_secs(),
            FACADE_CLOSES_WITHIN.as_secs()
        ),
        result: if pass { "pass".into() } else { "FAIL".into() },
    });
    assert!(scada_served, "the SCADA client was not served");
    assert!(still_polling, "polling stalled under the attack");
    assert_eq!(
        oversized_closed, 8,
        "oversized frames left connections open"
    );
    assert_eq!(closed, hostile, "hostile facade connections stayed open");
    assert!(alive);
    assert!(log_growth < 2000, "log storm: {log_growth} lines");
}

/// One `warden status`-like read of the control socket: whether a JSON snapshot came.
async fn status_read(socket: &Path) -> anyhow::Result<bool> {
    let mut stream = UnixStream::connect(socket).await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_string(&mut text)).await??;
    Ok(text.trim_start().starts_with('{') && text.trim_end().ends_with('}'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the warden binary built (cargo build -p warden --bins)"]
async fn control_socket_floods_and_oversized_writes_leave_the_operator_served() {
    let mut demo = Demo::start(None).await;
    let socket = demo.state_dir().join("status-page").join("control.sock");
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no control socket"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = polled_beyond(demo.metrics, 0, Duration::from_secs(20))
        .await
        .expect("line 1 is polled before the attack");

    // 300 clients that connect and never read, 8 that write 1 MiB each (the socket
    // reads nothing: the writes must not grow the unit).
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Ok(stream) = UnixStream::connect(&socket).await {
            held.push(stream);
        }
    }
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let socket = socket.clone();
        writers.spawn(async move {
            if let Ok(mut stream) = UnixStream::connect(&socket).await {
                let junk = vec![b'x'; 1 << 20];
                let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&junk)).await;
            }
        });
    }
    let asked = Instant::now();
    let mut operator = false;
    let mut attempts = 0;
    while asked.elapsed() < SERVED_WITHIN {
        attempts += 1;
        if matches!(status_read(&socket).await, Ok(true)) {
            operator = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = asked.elapsed();
    while writers.join_next().await.is_some() {}
    let after = polled_beyond(demo.metrics, before, Duration::from_secs(5)).await;
    let still_polling = after.is_some();
    drop(held);
    let alive = demo.alive();
    let pass = operator && still_polling && alive;
    tally::record(Row {
        attack: "1/2 flood + non-reading clients + oversized writes: control socket (unit)".into(),
        outcome: format!(
            "300 connections held unread, 8 × 1 MiB written: `warden status` read {} after {attempts} attempt(s) in {} ms, line 1 polls {before} → {}",
            if operator { "served" } else { "NOT served" },
            took.as_millis(),
            after.map_or_else(|| "stalled".to_owned(), |n| n.to_string()),
        ),
        bound: format!(
            "status served < {} s; polling goes on; the unit stays up",
            SERVED_WITHIN.as_secs()
        ),
        result: if pass { "pass".into() } else { "FAIL".into() },
    });
    assert!(operator, "the operator's status read was not served");
    assert!(still_polling, "polling stalled under the attack");
    assert!(alive);
}
