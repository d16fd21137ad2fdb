//! Insert, cancel and expire with 1,000,000 timers.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use hourglass_wheel::{ManualClock, TimingWheel};

const N: u64 = 1_000_000;

/// Deadlines spread over the next hour, deterministic.
fn deadlines() -> Vec<u64> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..N)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 3_600_000
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let ds = deadlines();
    let mut g = c.benchmark_group("wheel_1m");
    g.sample_size(10);
    g.bench_function("insert", |b| {
        b.iter_batched(
            || TimingWheel::new(ManualClock::new(0)),
            |mut w| {
                for (i, d) in ds.iter().enumerate() {
                    w.insert(*d, i as u32);
                }
                w
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("cancel", |b| {
        b.iter_batched(
            || {
                let mut w = TimingWheel::new(ManualClock::new(0));
                let hs: Vec<_> = ds
                    .iter()
                    .enumerate()
                    .map(|(i, d)| w.insert(*d, i as u32))
                    .collect();
                (w, hs)
            },
            |(mut w, hs)| {
                for h in hs {
                    w.cancel(h);
                }
                w
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("expire", |b| {
        b.iter_batched(
            || {
                let clock = ManualClock::new(0);
                let mut w = TimingWheel::new(clock.clone());
                for (i, d) in ds.iter().enumerate() {
                    w.insert(*d, i as u32);
                }
                (w, clock)
            },
            |(mut w, clock)| {
                let mut out = Vec::with_capacity(N as usize);
                // Expire in 1-second steps, as an engine polling a busy hour would.
                for t in (0..=3_600_000).step_by(1_000) {
                    clock.set(t);
                    w.poll(&mut out);
                }
                assert_eq!(out.len(), N as usize);
                out
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
