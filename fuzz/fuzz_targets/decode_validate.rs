//! Fuzz target: every request the server decodes, through protobuf decoding and the edge's
//! validation. Validation must never panic, and whatever it accepts must respect the limits
//! it promises (bounded ids and lists).
#![no_main]

use interlude::grpc::{convert, pb};
use interlude::store::Vocabulary;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let vocabulary = Vocabulary::default();
    let artists = Vocabulary::default();
    let now = interlude::domain::UnixMillis(1_795_435_200_000);
    match selector % 5 {
        0 => {
            if let Ok(req) = pb::DecideRequest::decode(bytes) {
                if let Ok(request) = convert::ad_request(&req, &vocabulary) {
                    assert!(request.max_ads >= 1, "a break holds at least one ad");
                    assert!(request.max_duration_ms > 0);
                }
            }
        }
        1 => {
            if let Ok(req) = pb::UpsertCampaignRequest::decode(bytes) {
                if let Ok(campaign) = convert::campaign(req.campaign.as_ref(), &vocabulary) {
                    assert!(!campaign.creatives.is_empty(), "a valid campaign has a creative");
                    assert!(campaign.bid_cpm_micros >= 0);
                    // What was accepted converts back without panicking.
                    let _ = convert::campaign_to_proto(&campaign, &vocabulary);
                }
            }
        }
        2 => {
            if let Ok(req) = pb::RecordEventsRequest::decode(bytes) {
                if let Ok(events) = convert::events(&req) {
                    assert!(!events.is_empty(), "an empty batch is refused");
                }
            }
        }
        3 => {
            if let Ok(req) = pb::UpsertListenerRequest::decode(bytes) {
                let _ = convert::listener_update(req.listener.as_ref(), now);
            }
        }
        _ => {
            if let Ok(req) = pb::RecordPlaysRequest::decode(bytes) {
                for play in &req.plays {
                    let _ = convert::play(play, &vocabulary, &artists, now);
                }
            }
        }
    }
});
