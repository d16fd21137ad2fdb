//! Clients that schedule, cancel and read timers, and workers that receive them, all recording
//! into the history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hourglass_client::{v1, Client, RetryPolicy, Worker, WorkerOptions};

use crate::cluster::Access;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{now_ms, Event, Kind, Recorder};

pub const QUEUE: &str = "jepsen";
/// Timers this far out never fall due during a run; they exercise G8, not delivery.
pub const FAR_FUTURE_MS: u64 = 24 * 3600 * 1000;

/// `Fail` for a definite rejection, `Info` when the call may still have taken effect.
fn classify(e: &hourglass_client::Error) -> Kind {
    match e.code() {
        Some(tonic::Code::InvalidArgument) | Some(tonic::Code::AlreadyExists) => Kind::Fail,
        _ => Kind::Info,
    }
}

#[derive(Clone)]
pub struct WorkloadOptions {
    pub clients: usize,
    /// Operations per second over all clients.
    pub rate: u64,
    pub cancel_fraction: f64,
    pub seed: u64,
}

/// Keys scheduled so far (for cancels and reads) and the latest due time.
#[derive(Default)]
pub struct Known {
    pub keys: Vec<(String, String, u64)>,
    pub last_due: u64,
}

fn client(access: &Access) -> Client {
    Client::with_options(
        &access.endpoints,
        RetryPolicy {
            budget: Duration::from_secs(4),
            attempt_timeout: Duration::from_secs(2),
        },
        access.tls.clone(),
    )
    .expect("endpoints are valid")
}

/// When a timer should fire, as the client asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// An absolute time, ms since the epoch.
    At(u64),
    /// A delay in ms, resolved by the node that accepts the request.
    Delay(u64),
}

fn when_for(rng: &mut StdRng, now: u64) -> When {
    match rng.gen_range(0..100) {
        0..=4 => When::At(now.saturating_sub(rng.gen_range(0..3_000))),
        5..=44 => When::At(now + rng.gen_range(500..20_000)),
        45..=79 => When::Delay(rng.gen_range(500..20_000)),
        80..=94 => When::At(now + rng.gen_range(20_000..60_000)),
        _ => When::At(now + FAR_FUTURE_MS + rng.gen_range(0..1_000_000)),
    }
}

/// The invocation records what the client asked for, on the harness's clock: the checker
/// judges by that, never by the server's echo (recorded as `server_fire_at`).
async fn do_schedule(
    c: &Client,
    rec: &Recorder,
    process: &str,
    w: &str,
    t: &str,
    when: When,
) -> Kind {
    let key = format!("{w}/{t}");
    let event = |kind: Kind| {
        let e = Event::new(process, kind, "schedule").key(&key);
        match when {
            When::At(at) => e.fire_at(at),
            When::Delay(ms) => e.delay_ms(ms),
        }
    };
    let request_when = match when {
        When::At(at) => v1::schedule_request::When::FireAt(prost_types::Timestamp {
            seconds: (at / 1000) as i64,
            nanos: ((at % 1000) * 1_000_000) as i32,
        }),
        When::Delay(ms) => v1::schedule_request::When::Delay(prost_types::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
    };
    let req = v1::ScheduleRequest {
        workflow_id: w.into(),
        timer_id: t.into(),
        queue: QUEUE.into(),
        when: Some(request_when),
        payload: key.clone().into_bytes(),
    };
    rec.record(event(Kind::Invoke));
    match c.schedule(req).await {
        Ok(r) => {
            let mut e = event(Kind::Ok);
            e.server_fire_at = r.timer.as_ref().and_then(|t| ts(&t.fire_at));
            rec.record(e);
            Kind::Ok
        }
        Err(e) => {
            let mut kind = classify(&e);
            // A retry of a delay that an earlier attempt already committed resolves to another
            // fire_at and is refused as a conflict: the timer may exist.
            if matches!(when, When::Delay(_)) && e.code() == Some(tonic::Code::AlreadyExists) {
                kind = Kind::Info;
            }
            rec.record(event(kind.clone()).value(e.to_string()));
            kind
        }
    }
}

async fn do_cancel(c: &Client, rec: &Recorder, process: &str, w: &str, t: &str) {
    let key = format!("{w}/{t}");
    rec.record(Event::new(process, Kind::Invoke, "cancel").key(&key));
    match c.cancel(w, t).await {
        Ok(r) => {
            let v = if r.outcome == v1::CancelOutcome::Cancelled as i32 {
                "cancelled"
            } else {
                "already_fired"
            };
            rec.record(Event::new(process, Kind::Ok, "cancel").key(&key).value(v));
        }
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {
            rec.record(
                Event::new(process, Kind::Ok, "cancel")
                    .key(&key)
                    .value("not_found"),
            );
        }
        Err(e) => rec.record(
            Event::new(process, classify(&e), "cancel")
                .key(&key)
                .value(e.to_string()),
        ),
    }
}

/// Runs clients until `stop`; returns nothing, everything goes to the history.
pub async fn clients(
    access: Access,
    rec: Recorder,
    opts: WorkloadOptions,
    known: Arc<Mutex<Known>>,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    let per_client = Duration::from_micros(1_000_000 * opts.clients as u64 / opts.rate.max(1));
    for n in 0..opts.clients {
        let (access, rec, known, stop, opts) = (
            access.clone(),
            rec.clone(),
            Arc::clone(&known),
            Arc::clone(&stop),
            opts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let process = format!("client-{n}");
            let c = Arc::new(client(&access));
            let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_mul(31).wrapping_add(n as u64));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(per_client).await;
                let roll: f64 = rng.gen();
                if roll < opts.cancel_fraction {
                    let pick = {
                        let k = known.lock().expect("known lock");
                        (!k.keys.is_empty()).then(|| k.keys[rng.gen_range(0..k.keys.len())].clone())
                    };
                    if let Some((w, t, at)) = pick {
                        // Half of the cancels race the fire: they are sent around the due time.
                        if rng.gen_bool(0.5) && at > now_ms() && at < now_ms() + 30_000 {
                            let jitter = rng.gen_range(0..400);
                            let wait = (at + jitter).saturating_sub(200 + now_ms());
                            let (c, rec, process) = (Arc::clone(&c), rec.clone(), process.clone());
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                                do_cancel(&c, &rec, &process, &w, &t).await;
                            });
                        } else {
                            do_cancel(&c, &rec, &process, &w, &t).await;
                        }
                    }
                } else if roll < opts.cancel_fraction + 0.05 {
                    let pick = {
                        let k = known.lock().expect("known lock");
                        (!k.keys.is_empty()).then(|| k.keys[rng.gen_range(0..k.keys.len())].clone())
                    };
                    if let Some((w, t, _)) = pick {
                        let key = format!("{w}/{t}");
                        rec.record(Event::new(&process, Kind::Invoke, "get").key(&key));
                        match c.get(&w, &t).await {
                            Ok(timer) => rec.record(
                                Event::new(&process, Kind::Ok, "get")
                                    .key(&key)
                                    .value(format!("state {}", timer.state)),
                            ),
                            Err(e) => rec.record(
                                Event::new(&process, classify(&e), "get")
                                    .key(&key)
                                    .value(e.to_string()),
                            ),
                        }
                    }
                } else {
                    let (w, t) = (format!("c{n}-w{}", i % 97), format!("t{i}"));
                    i += 1;
                    let when = when_for(&mut rng, now_ms());
                    let kind = do_schedule(&c, &rec, &process, &w, &t, when).await;
                    if kind != Kind::Fail {
                        // A delay is due at the latest its length after the answer.
                        let at = match when {
                            When::At(at) => at,
                            When::Delay(ms) => now_ms() + ms,
                        };
                        let mut k = known.lock().expect("known lock");
                        if at < now_ms() + FAR_FUTURE_MS / 2 {
                            k.last_due = k.last_due.max(at);
                        }
                        k.keys.push((w, t, at));
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn ts(t: &Option<prost_types::Timestamp>) -> Option<u64> {
    t.as_ref()
        .map(|t| t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000)
}

/// One worker: subscribes, records every delivery, acks (some slowly), and restarts when the
/// nemesis kills it.
pub async fn worker(
    n: usize,
    access: Access,
    rec: Recorder,
    kill: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let process = format!("worker-{n}");
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7).wrapping_add(n as u64));
    let slow = n == 0;
    while !stop.load(Ordering::Relaxed) {
        let c = Arc::new(client(&access));
        let mut options = WorkerOptions::new(QUEUE);
        options.worker_id = process.clone();
        options.credits = 32;
        options.refresh = Duration::from_secs(2);
        let mut w = match Worker::start(c, options).await {
            Ok(w) => w,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = kill.notified() => {
                    rec.record(Event::new(&process, Kind::Nemesis, "worker-killed"));
                    break;
                }
                d = tokio::time::timeout(Duration::from_millis(500), w.next()) => {
                    if stop.load(Ordering::Relaxed) { return; }
                    let Ok(Some(d)) = d else { continue };
                    // The receive time is the event's time, taken here, before anything else.
                    let t = &d.timer;
                    let mut e = Event::new(&process, Kind::Deliver, "deliver").key(&format!("{}/{}", t.workflow_id, t.timer_id));
                    e.server_fire_at = ts(&t.fire_at);
                    e.fired_at = ts(&t.fired_at);
                    e.delivered_at = ts(&t.delivered_at);
                    e.attempt = Some(t.attempt);
                    rec.record(e);
                    if slow {
                        // Slow to acknowledge (it holds its credits meanwhile), not slow to
                        // receive: a sleep here would delay the receive times of the deliveries
                        // queued behind this one and blame the harness's lag on the cluster.
                        // Now and then past the cluster's 5 s ack timeout, for redeliveries.
                        let wait = if rng.gen_bool(0.02) {
                            Duration::from_millis(6_000)
                        } else {
                            Duration::from_millis(rng.gen_range(0..300))
                        };
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            d.ack();
                        });
                    } else {
                        d.ack();
                    }
                }
            }
        }
        drop(w);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
