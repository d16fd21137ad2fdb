//! Checks a history against the guarantees: nothing acknowledged is lost (G1, G3), nothing is
//! delivered early (G2), nothing is delivered after a cancel answered CANCELLED (G4), nothing
//! is delivered that was never scheduled. Duplicates (G5 allows them after faults), lateness
//! and unavailability are measured, not judged.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Event, Kind};

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// How far before `fire_at` (by the harness's clock) a delivery may arrive when node
    /// clocks are skewed: G2 holds by the delivering leader's clock.
    pub skew_bound_ms: u64,
    /// A timer due later than `end - grace_ms` is not expected to have been delivered.
    pub grace_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    pub count: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub valid: bool,
    pub scheduled_ok: usize,
    pub scheduled_unknown: usize,
    pub cancelled: usize,
    pub expected_deliveries: usize,
    pub delivered_keys: usize,
    pub deliveries: usize,
    pub lost: Vec<String>,
    pub early: Vec<String>,
    pub cancelled_but_delivered: Vec<String>,
    pub unexpected: Vec<String>,
    pub duplicated: usize,
    /// Receive time minus fire_at, first delivery of timers due after the run started.
    pub lateness_ms: Percentiles,
    /// Longest stretch with client operations attempted and none succeeding.
    pub longest_unavailable_ms: u64,
    pub unavailable_windows: Vec<(u64, u64)>,
}

fn percentiles(mut v: Vec<u64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Percentiles {
        p50: at(0.5),
        p99: at(0.99),
        max: *v.last().expect("non-empty"),
        count: v.len(),
    }
}

pub fn check(history: &[Event], opts: &CheckOptions) -> Report {
    let start = history.iter().map(|e| e.time).min().unwrap_or(0);
    let end = history.iter().map(|e| e.time).max().unwrap_or(0);
    let mut scheduled: BTreeMap<&str, (u64, Kind)> = BTreeMap::new();
    let mut invoked: BTreeSet<&str> = BTreeSet::new();
    let mut cancel_outcomes: BTreeMap<&str, Vec<(Kind, &str)>> = BTreeMap::new();
    let mut deliveries: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    let mut ops: Vec<(u64, bool)> = Vec::new();

    for e in history {
        match (&e.kind, e.f.as_str()) {
            (Kind::Invoke, "schedule") => {
                invoked.insert(&e.key);
            }
            (Kind::Ok | Kind::Fail | Kind::Info, "schedule") => {
                if let Some(at) = e.fire_at {
                    // A definite answer wins over an unknown one for the same key.
                    let entry = scheduled.entry(&e.key).or_insert((at, e.kind.clone()));
                    if e.kind == Kind::Ok {
                        *entry = (at, Kind::Ok);
                    }
                }
            }
            (Kind::Ok | Kind::Fail | Kind::Info, "cancel") => {
                cancel_outcomes
                    .entry(&e.key)
                    .or_default()
                    .push((e.kind.clone(), &e.value));
            }
            (Kind::Deliver, _) => deliveries.entry(&e.key).or_default().push(e),
            _ => {}
        }
        if matches!(e.kind, Kind::Ok | Kind::Fail | Kind::Info) && e.f != "get" {
            ops.push((e.time, e.kind == Kind::Ok));
        }
    }

    let mut r = Report::default();
    let mut lateness = Vec::new();
    for (&key, &(fire_at, ref kind)) in &scheduled {
        match kind {
            Kind::Ok => r.scheduled_ok += 1,
            Kind::Info => r.scheduled_unknown += 1,
            _ => {}
        }
        let cancels = cancel_outcomes.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let cancelled = cancels
            .iter()
            .any(|(k, v)| *k == Kind::Ok && *v == "cancelled");
        let maybe_cancelled = cancels.iter().any(|(k, _)| *k == Kind::Info);
        if cancelled {
            r.cancelled += 1;
        }
        let got = deliveries.get(key).map(Vec::as_slice).unwrap_or(&[]);
        if cancelled && !got.is_empty() {
            r.cancelled_but_delivered.push(key.to_owned());
        }
        if *kind == Kind::Ok && !cancelled && !maybe_cancelled && fire_at + opts.grace_ms <= end {
            r.expected_deliveries += 1;
            if got.is_empty() {
                r.lost.push(key.to_owned());
            }
        }
        if let Some(first) = got.iter().min_by_key(|d| d.time) {
            if fire_at >= start {
                lateness.push(first.time.saturating_sub(fire_at));
            }
        }
    }
    for (&key, got) in &deliveries {
        r.deliveries += got.len();
        r.delivered_keys += 1;
        if got.len() > 1 {
            r.duplicated += got.len() - 1;
        }
        if !invoked.contains(key) {
            r.unexpected.push(key.to_owned());
            continue;
        }
        let fire_at = got
            .iter()
            .find_map(|d| d.fire_at)
            .or(scheduled.get(key).map(|s| s.0));
        if let Some(fire_at) = fire_at {
            let early = got.iter().any(|d| {
                d.time + opts.skew_bound_ms < fire_at || d.fired_at.is_some_and(|f| f < fire_at)
            });
            if early {
                r.early.push(key.to_owned());
            }
        }
    }
    r.lateness_ms = percentiles(lateness);

    // Unavailability: stretches between a failed operation and the next success.
    ops.sort_unstable();
    let mut window: Option<u64> = None;
    for (t, ok) in ops {
        match (ok, window) {
            (false, None) => window = Some(t),
            (true, Some(from)) => {
                if t - from >= 1_000 {
                    r.unavailable_windows.push((from, t));
                }
                window = None;
            }
            _ => {}
        }
    }
    if let Some(from) = window {
        r.unavailable_windows.push((from, end));
    }
    r.longest_unavailable_ms = r
        .unavailable_windows
        .iter()
        .map(|(a, b)| b - a)
        .max()
        .unwrap_or(0);
    r.valid = r.lost.is_empty()
        && r.early.is_empty()
        && r.cancelled_but_delivered.is_empty()
        && r.unexpected.is_empty();
    r
}

/// A readable summary of a report.
pub fn render(r: &Report) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "0".to_string()
        } else {
            format!(
                "{} (e.g. {})",
                v.len(),
                v.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            )
        }
    };
    format!(
        "verdict:                  {}\n\
         scheduled (ok / unknown): {} / {}\n\
         cancelled (CANCELLED):    {}\n\
         expected deliveries:      {}\n\
         delivered timers:         {} ({} deliveries, {} duplicates)\n\
         lost:                     {}\n\
         early:                    {}\n\
         cancelled but delivered:  {}\n\
         unexpected:               {}\n\
         lateness ms p50/p99/max:  {} / {} / {} (over {} timers)\n\
         unavailable windows:      {} (longest {} ms)\n",
        if r.valid { "VALID" } else { "INVALID" },
        r.scheduled_ok,
        r.scheduled_unknown,
        r.cancelled,
        r.expected_deliveries,
        r.delivered_keys,
        r.deliveries,
        r.duplicated,
        list(&r.lost),
        list(&r.early),
        list(&r.cancelled_but_delivered),
        list(&r.unexpected),
        r.lateness_ms.p50,
        r.lateness_ms.p99,
        r.lateness_ms.max,
        r.lateness_ms.count,
        r.unavailable_windows.len(),
        r.longest_unavailable_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: CheckOptions = CheckOptions {
        skew_bound_ms: 500,
        grace_ms: 5_000,
    };

    fn ev(time: u64, kind: Kind, f: &str, key: &str) -> Event {
        let mut e = Event::new("t", kind, f).key(key);
        e.time = time;
        e
    }

    fn schedule(h: &mut Vec<Event>, t: u64, key: &str, fire_at: u64, outcome: Kind) {
        h.push(ev(t, Kind::Invoke, "schedule", key).fire_at(fire_at));
        h.push(ev(t + 5, outcome, "schedule", key).fire_at(fire_at));
    }

    fn deliver(h: &mut Vec<Event>, t: u64, key: &str, fire_at: u64, attempt: u32) {
        let mut e = ev(t, Kind::Deliver, "deliver", key).fire_at(fire_at);
        e.attempt = Some(attempt);
        e.fired_at = Some(fire_at);
        e.delivered_at = Some(t);
        h.push(e);
    }

    fn end(h: &mut Vec<Event>, t: u64) {
        h.push(ev(t, Kind::Nemesis, "end", ""));
    }

    fn healthy() -> Vec<Event> {
        let mut h = Vec::new();
        schedule(&mut h, 0, "w/a", 1_000, Kind::Ok);
        deliver(&mut h, 1_010, "w/a", 1_000, 1);
        schedule(&mut h, 0, "w/b", 2_000, Kind::Ok);
        h.push(ev(100, Kind::Invoke, "cancel", "w/b"));
        h.push(ev(110, Kind::Ok, "cancel", "w/b").value("cancelled"));
        // Unknown outcome: may exist, need not be delivered.
        schedule(&mut h, 0, "w/c", 1_000, Kind::Info);
        // Due after the run: not expected yet.
        schedule(&mut h, 0, "w/d", 99_000, Kind::Ok);
        end(&mut h, 20_000);
        h
    }

    #[test]
    fn a_healthy_history_is_valid() {
        let r = check(&healthy(), &OPTS);
        assert!(r.valid, "{}", render(&r));
        assert_eq!(r.expected_deliveries, 1);
        assert_eq!(r.lateness_ms.p50, 10);
    }

    #[test]
    fn a_lost_timer_is_caught() {
        let mut h = healthy();
        schedule(&mut h, 0, "w/lost", 3_000, Kind::Ok);
        let r = check(&h, &OPTS);
        assert!(!r.valid);
        assert_eq!(r.lost, vec!["w/lost"]);
    }

    #[test]
    fn an_early_delivery_is_caught_beyond_the_skew_bound() {
        let mut h = healthy();
        schedule(&mut h, 0, "w/early", 5_000, Kind::Ok);
        deliver(&mut h, 4_000, "w/early", 5_000, 1);
        let r = check(&h, &OPTS);
        assert_eq!(r.early, vec!["w/early"]);
        // Within the skew bound by the harness clock, with the server's clock saying on time.
        let mut h = healthy();
        schedule(&mut h, 0, "w/skewed", 5_000, Kind::Ok);
        deliver(&mut h, 4_700, "w/skewed", 5_000, 1);
        assert!(check(&h, &OPTS).valid);
        // The server's own clock saying it fired before fire_at is always early.
        let mut h = healthy();
        schedule(&mut h, 0, "w/server-early", 5_000, Kind::Ok);
        deliver(&mut h, 6_000, "w/server-early", 5_000, 1);
        h.last_mut().unwrap().fired_at = Some(4_999);
        assert_eq!(check(&h, &OPTS).early, vec!["w/server-early"]);
    }

    #[test]
    fn a_delivery_after_an_acknowledged_cancel_is_caught() {
        let mut h = healthy();
        deliver(&mut h, 2_100, "w/b", 2_000, 1);
        let r = check(&h, &OPTS);
        assert_eq!(r.cancelled_but_delivered, vec!["w/b"]);
        assert!(!r.valid);
    }

    #[test]
    fn an_unexpected_delivery_is_caught() {
        let mut h = healthy();
        deliver(&mut h, 2_100, "w/never", 2_000, 1);
        let r = check(&h, &OPTS);
        assert_eq!(r.unexpected, vec!["w/never"]);
        assert!(!r.valid);
    }

    #[test]
    fn duplicates_are_counted_not_failed() {
        let mut h = healthy();
        deliver(&mut h, 1_500, "w/a", 1_000, 2);
        let r = check(&h, &OPTS);
        assert!(r.valid);
        assert_eq!(r.duplicated, 1);
    }

    #[test]
    fn unavailability_windows_are_measured() {
        let mut h = healthy();
        h.push(ev(3_000, Kind::Fail, "schedule", "w/x"));
        h.push(ev(4_500, Kind::Info, "schedule", "w/y"));
        schedule(&mut h, 6_000, "w/z", 99_000, Kind::Ok);
        let r = check(&h, &OPTS);
        assert_eq!(r.unavailable_windows, vec![(3_000, 6_005)]);
        assert_eq!(r.longest_unavailable_ms, 3_005);
    }
}
