//! Which masters serve which slots, and how many replicas each has in sync: what tells an
//! acknowledged write whether it can wait for a replica (`WAIT 1`) or must go on without one.
//! Read by the follow loop every poll, never on a request's path.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use redis::Value;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};

use super::{Shared, SharedError};

/// The slot ranges and the replicas in sync of each range's master.
#[derive(Debug, Default)]
pub(super) struct Topology {
    /// (first slot, last slot, replicas online), by first slot.
    ranges: Vec<(u16, u16, usize)>,
    /// The masters (host, port), and the first slot of a range each serves.
    masters: Vec<((String, u16), u16)>,
}

impl Topology {
    /// Replicas in sync with the master of `slot`, if known.
    fn replicas(&self, slot: u16) -> Option<usize> {
        let i = self.ranges.partition_point(|&(first, _, _)| first <= slot).checked_sub(1)?;
        let (_, last, replicas) = self.ranges[i];
        (slot <= last).then_some(replicas)
    }
}

/// The topology as last read (none until the first read, or after `forget`), and the last one
/// read at all (to tell when the masters changed).
#[derive(Debug, Default)]
pub(super) struct Known(ArcSwapOption<Topology>, ArcSwapOption<Topology>);

impl Known {
    /// Replicas in sync with the master of the slot of `key`, if known.
    pub(super) fn replicas_of(&self, key: &str) -> Option<usize> {
        let slot = slot_number(Slot::for_key(key));
        self.0.load().as_ref().and_then(|t| t.replicas(slot))
    }

    /// Forgets what is known (a `WAIT` found fewer replicas than it said).
    pub(super) fn forget(&self) {
        self.0.store(None);
    }
}

fn slot_number(slot: Slot) -> u16 {
    // `Slot` keeps its number private; its Debug is `Slot(n)`.
    format!("{slot:?}").trim_start_matches("Slot(").trim_end_matches(')').parse().unwrap_or(0)
}

impl Shared {
    /// Reads the slot ranges (`CLUSTER SLOTS`) and each master's replicas in sync (`INFO
    /// replication` on that master), and keeps them for `replicated`.
    pub async fn refresh_topology(&self) -> Result<(), SharedError> {
        let slots: Value = self.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
        let Value::Array(ranges) = slots else {
            return Err(SharedError::Corrupt(format!("CLUSTER SLOTS answered {slots:?}")));
        };
        let mut masters: Vec<(String, u16)> = Vec::new();
        let mut parsed = Vec::with_capacity(ranges.len());
        for range in ranges {
            let Value::Array(fields) = range else { continue };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let (Some(host), Some(Value::Int(port))) = (master.first(), master.get(1)) else { continue };
            let host: String = redis::from_redis_value(host.clone())
                .map_err(|e| SharedError::Corrupt(format!("CLUSTER SLOTS host: {e}")))?;
            let node = (host, *port as u16);
            if !masters.contains(&node) {
                masters.push(node.clone());
            }
            parsed.push((*first as u16, *last as u16, node));
        }
        let mut replicas = Vec::with_capacity(masters.len());
        for (host, port) in &masters {
            let route =
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port });
            let mut info = redis::cmd("INFO");
            info.arg("replication");
            let value = self.route_on(self.conn.clone(), "INFO", info, route).await?;
            let text: String = redis::from_redis_value(value)
                .map_err(|e| SharedError::Corrupt(format!("INFO answered {e}")))?;
            // Replicas listed as `slaveN:ip=…,state=online,…`: only those in sync count.
            let online =
                text.lines().filter(|l| l.starts_with("slave") && l.contains("state=online")).count();
            replicas.push(online);
        }
        let firsts: Vec<((String, u16), u16)> = masters
            .iter()
            .filter_map(|m| {
                parsed.iter().find(|(_, _, node)| node == m).map(|(first, _, _)| (m.clone(), *first))
            })
            .collect();
        let mut topology = Topology {
            ranges: parsed
                .into_iter()
                .map(|(first, last, node)| {
                    let i = masters.iter().position(|m| *m == node).unwrap_or(0);
                    (first, last, replicas.get(i).copied().unwrap_or(0))
                })
                .collect(),
            masters: firsts,
        };
        topology.ranges.sort_unstable();
        let moved = {
            let before = self.topology.1.load();
            let names = |t: &Topology| {
                let mut m: Vec<(String, u16)> = t.masters.iter().map(|(a, _)| a.clone()).collect();
                m.sort();
                m
            };
            before.as_ref().is_some_and(|b| names(b) != names(&topology))
        };
        let topology = Arc::new(topology);
        self.topology.0.store(Some(topology.clone()));
        self.topology.1.store(Some(topology.clone()));
        if moved {
            self.follow_new_masters(&topology).await;
        }
        Ok(())
    }

    /// After a failover the client keeps sending the failed master's slots to it (and timing
    /// out) until a node answers MOVED: each connection is sent one request that a live master
    /// redirects, which makes it read the slots again.
    async fn follow_new_masters(&self, topology: &Topology) {
        tracing::warn!(masters = topology.masters.len(), "masters changed: the client reads the slots again");
        for ((host, port), first) in &topology.masters {
            // A key of a slot this master does not serve: it answers MOVED.
            let Some(key) = (0..4096).map(|i| format!("{{nudge:{i}}}")).find(|k| {
                let slot = slot_number(Slot::for_key(k));
                topology.ranges.iter().any(|&(f, l, _)| f <= slot && slot <= l && f != *first)
            }) else {
                continue;
            };
            for conn in [&self.conn, &self.writes] {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let mut get = redis::cmd("GET");
                get.arg(&key);
                // Its answer does not matter: the redirect is what refreshes the slots.
                let _ = self.route_on(conn.clone(), "GET", get, route).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_finds_its_range_and_a_gap_finds_none() {
        let t =
            Topology { ranges: vec![(0, 5460, 1), (5461, 10922, 0), (12000, 16383, 1)], masters: Vec::new() };
        assert_eq!(t.replicas(0), Some(1));
        assert_eq!(t.replicas(5461), Some(0));
        assert_eq!(t.replicas(10922), Some(0));
        assert_eq!(t.replicas(11000), None, "a slot no master serves");
        assert_eq!(t.replicas(16383), Some(1));
        assert_eq!(slot_number(Slot::for_key("{c:x}:n")), slot_number(Slot::for_key("{c:x}:r")));
        // Redis's own answer (`CLUSTER KEYSLOT foo`): the number is read from `Slot`'s Debug
        // form, which a client upgrade could change.
        assert_eq!(slot_number(Slot::for_key("foo")), 12182);
    }
}
