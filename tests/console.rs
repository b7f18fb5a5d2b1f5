//! The ad-ops console over HTTP through a real server: nothing without the admin token, the
//! login cookie, the campaigns table (search, sort, paging at 10,000 campaigns), a campaign's
//! pacing chart with the points delivered, and explain as a dry run. The same pages in a real
//! browser: tests/console_browser.rs.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::*;
use http::{Method, StatusCode};
use interlude::config::Config;
use interlude::grpc::pb;

async fn send(
    server: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpAnswer {
    http_request(server.http_addr, method, path, headers, body).await
}

const BEARER: &str = "Bearer test-admin-token-0123456789";

/// GET `path` as an admin, whatever it answers.
async fn admin_get(server: &TestServer, path: &str) -> HttpAnswer {
    send(server, Method::GET, path, &[("authorization", BEARER)], "").await
}

/// GET `path` as an admin: a 200 HTML page, its body.
async fn page(server: &TestServer, path: &str) -> String {
    let answer = admin_get(server, path).await;
    assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
    assert_eq!(answer.headers["content-type"], "text/html; charset=utf-8");
    answer.body
}

async fn demo_server(configure: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config { demo: true, data_dir: None, ..Config::default() };
    configure(&mut config);
    start_server_with(config).await
}

#[tokio::test]
async fn without_the_admin_token_every_page_is_401_with_the_login_form_and_no_data() {
    let server = demo_server(|_| {}).await;
    let decision_only = "Bearer not-the-admin-token-0123";
    for path in [
        "/console/campaigns",
        "/console/campaigns/hifi-headphones",
        "/console/server",
        "/console/explain?listener_id=listener-opera&track_genre=opera",
    ] {
        for headers in
            [&[][..], &[("authorization", decision_only)], &[("cookie", "interlude_console=1.abcd")]]
        {
            let answer = send(&server, Method::GET, path, headers, "").await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path} {headers:?}");
            assert!(answer.body.contains("name=\"token\""), "the login form: {}", answer.body);
            for secret in ["hifi", "listener-opera", "Hear every detail", "interlude_decisions"] {
                assert!(!answer.body.contains(secret), "{path} leaks {secret:?}");
            }
        }
    }
    // The stylesheet is public; it holds nothing about campaigns.
    let css = send(&server, Method::GET, "/console/console.css", &[], "").await;
    assert_eq!(css.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn the_login_form_sets_a_strict_http_only_cookie_that_opens_the_pages_and_logout_ends_it() {
    let server = demo_server(|_| {}).await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let wrong = send(&server, Method::POST, "/console/login", &form, "token=guess").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.headers.get("set-cookie").is_none());
    assert!(wrong.body.contains("not the admin token"));

    let host = server.http_addr.to_string();
    let evil = [form[0], ("origin", "https://evil.example"), ("host", &host)];
    let cross =
        send(&server, Method::POST, "/console/login", &evil, "token=test-admin-token-0123456789").await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN, "a login posted from another site");
    assert!(cross.headers.get("set-cookie").is_none());

    let origin = format!("http://{host}");
    let same = [form[0], ("origin", &origin), ("host", &host)];
    let ok = send(&server, Method::POST, "/console/login", &same, "token=test-admin-token-0123456789").await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert_eq!(ok.headers["location"], "/console/campaigns");
    let set_cookie = ok.headers["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("test-admin-token"), "the cookie is not the token");
    let cookie = set_cookie.split(';').next().unwrap();

    let answer = send(&server, Method::GET, "/console/campaigns", &[("cookie", cookie)], "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("hifi-headphones"));
    assert_eq!(answer.headers["cache-control"], "no-store");
    let csp = answer.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("script-src"), "{csp}");

    // The VAST edge's CORS (any origin, with credentials) does not reach the console.
    let cors = send(
        &server,
        Method::GET,
        "/console/campaigns",
        &[("cookie", cookie), ("origin", "https://evil.example")],
        "",
    )
    .await;
    assert!(cors.headers.get("access-control-allow-origin").is_none(), "{:?}", cors.headers);

    let out = send(&server, Method::POST, "/console/logout", &[("cookie", cookie)], "").await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    server.stop().await;
}

#[tokio::test]
async fn the_campaigns_table_searches_sorts_and_pages_ten_thousand_campaigns() {
    let server = start_server().await;
    // Upserts in flight together share one catalog rebuild.
    for chunk in (0..10_000).collect::<Vec<i64>>().chunks(500) {
        let mut upserts = tokio::task::JoinSet::new();
        for &i in chunk {
            let mut c = campaign(&format!("camp-{i:05}"), &format!("adv-{}", i % 50), 1 + i % 20);
            c.name = if i % 1000 == 7 { format!("Zebra sale {i}") } else { format!("Campaign {i}") };
            let mut client = server.campaigns();
            upserts.spawn(async move {
                client.upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(c) }).await
            });
        }
        while let Some(done) = upserts.join_next().await {
            done.unwrap().unwrap();
        }
    }
    let first = page(&server, "/console/campaigns").await;
    assert!(first.contains("10000 of 10000 campaigns · page 1 of 200"), "{first}");
    assert_eq!(first.matches("<tr data-campaign=").count(), 50);
    assert!(first.contains("camp-00000") && first.contains("camp-00049") && !first.contains("camp-00050"));

    let last = page(&server, "/console/campaigns?page=200").await;
    assert!(last.contains("camp-09999") && !last.contains("rel=\"next\""));

    let zebras = page(&server, "/console/campaigns?q=zebra").await;
    assert!(zebras.contains("10 of 10000 campaigns"), "{zebras}");
    assert_eq!(zebras.matches("<tr data-campaign=").count(), 10);

    let by_name_desc = page(&server, "/console/campaigns?sort=name&dir=desc").await;
    let first_row = by_name_desc.split("<tr data-campaign=\"").nth(1).unwrap();
    assert!(first_row.starts_with("camp-09007"), "Zebra sale 9007 sorts last by name: {first_row:.80}");

    let bad = admin_get(&server, "/console/campaigns?sort=colour").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("sort: unknown column"), "{}", bad.body);
    server.stop().await;
}

#[tokio::test]
async fn a_campaign_page_charts_its_delivery_against_its_curve_with_the_points_delivered() {
    let server = demo_server(|_| {}).await;
    let empty = page(&server, "/console/campaigns/hifi-headphones").await;
    assert!(empty.contains("id=\"chart-flight\""), "the demo's evenly paced flight: {empty}");
    assert!(empty.contains("class=\"expected\""), "the curve is drawn");
    assert!(empty.contains("data-amount=\"0\""), "now, before any delivery");

    let mut request = break_for("listener-jazz-nyc");
    request.context = Some(pb::PlaybackContext { track_genres: vec!["jazz".into()], ..Default::default() });
    let response = server.decide(request).await;
    assert_eq!(served(&response), ["hifi-headphones"], "the sponsorship of jazz listeners");
    server.record_impressions(&response, "console").await;

    let after = page(&server, "/console/campaigns/hifi-headphones").await;
    assert!(after.contains("data-amount=\"30000\""), "one impression at $30 CPM, charted now: {after}");
    assert!(after.contains("0.03 USD"), "spend in the figures");
    assert!(
        page(&server, "/console/campaigns").await.contains("100.0 %"),
        "the only paid impression: its fill share"
    );
    // Another paid impression, of another campaign: a search shows each campaign's share of
    // every paid impression, not of the impressions of the campaigns it matched.
    let mut request = break_for("listener-opera");
    request.context =
        Some(pb::PlaybackContext { track_genres: vec!["classical".into()], ..Default::default() });
    let other = server.decide(request).await;
    assert_eq!(other.fill(), pb::Fill::Paid, "{other:?}");
    assert_ne!(served(&other), ["hifi-headphones"]);
    server.record_impressions(&other, "console-other").await;
    let searched = page(&server, "/console/campaigns?q=hifi").await;
    assert!(searched.contains("50.0 %"), "one of the two paid impressions: {searched}");
    let missing = admin_get(&server, "/console/campaigns/no-such").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn explain_traces_every_campaign_in_words_and_changes_nothing() {
    // One ad an hour: were explain to hold its ads as a decision does, the Decide after it
    // would find the hour's ad load spent.
    let server = demo_server(|c| c.policy.max_ads_per_hour = 1).await;
    let path = "/console/explain?listener_id=listener-opera&track_genre=classical&max_ads=1&max_duration=60";
    for _ in 0..3 {
        let explained = page(&server, path).await;
        assert!(explained.contains("Decision: a paid ad"), "{explained}");
        assert_eq!(explained.matches("class=\"served\"").count(), 1, "one ad served: {explained}");
        assert!(explained.contains("<tr data-campaign=\"hifi-headphones\" class=\"stopped\""), "{explained}");
        assert!(explained.contains("outranked by a better set of ads"));
        assert!(
            explained.contains("listener&#39;s taste does not match")
                || explained.contains("listener's taste does not match")
        );
        assert!(explained.contains("value=\"listener-opera\""), "the form keeps what was asked");
    }
    let response = server.decide(break_for("listener-opera")).await;
    assert_eq!(response.ads.len(), 1, "explain held nothing: {response:?}");
    assert_eq!(server.stats("hifi-headphones").await.impressions, 0);

    let bad = admin_get(&server, "/console/explain?max_ads=99").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("max_ads"), "names the field: {}", bad.body);
    server.stop().await;
}

#[tokio::test]
async fn the_server_page_says_so_when_metrics_are_off() {
    let server = demo_server(|_| {}).await;
    assert!(page(&server, "/console/server").await.contains("Metrics are off"));
    server.stop().await;
}
