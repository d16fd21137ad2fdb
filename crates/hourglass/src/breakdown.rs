//! Where a bench run's time went: every node's stage histograms (`/metrics`) scraped before
//! and after the run, their difference summed over the nodes, and per stage the p50 and p99
//! estimated from the buckets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hourglass_client::Client;
use hourglass_server::{NAMESPACE, STAGE_HISTOGRAMS};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Failure;

/// One stage's histogram: cumulative counts by upper bound, in increasing bound order, the
/// last bound infinite.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    fn count(&self) -> u64 {
        self.0.last().map_or(0, |&(_, n)| n)
    }

    fn add(&mut self, le: f64, n: u64) {
        match self.0.iter_mut().find(|(bound, _)| *bound == le) {
            Some((_, total)) => *total += n,
            None => {
                self.0.push((le, n));
                self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// What was counted between `before` and `self`. Bounds missing before (a node that
    /// started meanwhile) count from zero; so does everything when the total went down (a
    /// node restarted).
    fn since(&self, before: &Buckets) -> Buckets {
        if self.count() < before.count() {
            return self.clone();
        }
        Buckets(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let was = before.0.iter().find(|(b, _)| *b == le).map_or(0, |p| p.1);
                    (le, n.saturating_sub(was))
                })
                .collect(),
        )
    }

    /// The `q` quantile, as Prometheus's `histogram_quantile` estimates it: linear within the
    /// bucket holding it, from 0 for the first; the highest finite bound when it falls in the
    /// last. `None` when nothing was counted.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let (mut lower, mut below) = (0.0, 0);
        for &(upper, n) in &self.0 {
            if n as f64 >= rank && n > below {
                if upper.is_infinite() {
                    return Some(lower);
                }
                let share = (rank - below as f64) / (n - below) as f64;
                return Some(lower + (upper - lower) * share);
            }
            (lower, below) = (upper, n);
        }
        Some(lower)
    }
}

/// The stage histograms of one or more nodes, summed: by histogram name (without the
/// namespace) and stage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stages(BTreeMap<(String, String), Buckets>);

impl Stages {
    /// Adds the stage histograms of one node's Prometheus text.
    pub fn add_text(&mut self, text: &str) {
        for line in text.lines() {
            let Some((name, labels, value)) = sample(line) else {
                continue;
            };
            let Some(histogram) = name
                .strip_prefix(NAMESPACE)
                .and_then(|n| n.strip_prefix('_'))
                .and_then(|n| n.strip_suffix("_bucket"))
                .filter(|n| STAGE_HISTOGRAMS.contains(n))
            else {
                continue;
            };
            let (Some(stage), Some(le)) = (label(labels, "stage"), label(labels, "le")) else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse() {
                    Ok(le) => le,
                    Err(_) => continue,
                }
            };
            let Ok(n) = value.parse::<f64>() else {
                continue;
            };
            self.0
                .entry((histogram.to_owned(), stage.to_owned()))
                .or_default()
                .add(le, n as u64);
        }
    }

    /// What was counted between `before` and `self`.
    pub fn since(&self, before: &Stages) -> Stages {
        Stages(
            self.0
                .iter()
                .map(|(key, after)| {
                    let was = before.0.get(key).cloned().unwrap_or_default();
                    (key.clone(), after.since(&was))
                })
                .collect(),
        )
    }

    /// Per histogram and stage that counted anything: the count, and p50 and p99 in ms.
    pub fn report(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for ((histogram, stage), buckets) in &self.0 {
            if buckets.count() == 0 {
                continue;
            }
            let ms = |q| buckets.quantile(q).map(|s| (s * 1e6).round() / 1e3);
            out.entry(histogram.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("made an object")
                .insert(
                    stage.clone(),
                    json!({ "count": buckets.count(), "p50_ms": ms(0.5), "p99_ms": ms(0.99) }),
                );
        }
        out.into()
    }
}

/// `name{labels} value` of a sample line; `None` for comments and lines without labels.
fn sample(line: &str) -> Option<(&str, &str, &str)> {
    let (name, rest) = line.split_once('{')?;
    let (labels, value) = rest.rsplit_once('}')?;
    Some((name, labels, value.trim()))
}

/// The value of label `key` in `a="x",b="y"`: ours hold no quotes or commas.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// Where to reach a node's `/metrics`: its HTTP address, with the host of its gRPC address
/// when it listens on every interface (`0.0.0.0`, `[::]`). `None` when it reports none.
pub fn metrics_address(http: &str, grpc: &str) -> Option<String> {
    let addr: SocketAddr = http.parse().ok()?;
    if !addr.ip().is_unspecified() {
        return Some(addr.to_string());
    }
    let host = grpc.rsplit_once(':').map_or(grpc, |(host, _)| host);
    Some(format!("{host}:{}", addr.port()))
}

/// The stage histograms of every node the cluster status lists, summed. A node that does not
/// answer is left out, with a warning: the breakdown is then of the others.
pub async fn scrape(client: &Client) -> Result<Stages, Failure> {
    let mut stages = Stages::default();
    for node in client.cluster_status().await?.nodes {
        let Some(address) = metrics_address(&node.http_address, &node.address) else {
            eprintln!(
                "bench: node {} reports no HTTP address; its stages are left out",
                node.node_id
            );
            continue;
        };
        match tokio::time::timeout(Duration::from_secs(5), get_metrics(&address)).await {
            Ok(Ok(text)) => stages.add_text(&text),
            Ok(Err(e)) => eprintln!("bench: /metrics of node {}: {e}", node.node_id),
            Err(_) => eprintln!("bench: /metrics of node {}: timed out", node.node_id),
        }
    }
    Ok(stages)
}

/// GET `/metrics` over HTTP/1.0, so the body is plain and ends with the connection.
async fn get_metrics(address: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP response"))?;
    if head.split_whitespace().nth(1) != Some("200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(std::io::Error::other(format!("answered {status:?}")));
    }
    Ok(body.to_owned())
}

/// The stage histograms before a run; `None`, with a warning, when they cannot be read.
pub async fn before(client: &Client) -> Option<Stages> {
    match scrape(client).await {
        Ok(stages) => Some(stages),
        Err(e) => {
            eprintln!("bench: no stage breakdown: {}", e.error);
            None
        }
    }
}

/// The breakdown of the run since `before`, printed one line per stage; `null` when either
/// scrape failed.
pub async fn after(client: &Client, before: Option<Stages>) -> serde_json::Value {
    let Some(before) = before else {
        return serde_json::Value::Null;
    };
    match scrape(client).await {
        Ok(after) => {
            let report = after.since(&before).report();
            print(&report);
            report
        }
        Err(e) => {
            eprintln!("bench: no stage breakdown: {}", e.error);
            serde_json::Value::Null
        }
    }
}

fn print(report: &serde_json::Value) {
    let Some(histograms) = report.as_object() else {
        return;
    };
    for (histogram, stages) in histograms {
        for (stage, figures) in stages.as_object().into_iter().flatten() {
            eprintln!(
                "bench: {histogram} {stage:>18}: {:>8} samples, p50 {:>9} ms, p99 {:>9} ms",
                figures["count"], figures["p50_ms"], figures["p99_ms"]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(stage: &str, counts: &[(&str, u64)]) -> String {
        let mut text = String::from("# TYPE hourglass_fire_stage_seconds histogram\n");
        for (le, n) in counts {
            text.push_str(&format!(
                "hourglass_fire_stage_seconds_bucket{{le=\"{le}\",node_id=\"1\",stage=\"{stage}\"}} {n}\n"
            ));
        }
        text.push_str("hourglass_fire_stage_seconds_sum{node_id=\"1\",stage=\"x\"} 1.5\n");
        text.push_str("hourglass_timers_fired_total{node_id=\"1\"} 7\n");
        text
    }

    fn buckets(pairs: &[(f64, u64)]) -> Buckets {
        Buckets(pairs.to_vec())
    }

    #[test]
    fn nodes_add_up_and_the_run_is_after_minus_before() {
        let mut before = Stages::default();
        before.add_text(&node("commit", &[("0.001", 1), ("0.01", 2), ("+Inf", 2)]));
        let mut after = Stages::default();
        after.add_text(&node("commit", &[("0.001", 3), ("0.01", 9), ("+Inf", 10)]));
        after.add_text(&node("commit", &[("0.001", 0), ("0.01", 4), ("+Inf", 4)]));
        after.add_text(&node("dispatch", &[("0.001", 5), ("0.01", 5), ("+Inf", 5)]));
        let run = after.since(&before);
        let key = |s: &str| ("fire_stage_seconds".to_owned(), s.to_owned());
        assert_eq!(
            run.0[&key("commit")],
            buckets(&[(0.001, 2), (0.01, 11), (f64::INFINITY, 12)])
        );
        // Only stage histograms are read, and a stage new since `before` counts from zero.
        assert_eq!(run.0.len(), 2);
        assert_eq!(run.0[&key("dispatch")].count(), 5);
    }

    #[test]
    fn a_restarted_node_counts_from_zero() {
        let before = buckets(&[(0.001, 10), (f64::INFINITY, 20)]);
        let after = buckets(&[(0.001, 1), (f64::INFINITY, 3)]);
        assert_eq!(after.since(&before), after);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_prometheus() {
        // 10 samples up to 1 ms, 10 more up to 3 ms, 80 more up to 10 ms.
        let b = buckets(&[(0.001, 10), (0.003, 20), (0.01, 100), (f64::INFINITY, 100)]);
        let close = |a: Option<f64>, e: f64| assert!((a.unwrap() - e).abs() < 1e-9, "{a:?} {e}");
        close(b.quantile(0.05), 0.0005);
        close(b.quantile(0.15), 0.002);
        close(b.quantile(0.5), 0.003 + 0.007 * 30.0 / 80.0);
        close(b.quantile(0.99), 0.003 + 0.007 * 79.0 / 80.0);
        // Beyond the last finite bound: that bound, as Prometheus answers.
        let over = buckets(&[(0.001, 1), (0.01, 2), (f64::INFINITY, 10)]);
        close(over.quantile(0.99), 0.01);
        // Empty buckets before the quantile's do not pull it down.
        let gap = buckets(&[(0.001, 0), (0.002, 0), (0.005, 4), (f64::INFINITY, 4)]);
        close(gap.quantile(0.5), 0.0035);
        assert_eq!(
            buckets(&[(0.001, 0), (f64::INFINITY, 0)]).quantile(0.5),
            None
        );
    }

    #[test]
    fn the_report_has_every_stage_that_counted_in_ms() {
        let mut s = Stages::default();
        s.add_text(&node(
            "commit",
            &[("0.001", 0), ("0.01", 100), ("+Inf", 100)],
        ));
        s.add_text(&node("propose", &[("0.001", 0), ("0.01", 0), ("+Inf", 0)]));
        let report = s.report();
        let commit = &report["fire_stage_seconds"]["commit"];
        assert_eq!(commit["count"], 100);
        assert_eq!(commit["p50_ms"], 5.5);
        assert_eq!(commit["p99_ms"], 9.91);
        assert!(report["fire_stage_seconds"].get("propose").is_none());
    }

    #[test]
    fn metrics_are_reached_at_the_grpc_host_when_listening_everywhere() {
        assert_eq!(
            metrics_address("127.0.0.1:9001", "127.0.0.1:7001").as_deref(),
            Some("127.0.0.1:9001")
        );
        assert_eq!(
            metrics_address("0.0.0.0:9001", "node-1.example:7001").as_deref(),
            Some("node-1.example:9001")
        );
        assert_eq!(
            metrics_address("[::]:9001", "[fd00::1]:7001").as_deref(),
            Some("[fd00::1]:9001")
        );
        assert_eq!(metrics_address("", "127.0.0.1:7001"), None);
    }
}
