//! Faults, each applied for a while and then healed.

use std::sync::Arc;

use anyhow::Result;
use hourglass_client::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::cluster::Cluster;
use crate::history::{Event, Kind, Recorder};
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
    Skewed(Vec<u64>),
    Nothing,
}

pub struct Nemesis {
    pub rng: StdRng,
    pub rec: Recorder,
    pub workers: Vec<Arc<tokio::sync::Notify>>,
    pub skew_max_ms: u64,
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

    pub async fn apply(
        &mut self,
        fault: &str,
        cluster: &mut Cluster,
        client: &Client,
    ) -> Result<Applied> {
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
                let victims = vec![ids[0]];
                let ms = self.rng.gen_range(200..=self.skew_max_ms.max(201)) as i64;
                let offset = if self.rng.gen_bool(0.5) { ms } else { -ms };
                cluster.skew(ids[0], &format!("{:+.3}s", offset as f64 / 1000.0))?;
                self.record("clock-skew", format!("node {} {offset:+} ms", ids[0]));
                Applied::Skewed(victims)
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
        self.record(&format!("start {fault}"), detail);
        Ok(applied)
    }

    pub fn heal(&mut self, applied: Applied, cluster: &mut Cluster) -> Result<()> {
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
                for id in v {
                    cluster.skew(id, "+0")?;
                }
            }
            Applied::Nothing => {}
        }
        self.record("heal", String::new());
        Ok(())
    }

    /// Undoes every fault whatever was applied: the final heal before the drain.
    pub fn heal_all(&mut self, cluster: &mut Cluster) -> Result<()> {
        let n = cluster.nodes.len() as u64;
        for id in 1..=n {
            net::heal(id);
            cluster.skew(id, "+0")?;
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
