//! The blocking and async clients against a real server.

use warden_pluton::verify_quote;
use warden_pluton_api::{ClientError, PlutonClient, PlutonError, Request, Response};

use crate::support::Server;

#[test]
fn provisioning_attestation_and_sealing_through_the_client() {
    let server = Server::start(12);
    let capability = server.capability();
    let mut client = PlutonClient::connect(&server.socket).expect("connect");
    let (protocol_version, status) = client.status().expect("status");
    assert_eq!(protocol_version, warden_pluton::protocol::PROTOCOL_VERSION);
    assert_eq!(status.device_id, None);
    assert_eq!(status.firmware_version, 12);

    assert!(matches!(
        client.export_identity(),
        Err(ClientError::Refused {
            error: PlutonError::NoIdentity,
            ..
        })
    ));
    let identity = client.create_identity(None).expect("create");
    assert!(matches!(
        client.create_identity(None),
        Err(ClientError::Refused {
            error: PlutonError::IdentityExists,
            ..
        })
    ));
    assert_eq!(client.export_identity().expect("export"), identity);

    let root = warden_keychain::tooling::SecretSigningKey::generate()
        .expect("rng")
        .public_key();
    client
        .install_root_key(&capability, &root, 3)
        .expect("install");
    assert_eq!(client.root_keys().expect("roots")[0].public_key.0, root);
    client.lock_manufacturing(&capability).expect("lock");
    assert!(client.status().expect("status").1.manufacturing_locked);

    // Register 5: registers 0 to 3 are the boot stage's (see `rights.rs`).
    client.extend_register(5, &[9u8; 32]).expect("extend");
    assert_ne!(client.registers().expect("registers")[5], [0u8; 32]);
    assert_eq!(
        client.advance_counter(&capability, 1, 5).expect("advance"),
        5
    );
    assert!(matches!(
        client.advance_counter(&capability, 1, 4),
        Err(ClientError::Refused {
            error: PlutonError::CounterWouldDecrease,
            ..
        })
    ));
    assert_eq!(client.counters().expect("counters")[1], 5);

    let nonce = [3u8; 40];
    let quote = client.quote(&nonce).expect("quote");
    let contents = verify_quote(&quote, &identity.public_key.0, &nonce).expect("verify");
    assert_eq!(contents.counters[1], 5);
    assert!(matches!(
        client.quote(&[0u8; 65]),
        Err(ClientError::ArgumentTooLarge { .. })
    ));

    let sealed = client
        .seal(b"session", 0b10_0000, b"resumption secret")
        .expect("seal");
    assert_eq!(
        client
            .unseal(b"session", &sealed)
            .expect("unseal")
            .as_slice(),
        b"resumption secret"
    );
    client.extend_register(5, &[1u8; 32]).expect("extend");
    assert!(matches!(
        client.unseal(b"session", &sealed),
        Err(ClientError::Refused {
            error: PlutonError::UnsealFailed,
            ..
        })
    ));
    // The raw call path, too.
    assert!(matches!(
        client.call(&Request::ReadCounters),
        Ok(Response::Counters(_))
    ));
}

#[cfg(feature = "tokio")]
#[test]
fn async_client_quotes() {
    use warden_pluton_api::AsyncPlutonClient;
    let server = Server::start(1);
    let identity = PlutonClient::connect(&server.socket)
        .expect("c")
        .create_identity(None)
        .expect("id");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    runtime.block_on(async {
        let mut client = AsyncPlutonClient::connect(&server.socket)
            .await
            .expect("connect");
        assert_eq!(client.export_identity().await.expect("export"), identity);
        let nonce = [1u8; 32];
        let quote = client.quote(&nonce).await.expect("quote");
        verify_quote(&quote, &identity.public_key.0, &nonce).expect("verify");
    });
}

#[test]
fn connect_error_names_the_socket() {
    let message = PlutonClient::connect("/nonexistent/pluton.sock")
        .expect_err("no server")
        .to_string();
    assert!(message.contains("/nonexistent/pluton.sock"), "{message}");
}

#[test]
fn the_bundle_floor_refuses_a_rolled_back_bundle_and_belongs_to_the_bridges() {
    use warden_pluton::server::CallerRoles;
    use warden_pluton_api::bundle_floor::{
        BundleFloorError, check_stored_bundle, record_applied_bundle,
    };
    use warden_pluton_api::{Role, RoleToken};

    let bridges_token = RoleToken::generate().expect("rng");
    let link_token = RoleToken::generate().expect("rng");
    let roles = CallerRoles {
        by_capability: vec![
            (Role::Bridges, bridges_token.clone()),
            (Role::Link, link_token.clone()),
        ],
        ..CallerRoles::default()
    };
    let server = Server::start_with(1, roles);
    let mut bridges = PlutonClient::connect_as(&server.socket, &bridges_token).expect("bridges");
    assert_eq!(
        check_stored_bundle(&mut bridges, Some(3)).expect("no floor yet"),
        0
    );
    assert_eq!(record_applied_bundle(&mut bridges, 5).expect("advance"), 5);
    // An older bundle applied later (or a lower version) never lowers the floor.
    assert_eq!(record_applied_bundle(&mut bridges, 4).expect("no-op"), 5);
    assert!(matches!(
        check_stored_bundle(&mut bridges, Some(4)),
        Err(BundleFloorError::RolledBack {
            stored: 4,
            floor: 5
        })
    ));
    assert_eq!(
        check_stored_bundle(&mut bridges, Some(5)).expect("current"),
        5
    );
    assert_eq!(
        check_stored_bundle(&mut bridges, None).expect("none stored"),
        5
    );

    // The link may not move (or read) the bridges' floor; a caller without a role
    // may do nothing at all.
    let mut link = PlutonClient::connect_as(&server.socket, &link_token).expect("link");
    assert!(matches!(
        record_applied_bundle(&mut link, 9),
        Err(BundleFloorError::Pluton(ClientError::Refused {
            error: PlutonError::NotPermitted,
            ..
        }))
    ));
    let mut anonymous = PlutonClient::connect(&server.socket).expect("connect");
    assert!(matches!(
        anonymous.status(),
        Err(ClientError::Refused {
            error: PlutonError::NotPermitted,
            ..
        })
    ));
}
