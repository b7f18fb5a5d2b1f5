//! Authentication through the real server: admin RPCs need the admin token, the decision RPCs
//! the decision token (when one is configured), health and reflection stay open; admin writes
//! reach the audit log; a server without a token generates one and stays on loopback.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::*;
use interlude::config::{Config, Secret};
use interlude::grpc::auth::Bearer;
use interlude::grpc::pb;
use interlude::grpc::pb::ad_decision_service_client::AdDecisionServiceClient;
use interlude::grpc::pb::campaign_service_client::CampaignServiceClient;
use interlude::grpc::pb::listener_service_client::ListenerServiceClient;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const DECISION_TOKEN: &str = "test-decision-token-0123456789";

fn bearer(token: Option<&str>) -> Bearer {
    Bearer::new(token).unwrap()
}

async fn with_decision_token() -> TestServer {
    start_server_with(Config {
        demo: false,
        data_dir: None,
        decision_token: Some(Secret(DECISION_TOKEN.into())),
        ..Config::default()
    })
    .await
}

#[tokio::test]
async fn admin_rpcs_need_the_admin_token() {
    let server = with_decision_token().await;
    for token in [None, Some("wrong-token-0123456789abc"), Some(DECISION_TOKEN)] {
        let mut campaigns = CampaignServiceClient::with_interceptor(server.channel.clone(), bearer(token));
        let status = campaigns.list_campaigns(pb::ListCampaignsRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        let status = campaigns
            .upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(house_ad("h")) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        let mut listeners = ListenerServiceClient::with_interceptor(server.channel.clone(), bearer(token));
        for status in [
            listeners.get_listener(pb::GetListenerRequest { listener_id: "x".into() }).await.unwrap_err(),
            listeners
                .forget_listener(pb::ForgetListenerRequest { listener_id: "x".into() })
                .await
                .unwrap_err(),
            listeners
                .upsert_listener(pb::UpsertListenerRequest {
                    listener: Some(pb::Listener { listener_id: "x".into(), ..Default::default() }),
                })
                .await
                .unwrap_err(),
        ] {
            assert_eq!(status.code(), Code::Unauthenticated, "{token:?}: {status:?}");
        }
    }
    assert!(server.state.catalog.snapshot().is_empty(), "a refused write changes nothing");
    server.upsert([house_ad("h")]).await; // the admin token works
    server.stop().await;
}

#[tokio::test]
async fn decision_rpcs_need_the_decision_token_and_health_stays_open() {
    let server = with_decision_token().await;
    server.upsert([house_ad("h")]).await;
    let mut anonymous = AdDecisionServiceClient::with_interceptor(server.channel.clone(), bearer(None));
    let status = anonymous.decide(break_for("nina")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("decision token"), "{}", status.message());
    let status = anonymous.record_events(pb::RecordEventsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut player =
        AdDecisionServiceClient::with_interceptor(server.channel.clone(), bearer(Some(DECISION_TOKEN)));
    let response = player.decide(break_for("nina")).await.unwrap().into_inner();
    assert_eq!(served(&response), vec!["h"]);
    // The player backend also reports plays, but reads no profile.
    let mut plays =
        ListenerServiceClient::with_interceptor(server.channel.clone(), bearer(Some(DECISION_TOKEN)));
    let play = pb::PlayEvent {
        listener_id: "nina".into(),
        track_id: "t1".into(),
        genres: vec!["jazz".into()],
        played_at: Some(ts(interlude::grpc::now().0)),
        seconds_played: 200,
        ..Default::default()
    };
    let accepted = plays
        .record_plays(tokio_stream::iter([pb::RecordPlaysRequest { plays: vec![play] }]))
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted, 1);
    let status = plays.get_listener(pb::GetListenerRequest { listener_id: "nina".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let health =
        HealthClient::new(server.channel.clone()).check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING, no token needed");
    server.stop().await;
}

#[tokio::test]
async fn admin_writes_reach_the_audit_log_with_who_and_what() {
    let mut server = Binary::bare();
    let channel = server.channel().await;
    CampaignServiceClient::with_interceptor(channel.clone(), admin())
        .upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(house_ad("audited")) })
        .await
        .unwrap();
    let line = loop {
        let line = server.log.recv_timeout(TEST_TIMEOUT).expect("an audit line");
        if line.contains("interlude::audit") {
            break line;
        }
    };
    assert!(line.contains("campaign upserted") && line.contains("campaign_id=audited"), "{line}");
    assert!(line.contains("token_id=sha256:"), "{line}");
    assert!(!line.contains(ADMIN_TOKEN), "the token itself is never logged: {line}");
    server.kill_9();
}

#[tokio::test]
async fn without_a_configured_token_one_is_generated_printed_once_and_kept_for_local_tools() {
    let dir = std::env::temp_dir().join(format!("interlude-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server =
        Binary::start(["--metrics-listen", "off", "--demo", "false", "--data-dir", dir.to_str().unwrap()]);
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    assert!(token.len() >= 32, "{token}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.join("admin.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "only its owner may read it: {mode:o}");
    let channel = server.channel().await;
    let mut campaigns = CampaignServiceClient::with_interceptor(channel.clone(), bearer(Some(&token)));
    campaigns.list_campaigns(pb::ListCampaignsRequest::default()).await.unwrap();
    let mut no_token = CampaignServiceClient::new(channel);
    assert_eq!(
        no_token.list_campaigns(pb::ListCampaignsRequest::default()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    server.kill_9();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_non_loopback_address_without_tokens_is_refused_before_binding() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_interlude"))
        .args(["--listen", "0.0.0.0:0", "--data-dir", "off"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin_token") && stderr.contains("non-loopback"), "{stderr}");
}

#[tokio::test]
async fn every_admin_rpc_refuses_a_caller_without_the_admin_token() {
    let server = with_decision_token().await;
    for token in [None, Some(DECISION_TOKEN)] {
        let mut c = CampaignServiceClient::with_interceptor(server.channel.clone(), bearer(token));
        let mut l = ListenerServiceClient::with_interceptor(server.channel.clone(), bearer(token));
        let id = || "x".to_string();
        let statuses = [
            (
                "UpsertCampaign",
                c.upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(house_ad("h")) }).await.err(),
            ),
            ("GetCampaign", c.get_campaign(pb::GetCampaignRequest { campaign_id: id() }).await.err()),
            ("ListCampaigns", c.list_campaigns(pb::ListCampaignsRequest::default()).await.err()),
            ("PauseCampaign", c.pause_campaign(pb::PauseCampaignRequest { campaign_id: id() }).await.err()),
            (
                "ResumeCampaign",
                c.resume_campaign(pb::ResumeCampaignRequest { campaign_id: id() }).await.err(),
            ),
            (
                "ArchiveCampaign",
                c.archive_campaign(pb::ArchiveCampaignRequest { campaign_id: id() }).await.err(),
            ),
            (
                "GetDeliveryStats",
                c.get_delivery_stats(pb::GetDeliveryStatsRequest { campaign_id: id() }).await.err(),
            ),
            (
                "UpsertListener",
                l.upsert_listener(pb::UpsertListenerRequest {
                    listener: Some(pb::Listener { listener_id: id(), ..Default::default() }),
                })
                .await
                .err(),
            ),
            ("GetListener", l.get_listener(pb::GetListenerRequest { listener_id: id() }).await.err()),
            (
                "ForgetListener",
                l.forget_listener(pb::ForgetListenerRequest { listener_id: id() }).await.err(),
            ),
            (
                "LinkIdentity",
                l.link_identity(pb::LinkIdentityRequest { listener_id: id(), alias: "y".into() }).await.err(),
            ),
            (
                "MergeListeners",
                l.merge_listeners(pb::MergeListenersRequest {
                    into_listener_id: id(),
                    from_listener_id: "y".into(),
                })
                .await
                .err(),
            ),
        ];
        for (rpc, status) in statuses {
            let status = status.unwrap_or_else(|| panic!("{rpc} served a caller with {token:?}"));
            assert_eq!(status.code(), Code::Unauthenticated, "{rpc} with {token:?}: {status:?}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn explain_needs_the_admin_token_and_is_rate_limited() {
    let server = with_decision_token().await;
    server.upsert([genre_campaign("jazz-ad", "label", 10, &["jazz"])]).await;
    let mut request = break_for("anyone");
    request.explain = true;
    let mut player =
        AdDecisionServiceClient::with_interceptor(server.channel.clone(), bearer(Some(DECISION_TOKEN)));
    let status = player.decide(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("admin token"), "{}", status.message());
    // The same request without explain is the player's to make.
    let mut plain = request.clone();
    plain.explain = false;
    player.decide(plain).await.unwrap();

    // With the admin token: explained, within a budget of ten a second (fifty calls in a row
    // take far less than the four seconds that would refill it).
    let mut admin =
        AdDecisionServiceClient::with_interceptor(server.channel.clone(), bearer(Some(ADMIN_TOKEN)));
    let mut explained = 0;
    let mut limited = 0;
    for _ in 0..50 {
        match admin.decide(request.clone()).await {
            Ok(response) => {
                assert!(!response.into_inner().trace.is_empty());
                explained += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                limited += 1;
            }
        }
    }
    assert!(explained >= 10 && limited > 0, "explained {explained}, limited {limited}");
    server.stop().await;
}
