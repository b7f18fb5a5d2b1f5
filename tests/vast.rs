//! The VAST edge through a real server: every response shape is a valid VAST 4.2 document
//! (vastlint-core here; xmllint with the IAB XSD, tests/data/vast_4.2.xsd, and @dailymotion/vast-client where installed,
//! mandatory in `.ci/run`), a break decided through a tag obeys the same rules as `Decide`, and
//! its trackers count each event once per ad.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use http::StatusCode;
use interlude::config::Config;
use interlude::grpc::pb;

type Answer = HttpAnswer;

/// GET `path_and_query` on the server's HTTP edge, with `headers`.
async fn get_with(server: &TestServer, path_and_query: &str, headers: &[(&str, &str)]) -> Answer {
    request(server.http_addr, http::Method::GET, path_and_query, headers).await
}

async fn get(server: &TestServer, path_and_query: &str) -> Answer {
    get_with(server, path_and_query, &[]).await
}

async fn request(
    addr: std::net::SocketAddr,
    method: http::Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Answer {
    http_request(addr, method, path_and_query, headers, "").await
}

/// GET a tag, asserting a 200 VAST answer that every available checker accepts.
async fn tag(server: &TestServer, query: &str) -> String {
    let answer = get(server, &format!("/vast/4.2?{query}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/xml; charset=utf-8");
    assert_eq!(answer.headers["cache-control"], "no-store");
    check_vast(&answer.body);
    answer.body
}

/// vastlint-core (always) and xmllint with the IAB 4.2 XSD (when installed).
#[track_caller]
fn check_vast(xml: &str) {
    let result = vastlint_core::validate(xml);
    let errors: Vec<_> = result
        .issues
        .iter()
        .filter(|i| i.severity == vastlint_core::Severity::Error)
        .map(|i| format!("{} {} at {:?}", i.id, i.message, i.path))
        .collect();
    assert_eq!(result.summary.errors, 0, "vastlint errors: {errors:#?}\n{xml}");
    if let Some(xmllint) = tool("xmllint", &["--version"]) {
        let substituted = xml
            .replace("[ERRORCODE]", "405")
            .replace("[TIMESTAMP]", "2026-12-04T08:15:07.127Z")
            .replace("[CACHEBUSTING]", "12345678");
        let file =
            std::env::temp_dir().join(format!("interlude-vast-{}-{}.xml", std::process::id(), unique()));
        std::fs::write(&file, substituted).unwrap();
        let output =
            Command::new(xmllint).args(["--noout", "--schema"]).arg(xsd()).arg(&file).output().unwrap();
        let _ = std::fs::remove_file(&file);
        assert!(output.status.success(), "xmllint: {}\n{xml}", String::from_utf8_lossy(&output.stderr));
    }
}

fn xsd() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/vast_4.2.xsd")
}

fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// `name` if it runs here; else None with the reason printed, or a failure when the tools are
/// required.
fn tool(name: &'static str, probe: &[&str]) -> Option<&'static str> {
    let runs = Command::new(name).args(probe).output().is_ok_and(|o| o.status.success());
    if runs {
        return Some(name);
    }
    let why = format!("{name} is not installed");
    skipped(&format!("the {name} check"), &why);
    None
}

/// The document's elements named `name`, anywhere.
fn elements<'a>(doc: &'a roxmltree::Document<'a>, name: &str) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants().filter(|n| n.has_tag_name(name)).collect()
}

fn text(node: roxmltree::Node<'_, '_>) -> String {
    node.text().unwrap_or_default().trim().to_string()
}

/// The tracker URL of `event` in the first ad of `xml`, as a path and query on our edge.
fn tracker(xml: &str, ad: usize, event: &str) -> String {
    let doc = roxmltree::Document::parse(xml).unwrap();
    let ad = elements(&doc, "Ad")[ad];
    let url = match event {
        "impression" => ad.descendants().find(|n| n.has_tag_name("Impression")).map(text),
        "error" => ad.descendants().find(|n| n.has_tag_name("Error")).map(text),
        "click" => ad.descendants().find(|n| n.has_tag_name("CompanionClickTracking")).map(text),
        _ => ad
            .descendants()
            .find(|n| n.has_tag_name("Tracking") && n.attribute("event") == Some(event))
            .map(text),
    }
    .unwrap_or_else(|| panic!("no {event} tracker in {xml}"));
    let path = url.split_once("://").unwrap().1;
    path[path.find('/').unwrap()..].to_string()
}

/// A campaign for what is playing: jazz tracks (contextual, so it clears the relevance floor
/// for any listener).
fn spot(id: &str, advertiser: &str, cpm_usd: i64) -> pb::Campaign {
    let mut c = campaign(id, advertiser, cpm_usd);
    c.targeting = Some(pb::Targeting { track_genres: vec!["jazz".into()], ..Default::default() });
    c
}

fn with_categories(mut c: pb::Campaign, categories: &[&str]) -> pb::Campaign {
    c.iab_categories = categories.iter().map(|c| c.to_string()).collect();
    c
}

#[tokio::test]
async fn a_single_ad_is_an_audio_inline_with_every_tracker_and_media_file() {
    let server = start_server().await;
    let mut c = with_categories(spot("radio-spot", "acme", 12), &["243"]);
    c.creatives[0].media_files = vec![pb::MediaFile {
        url: "https://cdn.example/radio-spot.ogg".into(),
        mime_type: "audio/ogg".into(),
        bitrate_kbps: 96,
    }];
    server.upsert([c]).await;

    let xml = tag(&server, "listener_id=l1&track_genre=jazz&max_ads=1&max_duration=60").await;
    let doc = roxmltree::Document::parse(&xml).unwrap();
    assert_eq!(doc.root_element().attribute("version"), Some("4.2"));
    assert_eq!(doc.root_element().tag_name().namespace(), Some("http://www.iab.com/VAST"));
    let ads = elements(&doc, "Ad");
    assert_eq!(ads.len(), 1);
    assert_eq!((ads[0].attribute("adType"), ads[0].attribute("sequence")), (Some("audio"), Some("1")));
    assert_eq!(ads[0].attribute("id"), Some("radio-spot"));
    let serving_id = text(elements(&doc, "AdServingId")[0]);
    assert_eq!(elements(&doc, "Impression")[0].attribute("id"), Some(serving_id.as_str()));
    let pricing = elements(&doc, "Pricing")[0];
    assert_eq!((pricing.attribute("model"), pricing.attribute("currency")), (Some("CPM"), Some("USD")));
    assert_eq!(text(pricing), "12.00");
    assert_eq!(text(elements(&doc, "Category")[0]), "243");
    assert_eq!(text(elements(&doc, "Duration")[0]), "00:00:30.000");
    assert!(text(elements(&doc, "Error")[0]).contains("[ERRORCODE]"));
    let media: Vec<_> = elements(&doc, "MediaFile")
        .into_iter()
        .map(|m| {
            (m.attribute("type").unwrap().to_string(), m.attribute("width"), m.attribute("height"), text(m))
        })
        .collect();
    assert_eq!(
        media,
        [
            ("audio/mpeg".into(), Some("0"), Some("0"), "https://cdn.example/radio-spot.mp3".into()),
            ("audio/ogg".into(), Some("0"), Some("0"), "https://cdn.example/radio-spot.ogg".into()),
        ]
    );
    let mut events: Vec<_> =
        elements(&doc, "Tracking").into_iter().filter_map(|t| t.attribute("event")).collect();
    events.sort_unstable();
    assert_eq!(
        events,
        [
            "complete",
            "firstQuartile",
            "midpoint",
            "mute",
            "pause",
            "resume",
            "skip",
            "start",
            "thirdQuartile",
            "unmute"
        ]
    );
    assert_eq!(elements(&doc, "UniversalAdId")[0].attribute("idRegistry"), Some("interlude"));
    assert!(elements(&doc, "CompanionAds").is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_pod_of_three_has_one_ad_per_sequence_number() {
    let server = start_server().await;
    server.upsert([spot("a", "adv-a", 20), spot("b", "adv-b", 15), spot("c", "adv-c", 10)]).await;
    let xml = tag(&server, "listener_id=l1&track_genre=jazz&max_ads=3&max_duration=120").await;
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let ads = elements(&doc, "Ad");
    let sequences: Vec<_> = ads.iter().map(|a| a.attribute("sequence").unwrap()).collect();
    assert_eq!(sequences, ["1", "2", "3"]);
    let ids: Vec<_> = ads.iter().map(|a| a.attribute("id").unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c"], "best bid first, as Decide orders them");
    let serving: std::collections::HashSet<_> = elements(&doc, "AdServingId").into_iter().map(text).collect();
    assert_eq!(serving.len(), 3, "each InLine has its own AdServingId");
    server.stop().await;
}

#[tokio::test]
async fn a_companion_banner_is_an_optional_creative_of_its_own() {
    let server = start_server().await;
    let mut c = spot("banner-spot", "acme", 10);
    c.creatives[0].companion = Some(pb::CompanionBanner {
        image_url: "https://cdn.example/banner.jpg".into(),
        click_url: "https://acme.example/offer?src=audio&id=1".into(),
        width: 300,
        height: 250,
    });
    server.upsert([c]).await;
    let xml = tag(&server, "listener_id=l1&track_genre=jazz").await;
    let doc = roxmltree::Document::parse(&xml).unwrap();
    assert_eq!(elements(&doc, "Creative").len(), 2, "the audio and its banner");
    assert_eq!(elements(&doc, "CompanionAds")[0].attribute("required"), Some("none"));
    let companion = elements(&doc, "Companion")[0];
    assert_eq!((companion.attribute("width"), companion.attribute("height")), (Some("300"), Some("250")));
    let resource = elements(&doc, "StaticResource")[0];
    assert_eq!(resource.attribute("creativeType"), Some("image/jpeg"));
    assert_eq!(text(resource), "https://cdn.example/banner.jpg");
    assert_eq!(text(elements(&doc, "CompanionClickThrough")[0]), "https://acme.example/offer?src=audio&id=1");

    // Its click tracker counts a click.
    assert_eq!(get(&server, &tracker(&xml, 0, "click")).await.status, StatusCode::NO_CONTENT);
    assert_eq!(server.stats("banner-spot").await.clicks, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_house_ad_fills_when_no_paid_ad_may_serve_and_carries_no_price() {
    let server = start_server().await;
    server.upsert([genre_campaign("jazz-only", "acme", 20, &["jazz"]), house_ad("go-premium")]).await;
    let xml = tag(&server, "listener_id=nobody-known").await;
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let ads = elements(&doc, "Ad");
    assert_eq!(ads.len(), 1);
    assert_eq!(ads[0].attribute("id"), Some("go-premium"));
    assert!(elements(&doc, "Pricing").is_empty(), "house ads are not sold");
    server.stop().await;
}

#[tokio::test]
async fn no_fill_is_an_empty_vast_document() {
    let server = start_server().await;
    let xml = tag(&server, "listener_id=l1&track_genre=jazz").await;
    let doc = roxmltree::Document::parse(&xml).unwrap();
    assert_eq!(doc.root_element().tag_name().name(), "VAST");
    assert_eq!(doc.root_element().attribute("version"), Some("4.2"));
    assert!(!doc.root_element().has_children(), "{xml}");
    server.stop().await;
}

#[tokio::test]
async fn a_refused_consent_gets_no_personalised_ad() {
    let server = start_server().await;
    server.upsert([genre_campaign("opera-ad", "acme", 20, &["opera"]), house_ad("go-premium")]).await;
    server.listener("fan", |_| {}).await;
    server.plays("fan", "", &[("opera", 30)]).await;
    let served = |xml: &str| {
        let doc = roxmltree::Document::parse(xml).unwrap();
        elements(&doc, "Ad").iter().map(|a| a.attribute("id").unwrap().to_string()).collect::<Vec<_>>()
    };
    // GDPR applies and the CMP has no consent string: a refusal. So is a US opt-out of sale.
    assert_eq!(served(&tag(&server, "listener_id=fan&gdpr=1").await), ["go-premium"]);
    assert_eq!(served(&tag(&server, "listener_id=fan&us_privacy=1YYN").await), ["go-premium"]);
    // Allowed, the profile picks the opera ad.
    assert_eq!(served(&tag(&server, "listener_id=fan&gdpr=0").await), ["opera-ad"]);
    server.stop().await;
}

#[tokio::test]
async fn each_tracker_counts_once_per_ad_however_often_it_fires() {
    let server = start_server().await;
    server.upsert([spot("spot", "acme", 10)]).await;
    let xml = tag(&server, "listener_id=l1&track_genre=jazz").await;
    for event in
        ["impression", "start", "firstQuartile", "midpoint", "thirdQuartile", "complete", "mute", "error"]
    {
        let url = tracker(&xml, 0, event).replace("[ERRORCODE]", "402").replace("[TIMESTAMP]", "");
        for _ in 0..2 {
            let answer = get(&server, &url).await;
            assert_eq!(answer.status, StatusCode::NO_CONTENT, "{event}: {}", answer.body);
        }
    }
    let s = server.stats("spot").await;
    assert_eq!(s.impressions, 1, "a player that fires twice bills once");
    assert_eq!(s.spend_micros, 10_000_000 / 1000);
    assert_eq!(
        (s.starts, s.first_quartiles, s.midpoints, s.third_quartiles, s.completes, s.mutes),
        (1, 1, 1, 1, 1, 1)
    );
    assert_eq!((s.skips, s.pauses, s.unmutes), (0, 0, 0));
    assert_eq!(
        s.errors,
        [pb::PlaybackErrorCount { creative_id: "c30".into(), code: 402, count: 1 }],
        "the error code per creative"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_forged_or_unknown_token_records_nothing() {
    let server = start_server().await;
    server.upsert([spot("spot", "acme", 10)]).await;
    let xml = tag(&server, "listener_id=l1&track_genre=jazz").await;
    let url = tracker(&xml, 0, "impression");
    // Flip one character of the signature (the token's last part).
    let (head, tail) = url.split_once("&ts=").unwrap();
    let last = head.chars().last().unwrap();
    let forged = format!("{}{}&ts={tail}", &head[..head.len() - 1], if last == 'A' { 'B' } else { 'A' });
    let answer = get(&server, &forged).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.body.starts_with("t: "), "{}", answer.body);
    let answer = get(&server, "/vast/track?e=impression&t=not-a-token").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(server.stats("spot").await.impressions, 0);
    server.stop().await;
}

#[tokio::test]
async fn not_used_returns_a_prefetched_ad_to_the_listener_cap() {
    let server = start_server().await;
    let mut c = spot("capped", "acme", 10);
    c.frequency_caps =
        vec![pb::FrequencyCap { scope: pb::CapScope::Campaign as i32, max_impressions: 1, window: None }];
    server.upsert([c]).await;
    let first = tag(&server, "listener_id=l1&track_genre=jazz").await;
    assert!(first.contains("<Ad "), "{first}");
    // Decided ahead of its impression, it counts against the cap already.
    assert!(!tag(&server, "listener_id=l1&track_genre=jazz").await.contains("<Ad "));
    let not_used = tracker(&first, 0, "impression").replace("e=impression", "e=notUsed");
    assert_eq!(get(&server, &not_used).await.status, StatusCode::NO_CONTENT);
    assert!(
        tag(&server, "listener_id=l1&track_genre=jazz").await.contains("<Ad "),
        "the dropped ad no longer holds the cap"
    );
    assert_eq!(server.stats("capped").await.not_used, 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_a_400_naming_each_one() {
    let server = start_server().await;
    let answer = get(&server, "/vast/4.2?max_ads=0&device=fridge&gdpr=1&gdpr_consent=%21%21").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.headers["content-type"], "text/plain; charset=utf-8");
    for param in ["max_ads: ", "device: ", "gdpr_consent: "] {
        assert!(answer.body.lines().any(|l| l.starts_with(param)), "{param} in {}", answer.body);
    }
    let answer = get_with(&server, "/vast/4.2", &[("x-device-ip", "not-an-ip")]).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.body.starts_with("X-Device-IP: "), "{}", answer.body);
    let answer = get(&server, "/vast/track?e=explode&t=x").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.body.starts_with("e: "), "{}", answer.body);
    let answer = get(&server, "/vast/error?t=x&code=7").await;
    assert!(answer.body.contains("code: "), "{}", answer.body);
    server.stop().await;
}

#[tokio::test]
async fn web_players_on_another_origin_may_fetch_with_credentials() {
    let server = start_server().await;
    let origin = "https://player.example";
    let answer = get_with(&server, "/vast/4.2", &[("origin", origin)]).await;
    assert_eq!(answer.headers["access-control-allow-origin"], origin);
    assert_eq!(answer.headers["access-control-allow-credentials"], "true");
    assert!(answer.headers.get_all("vary").iter().any(|v| v.to_str().unwrap().contains("origin")));
    let preflight = request(
        server.http_addr,
        http::Method::OPTIONS,
        "/vast/4.2",
        &[("origin", origin), ("access-control-request-method", "GET")],
    )
    .await;
    assert!(preflight.status.is_success(), "{}", preflight.status);
    assert_eq!(preflight.headers["access-control-allow-origin"], origin);
    assert!(preflight.headers["access-control-allow-methods"].to_str().unwrap().contains("GET"));
    server.stop().await;
}

#[tokio::test]
async fn over_the_in_flight_bound_a_tag_is_refused_with_retry_after() {
    // A bound of zero admits nothing: every tag is over it.
    let mut config = Config { demo: false, data_dir: None, ..Config::default() };
    config.limits.max_in_flight = 0;
    let server = start_server_with(config).await;
    let answer = get(&server, "/vast/4.2?listener_id=l1").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers["retry-after"], "1");
    server.stop().await;
}

/// The demo tag of the README, parsed and played by @dailymotion/vast-client under node: it
/// sees every ad, media file and tracker, and the trackers it fires count once each.
#[tokio::test]
async fn an_independent_vast_client_parses_the_pod_and_its_trackers_count_once() {
    let Some(node) = tool("node", &["--version"]) else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vast-client/check.js");
    let modules = std::env::var_os("INTERLUDE_VAST_CLIENT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vast-client"))
        .join("node_modules");
    if !modules.join("@dailymotion/vast-client").exists() {
        let why = format!("@dailymotion/vast-client is not installed under {}", modules.display());
        skipped("the vast-client check", &why);
        return;
    }
    let server = start_server_with(Config { demo: true, data_dir: None, ..Config::default() }).await;
    let url = format!(
        "http://{}/vast/4.2?listener_id=listener-opera&track_genre=opera&max_ads=2&max_duration=60",
        server.http_addr
    );
    // The server runs on this runtime, so node waits on a blocking thread.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(node).arg(&script).arg(&url).env("NODE_PATH", &modules).output()
    });
    let output = tokio::time::timeout(TEST_TIMEOUT, output).await.unwrap().unwrap().unwrap();
    assert!(output.status.success(), "node: {}", String::from_utf8_lossy(&output.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ads = seen["ads"].as_array().unwrap();
    assert_eq!(ads.len(), 2, "a 2-ad pod: {seen:#}");
    for (i, ad) in ads.iter().enumerate() {
        assert_eq!(ad["sequence"], (i + 1).to_string());
        assert_eq!((ad["impressions"].as_u64(), ad["errors"].as_u64()), (Some(1), Some(1)));
        assert_eq!(ad["mediaFiles"].as_array().unwrap().len(), 2, "MP3 and OGG: {ad:#}");
        assert_eq!(ad["tracking"].as_array().unwrap().len(), 10, "{ad:#}");
    }
    let trackers = seen["trackers"].as_array().unwrap();
    assert!(trackers.iter().all(|t| t["status"] == 204), "{trackers:#?}");
    for ad in ads {
        let s = server.stats(ad["id"].as_str().unwrap()).await;
        assert_eq!(s.impressions, 1);
        assert_eq!(
            (s.starts, s.first_quartiles, s.midpoints, s.third_quartiles, s.completes),
            (1, 1, 1, 1, 1)
        );
        assert_eq!((s.mutes, s.unmutes, s.pauses, s.resumes), (1, 1, 1, 1));
        assert_eq!(s.errors.iter().map(|e| (e.code, e.count)).collect::<Vec<_>>(), [(405, 1)]);
    }
    // The same impression fired again by hand bills nothing more.
    let impression = trackers.iter().find(|t| t["url"].as_str().unwrap().contains("e=impression")).unwrap();
    let path =
        impression["url"].as_str().unwrap().split_once(&server.http_addr.to_string()).unwrap().1.to_string();
    let campaign = ads[0]["id"].as_str().unwrap();
    let before = server.stats(campaign).await;
    assert_eq!(get(&server, &path).await.status, StatusCode::NO_CONTENT);
    let after = server.stats(campaign).await;
    assert_eq!((after.impressions, after.spend_micros), (before.impressions, before.spend_micros));
    server.stop().await;
}

/// The issue's own check, on the real binary with its demo catalog: the README's tag for the
/// opera listener is a 2-ad pod, and its impression fired twice bills once.
#[tokio::test]
async fn the_demo_tag_of_the_readme_is_a_two_ad_pod_whose_impression_bills_once() {
    let binary = Binary::start([
        "--demo",
        "true",
        "--data-dir",
        "off",
        "--metrics-listen",
        "off",
        "--admin-token",
        ADMIN_TOKEN,
    ]);
    let addr: std::net::SocketAddr = binary.http.parse().unwrap();
    let tag = "/vast/4.2?listener_id=listener-opera&track_genre=opera&max_ads=2&max_duration=60";
    let answer = request(addr, http::Method::GET, tag, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    check_vast(&answer.body);
    let doc = roxmltree::Document::parse(&answer.body).unwrap();
    let ads = elements(&doc, "Ad");
    assert_eq!(ads.len(), 2, "{}", answer.body);
    let campaign = ads[0].attribute("id").unwrap().to_string();
    let impression = tracker(&answer.body, 0, "impression");
    for _ in 0..2 {
        assert_eq!(request(addr, http::Method::GET, &impression, &[]).await.status, StatusCode::NO_CONTENT);
    }
    let mut campaigns =
        pb::campaign_service_client::CampaignServiceClient::with_interceptor(binary.channel().await, admin());
    let stats = campaigns
        .get_delivery_stats(pb::GetDeliveryStatsRequest { campaign_id: campaign })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.impressions, 1);
    assert!(stats.spend_micros > 0);
}
