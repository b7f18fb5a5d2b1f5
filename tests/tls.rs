//! TLS and mTLS through the real binary: with a client CA configured, a client with a
//! certificate from that CA is served (no decision token needed), and one without is refused.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::path::Path;

use common::*;
use interlude::grpc::pb::ad_decision_service_client::AdDecisionServiceClient;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![purpose];
        (params.signed_by(&key, &ca, &ca_key).unwrap().pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf("player-backend", ExtendedKeyUsagePurpose::ClientAuth),
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.to_str().unwrap().to_string()
}

async fn connect(
    addr: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}")).unwrap().connect_timeout(TEST_TIMEOUT);
    match tls {
        Some(tls) => endpoint.tls_config(tls).unwrap().connect().await,
        None => endpoint.connect().await,
    }
}

#[tokio::test]
async fn mtls_serves_clients_with_a_certificate_and_refuses_the_rest() {
    let dir = std::env::temp_dir().join(format!("interlude-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = pki();
    let server = Binary::start([
        "--metrics-listen".to_string(),
        "off".into(),
        "--data-dir".into(),
        "off".into(),
        "--admin-token".into(),
        ADMIN_TOKEN.into(),
        "--tls-cert".into(),
        write(&dir, "server.pem", &pki.server.0),
        "--tls-key".into(),
        write(&dir, "server.key", &pki.server.1),
        "--tls-client-ca".into(),
        write(&dir, "ca.pem", &pki.ca),
    ]);
    let trust =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca)).domain_name("localhost");

    let with_cert = trust.clone().identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    let channel = connect(&server.grpc, Some(with_cert)).await.unwrap();
    let response =
        AdDecisionServiceClient::new(channel).decide(break_for("nina")).await.unwrap().into_inner();
    assert!(!response.ads.is_empty(), "the demo catalog answers over mTLS: {response:?}");

    // Without a client certificate the handshake (or the first call) fails.
    let refused = match connect(&server.grpc, Some(trust)).await {
        Err(_) => true,
        Ok(channel) => AdDecisionServiceClient::new(channel).decide(break_for("nina")).await.is_err(),
    };
    assert!(refused, "a client without a certificate is refused");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_certificate_stops_the_server_before_it_binds() {
    let dir = std::env::temp_dir().join(format!("interlude-badtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_interlude"))
        .args(["--listen", "127.0.0.1:0", "--data-dir", "off", "--tls-cert"])
        .arg(write(&dir, "cert.pem", "not a certificate"))
        .arg("--tls-key")
        .arg(write(&dir, "key.pem", "not a key"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls_cert"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
