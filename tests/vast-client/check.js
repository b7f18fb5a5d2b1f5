// Parses a VAST tag with @dailymotion/vast-client (an independent, widely used player-side
// parser) and plays each ad through its VASTTracker, so that the trackers fire as a real web
// player would fire them. Prints what the client saw, and the status of every tracker it fired,
// as one JSON line. Usage: node check.js <vast tag URL>
'use strict';

const url = process.argv[2];
const fired = [];
// vast-client fires trackers through `new Image().src = url` when a window exists: give it
// one (once the tag is fetched) whose images fetch, so that its own macro substitution and
// firing logic run unchanged.
globalThis.Image = class {
  set src(u) {
    fired.push(fetch(u).then((r) => ({ url: u, status: r.status })));
  }
};
const { VASTClient, VASTTracker } = require('@dailymotion/vast-client');

(async () => {
  const client = new VASTClient();
  const response = await client.get(url);
  globalThis.window = globalThis;
  const ads = [];
  for (const ad of response.ads) {
    const linear = ad.creatives.find((c) => c.type === 'linear');
    const companion = ad.creatives.find((c) => c.type === 'companion');
    ads.push({
      id: ad.id,
      sequence: ad.sequence,
      adServingId: ad.adServingId,
      title: ad.title,
      impressions: ad.impressionURLTemplates.length,
      errors: ad.errorURLTemplates.length,
      duration: linear ? linear.duration : null,
      mediaFiles: linear ? linear.mediaFiles.map((m) => ({ url: m.fileURL, mime: m.mimeType })) : [],
      tracking: linear ? Object.keys(linear.trackingEvents).sort() : [],
      companions: companion ? companion.variations.length : 0,
      companionRequired: companion ? companion.required : null,
    });
    if (!linear) continue;
    // Play it: impression, progress through every quartile, mute/unmute, pause/resume, complete;
    // then an error report with a code.
    const tracker = new VASTTracker(client, ad, linear);
    tracker.trackImpression();
    tracker.setDuration(linear.duration);
    for (const at of [0.5, linear.duration * 0.3, linear.duration * 0.55, linear.duration * 0.8]) {
      tracker.setProgress(at);
    }
    tracker.setMuted(true);
    tracker.setMuted(false);
    tracker.setPaused(true);
    tracker.setPaused(false);
    tracker.complete();
    tracker.error({ ERRORCODE: 405 });
  }
  const trackers = await Promise.all(fired);
  console.log(JSON.stringify({ ads, trackers }));
})().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
