//! What the nodes say about the cluster (`CLUSTER SLOTS`, `CLUSTER NODES`,
//! `CLUSTER INFO`, `ROLE`), parsed, and the health check every wait of the
//! fixture is built on.
//!
//! A cluster operation is finished only when every live node agrees on it:
//! a client that is redirected by one node and asks another must not find
//! the old topology there. So the check asks every live node, not one, and
//! its error lists what is still missing, which is what a hang-guard error
//! shows.

use redis::Value;

use super::{error_chain, RedisCluster, SLOTS};
use crate::redis::{command_at, reply_text, role_at, HarnessError};

/// A node as `CLUSTER SLOTS` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub id: String,
}

impl Endpoint {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One range of `CLUSTER SLOTS`: its master and its (non-failed) replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: Endpoint,
    pub replicas: Vec<Endpoint>,
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeLine {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// `(slot, target id)` of the `[slot->-id]` entries (only on `myself`).
    pub migrating: Vec<(u16, String)>,
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => reply_text(other)?.parse().ok(),
    }
}

fn endpoint(v: &Value) -> Option<Endpoint> {
    let Value::Array(items) = v else { return None };
    Some(Endpoint {
        host: reply_text(items.first()?)?,
        port: u16::try_from(int(items.get(1)?)?).ok()?,
        id: items.get(2).and_then(reply_text).unwrap_or_default(),
    })
}

/// Parses a `CLUSTER SLOTS` reply, sorted by first slot.
pub(crate) fn parse_slots(v: &Value) -> Result<Vec<SlotRange>, String> {
    let Value::Array(ranges) = v else {
        return Err(format!("CLUSTER SLOTS answered {v:?}"));
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let parsed = (|| {
            let Value::Array(items) = range else {
                return None;
            };
            let slot = |i: usize| u16::try_from(int(items.get(i)?)?).ok();
            Some(SlotRange {
                start: slot(0)?,
                end: slot(1)?,
                master: endpoint(items.get(2)?)?,
                replicas: items[3..].iter().filter_map(endpoint).collect(),
            })
        })();
        out.push(parsed.ok_or_else(|| format!("malformed CLUSTER SLOTS range {range:?}"))?);
    }
    out.sort_by_key(|r| r.start);
    Ok(out)
}

/// Parses `CLUSTER NODES` text (lines without an address are skipped).
pub(crate) fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.to_owned();
            // ip:port@cport[,hostname]
            let addr = fields.next()?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            let flags: Vec<String> = fields.next()?.split(',').map(str::to_owned).collect();
            let migrating = fields
                .skip(5) // master, ping-sent, pong-recv, epoch, link-state
                .filter_map(|s| {
                    let (slot, target) =
                        s.strip_prefix('[')?.strip_suffix(']')?.split_once("->-")?;
                    Some((slot.parse().ok()?, target.to_owned()))
                })
                .collect();
            Some(NodeLine {
                id,
                host: host.to_owned(),
                port: port.parse().ok()?,
                flags,
                migrating,
            })
        })
        .filter(|n| !n.host.is_empty() && !n.flags.iter().any(|f| f == "noaddr"))
        .collect()
}

/// The range serving `slot`.
pub(crate) fn range_of(view: &[SlotRange], slot: u16) -> Result<&SlotRange, String> {
    view.iter()
        .find(|r| r.start <= slot && slot <= r.end)
        .ok_or_else(|| format!("no node serves slot {slot}"))
}

/// The first slots not served, e.g. `slots 0-99 not served`.
fn coverage_gap(view: &[SlotRange]) -> Option<String> {
    let mut next = 0u32;
    for r in view {
        if u32::from(r.start) > next {
            return Some(format!("slots {next}-{} not served", r.start - 1));
        }
        next = next.max(u32::from(r.end) + 1);
    }
    (next < u32::from(SLOTS)).then(|| format!("slots {next}-{} not served", SLOTS - 1))
}

/// What every node must agree on: each range's master and replicas.
fn layout(view: &[SlotRange]) -> Vec<(u16, u16, u16, Vec<u16>)> {
    view.iter()
        .map(|r| {
            let mut replicas: Vec<u16> = r.replicas.iter().map(|e| e.port).collect();
            replicas.sort_unstable();
            (r.start, r.end, r.master.port, replicas)
        })
        .collect()
}

impl RedisCluster {
    /// `CLUSTER SLOTS` from the first live node that answers.
    pub(crate) async fn slots_view(&self) -> Result<Vec<SlotRange>, HarnessError> {
        let mut last = None;
        for node in self.live_nodes() {
            match command_at(&node.addr(), &["CLUSTER", "SLOTS"]).await {
                Ok(v) => return parse_slots(&v).map_err(HarnessError::Cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| HarnessError::Cluster("no live node in the cluster".into())))
    }

    /// Whether every live node says `cluster_state:ok`, serves all 16384
    /// slots, and agrees with the others on each range's master and
    /// replicas; with
    /// `require_replicas`, also that each range has a replica in sync.
    /// Returns the agreed `CLUSTER SLOTS`, or what is missing.
    pub(crate) async fn check(&self, require_replicas: bool) -> Result<Vec<SlotRange>, String> {
        let mut missing = Vec::new();
        let mut agreed: Option<(String, Vec<SlotRange>)> = None;
        for node in self.live_nodes() {
            let addr = node.addr();
            match command_at(&addr, &["CLUSTER", "INFO"]).await {
                Ok(v) if reply_text(&v).is_some_and(|t| t.contains("cluster_state:ok")) => {}
                Ok(_) => missing.push(format!("{addr}: cluster_state is not ok")),
                Err(e) => {
                    missing.push(format!("{addr}: CLUSTER INFO failed: {}", error_chain(&e)));
                    continue;
                }
            }
            let view = match command_at(&addr, &["CLUSTER", "SLOTS"]).await {
                Ok(v) => match parse_slots(&v) {
                    Ok(view) => view,
                    Err(e) => {
                        missing.push(format!("{addr}: {e}"));
                        continue;
                    }
                },
                Err(e) => {
                    missing.push(format!("{addr}: CLUSTER SLOTS failed: {}", error_chain(&e)));
                    continue;
                }
            };
            missing.extend(coverage_gap(&view).map(|gap| format!("{addr}: {gap}")));
            if require_replicas {
                missing.extend(view.iter().filter(|r| r.replicas.is_empty()).map(|r| {
                    format!(
                        "{addr}: slots {}-{} (master {}) have no replica",
                        r.start, r.end, r.master.port
                    )
                }));
            }
            match &agreed {
                None => agreed = Some((addr, view)),
                Some((first, first_view)) if layout(first_view) != layout(&view) => {
                    missing.push(format!(
                        "{addr} and {first} disagree on the masters or replicas"
                    ));
                }
                Some(_) => {}
            }
        }
        let Some((_, view)) = agreed else {
            missing.push("no live node answered".into());
            return Err(missing.join("; "));
        };
        if require_replicas {
            for replica in view.iter().flat_map(|r| &r.replicas) {
                let addr = format!("{}:{}", replica.host, replica.port);
                let role = role_at(&addr).await;
                if !matches!(&role, Some((r, Some(link))) if r == "slave" && link == "connected") {
                    missing.push(format!("replica {addr} not in sync (ROLE {role:?})"));
                }
            }
        }
        if missing.is_empty() {
            Ok(view)
        } else {
            Err(missing.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(port: i64, id: &str) -> Value {
        Value::Array(vec![
            bulk("127.0.0.1"),
            Value::Int(port),
            bulk(id),
            Value::Array(vec![]),
        ])
    }

    #[test]
    fn parses_cluster_slots_and_finds_gaps() {
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(7001, "b")]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000, "a"),
                node(7003, "d"),
            ]),
        ]);
        let view = parse_slots(&reply).expect("parses");
        assert_eq!(view[0].start, 0);
        assert_eq!(view[0].master.port, 7000);
        assert_eq!(view[0].replicas[0].id, "d");
        assert!(view[1].replicas.is_empty());
        assert_eq!(range_of(&view, 5461).map(|r| r.master.port), Ok(7001));
        assert_eq!(coverage_gap(&view), None);
        assert_eq!(
            coverage_gap(&view[1..]).as_deref(),
            Some("slots 0-5460 not served")
        );
        assert_eq!(
            coverage_gap(&view[..1]).as_deref(),
            Some("slots 5461-16383 not served")
        );
        assert!(parse_slots(&Value::Array(vec![Value::Int(1)])).is_err());
    }

    #[test]
    fn parses_cluster_nodes_with_a_migrating_slot() {
        let text = "\
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [42->-a9f2]\n\
a9f2 127.0.0.1:30002@40002,host.example master - 0 1 2 connected 5461-10922\n\
c3c3 127.0.0.1:30004@40004 slave e7d1 0 1 1 connected\n\
dead :0@0 master,fail,noaddr - 0 1 0 disconnected\n";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].port, 30001);
        assert!(nodes[0].flags.iter().any(|f| f == "myself"));
        assert_eq!(nodes[0].migrating, vec![(42, "a9f2".to_owned())]);
        assert_eq!(nodes[1].host, "127.0.0.1");
        assert!(nodes[2].flags.iter().any(|f| f == "slave"));
    }
}
