//! End-to-end tests of the foundation through the generated clients: reflection, health,
//! the first decision path, and error mapping.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::*;
use interlude::grpc::pb;
use tonic::Code;
use tonic_types::StatusExt as _;

#[tokio::test]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    let server = start_server().await;
    let expected = [
        "grpc.health.v1.Health",
        "interlude.v1.AdDecisionService",
        "interlude.v1.CampaignService",
        "interlude.v1.ListenerService",
    ];

    use tonic_reflection::pb::v1 as r1;
    let mut client = r1::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let request = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        client.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(names.iter().any(|n| n == name), "v1 lists {name}: {names:?}");
    }

    use tonic_reflection::pb::v1alpha as ra;
    let mut client = ra::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let request = ra::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(ra::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        client.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(ra::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(names.iter().any(|n| n == name), "v1alpha lists {name}: {names:?}");
    }
    server.stop().await;
}

/// The fields an UpsertCampaign of `campaign` is refused for (INVALID_ARGUMENT, in order).
async fn refused_fields(server: &TestServer, campaign: pb::Campaign) -> Vec<String> {
    let status = server
        .campaigns()
        .upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(campaign) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    status.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect()
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let server = start_server().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    for service in
        ["", "interlude.v1.AdDecisionService", "interlude.v1.CampaignService", "interlude.v1.ListenerService"]
    {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn classical_listener_gets_the_classical_ad_not_the_pricier_pop_ad() {
    let server = start_server().await;
    server
        .upsert([
            genre_campaign("pop-tour", "popstar", 50, &["pop"]),
            genre_campaign("opera-season", "opera-house", 10, &["classical", "opera"]),
        ])
        .await;
    server.listener("clara", |_| {}).await;
    server.plays("clara", "", &[("classical", 40), ("opera", 20)]).await;
    server.listener("max", |_| {}).await;
    server.plays("max", "", &[("pop", 50)]).await;

    let clara = server.decide(break_for("clara")).await;
    assert_eq!(served(&clara), vec!["opera-season"]);
    assert_eq!(clara.fill(), pb::Fill::Paid);
    assert_eq!(clara.reason(), pb::DecisionReason::Served);
    let ad = &clara.ads[0];
    assert_eq!(ad.price_micros, 10_000, "a thousandth of the CPM");
    assert!(ad.relevance_score > 0.5 && ad.relevance_score <= 1.0, "{}", ad.relevance_score);
    assert!(!ad.impression_token.is_empty());
    assert_eq!(ad.audio_url, "https://cdn.example/opera-season.mp3");

    let max = server.decide(break_for("max")).await;
    assert_eq!(served(&max), vec!["pop-tour"]);
    server.stop().await;
}

#[tokio::test]
async fn no_relevant_paid_ad_falls_back_to_the_house_ad() {
    let server = start_server().await;
    server.upsert([genre_campaign("metal-merch", "iron", 20, &["metal"]), house_ad("house-premium")]).await;
    server.listener("nina", |_| {}).await;
    server.plays("nina", "", &[("jazz", 30)]).await;

    let response = server.decide(break_for("nina")).await;
    assert_eq!(served(&response), vec!["house-premium"]);
    assert_eq!(response.fill(), pb::Fill::House);
    assert_eq!(response.reason(), pb::DecisionReason::NoCandidates);
    assert_eq!(response.ads[0].price_micros, 0);
    assert_eq!(response.ads[0].tier(), pb::PriorityTier::House);
    server.stop().await;
}

#[tokio::test]
async fn without_a_house_ad_the_break_is_empty_with_its_reason() {
    let server = start_server().await;
    server.upsert([genre_campaign("metal-merch", "iron", 20, &["metal"])]).await;
    let response = server.decide(break_for("someone-new")).await;
    assert!(response.ads.is_empty());
    assert_eq!(response.fill(), pb::Fill::Empty);
    assert_eq!(response.reason(), pb::DecisionReason::NoCandidates, "nothing targets an unknown listener");
    server.stop().await;
}

#[tokio::test]
async fn unknown_and_anonymous_listeners_are_decided_on_context() {
    let server = start_server().await;
    let mut contextual = campaign("fizz", "fizz-co", 5);
    contextual.targeting = Some(pb::Targeting { track_genres: vec!["pop".into()], ..Default::default() });
    // Real fans only: an unknown listener has no history to show.
    let mut needs_profile = genre_campaign("needs-profile", "other", 30, &["pop"]);
    needs_profile.targeting.as_mut().unwrap().affinity_from_history_only = true;
    server.upsert([contextual, needs_profile]).await;

    for listener in ["never-seen-before", ""] {
        let mut request = break_for(listener);
        request.context =
            Some(pb::PlaybackContext { track_genres: vec!["pop".into()], ..Default::default() });
        let response = server.decide(request).await;
        assert_eq!(served(&response), vec!["fizz"], "listener {listener:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_naming_each_field() {
    let server = start_server().await;
    let mut request = break_for("has space");
    request.break_constraints = Some(pb::BreakConstraints { max_ads: 0, max_duration: Some(secs(60)) });
    let status = server.decisions().decide(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad_request = status.get_details_bad_request().expect("google.rpc.BadRequest details");
    let fields: Vec<&str> = bad_request.field_violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, vec!["listener_id", "break_constraints.max_ads"]);

    let mut missing = break_for("ok");
    missing.break_constraints = None;
    let status = server.decisions().decide(missing).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("break_constraints"), "{}", status.message());

    let mut bad = genre_campaign("bad", "adv", 10, &["Not-A-Slug"]);
    bad.creatives.clear();
    let fields = refused_fields(&server, bad).await;
    assert_eq!(fields, vec!["campaign.targeting.affinity_genres[0]", "campaign.creatives"]);
    let status = server
        .campaigns()
        .get_campaign(pb::GetCampaignRequest { campaign_id: "bad".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "a rejected upsert stores nothing");

    // Nor does it teach the server a genre: a valid slug in a refused campaign is not added.
    let mut refused = genre_campaign("refused", "adv", 10, &["zydeco"]);
    refused.bid_cpm_micros = -1;
    let status = server
        .campaigns()
        .upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(refused) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(server.state.vocabulary.lookup("zydeco"), None, "the refused campaign's genre was not added");
    server.upsert([genre_campaign("accepted", "adv", 10, &["zydeco"])]).await;
    assert!(server.state.vocabulary.lookup("zydeco").is_some());
    server.stop().await;
}

#[tokio::test]
async fn the_demo_catalog_serves_relevant_ads_out_of_the_box() {
    let server = start_server_with(interlude::config::Config {
        data_dir: None,
        ..interlude::config::Config::default()
    })
    .await;
    let mut request = break_for("listener-opera");
    request.context = Some(pb::PlaybackContext {
        track_genres: vec!["opera".into()],
        location: Some(pb::GeoLocation { country: "DE".into(), region: "DE-BE".into(), metro: "BER".into() }),
        ..Default::default()
    });
    request.break_constraints = Some(pb::BreakConstraints { max_ads: 2, max_duration: Some(secs(60)) });
    let response = server.decide(request.clone()).await;
    assert_eq!(response.fill(), pb::Fill::Paid);
    assert!(!served(&response).contains(&"popstar-world-tour"), "{:?}", served(&response));

    // The same listener by e-mail alias.
    request.listener_id = "email-sha256:5f2b9c0e".into();
    let by_alias = server.decide(request).await;
    assert_eq!(by_alias.fill(), pb::Fill::Paid);
    server.stop().await;
}

#[tokio::test]
async fn in_the_demo_new_and_non_consenting_listeners_hear_the_genre_playing() {
    let server = start_server_with(interlude::config::Config {
        data_dir: None,
        ..interlude::config::Config::default()
    })
    .await;
    let list = pb::ListCampaignsRequest { page_size: 500, ..Default::default() };
    let campaigns = server.campaigns().list_campaigns(list).await.unwrap().into_inner().campaigns;
    let targets = |id: &str, genre: &str| {
        let c = campaigns.iter().find(|c| c.campaign_id == id).expect("demo campaign");
        let t = c.targeting.as_ref().expect("targeting");
        t.affinity_genres.iter().chain(&t.track_genres).any(|g| g == genre)
    };
    let request = |listener: &str, genre: &str, consent: pb::ConsentState| {
        let mut request = break_for(listener);
        request.context = Some(pb::PlaybackContext {
            track_genres: vec![genre.into()],
            personalized_ads: consent as i32,
            ..Default::default()
        });
        request.break_constraints = Some(pb::BreakConstraints { max_ads: 2, max_duration: Some(secs(60)) });
        request
    };
    // The five requests: a never-seen listener granting consent, one genre each.
    for genre in ["jazz", "classical", "hip-hop", "rock", "opera"] {
        let listener = format!("never-seen-{genre}");
        let response = server.decide(request(&listener, genre, pb::ConsentState::Granted)).await;
        assert_eq!(response.fill(), pb::Fill::Paid, "{genre}");
        for id in served(&response) {
            assert!(targets(id, genre), "{id} does not target {genre}");
        }
    }
    // Rock for the listener who declined personalised ads: chosen by the track, not the profile.
    let response = server.decide(request("listener-no-consent", "rock", pb::ConsentState::Unspecified)).await;
    assert_eq!(response.fill(), pb::Fill::Paid);
    assert!(served(&response).iter().all(|id| targets(id, "rock")), "{:?}", served(&response));

    // The README's example, with its explain line.
    let mut readme = request("first-session-listener", "jazz", pb::ConsentState::Granted);
    if let Some(context) = readme.context.as_mut() {
        context.recent_track_genres = vec!["jazz".into(), "soul".into()];
    }
    readme.explain = true;
    let response = server.decide(readme).await;
    assert_eq!(response.fill(), pb::Fill::Paid);
    let served_entry = response.trace.iter().find(|t| t.served);
    assert_eq!(
        served_entry.map(|t| t.detail.as_str()),
        Some("served: affinity from the context: the track playing (no usable history)")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_household_member_is_decided_on_their_own_age_and_never_hears_alcohol_ads() {
    let server = start_server_with(interlude::config::Config {
        data_dir: None,
        ..interlude::config::Config::default()
    })
    .await;
    let explained = |member: &str| {
        let mut request = break_for("family-account");
        request.member_id = member.into();
        request.explain = true;
        request
    };
    let beer_rule = |response: &pb::DecideResponse| {
        response.trace.iter().find(|t| t.campaign_id == "hoppy-craft-beer").map(|t| t.rejected_by())
    };
    // The account holder (45-54, rock and indie) may hear the beer ad; the demo's teenage kid
    // never does, whatever they play.
    let parent = server.decide(explained("")).await;
    assert_ne!(beer_rule(&parent), Some(pb::Rule::Age), "{:?}", beer_rule(&parent));
    // The kid turns into a rock fan: the beer ad's genre fits, their age does not.
    server.plays("family-account", "kid", &[("rock", 300)]).await;
    assert_eq!(beer_rule(&server.decide(explained("kid")).await), Some(pb::Rule::Age));

    // Members' own ages are set through UpsertListener and read back.
    server
        .listener("family-account", |l| {
            l.personalized_ads = pb::ConsentState::Unspecified as i32;
            l.age_bracket = pb::AgeBracket::AgeBracket4554 as i32;
            l.members = vec![pb::MemberProfile {
                member_id: "grandpa".into(),
                age_bracket: pb::AgeBracket::AgeBracket65Plus as i32,
                ..Default::default()
            }];
        })
        .await;
    let stored = server
        .listeners()
        .get_listener(pb::GetListenerRequest { listener_id: "family-account".into() })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    let ages: Vec<(&str, pb::AgeBracket)> =
        stored.members.iter().map(|m| (m.member_id.as_str(), m.age_bracket())).collect();
    assert!(ages.contains(&("grandpa", pb::AgeBracket::AgeBracket65Plus)), "{ages:?}");
    assert!(ages.contains(&("kid", pb::AgeBracket::AgeBracket1317)), "the kid is kept: {ages:?}");
    server.stop().await;
}

#[tokio::test]
async fn even_pacing_of_a_lifetime_budget_without_a_flight_end_is_refused() {
    let server = start_server().await;
    let mut c = genre_campaign("unending", "adv", 10, &["jazz"]);
    c.budget = Some(pb::Budget {
        lifetime_budget_micros: 1_000_000,
        pacing: pb::PacingMode::Even as i32,
        ..Default::default()
    });
    c.flight_start = Some(ts(interlude::grpc::now().0));
    let fields = refused_fields(&server, c.clone()).await;
    assert_eq!(fields, vec!["campaign.budget.pacing"]);
    // With an end it is paced along the flight; a daily budget alone paces by the day.
    c.flight_end = Some(ts(interlude::grpc::now().0 + 7 * 86_400_000));
    server.upsert([c.clone()]).await;
    c.campaign_id = "daily".into();
    c.flight_start = None;
    c.flight_end = None;
    c.budget = Some(pb::Budget {
        daily_budget_micros: 1_000_000,
        pacing: pb::PacingMode::Even as i32,
        ..Default::default()
    });
    server.upsert([c]).await;
    server.stop().await;
}

#[tokio::test]
async fn a_campaign_time_zone_is_validated_and_kept() {
    let server = start_server().await;
    let mut c = genre_campaign("berlin-days", "adv", 10, &["jazz"]);
    c.time_zone = "Mars/Olympus_Mons".into();
    let fields = refused_fields(&server, c.clone()).await;
    assert_eq!(fields, vec!["campaign.time_zone"]);
    c.time_zone = "Europe/Berlin".into();
    server.upsert([c]).await;
    let stored = server
        .campaigns()
        .get_campaign(pb::GetCampaignRequest { campaign_id: "berlin-days".into() })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(stored.time_zone, "Europe/Berlin");
    server.stop().await;
}
