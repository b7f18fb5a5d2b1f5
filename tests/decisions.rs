//! Relevance, repetition control and explain, end to end: each rule of the decision issue as a
//! scenario driven through the real server (admin RPCs to set up, Decide + RecordEvents to act).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::HashMap;

use common::*;
use interlude::grpc::pb;
use tonic::Code;
use tonic_types::StatusExt as _;

fn capped(mut c: pb::Campaign, max: u32, window_secs: Option<i64>) -> pb::Campaign {
    c.frequency_caps.push(pb::FrequencyCap {
        scope: pb::CapScope::Campaign as i32,
        max_impressions: max,
        window: window_secs.map(secs),
    });
    c
}

#[tokio::test]
async fn caps_hold_across_a_hundred_decisions_with_impressions_recorded() {
    let server = start_server_with(interlude::config::Config {
        demo: false,
        policy: interlude::decision::Policy {
            max_ads_per_hour: 1000,
            category_separation_ms: 0,
            relevance_floor: 0.35,
            ..interlude::decision::Policy::default()
        },
        data_dir: None,
        ..interlude::config::Config::default()
    })
    .await;
    server
        .upsert([
            capped(genre_campaign("jazz-a", "a", 30, &["jazz"]), 3, Some(3600)),
            capped(genre_campaign("jazz-b", "b", 20, &["jazz"]), 5, None),
            capped(genre_campaign("jazz-c", "c", 10, &["jazz"]), 2, Some(86_400)),
            house_ad("house"),
        ])
        .await;
    server.listener("nina", |_| {}).await;
    server.plays("nina", "", &[("jazz", 30)]).await;

    let mut served_count: HashMap<String, u32> = HashMap::new();
    for i in 0..100 {
        let response = server.decide(break_for("nina")).await;
        for ad in &response.ads {
            *served_count.entry(ad.campaign_id.clone()).or_default() += 1;
        }
        server.record_impressions(&response, &format!("d{i}")).await;
    }
    assert_eq!(served_count.get("jazz-a"), Some(&3));
    assert_eq!(served_count.get("jazz-b"), Some(&5));
    assert_eq!(served_count.get("jazz-c"), Some(&2));
    assert_eq!(served_count.get("house"), Some(&90), "the house ad fills once every paid ad is capped");

    let last = server.decide(break_for("nina")).await;
    assert_eq!(last.fill(), pb::Fill::House);
    assert_eq!(last.reason(), pb::DecisionReason::FrequencyCapped);

    let stats = server
        .campaigns()
        .get_delivery_stats(pb::GetDeliveryStatsRequest { campaign_id: "jazz-a".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.impressions, 3);
    assert_eq!(stats.spend_micros, 3 * 30_000);
    server.stop().await;
}

#[tokio::test]
async fn a_break_never_repeats_an_advertiser_or_a_category() {
    // Twenty breaks for one listener: no ad load or separation across them, only within each.
    let server = start_server_with(interlude::config::Config {
        demo: false,
        policy: interlude::decision::Policy {
            max_ads_per_hour: 1000,
            category_separation_ms: 0,
            ..interlude::decision::Policy::default()
        },
        data_dir: None,
        ..interlude::config::Config::default()
    })
    .await;
    let mut campaigns = Vec::new();
    for (i, advertiser) in ["a", "a", "a", "b", "b", "c", "d"].iter().enumerate() {
        let mut c = genre_campaign(&format!("camp-{i}"), advertiser, 10 + i as i64, &["rock"]);
        // c and d share a category.
        if matches!(*advertiser, "c" | "d") {
            c.iab_categories = vec!["653".into()];
        }
        campaigns.push(c);
    }
    server.upsert(campaigns).await;
    server.listener("rocker", |_| {}).await;
    server.plays("rocker", "", &[("rock", 20)]).await;

    let mut request = break_for("rocker");
    request.break_constraints = Some(pb::BreakConstraints { max_ads: 5, max_duration: Some(secs(300)) });
    for _ in 0..20 {
        let response = server.decide(request.clone()).await;
        assert_eq!(response.ads.len(), 3, "a, b and one of c/d: {:?}", served(&response));
        let mut advertisers: Vec<&str> = response.ads.iter().map(|a| a.advertiser_id.as_str()).collect();
        advertisers.sort();
        advertisers.dedup();
        assert_eq!(advertisers.len(), response.ads.len(), "{:?}", served(&response));
        let travel = response.ads.iter().filter(|a| a.iab_categories.contains(&"653".to_string())).count();
        assert_eq!(travel, 1);
        let total: i64 = response.ads.iter().map(|a| a.duration.unwrap().seconds).sum();
        assert!(total <= 300);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_stale_life_stage_signal_no_longer_qualifies() {
    let server = start_server().await;
    let mut uniforms = campaign("uniforms", "tinysteps", 9);
    uniforms.targeting = Some(pb::Targeting {
        signals: vec![pb::SignalRequirement {
            signal: "parent-young-children".into(),
            max_age: Some(secs(3 * 365 * 86_400)),
        }],
        ..Default::default()
    });
    server.upsert([uniforms]).await;
    let now = interlude::grpc::now().0;
    let years_ago = |y: i64| now - y * 365 * 86_400_000;
    server
        .listener("grown-up-kids", |l| {
            l.signals = vec![pb::Signal {
                signal: "parent-young-children".into(),
                asserted_at: Some(ts(years_ago(6))),
                valid_until: None,
            }]
        })
        .await;
    server
        .listener("toddler-parent", |l| {
            l.signals = vec![pb::Signal {
                signal: "parent-young-children".into(),
                asserted_at: Some(ts(years_ago(1))),
                valid_until: None,
            }]
        })
        .await;

    let mut request = break_for("grown-up-kids");
    request.explain = true;
    let stale = server.decide(request).await;
    assert!(stale.ads.is_empty());
    assert_eq!(stale.trace[0].rejected_by(), pb::Rule::Signal);
    assert_eq!(served(&server.decide(break_for("toddler-parent")).await), vec!["uniforms"]);
    server.stop().await;
}

#[tokio::test]
async fn a_life_stage_signal_lapses_by_itself_where_the_campaign_sets_no_bound() {
    let server = start_server().await;
    // "Parent of a school-age child", with no max_age: the kind's natural life applies.
    let mut uniforms = campaign("uniforms", "school-shop", 9);
    uniforms.targeting = Some(pb::Targeting {
        signals: vec![pb::SignalRequirement { signal: "parent-school-age-children".into(), max_age: None }],
        ..Default::default()
    });
    server.upsert([uniforms]).await;
    let now = interlude::grpc::now().0;
    let years_ago = |y: i64| now - y * 365 * 86_400_000;
    let signal = |years: i64, valid_until: Option<i64>| pb::Signal {
        signal: "parent-school-age-children".into(),
        asserted_at: Some(ts(years_ago(years))),
        valid_until: valid_until.map(ts),
    };
    server.listener("kids-left-home", |l| l.signals = vec![signal(15, None)]).await;
    server.listener("kids-at-school", |l| l.signals = vec![signal(2, None)]).await;
    // The caller's own end replaces the natural life.
    server.listener("said-until-last-year", |l| l.signals = vec![signal(2, Some(years_ago(1)))]).await;

    let mut request = break_for("kids-left-home");
    request.explain = true;
    let stale = server.decide(request).await;
    assert!(stale.ads.is_empty());
    assert_eq!(stale.trace[0].rejected_by(), pb::Rule::Signal);
    assert!(stale.trace[0].detail.contains("natural life"), "{}", stale.trace[0].detail);
    assert_eq!(served(&server.decide(break_for("kids-at-school")).await), vec!["uniforms"]);
    assert!(server.decide(break_for("said-until-last-year")).await.ads.is_empty());

    // An end before the assertion is refused, naming the field.
    let status = server
        .listeners()
        .upsert_listener(pb::UpsertListenerRequest {
            listener: Some(pb::Listener {
                listener_id: "backwards".into(),
                signals: vec![pb::Signal { valid_until: Some(ts(years_ago(3))), ..signal(2, None) }],
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let fields = status.get_details_bad_request().expect("details").field_violations;
    assert_eq!(fields[0].field, "listener.signals[0].valid_until");
    server.stop().await;
}

#[tokio::test]
async fn the_home_city_campaign_wins_over_another_citys() {
    let server = start_server().await;
    let from = |id: &str, metro: &str, cpm: i64| {
        let mut c = campaign(id, &format!("skyways-{metro}"), cpm);
        c.targeting = Some(pb::Targeting {
            geo: Some(pb::GeoTargeting {
                include: vec![pb::GeoLocation {
                    country: "DE".into(),
                    region: String::new(),
                    metro: metro.into(),
                }],
                exclude: Vec::new(),
                use_home_location: true,
            }),
            ..Default::default()
        });
        c
    };
    server.upsert([from("from-ber", "BER", 20), from("from-muc", "MUC", 30)]).await;
    server
        .listener("berliner", |l| {
            l.home =
                Some(pb::GeoLocation { country: "DE".into(), region: "DE-BE".into(), metro: "BER".into() })
        })
        .await;
    let mut request = break_for("berliner");
    // On a trip to Munich: the request's location says MUC, the listener's home says BER.
    request.context = Some(pb::PlaybackContext {
        location: Some(pb::GeoLocation { country: "DE".into(), region: "DE-BY".into(), metro: "MUC".into() }),
        ..Default::default()
    });
    assert_eq!(served(&server.decide(request).await), vec!["from-ber"]);
    server.stop().await;
}

#[tokio::test]
async fn a_declared_home_outranks_the_city_a_request_comes_from() {
    let server = start_server().await;
    let metro = |country: &str, region: &str, metro: &str| pb::GeoLocation {
        country: country.into(),
        region: region.into(),
        metro: metro.into(),
    };
    let flights = |id: &str, at: pb::GeoLocation, home: bool| {
        let mut c = campaign(id, id, 20);
        c.targeting = Some(pb::Targeting {
            geo: Some(pb::GeoTargeting { include: vec![at], exclude: Vec::new(), use_home_location: home }),
            ..Default::default()
        });
        c
    };
    // Same bid, same city-level fit: before, the two tied and the campaign id decided.
    server
        .upsert([
            flights("a-flights-from-chicago", metro("US", "US-IL", "CHI"), false),
            flights("b-flights-from-nyc", metro("US", "US-NY", "NYC"), true),
        ])
        .await;
    server.listener("new-yorker", |l| l.home = Some(metro("US", "US-NY", "NYC"))).await;
    let mut request = break_for("new-yorker");
    request.context =
        Some(pb::PlaybackContext { location: Some(metro("US", "US-IL", "CHI")), ..Default::default() });
    assert_eq!(served(&server.decide(request.clone()).await), vec!["b-flights-from-nyc"], "on a trip");
    // At home in Chicago, a Chicagoan gets the Chicago deal.
    server.listener("chicagoan", |l| l.home = Some(metro("US", "US-IL", "CHI"))).await;
    request.listener_id = "chicagoan".into();
    assert_eq!(served(&server.decide(request).await), vec!["a-flights-from-chicago"]);
    server.stop().await;
}

#[tokio::test]
async fn a_listener_without_consent_gets_contextual_or_house_ads_only() {
    let server = start_server().await;
    let mut contextual = campaign("soda", "fizz", 3);
    contextual.targeting = Some(pb::Targeting { track_genres: vec!["hip-hop".into()], ..Default::default() });
    // Real fans only: without consent, the track playing does not stand in for taste.
    let mut sneakers = genre_campaign("sneakers", "kicks", 40, &["hip-hop"]);
    sneakers.targeting.as_mut().unwrap().affinity_from_history_only = true;
    server.upsert([sneakers, contextual, house_ad("house")]).await;
    server.listener("private", |l| l.personalized_ads = pb::ConsentState::Denied as i32).await;
    server.plays("private", "", &[("hip-hop", 50)]).await;

    let mut request = break_for("private");
    request.context =
        Some(pb::PlaybackContext { track_genres: vec!["hip-hop".into()], ..Default::default() });
    assert_eq!(served(&server.decide(request.clone()).await), vec!["soda"]);

    request.context = None;
    let response = server.decide(request).await;
    assert_eq!(served(&response), vec!["house"]);
    assert_eq!(response.reason(), pb::DecisionReason::NoConsent);

    // Consent in the request does not override a stored denial.
    let mut granted = break_for("private");
    granted.context = Some(pb::PlaybackContext {
        personalized_ads: pb::ConsentState::Granted as i32,
        ..Default::default()
    });
    assert_eq!(served(&server.decide(granted).await), vec!["house"]);
    server.stop().await;
}

fn request_with_genre(listener: &str, genre: &str) -> pb::DecideRequest {
    let mut request = break_for(listener);
    request.context = Some(pb::PlaybackContext { track_genres: vec![genre.into()], ..Default::default() });
    request
}

#[tokio::test]
async fn a_never_seen_listener_who_grants_consent_hears_the_genre_playing() {
    let server = start_server().await;
    server.upsert([genre_campaign("jazz-label", "blue", 10, &["jazz"]), house_ad("house")]).await;
    let mut request = request_with_genre("brand-new-listener", "jazz");
    request.context.as_mut().unwrap().personalized_ads = pb::ConsentState::Granted as i32;
    let response = server.decide(request).await;
    assert_eq!(served(&response), vec!["jazz-label"]);
    assert_eq!(response.reason(), pb::DecisionReason::Served);
    server.stop().await;
}

#[tokio::test]
async fn explain_names_the_rule_that_stopped_each_campaign() {
    let server = start_server().await;
    let mut speaker_only = genre_campaign("speaker-only", "s", 50, &["jazz"]);
    speaker_only.targeting.as_mut().unwrap().devices = vec![pb::DeviceType::SmartSpeaker as i32];
    let mut picky = genre_campaign("picky", "p", 50, &["jazz"]);
    picky.relevance_floor = Some(0.99);
    server
        .upsert([
            genre_campaign("jazz", "j", 10, &["jazz"]),
            genre_campaign("pop", "x", 99, &["pop"]),
            speaker_only,
            picky,
            house_ad("house"),
        ])
        .await;
    server.listener("nina", |_| {}).await;
    server.plays("nina", "", &[("jazz", 10)]).await;
    let mut request = break_for("nina");
    request.explain = true;
    request.context =
        Some(pb::PlaybackContext { device: pb::DeviceType::Mobile as i32, ..Default::default() });
    let response = server.decide(request.clone()).await;
    assert_eq!(served(&response), vec!["jazz"]);
    let rule = |id: &str| response.trace.iter().find(|t| t.campaign_id == id).unwrap().rejected_by();
    assert_eq!(rule("jazz"), pb::Rule::Unspecified);
    assert!(response.trace.iter().find(|t| t.campaign_id == "jazz").unwrap().served);
    assert_eq!(rule("pop"), pb::Rule::AffinityGenre);
    assert_eq!(rule("speaker-only"), pb::Rule::Device);
    assert_eq!(rule("picky"), pb::Rule::RelevanceFloor);
    assert_eq!(rule("house"), pb::Rule::Outranked);

    request.explain = false;
    let plain = server.decide(request).await;
    assert!(plain.trace.is_empty());
    assert_eq!(served(&plain), vec!["jazz"]);
    server.stop().await;
}

#[tokio::test]
async fn not_for_me_suppresses_the_advertiser_for_that_listener_only() {
    let server = start_server().await;
    server
        .upsert([
            genre_campaign("loud", "loudco", 50, &["metal"]),
            genre_campaign("quiet", "quietco", 10, &["metal"]),
        ])
        .await;
    for l in ["annoyed", "fine"] {
        server.listener(l, |_| {}).await;
        server.plays(l, "", &[("metal", 20)]).await;
    }
    let first = server.decide(break_for("annoyed")).await;
    assert_eq!(served(&first), vec!["loud"]);
    let event = pb::AdEvent {
        event_id: "nfm-1".into(),
        r#type: pb::EventType::NotForMe as i32,
        impression_token: first.ads[0].impression_token.clone(),
        occurred_at: None,
        ..Default::default()
    };
    server.decisions().record_events(pb::RecordEventsRequest { events: vec![event] }).await.unwrap();
    assert_eq!(served(&server.decide(break_for("annoyed")).await), vec!["quiet"]);
    assert_eq!(served(&server.decide(break_for("fine")).await), vec!["loud"]);
    server.stop().await;
}

#[tokio::test]
async fn events_are_idempotent_and_forged_tokens_change_nothing() {
    let server = start_server().await;
    server.upsert([genre_campaign("jazz", "j", 10, &["jazz"])]).await;
    server.listener("nina", |_| {}).await;
    server.plays("nina", "", &[("jazz", 10)]).await;
    let response = server.decide(break_for("nina")).await;
    let token = response.ads[0].impression_token.clone();
    let event = |id: &str, token: &str| pb::AdEvent {
        event_id: id.into(),
        r#type: pb::EventType::Impression as i32,
        impression_token: token.into(),
        occurred_at: None,
        ..Default::default()
    };
    let mut decisions = server.decisions();
    let first =
        decisions.record_events(pb::RecordEventsRequest { events: vec![event("e1", &token)] }).await.unwrap();
    assert_eq!((first.get_ref().accepted, first.get_ref().duplicates), (1, 0));
    let retry =
        decisions.record_events(pb::RecordEventsRequest { events: vec![event("e1", &token)] }).await.unwrap();
    assert_eq!((retry.get_ref().accepted, retry.get_ref().duplicates), (0, 1));

    // Flip one character of the signature: the forged event is rejected on its own and counts
    // nothing (its neighbour, a replay of the token under a new id, is already counted).
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let mixed = decisions
        .record_events(pb::RecordEventsRequest { events: vec![event("e2", &token), event("e3", &forged)] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        mixed.outcomes().collect::<Vec<_>>(),
        vec![pb::EventOutcome::AlreadyCounted, pb::EventOutcome::Rejected]
    );
    assert_eq!(mixed.rejections[0].field, "events[1].impression_token");
    // Alone, the forged event is refused with the field named.
    let status = decisions
        .record_events(pb::RecordEventsRequest { events: vec![event("e4", &forged)] })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "events[0].impression_token");

    let stats = server
        .campaigns()
        .get_delivery_stats(pb::GetDeliveryStatsRequest { campaign_id: "jazz".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.impressions, 1, "the retry, the replay and the forgery count nothing");
    server.stop().await;
}

/// A $10 CPM campaign for whoever is listening to pop now (contextual: relevant to anyone).
fn pop_campaign(id: &str) -> pb::Campaign {
    let mut c = campaign(id, "a", 10);
    c.targeting = Some(pb::Targeting { track_genres: vec!["pop".into()], ..Default::default() });
    c
}

/// A break for `listener` while a pop track plays.
fn pop_break(listener: &str) -> pb::DecideRequest {
    let mut request = break_for(listener);
    request.context = Some(pb::PlaybackContext { track_genres: vec!["pop".into()], ..Default::default() });
    request
}

#[tokio::test]
async fn a_budget_is_never_exceeded_even_by_ads_decided_but_not_yet_recorded() {
    let server = start_server().await;
    let mut budgeted = pop_campaign("budgeted");
    // $10 CPM = 10,000 micros an impression: room for exactly five.
    budgeted.budget = Some(pb::Budget { lifetime_budget_micros: 50_000, ..Default::default() });
    server.upsert([budgeted, house_ad("house")]).await;

    // Twenty breaks are decided before any impression comes back.
    let mut decided = Vec::new();
    for i in 0..20 {
        decided.push(server.decide(pop_break(&format!("listener-{i}"))).await);
    }
    let paid: Vec<&pb::DecideResponse> = decided.iter().filter(|r| served(r) == ["budgeted"]).collect();
    assert_eq!(paid.len(), 5, "only what the budget can pay for is decided");
    let last = decided.last().unwrap();
    assert_eq!((last.fill(), last.reason()), (pb::Fill::House, pb::DecisionReason::BudgetExhausted));

    for (i, response) in decided.iter().enumerate() {
        server.record_impressions(response, &format!("b{i}")).await;
    }
    let stats = server
        .campaigns()
        .get_delivery_stats(pb::GetDeliveryStatsRequest { campaign_id: "budgeted".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.impressions, stats.spend_micros), (5, 50_000), "spent to the micro, not beyond");
    assert_eq!(stats.pacing_status(), pb::PacingStatus::BudgetExhausted);
    server.stop().await;
}

#[tokio::test]
async fn an_even_paced_campaign_is_held_back_when_ahead_of_its_curve() {
    let server = start_server().await;
    let now = interlude::grpc::now().0;
    let mut paced = pop_campaign("paced");
    // A ten-day flight that began one day ago: the curve allows a tenth of the budget by now.
    paced.flight_start = Some(ts(now - 86_400_000));
    paced.flight_end = Some(ts(now + 9 * 86_400_000));
    paced.budget = Some(pb::Budget {
        lifetime_budget_micros: 100 * 10_000,
        pacing: pb::PacingMode::Even as i32,
        ..Default::default()
    });
    server.upsert([paced, house_ad("house")]).await;
    let mut explain = pop_break("someone");
    explain.explain = true;
    let mut paid = 0;
    for i in 0..30 {
        let response = server.decide(pop_break(&format!("l{i}"))).await;
        server.record_impressions(&response, &format!("p{i}")).await;
        paid += usize::from(served(&response) == ["paced"]);
    }
    assert!((10..=11).contains(&paid), "a tenth of 100 ads, give or take one: {paid}");
    let held = server.decide(explain).await;
    let trace = held.trace.iter().find(|t| t.campaign_id == "paced").unwrap();
    assert_eq!(trace.rejected_by(), pb::Rule::Pacing, "{trace:?}");
    let stats = server
        .campaigns()
        .get_delivery_stats(pb::GetDeliveryStatsRequest { campaign_id: "paced".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.pacing_status(), pb::PacingStatus::OnTrack);
    server.stop().await;
}

#[tokio::test]
async fn ad_load_and_caps_count_breaks_fetched_ahead_of_playing_them() {
    let server = start_server_with(interlude::config::Config {
        demo: false,
        policy: interlude::decision::Policy {
            max_ads_per_hour: 2,
            category_separation_ms: 0,
            ..interlude::decision::Policy::default()
        },
        data_dir: None,
        ..interlude::config::Config::default()
    })
    .await;
    let campaigns: Vec<pb::Campaign> =
        ["a", "b", "c", "d", "e"].iter().map(|id| genre_campaign(id, id, 20, &["opera"])).collect();
    server.upsert(campaigns).await;
    server.plays("prefetcher", "", &[("opera", 40)]).await;
    server.listener("prefetcher", |_| {}).await;
    let mut request = request_with_genre("prefetcher", "opera");
    request.break_constraints = Some(pb::BreakConstraints { max_ads: 5, max_duration: Some(secs(300)) });

    // Two ads an hour: a five-ad break gets two.
    let first = server.decide(request.clone()).await;
    assert_eq!(served(&first).len(), 2, "{:?}", served(&first));
    // The player fetches the next break before playing the first: nothing is left this hour.
    let ahead = server.decide(request.clone()).await;
    assert!(ahead.ads.is_empty());
    assert_eq!(ahead.reason(), pb::DecisionReason::AdLoadLimit);
    // Playing the first break counts its ads once, not twice.
    server.record_impressions(&first, "played").await;
    let after = server.decide(request).await;
    assert_eq!(after.reason(), pb::DecisionReason::AdLoadLimit);

    // A campaign capped at one an hour is not decided twice for breaks fetched ahead.
    let capped_server = start_server().await;
    capped_server.upsert([capped(genre_campaign("once", "o", 50, &["opera"]), 1, Some(3600))]).await;
    capped_server.upsert([genre_campaign("other", "p", 10, &["opera"])]).await;
    capped_server.plays("prefetcher", "", &[("opera", 40)]).await;
    let request = request_with_genre("prefetcher", "opera");
    assert_eq!(served(&capped_server.decide(request.clone()).await), vec!["once"]);
    assert_eq!(served(&capped_server.decide(request).await), vec!["other"]);
    server.stop().await;
    capped_server.stop().await;
}
