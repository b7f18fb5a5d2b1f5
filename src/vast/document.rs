//! A decided break as a VAST 4.2 document, written with quick-xml in the child order the IAB
//! XSD's `xs:sequence`s require (`../shared/data/vast_4.2.xsd`).
//!
//! One `<Ad adType="audio" sequence="n">` per ad of the pod, each an `InLine` whose trackers
//! carry the ad's signed token: the tracking endpoint (`vast/tracking.rs`) needs nothing else to
//! count them. A companion banner is its own `Creative` with `CompanionAds required="none"`: a
//! screenless player must still play the audio.

use std::fmt::Write as _;
use std::io;

use quick_xml::Writer;
use quick_xml::events::{BytesCData, BytesDecl, BytesText, Event};

use crate::decision::SelectedAd;
use crate::domain::EventKind;
use crate::service::decisions::{Served, ServedAd};

/// The namespace of VAST 4.x documents.
pub const VAST_NAMESPACE: &str = "http://www.iab.com/VAST";
/// The authority of `Category` values: IAB Tech Lab's Content Taxonomy (3.1 here).
pub const CATEGORY_AUTHORITY: &str = "https://iabtechlab.com/standards/content-taxonomy/";
/// The registry of `UniversalAdId` values: ours (campaign/creative), as no Ad-ID is kept.
pub const AD_ID_REGISTRY: &str = "interlude";

/// Linear tracking events, as VAST names them, with what each records.
pub const LINEAR_EVENTS: [(&str, EventKind); 10] = [
    ("start", EventKind::Start),
    ("firstQuartile", EventKind::FirstQuartile),
    ("midpoint", EventKind::Midpoint),
    ("thirdQuartile", EventKind::ThirdQuartile),
    ("complete", EventKind::Complete),
    ("skip", EventKind::Skip),
    ("mute", EventKind::Mute),
    ("unmute", EventKind::Unmute),
    ("pause", EventKind::Pause),
    ("resume", EventKind::Resume),
];

/// What the document needs beyond the break: where its trackers point and how to price.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// Scheme, host and port of this edge as players reach it, without a trailing slash.
    pub base_url: &'a str,
    /// ISO 4217 code of prices.
    pub currency: &'a str,
    /// Seconds the ads' trackers stay valid (the token TTL): VAST `Expires`.
    pub expires_secs: u64,
}

/// The VAST document of `served`: a pod of its ads, or an empty `<VAST version="4.2"/>` for
/// no fill.
pub fn write(served: &Served, context: &Context<'_>) -> io::Result<Vec<u8>> {
    let mut w = Writer::new_with_indent(Vec::with_capacity(1024 + 4096 * served.ads.len()), b' ', 1);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    // The namespace even on an empty document: without it, no element the XSD declares.
    let vast = w.create_element("VAST").with_attributes([("version", "4.2"), ("xmlns", VAST_NAMESPACE)]);
    if served.ads.is_empty() {
        vast.write_empty()?;
    } else {
        let mut url = String::with_capacity(256);
        vast.write_inner_content(|w| {
            for (n, (ad, id)) in served.decision.ads.iter().zip(&served.ads).enumerate() {
                write_ad(w, n + 1, ad, id, context, &mut url)?;
            }
            Ok(())
        })?;
    }
    Ok(w.into_inner())
}

fn write_ad(
    w: &mut Writer<Vec<u8>>,
    sequence: usize,
    ad: &SelectedAd,
    served: &ServedAd,
    cx: &Context<'_>,
    url: &mut String,
) -> io::Result<()> {
    let campaign = &ad.campaign;
    let creative = &campaign.creatives[ad.creative];
    let ad_id = served.id.to_string();
    let sequence = sequence.to_string();
    w.create_element("Ad")
        .with_attributes([("id", campaign.id.as_str()), ("sequence", &sequence), ("adType", "audio")])
        .write_inner_content(|w| {
            w.create_element("InLine").write_inner_content(|w| {
                w.create_element("AdSystem")
                    .with_attribute(("version", env!("CARGO_PKG_VERSION")))
                    .write_text_content(BytesText::new("Interlude"))?;
                error_url(url, cx.base_url, &served.token);
                w.create_element("Error").write_cdata_content(BytesCData::new(&**url))?;
                tracking_url(url, cx.base_url, "impression", &served.token);
                w.create_element("Impression")
                    .with_attribute(("id", ad_id.as_str()))
                    .write_cdata_content(BytesCData::new(&**url))?;
                if campaign.tier.is_paid() {
                    w.create_element("Pricing")
                        .with_attributes([("model", "CPM"), ("currency", cx.currency)])
                        .write_text_content(BytesText::new(&decimal_of_micros(campaign.bid_cpm_micros)))?;
                }
                // Unique per InLine, as the XSD asks: the ad's own id, also in its token.
                w.create_element("AdServingId").write_text_content(BytesText::new(&ad_id))?;
                w.create_element("AdTitle").write_text_content(BytesText::new(&campaign.name))?;
                w.create_element("Advertiser")
                    .write_text_content(BytesText::new(&campaign.advertiser_name))?;
                for category in campaign.categories.iter() {
                    w.create_element("Category")
                        .with_attribute(("authority", CATEGORY_AUTHORITY))
                        .write_text_content(BytesText::new(category.as_str()))?;
                }
                let universal_id = format!("{}/{}", campaign.id.as_str(), creative.id.as_str());
                w.create_element("Creatives").write_inner_content(|w| {
                    w.create_element("Creative")
                        .with_attributes([
                            ("id", creative.id.as_str()),
                            ("adId", campaign.id.as_str()),
                            ("sequence", "1"),
                        ])
                        .write_inner_content(|w| {
                            write_linear(w, creative, served, cx, url)?;
                            universal_ad_id(w, &universal_id)
                        })?;
                    if let Some(companion) = &creative.companion {
                        let id = format!("{}-companion", creative.id.as_str());
                        w.create_element("Creative")
                            .with_attributes([
                                ("id", id.as_str()),
                                ("adId", campaign.id.as_str()),
                                ("sequence", "1"),
                            ])
                            .write_inner_content(|w| {
                                w.create_element("CompanionAds")
                                    .with_attribute(("required", "none"))
                                    .write_inner_content(|w| {
                                        write_companion(w, companion, served, &ad_id, cx, url)
                                    })?;
                                universal_ad_id(w, &universal_id)
                            })?;
                    }
                    Ok(())
                })?;
                w.create_element("Expires")
                    .write_text_content(BytesText::new(&cx.expires_secs.to_string()))?;
                Ok(())
            })?;
            Ok(())
        })?;
    Ok(())
}

fn write_linear(
    w: &mut Writer<Vec<u8>>,
    creative: &crate::domain::Creative,
    served: &ServedAd,
    cx: &Context<'_>,
    url: &mut String,
) -> io::Result<()> {
    w.create_element("Linear").write_inner_content(|w| {
        w.create_element("TrackingEvents").write_inner_content(|w| {
            for (event, _) in LINEAR_EVENTS {
                tracking_url(url, cx.base_url, event, &served.token);
                w.create_element("Tracking")
                    .with_attribute(("event", event))
                    .write_cdata_content(BytesCData::new(&**url))?;
            }
            Ok(())
        })?;
        w.create_element("Duration").write_text_content(BytesText::new(&duration(creative.duration_ms)))?;
        w.create_element("MediaFiles").write_inner_content(|w| {
            media_file(w, creative.audio_mime_type(), None, &creative.audio_url)?;
            for file in &creative.media_files {
                media_file(
                    w,
                    &file.mime_type,
                    (file.bitrate_kbps > 0).then_some(file.bitrate_kbps),
                    &file.url,
                )?;
            }
            Ok(())
        })?;
        Ok(())
    })?;
    Ok(())
}

fn media_file(w: &mut Writer<Vec<u8>>, mime: &str, bitrate_kbps: Option<u32>, url: &str) -> io::Result<()> {
    let bitrate = bitrate_kbps.map(|b| b.to_string());
    let mut element = w.create_element("MediaFile").with_attributes([
        ("delivery", "progressive"),
        ("type", mime),
        ("width", "0"),
        ("height", "0"),
    ]);
    if let Some(bitrate) = &bitrate {
        element = element.with_attribute(("bitrate", bitrate.as_str()));
    }
    uri_content(element, url)
}

fn write_companion(
    w: &mut Writer<Vec<u8>>,
    companion: &crate::domain::Companion,
    served: &ServedAd,
    ad_id: &str,
    cx: &Context<'_>,
    url: &mut String,
) -> io::Result<()> {
    let (width, height) = (companion.width.to_string(), companion.height.to_string());
    w.create_element("Companion")
        .with_attributes([("width", width.as_str()), ("height", height.as_str())])
        .write_inner_content(|w| {
        uri_content(
            w.create_element("StaticResource")
                .with_attribute(("creativeType", image_type(&companion.image_url))),
            &companion.image_url,
        )?;
        uri_content(w.create_element("CompanionClickThrough"), &companion.click_url)?;
        tracking_url(url, cx.base_url, "click", &served.token);
        w.create_element("CompanionClickTracking")
            .with_attribute(("id", ad_id))
            .write_cdata_content(BytesCData::new(&**url))?;
        Ok(())
    })?;
    Ok(())
}

fn universal_ad_id(w: &mut Writer<Vec<u8>>, value: &str) -> io::Result<()> {
    w.create_element("UniversalAdId")
        .with_attribute(("idRegistry", AD_ID_REGISTRY))
        .write_text_content(BytesText::new(value))?;
    Ok(())
}

/// A URL as element content: CDATA as players expect, unless the URL itself holds the CDATA
/// terminator (an advertiser's URL may), then escaped text.
fn uri_content(element: quick_xml::writer::ElementWriter<'_, Vec<u8>>, url: &str) -> io::Result<()> {
    if url.contains("]]>") {
        element.write_text_content(BytesText::new(url))?;
    } else {
        element.write_cdata_content(BytesCData::new(url))?;
    }
    Ok(())
}

/// `{base}/vast/track?e={event}&t={token}&ts=[TIMESTAMP]&cb=[CACHEBUSTING]` into `url`. Tokens
/// are URL-safe (base64url and '.'), so they go in as they are.
fn tracking_url(url: &mut String, base: &str, event: &str, token: &str) {
    debug_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    url.clear();
    let _ = write!(url, "{base}/vast/track?e={event}&t={token}&ts=[TIMESTAMP]&cb=[CACHEBUSTING]");
}

/// `{base}/vast/error?t={token}&code=[ERRORCODE]&cb=[CACHEBUSTING]` into `url`.
fn error_url(url: &mut String, base: &str, token: &str) {
    url.clear();
    let _ = write!(url, "{base}/vast/error?t={token}&code=[ERRORCODE]&cb=[CACHEBUSTING]");
}

/// VAST's `HH:MM:SS.mmm`.
pub fn duration(ms: u32) -> String {
    let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{h:02}:{m:02}:{s:02}.{milli:03}")
}

/// Micro-units as a decimal with at least two fraction digits: 12_500_000 → "12.50".
pub fn decimal_of_micros(micros: i64) -> String {
    let mut s = format!("{}.{:06}", micros / 1_000_000, (micros % 1_000_000).abs());
    while s.ends_with('0') && s.len() - s.find('.').unwrap_or(0) > 3 {
        s.pop();
    }
    s
}

/// The MIME type of a companion image, by its extension.
fn image_type(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url).to_ascii_lowercase();
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        _ => "image/png",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_prices_are_written_as_vast_wants() {
        assert_eq!(duration(30_000), "00:00:30.000");
        assert_eq!(duration(3_723_045), "01:02:03.045");
        assert_eq!(decimal_of_micros(12_500_000), "12.50");
        assert_eq!(decimal_of_micros(7_000_000), "7.00");
        assert_eq!(decimal_of_micros(1_234_567), "1.234567");
        assert_eq!(decimal_of_micros(0), "0.00");
    }

    #[test]
    fn companion_image_types_follow_the_extension() {
        assert_eq!(image_type("https://cdn.example/b.JPG?x=1"), "image/jpeg");
        assert_eq!(image_type("https://cdn.example/banner"), "image/png");
    }
}
