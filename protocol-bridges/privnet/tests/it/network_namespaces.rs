//! A real TAP device inside network namespaces the test creates (needs root):
//!
//! ```text
//!  plant ns            appliance ns (this test's port thread)          equipment ns
//!  eth0 192.0.2.2 ── vplant 192.0.2.1     br0 (no address) ── veq ── eth0 10.77.0.10
//!  default via .1     ip_forward=1         └─ TAP (no address) ⇄ embassy-net 10.77.0.1
//! ```
//!
//! The kernel of the appliance namespace holds no address on the equipment side, so
//! even with forwarding on it cannot route plant traffic there: only the userspace
//! stack (and the loopback forward the bridge uses) reaches the equipment.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_bridges::modbus::Answer;
use warden_bridges::modbus::pdu::{FunctionCode, Request};
use warden_bridges::modbus::tcp_pool::TcpDevice;
use warden_privnet::{PortDevice, PrivnetConfig};
use warden_test_support::network_namespaces::{Namespaces, in_namespace, ip};

/// A blocking Modbus TCP server answering holding-register reads with fixed values.
fn serve_modbus(listener: TcpListener, registers: Vec<u16>) {
    use warden_bridges::modbus::pdu;
    use warden_bridges::modbus::tcp_frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let registers = registers.clone();
        std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 512];
            loop {
                let Ok(read) = stream.read(&mut chunk) else {
                    return;
                };
                if read == 0 {
                    return;
                }
                buffer.extend_from_slice(&chunk[..read]);
                while let Ok(Some((header, request, used))) = decode_frame(&buffer) {
                    let mut answer = [0u8; 256];
                    let len = match Request::decode(request) {
                        Ok(Request::ReadRegisters {
                            function,
                            address,
                            count,
                        }) => {
                            let start = usize::from(address);
                            let values = &registers[start..start + usize::from(count)];
                            pdu::encode_read_response(function, values.iter().copied(), &mut answer)
                                .unwrap_or(0)
                        }
                        _ => 0,
                    };
                    let mut frame = [0u8; MAX_FRAME_LEN];
                    let Ok(n) = encode_frame(header, &answer[..len], &mut frame) else {
                        return;
                    };
                    if stream.write_all(&frame[..n]).is_err() {
                        return;
                    }
                    buffer.drain(..used);
                }
            }
        });
    }
}

#[test]
#[ignore = "needs root and network namespaces"]
fn the_plant_reaches_equipment_only_through_the_bridge() {
    let id = std::process::id();
    let (appliance, plant, equipment) =
        (format!("wpa{id}"), format!("wpp{id}"), format!("wpe{id}"));
    let tap = format!("wtap{}", id % 100_000);
    let _cleanup = Namespaces::create(&[appliance.clone(), plant.clone(), equipment.clone()]);
    // Equipment side: a bridge with no address, a veth into the equipment namespace.
    ip(&["-n", &appliance, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &appliance, "link", "set", "br0", "up"]);
    ip(&[
        "-n", &appliance, "link", "add", "veq", "type", "veth", "peer", "name", "eth0", "netns",
        &equipment,
    ]);
    ip(&[
        "-n", &appliance, "link", "set", "veq", "master", "br0", "up",
    ]);
    ip(&[
        "-n",
        &equipment,
        "addr",
        "add",
        "10.77.0.10/24",
        "dev",
        "eth0",
    ]);
    ip(&["-n", &equipment, "link", "set", "eth0", "up"]);
    // Equipment commonly names the appliance as its gateway: it must not matter.
    ip(&[
        "-n",
        &equipment,
        "route",
        "add",
        "default",
        "via",
        "10.77.0.1",
    ]);
    // Plant side: a routed veth, forwarding on, the plant's default route via us.
    ip(&[
        "-n", &appliance, "link", "add", "vplant", "type", "veth", "peer", "name", "eth0", "netns",
        &plant,
    ]);
    ip(&[
        "-n",
        &appliance,
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "vplant",
    ]);
    ip(&["-n", &appliance, "link", "set", "vplant", "up"]);
    ip(&["-n", &plant, "addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    ip(&["-n", &plant, "link", "set", "eth0", "up"]);
    ip(&["-n", &plant, "route", "add", "default", "via", "192.0.2.1"]);
    // /proc/sys/net belongs to the network namespace of the thread that opens it.
    in_namespace(&appliance, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("forwarding on");
        let on = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read back");
        assert_eq!(on.trim(), "1");
    });

    // The equipment: a Modbus TCP server on 10.77.0.10:502.
    let listener = in_namespace(&equipment, || {
        TcpListener::bind("10.77.0.10:502").expect("equipment listens")
    });
    std::thread::spawn(move || serve_modbus(listener, vec![4242, 7]));

    // The appliance: this test's port (TAP) and the bridge's client, in the appliance
    // namespace (threads created after setns inherit it).
    let result = in_namespace(&appliance, move || {
        let config: PrivnetConfig = toml::from_str(&format!(
            r#"
interface = "{tap}"
mac = "02:00:00:00:00:01"
address = "10.77.0.1/24"
[[forward]]
listen = "127.0.0.1:0"
to = "10.77.0.10:502"
"#
        ))
        .expect("parses");
        let spec = config.validate("privnet").expect("valid");
        let shutdown = CancellationToken::new();
        let port =
            warden_privnet::start(spec, PortDevice::Tap, shutdown.clone()).expect("TAP opens");
        ip(&["link", "set", &tap, "master", "br0", "up"]);
        let addresses = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", &tap])
            .output()
            .expect("ip");
        assert!(
            addresses.stdout.is_empty(),
            "the kernel holds an address on the TAP: {addresses:?}"
        );

        // The kernel of the appliance namespace cannot reach the equipment itself...
        let direct = SocketAddr::from(SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 10), 502));
        assert!(TcpStream::connect_timeout(&direct, Duration::from_secs(2)).is_err());

        // ...but the bridge's Modbus client reaches it through the userspace stack.
        let (listen, _) = port.forwards()[0];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let answer = runtime.block_on(async {
            let device = TcpDevice::new(listen.to_string(), 1, Duration::from_secs(5));
            let request = Request::ReadRegisters {
                function: FunctionCode::ReadHoldingRegisters,
                address: 0,
                count: 2,
            };
            device.call(1, &request).await
        });
        shutdown.cancel();
        (answer, port.counters())
    });
    let (answer, counters) = result;
    assert_eq!(answer, Ok(Answer::Registers(vec![4242, 7])), "{counters:?}");

    // A host on the plant side has no way to the equipment.
    let from_plant = in_namespace(&plant, || {
        let target = SocketAddr::from(SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 10), 502));
        TcpStream::connect_timeout(&target, Duration::from_secs(2)).map(|_| ())
    });
    assert!(from_plant.is_err(), "the plant reached the equipment");
}
