//! Frames with a file descriptor attached: how the monitor hands out peer channels.
//!
//! The monitor makes a socketpair per granted channel and sends one end to each peer
//! over their control channels as `SCM_RIGHTS`, through rustix's safe API.

use std::io::{IoSlice, IoSliceMut, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::frame::{FrameError, encode_frame, read_frame_with};

/// Writes one frame with `fd` attached to its first byte.
pub fn send_frame_with_fd<T: Serialize>(
    socket: &UnixStream,
    message: &T,
    fd: BorrowedFd<'_>,
) -> Result<(), FrameError> {
    let bytes = encode_frame(message)?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(FrameError::Io(std::io::Error::other(
            "no room for the descriptor",
        )));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    let mut writer = socket;
    writer.write_all(&bytes[sent..])?;
    Ok(())
}

/// Reads one frame and the descriptor attached to it, if any; `Ok(None)` at a clean end.
pub fn recv_frame_with_fd<T: DeserializeOwned>(
    socket: &UnixStream,
) -> Result<Option<(T, Option<OwnedFd>)>, FrameError> {
    let mut attached = None;
    let frame = read_frame_with(|buffer| {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(buffer)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for fd in fds {
                    attached.get_or_insert(fd);
                }
            }
        }
        Ok(received.bytes)
    })?;
    Ok(frame.map(|frame| (frame, attached)))
}
