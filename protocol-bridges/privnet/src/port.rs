//! The running private network port: the userspace stack, its servers, the connector.
//!
//! Everything that touches the embassy-net stack runs on one thread (the stack is not
//! `Send`): the stack runner, the DHCP and SNTP servers, and one task per equipment
//! connection. Other threads reach the equipment through [`PrivnetHandle::connect`],
//! which returns a tokio byte stream joined to a TCP socket of the stack, or through a
//! loopback forward built on it.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use embassy_futures::select::{Either, select};
use embassy_net::tcp::TcpSocket;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{Config, IpEndpoint, Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use embassy_net_driver_channel::driver::Driver;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{ForwardConfig, PrivnetSpec};
use crate::dhcp_server::{DhcpCounters, DhcpServer, format_mac};
use crate::frame_wire::{FrameWire, wire_driver};
use crate::sntp::{self, NTP_PACKET_LEN};

/// How long connecting to equipment may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Sockets of the stack: DHCP, SNTP and up to this many minus two TCP connections.
const SOCKETS: usize = 18;
/// Buffer per direction of an equipment connection.
const TCP_BUFFER: usize = 4096;

/// Where the stack's frames go.
#[derive(Debug)]
pub enum PortDevice {
    /// The TAP interface the config names (needs `CAP_NET_ADMIN` to open).
    Tap,
    /// An in-process cable (tests, simulators).
    Wire(FrameWire),
}

/// Counters of the port, for the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrivnetCounters {
    /// DHCP server counters.
    pub dhcp: DhcpCounters,
    /// SNTP requests answered.
    pub sntp_answers: u64,
    /// SNTP datagrams refused (malformed, not a client request).
    pub sntp_refused: u64,
    /// Connections to equipment opened.
    pub connections: u64,
    /// Connections to equipment that failed (refused, unreachable, timeout).
    pub connect_failures: u64,
}

/// Why the port could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The TAP interface could not be opened.
    #[error("cannot open TAP interface {interface}: {source}")]
    Tap {
        /// Interface name.
        interface: String,
        /// Why.
        source: io::Error,
    },
    /// A forward could not listen.
    #[error("cannot listen on {listen} (forward to {to}): {source}")]
    Forward {
        /// The loopback address.
        listen: std::net::SocketAddr,
        /// Its equipment.
        to: SocketAddrV4,
        /// Why.
        source: io::Error,
    },
    /// The port's thread could not start.
    #[error("cannot start the private network thread: {0}")]
    Thread(io::Error),
}

struct ConnectRequest {
    to: SocketAddrV4,
    stream: DuplexStream,
    result: oneshot::Sender<io::Result<()>>,
}

/// The handle of a started port: connections to equipment and counters.
#[derive(Clone)]
pub struct PrivnetHandle {
    requests: mpsc::Sender<ConnectRequest>,
    counters: Arc<Mutex<PrivnetCounters>>,
    address: Ipv4Addr,
    forwards: Vec<(std::net::SocketAddr, SocketAddrV4)>,
}

impl PrivnetHandle {
    /// The appliance's address on the private network.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The loopback forwards as bound (port 0 in the config becomes a real port) and
    /// the equipment each one reaches.
    pub fn forwards(&self) -> &[(std::net::SocketAddr, SocketAddrV4)] {
        &self.forwards
    }

    /// A copy of the counters.
    pub fn counters(&self) -> PrivnetCounters {
        *self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a TCP connection to equipment through the userspace stack; the returned
    /// stream is the connection (EOF when the equipment closes it).
    pub async fn connect(&self, to: SocketAddrV4) -> io::Result<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(TCP_BUFFER);
        let (result, answer) = oneshot::channel();
        let request = ConnectRequest {
            to,
            stream: theirs,
            result,
        };
        let stopped = || {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the private network port has stopped",
            )
        };
        self.requests.send(request).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())??;
        Ok(ours)
    }
}

/// Starts the port on its own thread: the stack on `device` with the spec's static
/// address, DHCP and SNTP servers if enabled, and the loopback forwards. Returns once
/// the device is open and the forwards listen.
pub fn start(
    spec: PrivnetSpec,
    device: PortDevice,
    shutdown: CancellationToken,
) -> Result<PrivnetHandle, StartError> {
    let mut listeners = Vec::new();
    for forward in &spec.forward {
        let listener = std::net::TcpListener::bind(forward.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| StartError::Forward {
                listen: forward.listen,
                to: forward.to,
                source,
            })?;
        let bound = listener
            .local_addr()
            .map_err(|source| StartError::Forward {
                listen: forward.listen,
                to: forward.to,
                source,
            })?;
        listeners.push((listener, forward.clone(), bound));
    }
    let (requests, queue) = mpsc::channel(16);
    let counters = Arc::new(Mutex::new(PrivnetCounters::default()));
    let handle = PrivnetHandle {
        requests,
        counters: Arc::clone(&counters),
        address: spec.address,
        forwards: listeners
            .iter()
            .map(|(_, f, bound)| (*bound, f.to))
            .collect(),
    };
    let forward_handle = handle.clone();
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("privnet-{}", spec.interface))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready.send(Err(StartError::Thread(error)));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                for (listener, forward, _) in listeners {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::task::spawn_local(run_forward(
                                listener,
                                forward,
                                forward_handle.clone(),
                                shutdown.clone(),
                            ));
                        }
                        Err(source) => {
                            let _ = ready.send(Err(StartError::Forward {
                                listen: forward.listen,
                                to: forward.to,
                                source,
                            }));
                            return;
                        }
                    }
                }
                drop(forward_handle);
                match device {
                    PortDevice::Tap => match embassy_net_tuntap::TunTapDevice::new(&spec.interface)
                    {
                        Ok(mut tap) => {
                            tap.set_hardware_address(spec.mac);
                            let _ = ready.send(Ok(()));
                            serve(tap, spec, queue, counters, shutdown).await;
                        }
                        Err(source) => {
                            let _ = ready.send(Err(StartError::Tap {
                                interface: spec.interface.clone(),
                                source,
                            }));
                        }
                    },
                    PortDevice::Wire(wire) => {
                        let (driver, pump) = wire_driver(spec.mac, wire);
                        tokio::task::spawn_local(pump);
                        let _ = ready.send(Ok(()));
                        serve(driver, spec, queue, counters, shutdown).await;
                    }
                }
            });
        })
        .map_err(StartError::Thread)?;
    match started.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(StartError::Thread(io::Error::other(
            "the thread exited before starting",
        ))),
    }
}

/// Runs the stack and its servers until `shutdown`.
async fn serve<D: Driver + 'static>(
    driver: D,
    spec: PrivnetSpec,
    mut requests: mpsc::Receiver<ConnectRequest>,
    counters: Arc<Mutex<PrivnetCounters>>,
    shutdown: CancellationToken,
) {
    let config = Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(spec.address, spec.prefix_len),
        gateway: None,
        dns_servers: Default::default(),
    });
    // Leaked once per port: the stack lives as long as the process.
    let resources: &'static mut StackResources<SOCKETS> =
        Box::leak(Box::new(StackResources::new()));
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64);
    let (stack, mut runner) = embassy_net::new(driver, config, resources, seed);
    tokio::task::spawn_local(async move { runner.run().await });
    tracing::info!(interface = %spec.interface, address = %spec.address, "private network port up");

    if let Some(dhcp) = spec.dhcp.clone() {
        tokio::task::spawn_local(run_dhcp(
            stack,
            DhcpServer::new(dhcp),
            Arc::clone(&counters),
        ));
    }
    if let Some(sntp) = spec.sntp {
        tokio::task::spawn_local(run_sntp(stack, sntp, Arc::clone(&counters)));
    }
    let accept = async {
        while let Some(request) = requests.recv().await {
            tokio::task::spawn_local(run_connection(stack, request, Arc::clone(&counters)));
        }
        // Every handle is gone: nobody can connect any more, but the equipment still
        // needs its leases and its time until shutdown.
        std::future::pending::<()>().await;
    };
    select(accept, shutdown.cancelled()).await;
}

fn bump(counters: &Mutex<PrivnetCounters>, change: impl FnOnce(&mut PrivnetCounters)) {
    change(&mut counters.lock().unwrap_or_else(PoisonError::into_inner));
}

async fn run_dhcp(
    stack: Stack<'static>,
    mut server: DhcpServer,
    counters: Arc<Mutex<PrivnetCounters>>,
) {
    let mut rx_meta = [PacketMetadata::EMPTY; 4];
    let mut tx_meta = [PacketMetadata::EMPTY; 4];
    let mut rx_buffer = vec![0u8; 2048];
    let mut tx_buffer = vec![0u8; 2048];
    let mut socket = UdpSocket::new(
        stack,
        &mut rx_meta,
        &mut rx_buffer,
        &mut tx_meta,
        &mut tx_buffer,
    );
    if let Err(error) = socket.bind(67) {
        tracing::error!("the DHCP server cannot bind port 67: {error:?}");
        return;
    }
    let mut datagram = vec![0u8; 1500];
    loop {
        let Ok((len, _from)) = socket.recv_from(&mut datagram).await else {
            continue;
        };
        let reply = server.handle(&datagram[..len]);
        bump(&counters, |c| c.dhcp = server.counters());
        let Some(reply) = reply else { continue };
        tracing::info!(
            mac = %format_mac(&reply.lease.mac),
            ip = %reply.lease.ip,
            name = %reply.lease.name,
            "DHCP {:?}",
            reply.message_type
        );
        let broadcast = IpEndpoint::new(Ipv4Addr::BROADCAST.into(), 68);
        if let Err(error) = socket.send_to(&reply.bytes, broadcast).await {
            tracing::warn!("DHCP reply not sent: {error:?}");
        }
    }
}

async fn run_sntp(
    stack: Stack<'static>,
    config: sntp::SntpServerConfig,
    counters: Arc<Mutex<PrivnetCounters>>,
) {
    let mut rx_meta = [PacketMetadata::EMPTY; 8];
    let mut tx_meta = [PacketMetadata::EMPTY; 8];
    let mut rx_buffer = vec![0u8; 1024];
    let mut tx_buffer = vec![0u8; 1024];
    let mut socket = UdpSocket::new(
        stack,
        &mut rx_meta,
        &mut rx_buffer,
        &mut tx_meta,
        &mut tx_buffer,
    );
    if let Err(error) = socket.bind(123) {
        tracing::error!("the SNTP server cannot bind port 123: {error:?}");
        return;
    }
    let mut datagram = [0u8; 128];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut datagram).await else {
            continue;
        };
        let received = SystemTime::now();
        match sntp::answer(&config, &datagram[..len], received, SystemTime::now()) {
            Ok(reply) => {
                if socket
                    .send_to(&reply[..NTP_PACKET_LEN], from.endpoint)
                    .await
                    .is_ok()
                {
                    bump(&counters, |c| c.sntp_answers += 1);
                }
            }
            Err(error) => {
                tracing::debug!("SNTP datagram from {} refused: {error}", from.endpoint);
                bump(&counters, |c| c.sntp_refused += 1);
            }
        }
    }
}

async fn run_connection(
    stack: Stack<'static>,
    request: ConnectRequest,
    counters: Arc<Mutex<PrivnetCounters>>,
) {
    let ConnectRequest { to, stream, result } = request;
    let mut rx_buffer = vec![0u8; TCP_BUFFER];
    let mut tx_buffer = vec![0u8; TCP_BUFFER];
    let mut socket = TcpSocket::new(stack, &mut rx_buffer, &mut tx_buffer);
    // Idle pool connections stay open while the equipment answers keep-alives; a
    // silent peer is dropped after a minute.
    socket.set_keep_alive(Some(embassy_time::Duration::from_secs(15)));
    socket.set_timeout(Some(embassy_time::Duration::from_secs(60)));
    let endpoint = IpEndpoint::new((*to.ip()).into(), to.port());
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(endpoint)).await;
    let outcome = match connected {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("connecting to {to} on the private network failed: {error:?}"),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {to} on the private network timed out"),
        )),
    };
    let failed = outcome.is_err();
    bump(&counters, |c| {
        if failed {
            c.connect_failures += 1;
        } else {
            c.connections += 1;
        }
    });
    if result.send(outcome).is_err() || failed {
        socket.abort();
        return;
    }
    pump(&mut socket, stream).await;
    socket.close();
    // Give the FIN a moment to leave; the socket is dropped (aborted) after that.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        embedded_io_async::Write::flush(&mut socket),
    )
    .await;
}

/// Moves bytes both ways until either side closes.
async fn pump(socket: &mut TcpSocket<'_>, stream: DuplexStream) {
    use embedded_io_async::Write as _;
    let (mut from_caller, mut to_caller) = tokio::io::split(stream);
    let mut down = vec![0u8; TCP_BUFFER];
    let mut up = vec![0u8; TCP_BUFFER];
    loop {
        match select(socket.read(&mut up), from_caller.read(&mut down)).await {
            Either::First(Ok(0)) | Either::First(Err(_)) => return,
            Either::First(Ok(n)) => {
                if to_caller.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            Either::Second(Ok(0)) | Either::Second(Err(_)) => return,
            Either::Second(Ok(n)) => {
                if socket.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Accepts loopback connections and joins each to a connection to the equipment.
async fn run_forward(
    listener: tokio::net::TcpListener,
    forward: ForwardConfig,
    handle: PrivnetHandle,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let Ok((mut local, peer)) = accepted else {
            continue;
        };
        // Modbus is request/response: never hold a small answer back.
        let _ = local.set_nodelay(true);
        let handle = handle.clone();
        let to = forward.to;
        tokio::task::spawn_local(async move {
            match handle.connect(to).await {
                Ok(mut remote) => {
                    let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                }
                Err(error) => {
                    tracing::warn!(%peer, %to, "forward failed: {error}");
                }
            }
        });
    }
}
