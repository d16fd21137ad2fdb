//! Checks a history against the guarantees: nothing acknowledged is lost (G1, G3), nothing is
//! delivered early (G2), nothing acknowledged and due stays undelivered long after the faults
//! that could delay it healed (stuck), nothing is delivered after a cancel answered CANCELLED
//! (G4), nothing is delivered that was never scheduled. Duplicates (G5 allows them after
//! faults), lateness and unavailability are measured, not judged.
//!
//! The one true clock is the harness's: every reference time is the client's own record of
//! what it asked for, read on the harness's clock, which no nemesis touches. The server's
//! echoes (`server_fire_at`) are recorded for diagnosis and never trusted.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Event, Kind};

/// The only allowance for "early": the harness measures receive times after the delivery
/// crossed the network and a channel, and node clocks synchronised to true time still differ
/// from it by a few ms. It does not grow with the skew the nemesis applies.
pub const SLACK_MS: u64 = 50;

/// A due timer must be delivered within this, counted from its due time or from the heal of
/// the last fault active in the window (see [`stuck_deadline`]).
pub const STUCK_MS: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// A timer due later than `end - grace_ms` is not expected to have been delivered.
    pub grace_ms: u64,
}

/// What the client asked for when it scheduled a timer, on the harness's clock.
#[derive(Debug, Clone, Copy)]
struct Request {
    invoked_at: u64,
    /// The absolute time asked for, or `None` for a delay.
    at: Option<u64>,
    delay_ms: u64,
}

impl Request {
    fn of(e: &Event) -> Option<Request> {
        match (e.fire_at, e.delay_ms) {
            (Some(at), _) => Some(Request {
                invoked_at: e.time,
                at: Some(at),
                delay_ms: 0,
            }),
            (None, Some(delay_ms)) => Some(Request {
                invoked_at: e.time,
                at: None,
                delay_ms,
            }),
            (None, None) => None,
        }
    }

    /// The earliest the timer may be delivered: the time asked for, or for a delay the
    /// invocation plus the delay (no node can have received the request earlier).
    fn reference(&self) -> u64 {
        self.at.unwrap_or(self.invoked_at + self.delay_ms)
    }

    /// The latest the timer can have become due, given that its schedule was acknowledged at
    /// `acked_at`: it committed before the answer, and a time already past fires at once.
    fn due_by(&self, acked_at: u64) -> u64 {
        match self.at {
            Some(at) => at.max(acked_at),
            None => acked_at + self.delay_ms,
        }
    }
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
    /// Timers with at least one delivery received, delivered or fired before the client's
    /// fire_at minus [`SLACK_MS`].
    pub early: Vec<String>,
    /// Of those, timers received early by the harness's clock...
    pub early_by_receive: usize,
    /// ...with `delivered_at` early...
    pub early_by_delivered_at: usize,
    /// ...and with `fired_at` early.
    pub early_by_fired_at: usize,
    /// How far before the client's fire_at the earliest receive came, over early timers.
    pub max_early_ms: u64,
    /// Due, acknowledged, not cancelled, and first delivered after its [`stuck_deadline`]
    /// (or never, when the deadline passed before the end and it is not already lost).
    pub stuck: Vec<String>,
    pub cancelled_but_delivered: Vec<String>,
    pub unexpected: Vec<String>,
    pub duplicated: usize,
    /// Nemesis faults (start to heal) in the history.
    pub fault_windows: usize,
    /// Receive time minus the client's fire_at, first delivery of timers due after the run
    /// started.
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

/// The faults of a history as (start, heal) on the harness's clock: from a nemesis `start …`
/// to the next `heal` or `heal-all`. A fault never healed lasts forever.
pub fn fault_windows(history: &[Event]) -> Vec<(u64, u64)> {
    let mut nemesis: Vec<&Event> = history.iter().filter(|e| e.kind == Kind::Nemesis).collect();
    nemesis.sort_by_key(|e| e.time);
    let mut windows = Vec::new();
    let mut open: Option<u64> = None;
    for e in nemesis {
        if e.f.starts_with("start ") {
            open = Some(open.map_or(e.time, |s| s.min(e.time)));
        } else if e.f == "heal" || e.f == "heal-all" {
            if let Some(s) = open.take() {
                windows.push((s, e.time.max(s)));
            }
        }
    }
    if let Some(s) = open {
        windows.push((s, u64::MAX));
    }
    windows
}

/// When a timer due at `due` must have been delivered: [`STUCK_MS`] after it is due; when a
/// fault was active at any point of that window, [`STUCK_MS`] after that fault healed, again
/// and again until a window holds no fault.
pub fn stuck_deadline(due: u64, faults: &[(u64, u64)]) -> u64 {
    let mut from = due;
    let mut deadline = due.saturating_add(STUCK_MS);
    loop {
        let healed = faults
            .iter()
            .filter(|&&(start, heal)| start <= deadline && heal > from)
            .map(|&(_, heal)| heal)
            .max();
        match healed {
            Some(heal) => {
                from = heal;
                deadline = heal.saturating_add(STUCK_MS);
            }
            None => return deadline,
        }
    }
}

pub fn check(history: &[Event], opts: &CheckOptions) -> Report {
    let start = history.iter().map(|e| e.time).min().unwrap_or(0);
    let end = history.iter().map(|e| e.time).max().unwrap_or(0);
    let faults = fault_windows(history);
    // The first invocation's request; a completion's only when no invocation carried one.
    let mut requests: BTreeMap<&str, Request> = BTreeMap::new();
    // Outcome of the schedule and when it was answered.
    let mut scheduled: BTreeMap<&str, (Kind, u64)> = BTreeMap::new();
    let mut invoked: BTreeSet<&str> = BTreeSet::new();
    let mut cancel_outcomes: BTreeMap<&str, Vec<(Kind, &str)>> = BTreeMap::new();
    let mut deliveries: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    let mut ops: Vec<(u64, bool)> = Vec::new();

    let mut by_time: Vec<&Event> = history.iter().collect();
    by_time.sort_by_key(|e| e.time);
    for e in by_time {
        match (&e.kind, e.f.as_str()) {
            (Kind::Invoke, "schedule") => {
                invoked.insert(&e.key);
                if let Some(r) = Request::of(e) {
                    requests.entry(&e.key).or_insert(r);
                }
            }
            (Kind::Ok | Kind::Fail | Kind::Info, "schedule") => {
                // A definite answer wins over an unknown one for the same key.
                let entry = scheduled.entry(&e.key).or_insert((e.kind.clone(), e.time));
                if e.kind == Kind::Ok && entry.0 != Kind::Ok {
                    *entry = (Kind::Ok, e.time);
                }
                // Only an absolute time can stand in for a missing invocation: a delay is
                // counted from the invocation.
                if e.fire_at.is_some() {
                    if let Some(r) = Request::of(e) {
                        requests.entry(&e.key).or_insert(r);
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

    let mut r = Report {
        fault_windows: faults.len(),
        ..Report::default()
    };
    let mut lateness = Vec::new();
    for (&key, &(ref kind, answered_at)) in &scheduled {
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
        let Some(request) = requests.get(key) else {
            continue;
        };
        let first = got.iter().map(|d| d.time).min();
        if *kind == Kind::Ok && !cancelled && !maybe_cancelled {
            let due = request.due_by(answered_at);
            let mut lost = false;
            if due + opts.grace_ms <= end {
                r.expected_deliveries += 1;
                if got.is_empty() {
                    r.lost.push(key.to_owned());
                    lost = true;
                }
            }
            let deadline = stuck_deadline(due, &faults);
            let stuck = match first {
                Some(t) => t > deadline,
                None => deadline <= end && !lost,
            };
            if stuck {
                r.stuck.push(key.to_owned());
            }
        }
        if let Some(first) = first {
            let reference = request.reference();
            if reference >= start {
                lateness.push(first.saturating_sub(reference));
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
        let Some(request) = requests.get(key) else {
            continue;
        };
        let reference = request.reference();
        let before = |t: u64| t + SLACK_MS < reference;
        let received = got.iter().any(|d| before(d.time));
        let delivered = got.iter().any(|d| d.delivered_at.is_some_and(before));
        let fired = got.iter().any(|d| d.fired_at.is_some_and(before));
        if received {
            r.early_by_receive += 1;
            let earliest = got.iter().map(|d| d.time).min().unwrap_or(reference);
            r.max_early_ms = r.max_early_ms.max(reference.saturating_sub(earliest));
        }
        r.early_by_delivered_at += usize::from(delivered);
        r.early_by_fired_at += usize::from(fired);
        if received || delivered || fired {
            r.early.push(key.to_owned());
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
        && r.stuck.is_empty()
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
         early by receive / delivered_at / fired_at: {} / {} / {} timers (received up to {} ms before fire_at; slack {} ms)\n\
         stuck:                    {}\n\
         cancelled but delivered:  {}\n\
         unexpected:               {}\n\
         faults:                   {}\n\
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
        r.early_by_receive,
        r.early_by_delivered_at,
        r.early_by_fired_at,
        r.max_early_ms,
        SLACK_MS,
        list(&r.stuck),
        list(&r.cancelled_but_delivered),
        list(&r.unexpected),
        r.fault_windows,
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

    const OPTS: CheckOptions = CheckOptions { grace_ms: 5_000 };

    fn ev(time: u64, kind: Kind, f: &str, key: &str) -> Event {
        Event::new("t", kind, f).key(key).at(time)
    }

    /// An absolute schedule invoked at `t`, answered 5 ms later.
    fn schedule(h: &mut Vec<Event>, t: u64, key: &str, fire_at: u64, outcome: Kind) {
        h.push(ev(t, Kind::Invoke, "schedule", key).fire_at(fire_at));
        h.push(ev(t + 5, outcome, "schedule", key).fire_at(fire_at));
    }

    /// A schedule with a delay invoked at `t`, answered 5 ms later with the server's echo.
    fn schedule_in(h: &mut Vec<Event>, t: u64, key: &str, delay: u64, echo: u64) {
        h.push(ev(t, Kind::Invoke, "schedule", key).delay_ms(delay));
        let mut ok = ev(t + 5, Kind::Ok, "schedule", key).delay_ms(delay);
        ok.server_fire_at = Some(echo);
        h.push(ok);
    }

    /// A delivery received at `t` that the server says it fired and delivered at `t` too,
    /// echoing `server_fire_at`.
    fn deliver(h: &mut Vec<Event>, t: u64, key: &str, server_fire_at: u64, attempt: u32) {
        let mut e = ev(t, Kind::Deliver, "deliver", key);
        e.server_fire_at = Some(server_fire_at);
        e.attempt = Some(attempt);
        e.fired_at = Some(t);
        e.delivered_at = Some(t);
        h.push(e);
    }

    fn fault(h: &mut Vec<Event>, from: u64, to: u64) {
        h.push(ev(from, Kind::Nemesis, "start kill-leader", ""));
        h.push(ev(to, Kind::Nemesis, "heal", ""));
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
        // A delay: due 2 s after the invocation at 500.
        schedule_in(&mut h, 500, "w/e", 2_000, 2_503);
        deliver(&mut h, 2_520, "w/e", 2_503, 1);
        // A fault, healed long before the end.
        fault(&mut h, 3_000, 5_000);
        end(&mut h, 20_000);
        h
    }

    /// A timer due at 5,000 (invoked at 0), received at `t`.
    fn received_at(t: u64) -> Report {
        let mut h = healthy();
        schedule(&mut h, 0, "w/x", 5_000, Kind::Ok);
        deliver(&mut h, t, "w/x", 5_000, 1);
        // The server's own times say on time: only the receive time can make it early.
        h.last_mut().unwrap().fired_at = Some(5_000);
        h.last_mut().unwrap().delivered_at = Some(5_000);
        check(&h, &OPTS)
    }

    #[test]
    fn a_healthy_history_is_valid() {
        let r = check(&healthy(), &OPTS);
        assert!(r.valid, "{}", render(&r));
        assert_eq!(r.expected_deliveries, 2);
        assert_eq!(r.fault_windows, 1);
        assert_eq!((r.lateness_ms.count, r.lateness_ms.max), (2, 20));
    }

    #[test]
    fn a_lost_timer_is_caught() {
        let mut h = healthy();
        schedule(&mut h, 0, "w/lost", 3_000, Kind::Ok);
        let r = check(&h, &OPTS);
        assert!(!r.valid);
        assert_eq!(r.lost, vec!["w/lost"]);
        // Never delivered is lost, not also stuck.
        assert!(r.stuck.is_empty());
    }

    #[test]
    fn receive_49_ms_before_fire_at_is_within_the_slack() {
        let r = received_at(5_000 - 49);
        assert!(r.valid, "{}", render(&r));
        let r = received_at(5_000 - SLACK_MS);
        assert!(r.valid, "{}", render(&r));
    }

    #[test]
    fn receive_51_ms_before_fire_at_is_early() {
        let r = received_at(5_000 - 51);
        assert!(!r.valid);
        assert_eq!(r.early, vec!["w/x"]);
        assert_eq!(
            (
                r.early_by_receive,
                r.early_by_delivered_at,
                r.early_by_fired_at
            ),
            (1, 0, 0)
        );
        assert_eq!(r.max_early_ms, 51);
    }

    #[test]
    fn early_by_receive_is_judged_against_the_clients_fire_at_not_the_echo() {
        // The server echoes a later fire_at (as a node whose clock runs ahead would resolve
        // it) and says it fired at that time: the harness received it 2 s before what the
        // client asked for.
        let mut h = healthy();
        schedule(&mut h, 0, "w/echo", 5_000, Kind::Ok);
        deliver(&mut h, 3_000, "w/echo", 7_000, 1);
        h.last_mut().unwrap().fired_at = Some(7_000);
        h.last_mut().unwrap().delivered_at = Some(7_000);
        let r = check(&h, &OPTS);
        assert_eq!(r.early, vec!["w/echo"]);
        assert_eq!(r.max_early_ms, 2_000);
    }

    #[test]
    fn a_delay_is_judged_from_the_invocation_by_the_harness_clock() {
        // Invoked at 1,000 with a 3 s delay: due no earlier than 4,000 whatever the server
        // echoes (a node whose clock is 1 s behind resolves it to 3,000).
        let mut h = healthy();
        schedule_in(&mut h, 1_000, "w/delay", 3_000, 3_005);
        deliver(&mut h, 3_010, "w/delay", 3_005, 1);
        h.last_mut().unwrap().fired_at = Some(4_000);
        h.last_mut().unwrap().delivered_at = Some(4_000);
        let r = check(&h, &OPTS);
        assert_eq!(r.early, vec!["w/delay"]);
        assert_eq!(r.early_by_receive, 1);
        // Received at 3,960: within the slack.
        let mut h = healthy();
        schedule_in(&mut h, 1_000, "w/delay", 3_000, 4_004);
        deliver(&mut h, 3_960, "w/delay", 4_004, 1);
        h.last_mut().unwrap().fired_at = Some(4_004);
        h.last_mut().unwrap().delivered_at = Some(4_004);
        assert!(check(&h, &OPTS).valid);
    }

    #[test]
    fn early_by_delivered_at_is_caught() {
        for (delivered_at, early) in [(5_000 - 49, false), (5_000 - 51, true)] {
            let mut h = healthy();
            schedule(&mut h, 0, "w/x", 5_000, Kind::Ok);
            deliver(&mut h, 5_020, "w/x", 5_000, 1);
            h.last_mut().unwrap().fired_at = Some(5_000);
            h.last_mut().unwrap().delivered_at = Some(delivered_at);
            let r = check(&h, &OPTS);
            assert_eq!(
                r.valid,
                !early,
                "delivered_at {delivered_at}: {}",
                render(&r)
            );
            assert_eq!(r.early_by_delivered_at, usize::from(early));
            assert_eq!((r.early_by_receive, r.early_by_fired_at), (0, 0));
        }
    }

    #[test]
    fn early_by_fired_at_is_caught() {
        for (fired_at, early) in [(5_000 - 49, false), (5_000 - 51, true)] {
            let mut h = healthy();
            schedule(&mut h, 0, "w/x", 5_000, Kind::Ok);
            deliver(&mut h, 5_020, "w/x", 5_000, 1);
            h.last_mut().unwrap().fired_at = Some(fired_at);
            h.last_mut().unwrap().delivered_at = Some(5_010);
            let r = check(&h, &OPTS);
            assert_eq!(r.valid, !early, "fired_at {fired_at}: {}", render(&r));
            assert_eq!(r.early_by_fired_at, usize::from(early));
            assert_eq!((r.early_by_receive, r.early_by_delivered_at), (0, 0));
        }
    }

    #[test]
    fn an_early_redelivery_is_caught_even_after_an_on_time_one() {
        let mut h = healthy();
        schedule(&mut h, 0, "w/x", 5_000, Kind::Ok);
        deliver(&mut h, 5_010, "w/x", 5_000, 1);
        deliver(&mut h, 5_020, "w/x", 5_000, 2);
        h.last_mut().unwrap().fired_at = Some(4_000);
        assert_eq!(check(&h, &OPTS).early, vec!["w/x"]);
    }

    #[test]
    fn the_injected_early_fire_is_caught() {
        // What the early-fire fault (fault.early_fire = 2s) does: every timer fired, delivered and
        // received 2 s before its time.
        let mut h = healthy();
        for i in 0..10u64 {
            let (key, at) = (format!("w/f{i}"), 6_000 + i * 500);
            schedule(&mut h, 0, &key, at, Kind::Ok);
            deliver(&mut h, at - 2_000 + 3, &key, at, 1);
        }
        let r = check(&h, &OPTS);
        assert!(!r.valid);
        assert_eq!(r.early.len(), 10);
        assert_eq!(
            (
                r.early_by_receive,
                r.early_by_delivered_at,
                r.early_by_fired_at
            ),
            (10, 10, 10)
        );
        assert_eq!(r.max_early_ms, 1_997);
    }

    #[test]
    fn a_stuck_timer_is_caught() {
        // Due at 6,000, no fault near it: must arrive by 16,000.
        for (received, stuck) in [(16_000, false), (16_001, true)] {
            let mut h = healthy();
            schedule(&mut h, 0, "w/s", 6_000, Kind::Ok);
            deliver(&mut h, received, "w/s", 6_000, 1);
            let r = check(&h, &OPTS);
            assert_eq!(r.valid, !stuck, "received {received}: {}", render(&r));
            assert_eq!(r.stuck.len(), usize::from(stuck));
            assert!(r.lost.is_empty() && r.early.is_empty());
        }
    }

    #[test]
    fn a_fault_in_the_window_restarts_it_after_the_heal() {
        // Due at 6,000; a fault from 10,000 to 12,000 moves the deadline to 22,000.
        for (received, stuck) in [(21_000, false), (22_001, true)] {
            let mut h = healthy();
            schedule(&mut h, 0, "w/s", 6_000, Kind::Ok);
            fault(&mut h, 10_000, 12_000);
            deliver(&mut h, received, "w/s", 6_000, 1);
            end(&mut h, 40_000);
            let r = check(&h, &OPTS);
            assert_eq!(r.valid, !stuck, "received {received}: {}", render(&r));
            assert_eq!(r.stuck.len(), usize::from(stuck));
        }
        // A fault already active when it fell due counts too; one healed before does not.
        assert_eq!(stuck_deadline(6_000, &[(5_000, 7_000)]), 17_000);
        assert_eq!(stuck_deadline(6_000, &[(1_000, 5_999)]), 16_000);
    }

    #[test]
    fn faults_that_keep_landing_in_the_window_keep_restarting_it() {
        // 6,000 -> fault healed at 12,000 -> window to 22,000 holds another healed at 25,000
        // -> deadline 35,000. A fault at 36,000 is outside.
        let faults = [(10_000, 12_000), (21_000, 25_000), (36_000, 38_000)];
        assert_eq!(stuck_deadline(6_000, &faults), 35_000);
        for (received, stuck) in [(34_000, false), (35_001, true)] {
            let mut h = healthy();
            schedule(&mut h, 0, "w/s", 6_000, Kind::Ok);
            for (a, b) in faults {
                fault(&mut h, a, b);
            }
            deliver(&mut h, received, "w/s", 6_000, 1);
            end(&mut h, 60_000);
            let r = check(&h, &OPTS);
            assert_eq!(r.stuck.len(), usize::from(stuck), "received {received}");
        }
        // A fault never healed defers the judgement past the end.
        assert_eq!(stuck_deadline(6_000, &[(7_000, u64::MAX)]), u64::MAX);
    }

    #[test]
    fn a_timer_acknowledged_after_its_fire_at_is_due_from_the_answer() {
        // Asked at 0 for 1,000, answered at 6,005 (retries): due by 6,005 at the latest.
        for (received, stuck) in [(16_005, false), (16_006, true)] {
            let mut h = healthy();
            h.push(ev(0, Kind::Invoke, "schedule", "w/late").fire_at(1_000));
            h.push(ev(6_005, Kind::Ok, "schedule", "w/late").fire_at(1_000));
            deliver(&mut h, received, "w/late", 1_000, 1);
            let r = check(&h, &OPTS);
            assert_eq!(r.stuck.len(), usize::from(stuck), "received {received}");
        }
    }

    #[test]
    fn cancelled_or_unknown_timers_are_not_judged_stuck() {
        let mut h = healthy();
        schedule(&mut h, 0, "w/maybe", 6_000, Kind::Ok);
        h.push(ev(100, Kind::Invoke, "cancel", "w/maybe"));
        h.push(ev(4_100, Kind::Info, "cancel", "w/maybe").value("deadline exceeded"));
        deliver(&mut h, 19_000, "w/maybe", 6_000, 1);
        schedule(&mut h, 0, "w/unknown", 6_000, Kind::Info);
        deliver(&mut h, 19_000, "w/unknown", 6_000, 1);
        let r = check(&h, &OPTS);
        assert!(r.valid, "{}", render(&r));
    }

    #[test]
    fn a_due_timer_never_delivered_within_the_grace_is_stuck_when_not_lost() {
        // Grace longer than the stuck bound: not yet lost, but already stuck.
        let opts = CheckOptions { grace_ms: 15_000 };
        let mut h = healthy();
        schedule(&mut h, 0, "w/s", 6_000, Kind::Ok);
        let r = check(&h, &opts);
        assert!(r.lost.is_empty());
        assert_eq!(r.stuck, vec!["w/s"]);
        assert!(!r.valid);
    }

    #[test]
    fn fault_windows_run_from_start_to_heal() {
        let mut h = healthy();
        h.push(ev(30_000, Kind::Nemesis, "start clock-skew", ""));
        h.push(ev(31_000, Kind::Nemesis, "worker-killed", ""));
        h.push(ev(38_000, Kind::Nemesis, "heal", ""));
        h.push(ev(40_000, Kind::Nemesis, "start partition-one", ""));
        h.push(ev(50_000, Kind::Nemesis, "heal-all", ""));
        h.push(ev(60_000, Kind::Nemesis, "start kill", ""));
        assert_eq!(
            fault_windows(&h),
            vec![
                (3_000, 5_000),
                (30_000, 38_000),
                (40_000, 50_000),
                (60_000, u64::MAX)
            ]
        );
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
