//! An in-process Ethernet cable: two embassy-net channel drivers joined by tokio channels.
//!
//! Each end is an `embassy-net-driver-channel` device for a stack, plus a task that
//! moves frames between the driver's queues and a tokio channel, so the two stacks may
//! live on different threads. Used by tests (appliance stack and simulated equipment
//! in one process, no root) and usable for any in-process peer.

use std::future::Future;

use embassy_net_driver_channel::driver::{HardwareAddress, LinkState};
use embassy_net_driver_channel::{Device, State};
use tokio::sync::mpsc;

/// Largest Ethernet frame carried (1500 bytes of payload plus the 14-byte header).
pub const MTU: usize = 1514;
/// Frames queued in each direction of a driver.
const QUEUE: usize = 8;

/// One end of the cable: frames out, frames in.
#[derive(Debug)]
pub struct FrameWire {
    /// Frames this end transmits.
    pub outbound: mpsc::Sender<Vec<u8>>,
    /// Frames this end receives.
    pub inbound: mpsc::Receiver<Vec<u8>>,
}

/// A cable with two ends.
pub fn frame_wire_pair() -> (FrameWire, FrameWire) {
    let (a_out, b_in) = mpsc::channel(64);
    let (b_out, a_in) = mpsc::channel(64);
    (
        FrameWire {
            outbound: a_out,
            inbound: a_in,
        },
        FrameWire {
            outbound: b_out,
            inbound: b_in,
        },
    )
}

/// A driver for an embassy-net stack on this end of the cable, and the task that moves
/// its frames (run it on the stack's thread). The driver's queues are leaked: one
/// small allocation per port for the life of the process.
pub fn wire_driver(
    mac: [u8; 6],
    wire: FrameWire,
) -> (Device<'static, MTU>, impl Future<Output = ()> + 'static) {
    let state: &'static mut State<MTU, QUEUE, QUEUE> = Box::leak(Box::new(State::new()));
    let (runner, device) = embassy_net_driver_channel::new(state, HardwareAddress::Ethernet(mac));
    let pump = async move {
        let FrameWire {
            outbound,
            mut inbound,
        } = wire;
        let (state_runner, mut rx, mut tx) = runner.split();
        state_runner.set_link_state(LinkState::Up);
        let transmit = async {
            loop {
                let frame = tx.tx_buf().await.to_vec();
                tx.tx_done();
                if outbound.send(frame).await.is_err() {
                    return;
                }
            }
        };
        let receive = async {
            while let Some(frame) = inbound.recv().await {
                let buffer = rx.rx_buf().await;
                let len = frame.len().min(buffer.len());
                buffer[..len].copy_from_slice(&frame[..len]);
                rx.rx_done(len);
            }
        };
        embassy_futures::select::select(transmit, receive).await;
        state_runner.set_link_state(LinkState::Down);
    };
    (device, pump)
}
