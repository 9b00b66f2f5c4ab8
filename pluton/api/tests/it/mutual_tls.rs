//! Mutual TLS 1.3 against a real rustls server (ring provider), the client key in pluton.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    PublicKeyData,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warden_pluton_api::{PlutonClient, PlutonSigningKey};

use crate::support::Server;

/// The device's public key as rcgen sees a foreign key: the station never holds the
/// private half.
struct DevicePublicKey([u8; 65]);

impl PublicKeyData for DevicePublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

struct Pki {
    ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Warden test fleet CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let server_params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    Pki {
        ca: ca.der().clone(),
        issuer,
        server_chain: vec![server_cert.der().clone()],
        server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    }
}

fn device_certificate(pki: &Pki, public_key: [u8; 65], device_id: &str) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, device_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
        .signed_by(&DevicePublicKey(public_key), &pki.issuer)
        .expect("device cert")
        .der()
        .clone()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(pki: &Pki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).expect("root");
    Arc::new(roots)
}

/// One TLS 1.3 echo exchange; returns the client certificate the server saw, or the
/// server-side error.
async fn handshake(
    pki: &Pki,
    client_config: Arc<ClientConfig>,
) -> (
    Result<Vec<CertificateDer<'static>>, String>,
    Result<Vec<u8>, String>,
) {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(pki), provider())
        .build()
        .expect("client verifier");
    let server_config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut buffer = [0u8; 5];
        tls.read_exact(&mut buffer)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(&buffer).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        Ok::<_, String>(peer)
    });
    let client = async {
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        let mut echo = vec![0u8; 5];
        tls.read_exact(&mut echo).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(echo)
    }
    .await;
    let server = server.await.expect("server task");
    (server, client)
}

fn client_config(
    pki: &Pki,
    key: &PlutonSigningKey,
    chain: Vec<CertificateDer<'static>>,
) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots(pki))
        .with_client_cert_resolver(key.client_cert_resolver(chain));
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_signs_with_the_pluton_key_and_a_wrong_key_fails() {
    let device = Server::start(1);
    let impostor = Server::start(1);
    let (device_socket, impostor_socket) = (device.socket.clone(), impostor.socket.clone());
    tokio::task::spawn_blocking(move || {
        PlutonClient::connect(&device_socket)
            .expect("c")
            .create_identity(None)
            .expect("id");
        PlutonClient::connect(&impostor_socket)
            .expect("c")
            .create_identity(None)
            .expect("id");
    })
    .await
    .expect("provision");
    let pki = pki();

    let (device_socket, impostor_socket) = (device.socket.clone(), impostor.socket.clone());
    let (key, impostor_key) = tokio::task::spawn_blocking(move || {
        (
            PlutonSigningKey::connect(&device_socket).expect("device key"),
            PlutonSigningKey::connect(&impostor_socket).expect("impostor key"),
        )
    })
    .await
    .expect("keys");
    let device_cert =
        device_certificate(&pki, *key.public_key_sec1(), &key.device_id().to_string());

    // The real key: handshake succeeds, data flows, the server saw the device certificate.
    let (server, client) =
        handshake(&pki, client_config(&pki, &key, vec![device_cert.clone()])).await;
    assert_eq!(client.expect("client side"), b"hello");
    assert_eq!(server.expect("server side"), vec![device_cert.clone()]);

    // Another pluton's key presenting this device's certificate: the server refuses.
    let (server, client) =
        handshake(&pki, client_config(&pki, &impostor_key, vec![device_cert])).await;
    let server_error =
        server.expect_err("server must reject a CertificateVerify from the wrong key");
    assert!(
        server_error.to_lowercase().contains("signature"),
        "{server_error}"
    );
    assert!(client.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_server_cannot_use_the_pluton_key() {
    // Pluton signs only TLS 1.3 client CertificateVerify contents; a TLS 1.2 handshake
    // must fail rather than turn pluton into a signer of TLS 1.2 transcripts.
    let device = Server::start(1);
    let socket = device.socket.clone();
    let key = tokio::task::spawn_blocking(move || {
        PlutonClient::connect(&socket)
            .expect("c")
            .create_identity(None)
            .expect("id");
        PlutonSigningKey::connect(&socket).expect("key")
    })
    .await
    .expect("key");
    let pki = pki();
    let device_cert = device_certificate(&pki, *key.public_key_sec1(), "device");
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls12")
        .with_root_certificates(roots(&pki))
        .with_client_cert_resolver(key.client_cert_resolver(vec![device_cert]));
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&pki), provider())
        .build()
        .expect("v");
    let server_config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls12")
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        acceptor.accept(tcp).await.map(|_| ())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await.expect("connect");
    let client = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await;
    let error = client.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        error.contains("pluton"),
        "client must fail in the pluton signer: {error:?}"
    );
    assert!(server.await.expect("server task").is_err());
}
