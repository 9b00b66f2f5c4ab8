//! One device connection: TLS handshake, CONNECT, then publish/subscribe under its ACL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{Error as CodecError, matches};
use rumqttc::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck, SubscribeReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use warden_wire::topics::attestation_challenge_topic;

use super::acl::{DeviceAcl, device_id_from_certificate};
use super::router::Router;

/// Largest MQTT packet the broker accepts.
pub const MAX_PACKET_SIZE: usize = 256 * 1024;

/// How long a client has to finish TLS and send CONNECT.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a device session ended other than by DISCONNECT or shutdown (logged with the
/// device and its address).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
enum SessionError {
    /// No CONNECT within [`HANDSHAKE_TIMEOUT`].
    #[error("no CONNECT in time")]
    NoConnect,
    /// The first packet was another one.
    #[error("first packet is not CONNECT")]
    NotConnect,
    /// CONNECT named another client than the certificate's device.
    #[error("client id {0:?} does not match certificate device id")]
    ClientId(String),
    /// Nothing arrived within one and a half keep-alive periods.
    #[error("keep-alive expired")]
    KeepAlive,
    /// A publish outside the device's ACL.
    #[error("publish to {0:?} is outside the device's topics")]
    Topic(String),
    /// A QoS 2 publish.
    #[error("QoS 2 is not supported")]
    ExactlyOnce,
    /// A packet a client does not send to a broker.
    #[error("unexpected packet {0}")]
    Unexpected(String),
    /// Bytes that are no MQTT packet.
    #[error("malformed packet: {0}")]
    Malformed(#[source] CodecError),
    /// The client closed the connection.
    #[error("connection closed")]
    Closed,
    /// Reading from the connection failed.
    #[error("read failed: {0}")]
    Read(#[source] std::io::Error),
    /// A packet could not be encoded.
    #[error("cannot encode packet: {0}")]
    Encode(#[source] CodecError),
    /// Writing to the connection failed.
    #[error("write failed: {0}")]
    Write(#[source] std::io::Error),
}

/// Serves one TCP connection until it closes, misbehaves or `shutdown` fires.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Arc<Router>,
    shutdown: CancellationToken,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "tls handshake refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "tls handshake timed out");
            return;
        }
    };
    let device = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| device_id_from_certificate(cert));
    let Some(device) = device else {
        tracing::warn!(%peer, "client certificate carries no usable device id; closing");
        return;
    };
    if let Some(key) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| super::acl::public_key_from_certificate(cert))
    {
        router.record_device_key(&device, key);
    }
    let acl = DeviceAcl::new(&device);
    let session = router.new_session();
    let stop = shutdown.child_token();
    router.register_device_session(&device, session, stop.clone());
    match run(tls, &acl, session, &router, &stop).await {
        Ok(()) => tracing::info!(device = %device, %peer, "device disconnected"),
        Err(reason) => tracing::warn!(device = %device, %peer, %reason, "device session closed"),
    }
    router.remove_session(session);
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    acl: &DeviceAcl,
    session: u64,
    router: &Router,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let mut inbound = BytesMut::with_capacity(1024);
    let mut outbound = BytesMut::with_capacity(1024);

    let connect = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_packet(&mut stream, &mut inbound))
        .await
        .map_err(|_| SessionError::NoConnect)??;
    let Packet::Connect(connect) = connect else {
        return Err(SessionError::NotConnect);
    };
    if connect.client_id != acl.device_id() {
        write_packet(
            &mut stream,
            &mut outbound,
            Packet::ConnAck(ConnAck::new(ConnectReturnCode::BadClientId, false)),
        )
        .await?;
        return Err(SessionError::ClientId(connect.client_id));
    }
    write_packet(
        &mut stream,
        &mut outbound,
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
    )
    .await?;
    tracing::info!(device = %acl.device_id(), "device connected");

    // MQTT 3.1.1 §3.1.2.10: one and a half keep-alive periods without a packet ends it.
    let keep_alive = match connect.keep_alive {
        0 => Duration::from_secs(3600),
        secs => Duration::from_millis(u64::from(secs) * 1500),
    };
    let (deliver_tx, mut deliver_rx) = mpsc::channel::<Publish>(256);
    loop {
        let packet = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            delivered = deliver_rx.recv() => {
                if let Some(mut publish) = delivered {
                    // Outbound delivery is at most once today.
                    publish.qos = QoS::AtMostOnce;
                    publish.pkid = 0;
                    publish.dup = false;
                    write_packet(&mut stream, &mut outbound, Packet::Publish(publish)).await?;
                }
                continue;
            }
            read = tokio::time::timeout(keep_alive, read_packet(&mut stream, &mut inbound)) => {
                read.map_err(|_| SessionError::KeepAlive)??
            }
        };
        match packet {
            Packet::Publish(publish) => {
                if !acl.may_publish(&publish.topic) {
                    return Err(SessionError::Topic(publish.topic.clone()));
                }
                match publish.qos {
                    QoS::AtMostOnce => router.route(&publish).await,
                    QoS::AtLeastOnce => {
                        let pkid = publish.pkid;
                        router.route(&publish).await;
                        write_packet(
                            &mut stream,
                            &mut outbound,
                            Packet::PubAck(PubAck::new(pkid)),
                        )
                        .await?;
                    }
                    QoS::ExactlyOnce => return Err(SessionError::ExactlyOnce),
                }
            }
            Packet::Subscribe(subscribe) => {
                let challenges = attestation_challenge_topic(acl.device_id());
                let mut listens_for_challenges = false;
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|filter| {
                        if acl.may_subscribe(&filter.path) {
                            router.subscribe_session(session, &filter.path, deliver_tx.clone());
                            listens_for_challenges |= matches(&challenges, &filter.path);
                            SubscribeReasonCode::Success(QoS::AtMostOnce)
                        } else {
                            tracing::warn!(device = %acl.device_id(), filter = %filter.path, "subscription refused");
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                write_packet(
                    &mut stream,
                    &mut outbound,
                    Packet::SubAck(SubAck::new(subscribe.pkid, codes)),
                )
                .await?;
                if listens_for_challenges {
                    router.device_listens_for_challenges(acl.device_id());
                }
            }
            Packet::PingReq => write_packet(&mut stream, &mut outbound, Packet::PingResp).await?,
            Packet::Disconnect => return Ok(()),
            Packet::PubAck(_) | Packet::Unsubscribe(_) => {}
            other => return Err(SessionError::Unexpected(format!("{other:?}"))),
        }
    }
}

async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Packet, SessionError> {
    loop {
        match Packet::read(buf, MAX_PACKET_SIZE) {
            Ok(packet) => return Ok(packet),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(error) => return Err(SessionError::Malformed(error)),
        }
        let read = stream.read_buf(buf).await.map_err(SessionError::Read)?;
        if read == 0 {
            return Err(SessionError::Closed);
        }
    }
}

async fn write_packet<S: AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    packet: Packet,
) -> Result<(), SessionError> {
    buf.clear();
    packet
        .write(buf, MAX_PACKET_SIZE)
        .map_err(SessionError::Encode)?;
    stream.write_all(buf).await.map_err(SessionError::Write)?;
    stream.flush().await.map_err(SessionError::Write)
}
