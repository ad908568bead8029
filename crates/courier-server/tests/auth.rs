//! A Rust hub with the library's access control: a connect middleware that verifies JWTs and
//! sets the socket's identity, and an authorizer that adds a rule of its own to the grants.

use courier_client::{Client, Config as ClientConfig, Error};
use courier_server::auth::{Access, GrantSpec, JwtOptions, JwtVerifier, check_grants, unix_now};
use courier_server::{ConnectError, Io, Setup};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &[u8] = b"rust-hub-secret";

fn token(sub: &str, grants: Value, exp: u64) -> String {
    let claims = json!({"sub": sub, "exp": exp, "courier": grants});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

/// A hub on a free port whose `/` namespace admits a socket only with a valid token.
async fn hub() -> String {
    let store = courier_server::store::Store::memory(Default::default());
    let io = Io::with_store(courier_server::Config::default(), store);
    let verifier = std::sync::Arc::new(
        JwtVerifier::new(JwtOptions {
            secret: Some(SECRET.to_vec()),
            default_grants: GrantSpec::default(),
            ..JwtOptions::default()
        })
        .unwrap(),
    );
    io.of("/").middleware(move |socket| {
        let token = socket.auth()["token"].as_str().unwrap_or("").to_owned();
        let verdict = verifier.verify(&token);
        async move {
            let identity = verdict.map_err(|e| {
                ConnectError::new("unauthorized").with_data(json!({"code": e.code()}))
            })?;
            socket.set_identity(identity);
            Ok(())
        }
    });
    // The hub's own rule on top of the grants: audit streams are written by the backend only.
    io.set_authorizer(|socket, access| match access {
        Access::Publish(stream) if stream.starts_with("audit.") => {
            Err("audit streams are written by the backend".into())
        }
        _ => check_grants(socket, access),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(courier_server::serve(
        listener,
        io.service(),
        std::future::pending(),
    ));
    url
}

fn config() -> ClientConfig {
    ClientConfig::default()
}

#[tokio::test]
async fn a_rust_hub_checks_tokens_grants_and_its_own_rules() {
    let url = hub().await;
    let client = Client::connect_with(&url, config()).await.unwrap();

    let refused = client.socket("/");
    refused.set_auth(json!({"token": token("old", json!({}), unix_now() - 3600)}));
    match refused.connect().await {
        Err(Error::Refused { data, .. }) => assert_eq!(data.unwrap()["code"], "expired_token"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let client = Client::connect_with(&url, config()).await.unwrap();
    let s = client.socket("/");
    let grants = json!({"publish": ["orders.>", "audit.>"], "subscribe": ["orders.>"]});
    s.set_auth(json!({"token": token("vendor-7", grants, unix_now() + 60)}));
    s.connect().await.unwrap();
    let published = s
        .publish("orders.vendor-7", "order", &json!({}), None)
        .await;
    assert_eq!(published.unwrap().seq, 1);
    // Granted by the token, refused by the hub's rule.
    let audit = s.publish("audit.vendor-7", "order", &json!({}), None).await;
    assert_eq!(audit.unwrap_err().code(), Some("forbidden"));
    // Not granted.
    let other = s
        .publish("payments.vendor-7", "order", &json!({}), None)
        .await;
    assert_eq!(other.unwrap_err().code(), Some("forbidden"));
}
