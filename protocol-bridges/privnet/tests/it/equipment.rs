//! Simulated Ethernet equipment: its own embassy-net stack (DHCP client), a Modbus TCP
//! server on port 502 (warden-modbus codecs) and an SNTP client, on its own thread.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use embassy_net::tcp::TcpSocket;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{Config, DhcpConfig, IpEndpoint, Stack, StackResources, StaticConfigV4};
use embedded_io_async::Write as _;
use tokio::sync::{mpsc, oneshot};
use warden_bridges::modbus::MAX_PDU_LEN;
use warden_bridges::modbus::pdu::{self, ExceptionCode, Request};
use warden_bridges::modbus::tcp_frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
use warden_privnet::FrameWire;

type SntpQuery = (
    SocketAddrV4,
    oneshot::Sender<Option<([u8; 48], SystemTime)>>,
);

/// The running equipment.
pub struct Equipment {
    /// Its DHCP configuration, once it has one.
    pub lease: std::sync::mpsc::Receiver<StaticConfigV4>,
    sntp: mpsc::Sender<SntpQuery>,
}

impl Equipment {
    /// Starts equipment with `mac` on `wire`, serving `registers` as holding registers.
    pub fn start(mac: [u8; 6], wire: FrameWire, registers: Vec<u16>) -> Self {
        let (lease_tx, lease) = std::sync::mpsc::channel();
        let (sntp, mut queries) = mpsc::channel::<SntpQuery>(4);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let (driver, pump) = warden_privnet::wire_driver(mac, wire);
                tokio::task::spawn_local(pump);
                let resources: &'static mut StackResources<8> =
                    Box::leak(Box::new(StackResources::new()));
                let (stack, mut runner) =
                    embassy_net::new(driver, Config::dhcpv4(DhcpConfig::default()), resources, 7);
                tokio::task::spawn_local(async move { runner.run().await });
                stack.wait_config_up().await;
                if let Some(config) = stack.config_v4() {
                    let _ = lease_tx.send(config);
                }
                tokio::task::spawn_local(serve_modbus(stack, registers));
                while let Some((server, reply)) = queries.recv().await {
                    let _ = reply.send(query_sntp(stack, server).await);
                }
            });
        });
        Self { lease, sntp }
    }

    /// Asks `server` for the time; the reply and when it arrived.
    pub async fn sntp(&self, server: SocketAddrV4) -> Option<([u8; 48], SystemTime)> {
        let (reply, answer) = oneshot::channel();
        self.sntp.send((server, reply)).await.ok()?;
        answer.await.ok()?
    }
}

async fn query_sntp(stack: Stack<'static>, server: SocketAddrV4) -> Option<([u8; 48], SystemTime)> {
    let mut rx_meta = [PacketMetadata::EMPTY; 2];
    let mut tx_meta = [PacketMetadata::EMPTY; 2];
    let mut rx_buffer = [0u8; 256];
    let mut tx_buffer = [0u8; 256];
    let mut socket = UdpSocket::new(
        stack,
        &mut rx_meta,
        &mut rx_buffer,
        &mut tx_meta,
        &mut tx_buffer,
    );
    socket.bind(40_123).ok()?;
    let request = warden_privnet::sntp::client_request(SystemTime::now());
    socket
        .send_to(
            &request,
            IpEndpoint::new((*server.ip()).into(), server.port()),
        )
        .await
        .ok()?;
    let mut reply = [0u8; 48];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut reply))
        .await
        .ok()?
        .ok()?;
    (len == 48).then_some((reply, SystemTime::now()))
}

/// A Modbus TCP server, one connection at a time (enough for a poller).
async fn serve_modbus(stack: Stack<'static>, registers: Vec<u16>) {
    let mut rx_buffer = vec![0u8; 2048];
    let mut tx_buffer = vec![0u8; 2048];
    loop {
        let mut socket = TcpSocket::new(stack, &mut rx_buffer, &mut tx_buffer);
        if socket.accept(502).await.is_err() {
            continue;
        }
        let mut buffer = Vec::with_capacity(MAX_FRAME_LEN);
        let mut chunk = [0u8; 512];
        'connection: loop {
            let Ok(read) = socket.read(&mut chunk).await else {
                break;
            };
            if read == 0 {
                break;
            }
            buffer.extend_from_slice(&chunk[..read]);
            while let Ok(Some((header, request_pdu, used))) = decode_frame(&buffer) {
                let mut answer = [0u8; MAX_PDU_LEN];
                let len = answer_request(&registers, request_pdu, &mut answer);
                let mut frame = [0u8; MAX_FRAME_LEN];
                let Ok(frame_len) = encode_frame(header, &answer[..len], &mut frame) else {
                    break 'connection;
                };
                if socket.write_all(&frame[..frame_len]).await.is_err() {
                    break 'connection;
                }
                buffer.drain(..used);
            }
        }
        socket.close();
        let _ = socket.flush().await;
    }
}

fn answer_request(registers: &[u16], request_pdu: &[u8], out: &mut [u8]) -> usize {
    let exception = |code: ExceptionCode, out: &mut [u8]| {
        pdu::encode_exception(request_pdu.first().copied().unwrap_or(0), code, out).unwrap_or(0)
    };
    match Request::decode(request_pdu) {
        Ok(Request::ReadRegisters {
            function,
            address,
            count,
        }) => {
            let start = usize::from(address);
            let end = start + usize::from(count);
            match registers.get(start..end) {
                Some(values) => {
                    pdu::encode_read_response(function, values.iter().copied(), out).unwrap_or(0)
                }
                None => exception(ExceptionCode::ILLEGAL_DATA_ADDRESS, out),
            }
        }
        _ => exception(ExceptionCode::ILLEGAL_FUNCTION, out),
    }
}

/// The equipment's address, for assertions.
pub fn address_of(config: &StaticConfigV4) -> Ipv4Addr {
    config.address.address()
}
