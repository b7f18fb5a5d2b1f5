//! The Lua scripts: each one is the atomic step of one kind of state, in one hash slot.

use std::sync::LazyLock;

use redis::Script;

/// Counts one event of one ad, once: the dedupe of (ad, kind) and the campaign counters it
/// guards, in the campaign's slot.
///
/// KEYS: 1 counters hash, 2 the ad's dedupe hash, 3 the campaign's reservations (zset).
/// ARGV: 1 kind field, 2 event id, 3 dedupe ttl ms, 4 the event's campaign day, 5 that day's
/// end (unix ms), 6 price micros, 7 ad id (hex), 8 error field ("" unless an error).
/// Returns "accepted", "retried" (same event id again) or "already" (another event id).
pub(super) static COUNT_EVENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n, seen, held = KEYS[1], KEYS[2], KEYS[3]
local kind, event_id = ARGV[1], ARGV[2]
local before = redis.call('HGET', seen, kind)
if before then
  if before == event_id then return 'retried' end
  return 'already'
end
redis.call('HSET', seen, kind, event_id)
redis.call('PEXPIRE', seen, ARGV[3])
local day = tonumber(ARGV[4])
local counted_day = tonumber(redis.call('HGET', n, 'day') or '-1')
if day > counted_day then
  redis.call('HSET', n, 'day', day, 'day_ends_at', ARGV[5], 'impressions_today', 0, 'spend_today_micros', 0)
  counted_day = day
end
local price = tonumber(ARGV[6])
if kind == 'impressions' then
  redis.call('HINCRBY', n, 'impressions', 1)
  redis.call('HINCRBY', n, 'spend_micros', price)
  if day == counted_day then
    redis.call('HINCRBY', n, 'impressions_today', 1)
    redis.call('HINCRBY', n, 'spend_today_micros', price)
  end
  redis.call('ZREM', held, ARGV[7])
elseif kind == 'not_used' then
  redis.call('HINCRBY', n, 'not_used', 1)
  redis.call('ZREM', held, ARGV[7])
elseif kind == 'error' then
  redis.call('HINCRBY', n, ARGV[8], 1)
else
  redis.call('HINCRBY', n, kind, 1)
end
return 'accepted'
"#,
    )
});

/// Holds one impression's price of a limited campaign's budget for each of a few decided (or
/// about to be decided) ads, as many as fit under every hard limit with what is spent and
/// held: the check and the holds are one step, so replicas deciding at once cannot all take
/// the last of a budget. The first ad is the one being decided now; the others are spares
/// the replica keeps for its next decisions (one round trip for several), granted only while
/// plenty is left (at most a sixteenth of what still fits), so that near the end of a budget
/// each replica holds no more than the ad it decides.
///
/// KEYS: 1 counters hash, 2 holds (zset ad → expiry).
/// ARGV: 1 now ms, 2 the campaign's day now, 3 price, 4 lifetime budget (0 = none), 5 daily
/// budget (0 = none), 6 impression goal (0 = none), 7 hold ms, 8… ad ids (hex).
/// Returns how many of the ads, from the first, are held (0: the budget has no room).
pub(super) static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n, held = KEYS[1], KEYS[2]
local now, day, price = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lifetime, daily, goal = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
local holds = redis.call('ZCARD', held)
local c = redis.call('HMGET', n, 'spend_micros', 'day', 'spend_today_micros', 'impressions')
local spent = tonumber(c[1] or '0')
local today = 0
if tonumber(c[2] or '-1') == day then today = tonumber(c[3] or '0') end
local impressions = tonumber(c[4] or '0')
local room = 1000000
if price > 0 then
  if lifetime > 0 then room = math.min(room, math.floor((lifetime - spent - holds * price) / price)) end
  if daily > 0 then room = math.min(room, math.floor((daily - today - holds * price) / price)) end
end
if goal > 0 then room = math.min(room, goal - impressions - holds) end
if room < 1 then return 0 end
local grant = math.min(#ARGV - 7, math.max(1, math.floor(room / 16)))
for i = 1, grant do
  redis.call('ZADD', held, now + tonumber(ARGV[7]), ARGV[7 + i])
end
redis.call('PEXPIRE', held, 2 * tonumber(ARGV[7]))
return grant
"#,
    )
});

/// Replaces a listener account's histories if nobody changed them since they were read
/// (compare-and-set on their version).
///
/// KEYS: 1 histories, 2 their version. ARGV: 1 the version read ("0" = none), 2 the new
/// histories, 3 ttl ms. Returns the new version, or 0 when another replica wrote first.
pub(super) static SWAP_HISTORIES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local version = redis.call('GET', KEYS[2]) or '0'
if version ~= ARGV[1] then return 0 end
local next = tonumber(version) + 1
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], next, 'PX', ARGV[3])
return next
"#,
    )
});

/// Writes one document of a directory (campaigns, aliases) and bumps the directory's version,
/// which every replica polls.
///
/// KEYS: 1 the directory's hash, 2 its version. ARGV: 1 field, 2 document ("" = delete).
/// Returns the new version.
pub(super) static PUT_ENTRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return redis.call('INCR', KEYS[2])
"#,
    )
});

/// Interns a term: its id if known, else the next one (ids are dense, in order of first use
/// anywhere in the cluster, so every replica's vocabulary is a prefix of the same list).
///
/// KEYS: 1 name → id hash, 2 the list of names. ARGV: 1 name, 2 the most names allowed.
/// Returns the id, or -1 when the vocabulary is full.
pub(super) static INTERN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local id = redis.call('HGET', KEYS[1], ARGV[1])
if id then return tonumber(id) end
local n = redis.call('LLEN', KEYS[2])
if n >= tonumber(ARGV[2]) then return -1 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], n)
return n
"#,
    )
});

/// Deletes every alias naming a listener, bumping the aliases' version if any went.
///
/// KEYS: 1 aliases hash, 2 its version. ARGV: 1 the listener. Returns how many went.
pub(super) static DROP_ALIASES_OF: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local all = redis.call('HGETALL', KEYS[1])
local dropped = 0
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    dropped = dropped + 1
  end
end
if dropped > 0 then redis.call('INCR', KEYS[2]) end
return dropped
"#,
    )
});
