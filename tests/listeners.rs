//! Listener profiles end to end: households, identity continuity, merging, erasure, and play
//! ingestion that accepts the good events and reports the bad ones.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::*;
use interlude::grpc::pb;
use tonic::Code;

fn member_break(listener: &str, member: &str) -> pb::DecideRequest {
    let mut request = break_for(listener);
    request.member_id = member.into();
    request
}

#[tokio::test]
async fn one_family_members_plays_do_not_change_anothers_decisions() {
    let server = start_server().await;
    server
        .upsert([
            genre_campaign("kids-songs", "singalong", 10, &["kids"]),
            genre_campaign("guitars", "riff", 10, &["rock"]),
        ])
        .await;
    server.listener("family", |_| {}).await;
    server.plays("family", "", &[("rock", 30)]).await;
    assert_eq!(served(&server.decide(member_break("family", "")).await), vec!["guitars"]);

    // The child listens to a lot of children's music on the same account.
    server.plays("family", "kid", &[("kids", 200)]).await;
    assert_eq!(served(&server.decide(member_break("family", "kid")).await), vec!["kids-songs"]);
    assert_eq!(
        served(&server.decide(member_break("family", "")).await),
        vec!["guitars"],
        "the parent's profile is unchanged"
    );

    let listener = server
        .listeners()
        .get_listener(pb::GetListenerRequest { listener_id: "family".into() })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    let members: Vec<&str> = listener.members.iter().map(|m| m.member_id.as_str()).collect();
    assert_eq!(members, vec!["", "kid"]);
    assert_eq!(listener.members[1].genres[0].genre, "kids");
    assert_eq!(listener.members[1].genres[0].lifetime_plays, 200);
    server.stop().await;
}

#[tokio::test]
async fn each_member_has_its_own_frequency_caps() {
    let server = start_server().await;
    let mut capped = genre_campaign("once", "adv", 10, &["jazz"]);
    capped.frequency_caps =
        vec![pb::FrequencyCap { scope: pb::CapScope::Campaign as i32, max_impressions: 1, window: None }];
    server.upsert([capped]).await;
    server.listener("home", |_| {}).await;
    server.plays("home", "a", &[("jazz", 10)]).await;
    server.plays("home", "b", &[("jazz", 10)]).await;
    let first = server.decide(member_break("home", "a")).await;
    server.record_impressions(&first, "a").await;
    assert!(served(&server.decide(member_break("home", "a")).await).is_empty());
    assert_eq!(served(&server.decide(member_break("home", "b")).await), vec!["once"]);
    server.stop().await;
}

#[tokio::test]
async fn a_new_email_alias_sees_the_old_history_and_caps() {
    let server = start_server().await;
    let mut capped = genre_campaign("once", "adv", 10, &["opera"]);
    capped.frequency_caps =
        vec![pb::FrequencyCap { scope: pb::CapScope::Campaign as i32, max_impressions: 1, window: None }];
    server.upsert([capped, genre_campaign("other", "adv2", 5, &["opera"])]).await;
    server.listener("email-sha256:old", |_| {}).await;
    server.plays("email-sha256:old", "", &[("opera", 20)]).await;
    let first = server.decide(break_for("email-sha256:old")).await;
    assert_eq!(served(&first), vec!["once"]);
    server.record_impressions(&first, "old").await;

    let linked = server
        .listeners()
        .link_identity(pb::LinkIdentityRequest {
            listener_id: "email-sha256:old".into(),
            alias: "email-sha256:new".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    assert_eq!(linked.aliases, vec!["email-sha256:new".to_string()]);
    // By the new address: the same taste (opera ads) and the same caps ("once" was heard).
    assert_eq!(served(&server.decide(break_for("email-sha256:new")).await), vec!["other"]);

    // An alias cannot be taken over by another listener.
    server.listener("someone-else", |_| {}).await;
    let status = server
        .listeners()
        .link_identity(pb::LinkIdentityRequest {
            listener_id: "someone-else".into(),
            alias: "email-sha256:new".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    server.stop().await;
}

#[tokio::test]
async fn a_merged_profile_keeps_both_histories() {
    let server = start_server().await;
    let mut capped = genre_campaign("jazz-once", "adv", 10, &["jazz"]);
    capped.frequency_caps =
        vec![pb::FrequencyCap { scope: pb::CapScope::Campaign as i32, max_impressions: 1, window: None }];
    server.upsert([capped, genre_campaign("jazz-more", "adv2", 5, &["jazz"])]).await;
    server.listener("phone", |_| {}).await;
    server.plays("phone", "", &[("jazz", 30)]).await;
    server.listener("laptop", |_| {}).await;
    server.plays("laptop", "", &[("classical", 20)]).await;
    let heard = server.decide(break_for("laptop")).await;
    assert!(heard.ads.is_empty(), "laptop has no jazz yet");
    let heard = server.decide(break_for("phone")).await;
    server.record_impressions(&heard, "phone").await;

    let merged = server
        .listeners()
        .merge_listeners(pb::MergeListenersRequest {
            into_listener_id: "laptop".into(),
            from_listener_id: "phone".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    let genres: Vec<&str> = merged.members[0].genres.iter().map(|g| g.genre.as_str()).collect();
    assert!(genres.contains(&"jazz") && genres.contains(&"classical"), "{genres:?}");
    assert_eq!(merged.aliases, vec!["phone".to_string()]);
    // The merged listener has phone's taste and phone's caps, by either id.
    assert_eq!(served(&server.decide(break_for("laptop")).await), vec!["jazz-more"]);
    assert_eq!(served(&server.decide(break_for("phone")).await), vec!["jazz-more"]);

    let status = server
        .listeners()
        .merge_listeners(pb::MergeListenersRequest {
            into_listener_id: "laptop".into(),
            from_listener_id: "phone".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "phone is laptop now");
    server.stop().await;
}

#[tokio::test]
async fn a_forgotten_listener_is_treated_as_unknown() {
    let server = start_server().await;
    server.upsert([genre_campaign("jazz", "adv", 10, &["jazz"])]).await;
    server.listener("leaving", |_| {}).await;
    server.plays("leaving", "", &[("jazz", 30)]).await;
    server
        .listeners()
        .link_identity(pb::LinkIdentityRequest { listener_id: "leaving".into(), alias: "device:123".into() })
        .await
        .unwrap();
    assert_eq!(served(&server.decide(break_for("leaving")).await), vec!["jazz"]);

    server
        .listeners()
        .forget_listener(pb::ForgetListenerRequest { listener_id: "device:123".into() })
        .await
        .unwrap();
    for id in ["leaving", "device:123"] {
        let status = server
            .listeners()
            .get_listener(pb::GetListenerRequest { listener_id: id.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{id}");
        let response = server.decide(break_for(id)).await;
        assert!(response.ads.is_empty(), "no profile data left for {id}");
    }
    let status = server
        .listeners()
        .forget_listener(pb::ForgetListenerRequest { listener_id: "leaving".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn a_play_stream_accepts_good_events_and_reports_bad_ones() {
    let server = start_server().await;
    let now = interlude::grpc::now().0;
    let good = |i: i64| pb::PlayEvent {
        listener_id: "streamer".into(),
        track_id: format!("t{i}"),
        genres: vec!["jazz".into()],
        played_at: Some(ts(now - i * 1000)),
        seconds_played: 200,
        ..Default::default()
    };
    let mut no_genre = good(3);
    no_genre.genres.clear();
    let mut bad_slug = good(4);
    bad_slug.genres = vec!["Jazz Fusion".into()];
    let mut future = good(5);
    future.played_at = Some(ts(now + 3_600_000));
    let mut no_listener = good(6);
    no_listener.listener_id.clear();
    let chunks = vec![
        pb::RecordPlaysRequest { plays: vec![good(1), good(2), no_genre, bad_slug] },
        pb::RecordPlaysRequest { plays: vec![future, good(7), no_listener] },
    ];
    let response = server.listeners().record_plays(tokio_stream::iter(chunks)).await.unwrap().into_inner();
    assert_eq!((response.accepted, response.rejected), (3, 4));
    let reported: Vec<(u64, &str)> =
        response.rejections.iter().map(|r| (r.index, r.field.as_str())).collect();
    assert_eq!(reported, vec![(2, "genres"), (3, "genres[0]"), (4, "played_at"), (6, "listener_id")]);

    let listener = server
        .listeners()
        .get_listener(pb::GetListenerRequest { listener_id: "streamer".into() })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    assert_eq!(listener.members[0].genres.len(), 1, "no genre of a rejected play was recorded");
    assert_eq!(listener.members[0].genres[0].lifetime_plays, 3);
    server.stop().await;
}

#[tokio::test]
async fn top_artists_follow_the_plays() {
    let server = start_server().await;
    let now = interlude::grpc::now().0;
    let play = |artist: &str, minutes_ago: i64| pb::PlayEvent {
        listener_id: "opera-fan".into(),
        member_id: "".into(),
        track_id: "t".into(),
        genres: vec!["opera".into()],
        artist: artist.into(),
        played_at: Some(ts(now - minutes_ago * 60_000)),
        seconds_played: 200,
        play_id: String::new(),
    };
    let mut plays: Vec<pb::PlayEvent> = (0..12).map(|i| play("Maria Callas", i)).collect();
    plays.extend((0..5).map(|i| play("Luciano Pavarotti", i)));
    plays.push(play("  ", 1)); // no artist: counted for the genre only
    plays.extend((0..8).map(|i| play("Cecilia Bartoli", i)));
    let request = tokio_stream::iter(vec![pb::RecordPlaysRequest { plays }]);
    let response = server.listeners().record_plays(request).await.unwrap().into_inner();
    assert_eq!((response.accepted, response.rejected), (26, 0));
    let listener = server
        .listeners()
        .get_listener(pb::GetListenerRequest { listener_id: "opera-fan".into() })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    assert_eq!(listener.members[0].top_artists, vec!["Maria Callas", "Cecilia Bartoli", "Luciano Pavarotti"]);
    server.stop().await;
}

#[tokio::test]
async fn a_denial_survives_every_merge_and_an_upsert_that_does_not_mention_consent() {
    let server = start_server().await;
    let merge = |into: &str, from: &str| pb::MergeListenersRequest {
        into_listener_id: into.into(),
        from_listener_id: from.into(),
    };
    let consent_of = |l: &pb::Listener| l.personalized_ads();
    // Granted into denied, and denied into granted: denied either way.
    for (into, from) in [("granted-a", "denied-a"), ("denied-b", "granted-b")] {
        for id in [into, from] {
            let state =
                if id.starts_with("denied") { pb::ConsentState::Denied } else { pb::ConsentState::Granted };
            server.listener(id, |l| l.personalized_ads = state as i32).await;
        }
        let merged = server.listeners().merge_listeners(merge(into, from)).await.unwrap().into_inner();
        assert_eq!(consent_of(&merged.listener.unwrap()), pb::ConsentState::Denied, "{from} into {into}");
    }
    // A grant meets nothing said: granted.
    server.listener("granted-c", |l| l.personalized_ads = pb::ConsentState::Granted as i32).await;
    server.listener("silent-c", |l| l.personalized_ads = pb::ConsentState::Unspecified as i32).await;
    let merged =
        server.listeners().merge_listeners(merge("silent-c", "granted-c")).await.unwrap().into_inner();
    assert_eq!(consent_of(&merged.listener.unwrap()), pb::ConsentState::Granted);

    // An upsert that leaves consent unspecified keeps the stored choice.
    server.listener("chose", |l| l.personalized_ads = pb::ConsentState::Denied as i32).await;
    server
        .listener("chose", |l| {
            l.personalized_ads = pb::ConsentState::Unspecified as i32;
            l.language = "de".into();
        })
        .await;
    let stored = server
        .listeners()
        .get_listener(pb::GetListenerRequest { listener_id: "chose".into() })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    assert_eq!(consent_of(&stored), pb::ConsentState::Denied);
    assert_eq!(stored.language, "de");
    server.stop().await;
}

#[tokio::test]
async fn a_retried_play_stream_counts_each_identified_play_once() {
    let server = start_server().await;
    let now = interlude::grpc::now().0;
    let play = |i: i64, id: &str| pb::PlayEvent {
        listener_id: "retrier".into(),
        track_id: format!("t{i}"),
        genres: vec!["jazz".into()],
        played_at: Some(ts(now - i * 1000)),
        seconds_played: 200,
        play_id: id.into(),
        ..Default::default()
    };
    let batch: Vec<pb::PlayEvent> = (0..10).map(|i| play(i, &format!("session-1/{i}"))).collect();
    let send = |plays: Vec<pb::PlayEvent>| {
        let mut client = server.listeners();
        async move {
            let request = tokio_stream::iter(vec![pb::RecordPlaysRequest { plays }]);
            client.record_plays(request).await.unwrap().into_inner()
        }
    };
    let lifetime_plays = || async {
        let listener = server
            .listeners()
            .get_listener(pb::GetListenerRequest { listener_id: "retrier".into() })
            .await
            .unwrap()
            .into_inner()
            .listener
            .unwrap();
        listener.members[0].genres[0].lifetime_plays
    };
    let first = send(batch.clone()).await;
    assert_eq!((first.accepted, first.duplicates), (10, 0));
    let once = lifetime_plays().await;
    // The stream is cut and the player sends it all again, plus one new play.
    let mut again = batch;
    again.push(play(10, "session-1/10"));
    let retry = send(again).await;
    assert_eq!((retry.accepted, retry.duplicates), (1, 10));
    assert_eq!(lifetime_plays().await, once + 1, "the retry counted only the new play");
    // Another listener may use the same play ids.
    let mut other = play(0, "session-1/0");
    other.listener_id = "someone-else".into();
    assert_eq!(send(vec![other]).await.accepted, 1);
    server.stop().await;
}

#[tokio::test]
async fn aliases_follow_merges_and_erasures_of_their_own_listener_only() {
    let server = start_server().await;
    let link = |listener: &str, alias: &str| pb::LinkIdentityRequest {
        listener_id: listener.into(),
        alias: alias.into(),
    };
    for id in ["ann", "bob", "cat"] {
        server.listener(id, |_| {}).await;
        server.listeners().link_identity(link(id, &format!("email:{id}"))).await.unwrap();
    }
    let merged = server
        .listeners()
        .merge_listeners(pb::MergeListenersRequest {
            into_listener_id: "ann".into(),
            from_listener_id: "bob".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    assert_eq!(merged.aliases, vec!["bob", "email:ann", "email:bob"]);
    server
        .listeners()
        .forget_listener(pb::ForgetListenerRequest { listener_id: "email:bob".into() })
        .await
        .unwrap();
    for gone in ["ann", "bob", "email:ann", "email:bob"] {
        let status = server
            .listeners()
            .get_listener(pb::GetListenerRequest { listener_id: gone.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{gone}");
    }
    let cat = server
        .listeners()
        .get_listener(pb::GetListenerRequest { listener_id: "email:cat".into() })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    assert_eq!((cat.listener_id.as_str(), cat.aliases), ("cat", vec!["email:cat".to_string()]));
    server.stop().await;
}
