//! Faults, each applied for a while and then healed.

use std::sync::Arc;

use anyhow::Result;
use hourglass_client::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::cluster::{Cluster, CLOCK_STEP_LATENCY};
use crate::history::{now_ms, Event, Kind, Recorder};
use crate::net;

pub const ALL: &[&str] = &[
    "kill",
    "kill-leader",
    "kill-minority",
    "kill-all",
    "pause-leader",
    "partition-one",
    "partition-halves",
    "partition-ring",
    "partition-leader",
    "clock-skew",
    "worker-kill",
];

/// What a fault did, so that healing undoes exactly that.
pub enum Applied {
    Killed(Vec<u64>),
    Paused(Vec<u64>),
    Partitioned(Vec<u64>),
    /// Nodes whose wall clock was stepped away from true time.
    Skewed(Vec<u64>),
    Nothing,
}

/// A clock step the `clock-skew` nemesis chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skew {
    pub node: u64,
    /// Picked as the leader of this partition, or `None` when picked as any node.
    pub targeted_partition: Option<u32>,
    /// The partitions the node led by the status read before the step.
    pub leader_of: Vec<u32>,
    pub offset_ms: i64,
}

/// Half of the time the leader of a random partition (when any is known), otherwise any node;
/// the step is uniform in magnitude up to `max_ms`, forward or back.
pub fn choose_skew(rng: &mut StdRng, nodes: u64, leaders: &[(u32, u64)], max_ms: u64) -> Skew {
    let (node, targeted_partition) = match leaders.choose(rng) {
        Some(&(partition, leader)) if rng.gen_bool(0.5) => (leader, Some(partition)),
        _ => (rng.gen_range(1..=nodes), None),
    };
    let magnitude = rng.gen_range(1..=max_ms.max(1)) as i64;
    let offset_ms = if rng.gen_bool(0.5) {
        magnitude
    } else {
        -magnitude
    };
    Skew {
        node,
        targeted_partition,
        leader_of: leaders
            .iter()
            .filter(|&&(_, l)| l == node)
            .map(|&(p, _)| p)
            .collect(),
        offset_ms,
    }
}

pub struct Nemesis {
    pub rng: StdRng,
    pub rec: Recorder,
    pub workers: Vec<Arc<tokio::sync::Notify>>,
    /// Largest clock step of `clock-skew`, either way.
    pub skew_max_ms: u64,
    /// Clock steps not yet healed.
    pub skewed: Vec<Skew>,
}

impl Nemesis {
    async fn leader(&mut self, cluster: &Cluster, client: &Client) -> Option<u64> {
        let leaders = cluster.leaders(client).await;
        leaders.choose(&mut self.rng).copied()
    }

    fn record(&self, f: &str, value: String) {
        self.rec
            .record(Event::new("nemesis", Kind::Nemesis, f).value(value));
    }

    /// Records a clock step (or the step back, `heal`) of one node.
    fn record_clock(&self, f: &str, time: u64, skew: &Skew, value: String) {
        let mut e = Event::new("nemesis", Kind::Nemesis, f)
            .at(time)
            .value(value);
        e.node = Some(skew.node);
        e.leader = Some(!skew.leader_of.is_empty());
        e.leader_of = skew.leader_of.clone();
        e.offset_ms = Some(skew.offset_ms);
        self.rec.record(e);
    }

    pub async fn apply(
        &mut self,
        fault: &str,
        cluster: &mut Cluster,
        client: &Client,
    ) -> Result<Applied> {
        // The fault window opens before the fault acts.
        let started = now_ms();
        let n = cluster.nodes.len() as u64;
        let mut ids: Vec<u64> = (1..=n).collect();
        ids.shuffle(&mut self.rng);
        let applied = match fault {
            "kill" => {
                cluster.kill(ids[0]);
                Applied::Killed(vec![ids[0]])
            }
            "kill-leader" => match self.leader(cluster, client).await {
                Some(l) => {
                    cluster.kill(l);
                    Applied::Killed(vec![l])
                }
                None => Applied::Nothing,
            },
            "kill-minority" => {
                let victims: Vec<u64> = ids[..((n - 1) / 2) as usize].to_vec();
                for &v in &victims {
                    cluster.kill(v);
                }
                Applied::Killed(victims)
            }
            "kill-all" => {
                for i in 1..=n {
                    cluster.kill(i);
                }
                Applied::Killed((1..=n).collect())
            }
            "pause-leader" => match self.leader(cluster, client).await {
                Some(l) => {
                    cluster.signal(l, "-STOP");
                    Applied::Paused(vec![l])
                }
                None => Applied::Nothing,
            },
            "partition-one" => {
                isolate(ids[0], n)?;
                Applied::Partitioned(vec![ids[0]])
            }
            "partition-leader" => match self.leader(cluster, client).await {
                Some(l) => {
                    isolate(l, n)?;
                    Applied::Partitioned(vec![l])
                }
                None => Applied::Nothing,
            },
            "partition-halves" => {
                let cut = (n / 2) as usize;
                let (a, b) = ids.split_at(cut);
                for &x in a {
                    net::cut(x, b)?;
                }
                for &y in b {
                    net::cut(y, a)?;
                }
                Applied::Partitioned(ids.clone())
            }
            "partition-ring" => {
                // Each node keeps its two ring neighbours: with 5 nodes every node sees a
                // majority, but no two nodes see the same one.
                for i in 0..n as usize {
                    let me = ids[i];
                    let left = ids[(i + n as usize - 1) % n as usize];
                    let right = ids[(i + 1) % n as usize];
                    let others: Vec<u64> = ids
                        .iter()
                        .copied()
                        .filter(|&x| x != me && x != left && x != right)
                        .collect();
                    net::cut(me, &others)?;
                }
                Applied::Partitioned(ids.clone())
            }
            "clock-skew" => {
                let leaders = cluster.leader_map(client).await;
                let skew = choose_skew(&mut self.rng, n, &leaders, self.skew_max_ms);
                cluster.skew(skew.node, skew.offset_ms)?;
                let target = match skew.targeted_partition {
                    Some(p) => format!("leader of partition {p}"),
                    None => "any node".to_string(),
                };
                self.record_clock(
                    "start clock-skew",
                    started,
                    &skew,
                    format!(
                        "node {} ({target}; leads {:?}) stepped {:+} ms",
                        skew.node, skew.leader_of, skew.offset_ms
                    ),
                );
                self.skewed.push(skew.clone());
                return Ok(Applied::Skewed(vec![skew.node]));
            }
            "worker-kill" => {
                if let Some(w) = self.workers.choose(&mut self.rng) {
                    w.notify_one();
                }
                Applied::Nothing
            }
            other => anyhow::bail!("unknown nemesis {other:?}"),
        };
        let detail = match &applied {
            Applied::Killed(v)
            | Applied::Paused(v)
            | Applied::Partitioned(v)
            | Applied::Skewed(v) => format!("{v:?}"),
            Applied::Nothing => String::new(),
        };
        self.rec.record(
            Event::new("nemesis", Kind::Nemesis, &format!("start {fault}"))
                .at(started)
                .value(detail),
        );
        Ok(applied)
    }

    /// Steps the clocks of `nodes` back to true time and waits until the nodes see it, so that
    /// the `heal` recorded after it is when they run on true time again.
    async fn unskew(&mut self, nodes: &[u64], cluster: &Cluster) -> Result<()> {
        for &id in nodes {
            cluster.skew(id, 0)?;
        }
        tokio::time::sleep(CLOCK_STEP_LATENCY).await;
        Ok(())
    }

    pub async fn heal(&mut self, applied: Applied, cluster: &mut Cluster) -> Result<()> {
        match applied {
            Applied::Killed(v) => {
                for id in v {
                    cluster.start(id)?;
                }
            }
            Applied::Paused(v) => {
                for id in v {
                    cluster.signal(id, "-CONT");
                }
            }
            Applied::Partitioned(_) => {
                // Rules may sit on either side of a cut: clear every node.
                for id in 1..=cluster.nodes.len() as u64 {
                    net::heal(id);
                }
            }
            Applied::Skewed(v) => {
                self.unskew(&v, cluster).await?;
                let (healed, still): (Vec<Skew>, Vec<Skew>) = std::mem::take(&mut self.skewed)
                    .into_iter()
                    .partition(|s| v.contains(&s.node));
                self.skewed = still;
                for s in healed {
                    let value = format!(
                        "node {} stepped back {:+} ms to true time",
                        s.node, -s.offset_ms
                    );
                    self.record_clock("heal", now_ms(), &Skew { offset_ms: 0, ..s }, value);
                }
                return Ok(());
            }
            Applied::Nothing => {}
        }
        self.record("heal", String::new());
        Ok(())
    }

    /// Undoes every fault whatever was applied: the final heal before the drain.
    pub async fn heal_all(&mut self, cluster: &mut Cluster) -> Result<()> {
        let n = cluster.nodes.len() as u64;
        let all: Vec<u64> = (1..=n).collect();
        self.unskew(&all, cluster).await?;
        self.skewed.clear();
        for id in all {
            net::heal(id);
            cluster.signal(id, "-CONT");
            cluster.start(id)?;
        }
        self.record("heal-all", String::new());
        Ok(())
    }
}

fn isolate(node: u64, n: u64) -> Result<()> {
    let others: Vec<u64> = (1..=n).filter(|&x| x != node).collect();
    net::cut(node, &others)?;
    for &o in &others {
        net::cut(o, &[node])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn clock_skew_targets_leaders_and_any_node_with_steps_both_ways() {
        let mut rng = StdRng::seed_from_u64(3);
        let leaders = [(0, 2), (1, 2), (2, 3), (3, 1)];
        let max = 600_000;
        let (mut as_leader, mut as_any, mut ahead, mut behind, mut big) = (0, 0, 0, 0, 0);
        for _ in 0..1_000 {
            let s = choose_skew(&mut rng, 3, &leaders, max);
            assert!((1..=3).contains(&s.node));
            assert!(s.offset_ms != 0 && s.offset_ms.unsigned_abs() <= max);
            match s.targeted_partition {
                Some(p) => {
                    as_leader += 1;
                    assert!(leaders.contains(&(p, s.node)));
                    assert!(s.leader_of.contains(&p));
                }
                None => as_any += 1,
            }
            let led: Vec<u32> = leaders
                .iter()
                .filter(|l| l.1 == s.node)
                .map(|l| l.0)
                .collect();
            assert_eq!(s.leader_of, led);
            if s.offset_ms > 0 {
                ahead += 1;
            } else {
                behind += 1;
            }
            if s.offset_ms.unsigned_abs() > 300_000 {
                big += 1;
            }
        }
        for (what, n) in [
            ("as leader", as_leader),
            ("as any node", as_any),
            ("ahead", ahead),
            ("behind", behind),
        ] {
            assert!((400..=600).contains(&n), "{what}: {n} of 1000");
        }
        assert!(big > 300, "steps beyond 5 minutes: {big} of 1000");
        // No known leader: any node.
        let s = choose_skew(&mut rng, 5, &[], max);
        assert_eq!((s.targeted_partition, s.leader_of.is_empty()), (None, true));
    }
}
