//! One device connection: TLS handshake, CONNECT, then publish/subscribe under its ACL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{Error as CodecError, matches, valid_filter};
use rumqttc::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck, SubscribeReasonCode, UnsubAck,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use warden_wire::revocation::revocation_list_topic;
use warden_wire::topics::attestation_challenge_topic;

use rustls::pki_types::CertificateDer;

use super::acl::{DeviceAcl, device_id_from_certificate};
use super::admission::{Admission, AdmissionRefused};
use super::limits::{BrokerLimits, ConnectionSlot};
use super::router::Router;

/// Largest MQTT packet the broker accepts.
pub const MAX_PACKET_SIZE: usize = 256 * 1024;

/// Filters one session may hold (the agent uses nine: acks, commands, desired twin,
/// attestation challenge and verdict, update offers, certificate response and renewal
/// order, the release-key revocation list); a SUBSCRIBE beyond it gets the
/// failure code for the extra ones.
pub const MAX_SUBSCRIPTIONS_PER_SESSION: usize = 32;

/// Longest topic filter accepted, in bytes (device topics are under 128).
pub const MAX_FILTER_LENGTH: usize = 256;

/// Messages waiting to be written to one session (its in-flight window: delivery is
/// QoS 0); a session that falls further behind loses the newest ones, counted in
/// [`Router::dropped`].
pub const DELIVERY_QUEUE: usize = 256;

/// Why a device session ended other than by DISCONNECT or shutdown (logged with the
/// device and its address).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
enum SessionError {
    /// No CONNECT within [`BrokerLimits::connect_timeout`].
    #[error("no CONNECT in time")]
    NoConnect,
    /// The first packet was another one.
    #[error("first packet is not CONNECT")]
    NotConnect,
    /// CONNECT named another client than the certificate's device.
    #[error("client id {0:?} does not match certificate device id")]
    ClientId(String),
    /// The fleet did not admit the device.
    #[error("not admitted: {0}")]
    Refused(#[source] AdmissionRefused),
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

/// What every session of a broker shares.
pub(super) struct SessionContext<'a> {
    /// The listener's limits.
    pub limits: &'a BrokerLimits,
    /// Where messages go.
    pub router: Arc<Router>,
    /// Asked after CONNECT whether the device may in.
    pub admission: &'a dyn Admission,
}

/// Serves one TCP connection until it closes, misbehaves or `shutdown` fires. `slot`
/// is its place among the broker's connections, pending until CONNECT completes.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    mut slot: ConnectionSlot,
    acceptor: TlsAcceptor,
    broker: SessionContext<'_>,
    shutdown: CancellationToken,
) {
    let SessionContext {
        limits,
        router,
        admission,
    } = broker;
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        handshake = tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)) => handshake,
    };
    let tls = match handshake {
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
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let device = chain
        .first()
        .and_then(|cert| device_id_from_certificate(cert));
    let Some(device) = device else {
        tracing::warn!(%peer, "client certificate carries no usable device id; closing");
        return;
    };
    let acl = DeviceAcl::new(&device);
    let session = router.new_session();
    let stop = shutdown.child_token();
    let connected = Connected {
        chain: &chain,
        admission,
        stop: &stop,
        slot: &mut slot,
    };
    match run(tls, &acl, session, &router, limits, connected).await {
        Ok(()) => tracing::info!(device = %device, %peer, "device disconnected"),
        Err(reason) => tracing::warn!(device = %device, %peer, %reason, "device session closed"),
    }
    router.remove_session(session);
}

/// What a session needs once its CONNECT is complete.
struct Connected<'a> {
    /// The device's certificate chain (its own first), for admission and its key.
    chain: &'a [CertificateDer<'static>],
    /// Asked whether the device may in.
    admission: &'a dyn Admission,
    /// Ends this session (a newer session of the device, revocation, shutdown).
    stop: &'a CancellationToken,
    /// Its connection slot, no longer pending once connected.
    slot: &'a mut ConnectionSlot,
}

/// Whether `filter` may be subscribed to: MQTT's rules for `+` and `#`, not empty,
/// no NUL, at most [`MAX_FILTER_LENGTH`] bytes, and inside the device's subtree.
fn acceptable_filter(acl: &DeviceAcl, filter: &str) -> bool {
    filter.len() <= MAX_FILTER_LENGTH && valid_filter(filter) && acl.may_subscribe(filter)
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    acl: &DeviceAcl,
    session: u64,
    router: &Router,
    limits: &BrokerLimits,
    connected: Connected<'_>,
) -> Result<(), SessionError> {
    let mut inbound = BytesMut::with_capacity(1024);
    let mut outbound = BytesMut::with_capacity(1024);
    let shutdown = connected.stop;

    let connect = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        connect = tokio::time::timeout(limits.connect_timeout, read_packet(&mut stream, &mut inbound)) => {
            connect.map_err(|_| SessionError::NoConnect)??
        }
    };
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
    if let Err(refused) = connected
        .admission
        .admit(acl.device_id(), connected.chain)
        .await
    {
        write_packet(
            &mut stream,
            &mut outbound,
            Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, false)),
        )
        .await?;
        return Err(SessionError::Refused(refused));
    }
    // Only now, with a complete CONNECT from the certificate's device, does this
    // session replace the device's live one (a bare TLS handshake must not end it).
    connected.slot.authenticated();
    if let Some(key) = connected
        .chain
        .first()
        .and_then(|cert| super::acl::public_key_from_certificate(cert))
    {
        router.record_device_key(acl.device_id(), key);
    }
    router.register_device_session(acl.device_id(), session, shutdown.clone());
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
    let (deliver_tx, mut deliver_rx) = mpsc::channel::<Publish>(DELIVERY_QUEUE);
    let mut filters = std::collections::BTreeSet::<String>::new();
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
                    QoS::AtMostOnce => router.route_from_device(acl.device_id(), &publish).await,
                    QoS::AtLeastOnce => {
                        let pkid = publish.pkid;
                        router.route_from_device(acl.device_id(), &publish).await;
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
                let revocations = revocation_list_topic(acl.device_id());
                let mut listens_for_challenges = false;
                let mut listens_for_revocations = false;
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|filter| {
                        let path = &filter.path;
                        if !acceptable_filter(acl, path) {
                            tracing::warn!(device = %acl.device_id(), filter = %path.escape_debug(), "subscription refused");
                            return SubscribeReasonCode::Failure;
                        }
                        if !filters.contains(path) && filters.len() >= MAX_SUBSCRIPTIONS_PER_SESSION {
                            tracing::warn!(device = %acl.device_id(), filter = %path, limit = MAX_SUBSCRIPTIONS_PER_SESSION, "subscription refused: too many on this session");
                            return SubscribeReasonCode::Failure;
                        }
                        // Subscribing again to a filter replaces it (MQTT 3.1.1 §3.8.4).
                        filters.insert(path.clone());
                        router.subscribe_session(session, path, deliver_tx.clone());
                        listens_for_challenges |= matches(&challenges, path);
                        listens_for_revocations |= matches(&revocations, path);
                        SubscribeReasonCode::Success(QoS::AtMostOnce)
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
                if listens_for_revocations {
                    router.device_listens_for_revocation_lists(acl.device_id());
                }
            }
            Packet::Unsubscribe(unsubscribe) => {
                for filter in &unsubscribe.topics {
                    if filters.remove(filter) {
                        router.unsubscribe_session(session, filter);
                    }
                }
                // MQTT 3.1.1 §3.10.4: UNSUBACK even when nothing matched.
                write_packet(
                    &mut stream,
                    &mut outbound,
                    Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)),
                )
                .await?;
            }
            Packet::PingReq => write_packet(&mut stream, &mut outbound, Packet::PingResp).await?,
            Packet::Disconnect => return Ok(()),
            Packet::PubAck(_) => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::limits::ConnectionSlots;
    use rumqttc::{Connect, Subscribe, SubscribeFilter, Unsubscribe};
    use tokio::io::DuplexStream;

    const DEVICE: &str = "wd-1";

    async fn send(client: &mut DuplexStream, packet: Packet) {
        let mut buf = BytesMut::new();
        write_packet(client, &mut buf, packet).await.expect("send");
    }

    async fn receive(client: &mut DuplexStream, buf: &mut BytesMut) -> Packet {
        tokio::time::timeout(Duration::from_secs(5), read_packet(client, buf))
            .await
            .expect("in time")
            .expect("packet")
    }

    /// A session of `DEVICE` on an in-memory stream; returns the client end, the
    /// session's stop token and its task.
    fn start(
        router: &Arc<Router>,
    ) -> (DuplexStream, CancellationToken, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let stop = CancellationToken::new();
        let router = Arc::clone(router);
        let session_stop = stop.clone();
        let task = tokio::spawn(async move {
            let slots = ConnectionSlots::new(BrokerLimits::default());
            let mut slot = slots.admit([127, 0, 0, 1].into()).expect("slot");
            let acl = DeviceAcl::new(DEVICE);
            let session = router.new_session();
            let connected = Connected {
                chain: &[],
                admission: &crate::broker::AdmitAuthenticated,
                stop: &session_stop,
                slot: &mut slot,
            };
            let _ = run(
                server,
                &acl,
                session,
                &router,
                &BrokerLimits::default(),
                connected,
            )
            .await;
            router.remove_session(session);
        });
        (client, stop, task)
    }

    /// CONNECT as [`DEVICE`]; panics without a CONNACK.
    async fn connect(client: &mut DuplexStream, buf: &mut BytesMut) {
        send(client, Packet::Connect(Connect::new(DEVICE))).await;
        assert!(matches!(receive(client, buf).await, Packet::ConnAck(_)));
    }

    #[tokio::test]
    async fn only_a_complete_connect_replaces_the_live_session() {
        let router = Arc::new(Router::default());
        let live = CancellationToken::new();
        router.register_device_session(DEVICE, router.new_session(), live.clone());

        // A connection of the same device that has not sent CONNECT (yet).
        let (mut client, _stop, _task) = start(&router);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !live.is_cancelled(),
            "a bare connection ended the live session"
        );
        // A CONNECT with another client id does not either.
        let (mut other, _other_stop, other_task) = start(&router);
        send(&mut other, Packet::Connect(Connect::new("wd-2"))).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), other_task).await;
        assert!(!live.is_cancelled());

        let mut buf = BytesMut::new();
        connect(&mut client, &mut buf).await;
        assert!(
            live.is_cancelled(),
            "the completed CONNECT replaces the live session"
        );
    }

    #[tokio::test]
    async fn invalid_filters_fail_unsubscribe_is_acknowledged_and_stops_delivery() {
        let router = Arc::new(Router::default());
        let (mut client, stop, _task) = start(&router);
        let mut buf = BytesMut::new();
        connect(&mut client, &mut buf).await;

        let good = "warden/v1/devices/wd-1/commands/#";
        let long = format!("warden/v1/devices/wd-1/{}", "a".repeat(MAX_FILTER_LENGTH));
        let filters = [
            good,
            "warden/v1/devices/wd-1/#/x",
            "warden/v1/devices/wd-1/a+",
            "warden/v1/devices/wd-1/x#",
            "warden/v1/devices/wd-1/\0",
            "",
            long.as_str(),
            "warden/v1/devices/wd-2/#",
        ];
        let mut subscribe = Subscribe::new_many(
            filters
                .iter()
                .map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtMostOnce)),
        );
        subscribe.pkid = 7;
        send(&mut client, Packet::Subscribe(subscribe)).await;
        let Packet::SubAck(suback) = receive(&mut client, &mut buf).await else {
            panic!("no SUBACK");
        };
        assert_eq!(suback.pkid, 7);
        assert_eq!(
            suback.return_codes[0],
            SubscribeReasonCode::Success(QoS::AtMostOnce)
        );
        assert!(
            suback.return_codes[1..]
                .iter()
                .all(|c| *c == SubscribeReasonCode::Failure),
            "{:?}",
            suback.return_codes
        );

        let publish = |topic: &str| Publish::new(topic, QoS::AtMostOnce, b"x".to_vec());
        router
            .route(&publish("warden/v1/devices/wd-1/commands/a"))
            .await;
        assert!(matches!(
            receive(&mut client, &mut buf).await,
            Packet::Publish(_)
        ));

        let mut unsubscribe = Unsubscribe::new(good);
        unsubscribe.pkid = 9;
        send(&mut client, Packet::Unsubscribe(unsubscribe)).await;
        let Packet::UnsubAck(unsuback) = receive(&mut client, &mut buf).await else {
            panic!("no UNSUBACK");
        };
        assert_eq!(unsuback.pkid, 9);
        router
            .route(&publish("warden/v1/devices/wd-1/commands/a"))
            .await;
        send(&mut client, Packet::PingReq).await;
        // The next packet is the ping's answer: nothing was delivered after UNSUBSCRIBE.
        assert!(matches!(
            receive(&mut client, &mut buf).await,
            Packet::PingResp
        ));
        stop.cancel();
    }

    #[tokio::test]
    async fn a_session_holds_at_most_its_limit_of_filters() {
        let router = Arc::new(Router::default());
        let (mut client, stop, _task) = start(&router);
        let mut buf = BytesMut::new();
        connect(&mut client, &mut buf).await;
        let extra = 8;
        let mut subscribe =
            Subscribe::new_many((0..MAX_SUBSCRIPTIONS_PER_SESSION + extra).map(|i| {
                SubscribeFilter::new(format!("warden/v1/devices/wd-1/t{i}"), QoS::AtMostOnce)
            }));
        subscribe.pkid = 1;
        send(&mut client, Packet::Subscribe(subscribe)).await;
        let Packet::SubAck(suback) = receive(&mut client, &mut buf).await else {
            panic!("no SUBACK");
        };
        let refused = suback
            .return_codes
            .iter()
            .filter(|c| **c == SubscribeReasonCode::Failure)
            .count();
        assert_eq!(refused, extra);
        // Subscribing again to a held filter is still accepted (it replaces it).
        let mut again = Subscribe::new("warden/v1/devices/wd-1/t0", QoS::AtMostOnce);
        again.pkid = 2;
        send(&mut client, Packet::Subscribe(again)).await;
        let Packet::SubAck(suback) = receive(&mut client, &mut buf).await else {
            panic!("no SUBACK");
        };
        assert_eq!(
            suback.return_codes,
            [SubscribeReasonCode::Success(QoS::AtMostOnce)]
        );
        stop.cancel();
    }
}
