//! The ad-ops console in a real browser: headless Chromium (Debian `chromium`, driven over the
//! DevTools protocol by chromiumoxide) against the real binary serving the demo catalog.
//! Unauthenticated it sees the login form only; logged in, the campaigns table, a campaign's
//! pacing chart with its points, the server's rates and the explain form's trace. A screenshot
//! of each page is kept under `target/console-screenshots/` (a CI artefact).
//!
//! Without Chromium the test says it skipped; with `REQUIRE_TEST_TOOLS` set (`.ci/run`) it fails.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::path::PathBuf;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::page::{Page, ScreenshotParams};
use common::*;
use interlude::grpc::pb;
use tokio_stream::StreamExt as _;

/// The Chromium executable (its path: the launcher does not search PATH), if one is installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = ["chromium", "chromium-browser", "google-chrome"].into_iter().find_map(|name| {
        std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| {
            std::process::Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success())
        })
    });
    if found.is_none() {
        skipped("the console browser test", "chromium is not installed (Debian package chromium)");
    }
    found
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(page: &Page, name: &str) {
    let params = ScreenshotParams::builder().format(CaptureScreenshotFormat::Png).full_page(true).build();
    page.save_screenshot(params, screenshots().join(format!("{name}.png"))).await.unwrap();
}

/// A number the page's script computes.
async fn count(page: &Page, expression: &str) -> i64 {
    page.evaluate(expression).await.unwrap().into_value::<i64>().unwrap()
}

async fn text(page: &Page, selector: &str) -> String {
    page.find_element(selector).await.unwrap().inner_text().await.unwrap().unwrap_or_default()
}

/// Waits until `condition` (a script expression) holds in the page: after a click, the
/// navigation it starts has not necessarily begun when the click returns.
async fn until(page: &Page, condition: &str) {
    let deadline = tokio::time::Instant::now() + TEST_TIMEOUT;
    loop {
        let holds = page.evaluate(condition).await.ok().and_then(|r| r.into_value::<bool>().ok());
        if holds == Some(true) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let at = page.url().await.ok().flatten().unwrap_or_default();
            let html = page.content().await.unwrap_or_default();
            panic!("the page never came to {condition}; it is at {at}:\n{html}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Opens `url` in the page and waits until it has loaded.
async fn open(page: &Page, url: &str) {
    tokio::time::timeout(TEST_TIMEOUT, async {
        page.goto(url).await.unwrap();
        page.wait_for_navigation().await.unwrap();
    })
    .await
    .expect("the page loads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_logs_in_shows_campaigns_a_pacing_chart_the_server_and_explain() {
    let Some(chromium) = chromium() else { return };
    let server = Binary::start([
        "--metrics-listen",
        "127.0.0.1:0",
        "--demo",
        "true",
        "--data-dir",
        "off",
        "--admin-token",
        ADMIN_TOKEN,
    ]);
    let base = format!("http://{}", server.http);

    let profile = tempdir();
    let config = BrowserConfig::builder()
        .chrome_executable(&chromium)
        .no_sandbox()
        .user_data_dir(&profile)
        .window_size(1280, 900)
        .arg("--disable-gpu")
        .arg("--disable-dev-shm-usage")
        .build()
        .unwrap();
    let (mut browser, mut handler) = Browser::launch(config).await.unwrap();
    let cdp = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser.new_page("about:blank").await.unwrap();

    // Not logged in: the login form, and nothing of the catalog.
    open(&page, &format!("{base}/console/campaigns/hifi-headphones")).await;
    let html = page.content().await.unwrap();
    assert!(html.contains("name=\"token\""), "the login form: {html}");
    for secret in ["hifi", "Hear every detail", "listener-"] {
        assert!(!html.contains(secret), "an unauthenticated page shows {secret:?}");
    }
    screenshot(&page, "login").await;

    // Log in through the form.
    let field = page.find_element("input[name=token]").await.unwrap();
    field.click().await.unwrap().type_str(ADMIN_TOKEN).await.unwrap();
    page.find_element("form[action='/console/login'] button").await.unwrap().click().await.unwrap();
    until(&page, "location.pathname === '/console/campaigns' && document.readyState === 'complete'").await;
    // Something to chart and count, once the console's sampler has its first sample: one
    // jazz break heard (hifi-headphones, $30 CPM).
    let channel = server.channel().await;
    let mut decisions =
        interlude::grpc::pb::ad_decision_service_client::AdDecisionServiceClient::new(channel);
    let mut request = break_for("listener-jazz-nyc");
    request.context = Some(pb::PlaybackContext { track_genres: vec!["jazz".into()], ..Default::default() });
    let response = decisions.decide(request).await.unwrap().into_inner();
    assert_eq!(served(&response), ["hifi-headphones"]);
    let events = vec![pb::AdEvent {
        event_id: "browser-1".into(),
        r#type: pb::EventType::Impression as i32,
        impression_token: response.ads[0].impression_token.clone(),
        ..Default::default()
    }];
    decisions.record_events(pb::RecordEventsRequest { events }).await.unwrap();

    page.reload().await.unwrap();
    until(&page, "document.readyState === 'complete'").await;
    let rows = count(&page, "document.querySelectorAll('#campaigns tbody tr').length").await;
    assert!(rows >= 30, "the demo's campaigns: {rows}");
    assert!(text(&page, "tr[data-campaign='hifi-headphones']").await.contains("0.03"), "its spend");
    screenshot(&page, "campaigns").await;

    // Sorting by spend, descending, puts the one that delivered first.
    page.find_element("th a[href*='sort=spend&']").await.unwrap().click().await.unwrap();
    until(&page, "location.search.includes('sort=spend&dir=asc') && document.readyState === 'complete'")
        .await;
    page.find_element("th a[href*='sort=spend&']").await.unwrap().click().await.unwrap();
    until(&page, "location.search.includes('sort=spend&dir=desc') && document.readyState === 'complete'")
        .await;
    let first =
        page.find_element("#campaigns tbody tr").await.unwrap().attribute("data-campaign").await.unwrap();
    assert_eq!(first.as_deref(), Some("hifi-headphones"));

    // The campaign: its flight against the even curve, with the point delivered now.
    page.find_element("tr[data-campaign='hifi-headphones'] a").await.unwrap().click().await.unwrap();
    until(&page, "location.pathname.endsWith('/hifi-headphones') && document.readyState === 'complete'")
        .await;
    assert_eq!(count(&page, "document.querySelectorAll('#chart-flight polyline.expected').length").await, 1);
    let points = count(&page, "document.querySelectorAll('#chart-flight circle.point').length").await;
    assert!(points >= 1, "the chart shows the campaign's points");
    let now = count(
        &page,
        "Number([...document.querySelectorAll('#chart-flight circle.point')].pop().dataset.amount)",
    )
    .await;
    assert_eq!(now, 30_000, "one impression at $30 CPM, in micros");
    let drawn =
        count(&page, "Math.round(document.querySelector('#chart-flight').getBoundingClientRect().width)")
            .await;
    assert!(drawn > 300, "the chart is laid out: {drawn} px wide");
    screenshot(&page, "campaign").await;

    // The server: decisions per second and the fill, from its own metrics.
    open(&page, &format!("{base}/console/server")).await;
    assert_eq!(text(&page, "#fill-paid").await, "100.0 %", "{}", page.content().await.unwrap());
    screenshot(&page, "server").await;

    // Explain: the form, then every campaign's rule in words.
    open(&page, &format!("{base}/console/explain")).await;
    page.find_element("input[name=listener_id]")
        .await
        .unwrap()
        .click()
        .await
        .unwrap()
        .type_str("listener-opera")
        .await
        .unwrap();
    page.find_element("input[name=track_genre]")
        .await
        .unwrap()
        .click()
        .await
        .unwrap()
        .type_str("classical")
        .await
        .unwrap();
    page.find_element("form.explain button").await.unwrap().click().await.unwrap();
    until(&page, "document.querySelector('#trace') !== null && document.readyState === 'complete'").await;
    let traced = count(&page, "document.querySelectorAll('#trace tbody tr').length").await;
    assert!(traced >= 30, "every demo campaign is traced: {traced}");
    assert!(text(&page, "#trace").await.contains("listener's taste does not match"));
    assert_eq!(
        count(&page, "document.querySelectorAll('#trace tr.served').length").await,
        2,
        "a two-ad break"
    );
    screenshot(&page, "explain").await;

    // Log out: the cookie is gone, and the pages are closed again.
    page.find_element("form.logout button").await.unwrap().click().await.unwrap();
    until(&page, "location.pathname === '/console/login' && document.readyState === 'complete'").await;
    open(&page, &format!("{base}/console/campaigns")).await;
    let html = page.content().await.unwrap();
    assert!(html.contains("name=\"token\"") && !html.contains("hifi"), "logged out: {html}");

    browser.close().await.unwrap();
    let _ = browser.wait().await;
    cdp.abort();
    let _ = std::fs::remove_dir_all(&profile);
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("interlude-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
