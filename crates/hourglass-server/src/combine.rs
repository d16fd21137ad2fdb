//! Groups concurrent requests that share a destination: unary Schedules of one partition into
//! one Raft entry on its leader, and unary Schedules a node forwards to one leader into one
//! ScheduleBatch. An entry costs a log write and fsync, a replication round trip and an apply
//! on every replica whatever it holds, and one unary Schedule per entry saturated a 2-vCPU
//! cluster at 1,000 a second (docs/benchmarks.md, "Where the time goes"); a forwarded call
//! costs a round trip and its own HTTP/2 stream on both nodes.
//!
//! Adaptive, so an idle destination adds no latency: a request that finds fewer than
//! `max_in_flight` groups of its destination in flight goes at once, alone if nothing else
//! waits. Only requests arriving while the destination's pipeline is full wait, and the next
//! group to go takes all of them (up to `max_items`). Each request is answered only with the
//! outcome of the group that carried it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

struct Lane<T, R> {
    waiting: VecDeque<(T, oneshot::Sender<R>)>,
    in_flight: usize,
}

impl<T, R> Default for Lane<T, R> {
    fn default() -> Self {
        Lane {
            waiting: VecDeque::new(),
            in_flight: 0,
        }
    }
}

pub struct Combiner<K, T, R> {
    lanes: Mutex<HashMap<K, Lane<T, R>>>,
    max_in_flight: usize,
    max_items: usize,
}

impl<K, T, R> Combiner<K, T, R>
where
    K: Copy + Eq + Hash + Send + Sync + 'static,
    T: Send + 'static,
    R: Send + 'static,
{
    pub fn new(max_in_flight: usize, max_items: usize) -> Self {
        Combiner {
            lanes: Mutex::default(),
            max_in_flight: max_in_flight.max(1),
            max_items: max_items.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Lane<T, R>>> {
        // Nothing under this lock can panic halfway through a change.
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`; true when the caller must start a proposer for `key`, which then counts
    /// as in flight.
    fn push(&self, key: K, item: T, answer: oneshot::Sender<R>) -> bool {
        let mut lanes = self.lock();
        let lane = lanes.entry(key).or_default();
        lane.waiting.push_back((item, answer));
        if lane.in_flight < self.max_in_flight {
            lane.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// The next group a proposer of `key` proposes, or `None` when nothing waits: the
    /// proposer then ends and no longer counts, in the same step, so that a proposal queued
    /// just after always finds a proposer or room to start one.
    fn take(&self, key: K) -> Option<Vec<(T, oneshot::Sender<R>)>> {
        let mut lanes = self.lock();
        let lane = lanes.get_mut(&key)?;
        if lane.waiting.is_empty() {
            lane.in_flight -= 1;
            return None;
        }
        let n = lane.waiting.len().min(self.max_items);
        Some(lane.waiting.drain(..n).collect())
    }

    /// Proposes `item` with others for `key` waiting at the same time; `propose` sends one
    /// group and returns one outcome per item, in order. `None` when the group's outcome never
    /// came (its proposer panicked or gave fewer outcomes than items).
    pub async fn submit<P, F>(self: &Arc<Self>, key: K, item: T, propose: P) -> Option<R>
    where
        P: FnMut(Vec<T>) -> F + Send + 'static,
        F: Future<Output = Vec<R>> + Send + 'static,
    {
        let (answer, outcome) = oneshot::channel();
        if self.push(key, item, answer) {
            // A task of its own: a caller that goes away must not strand the others.
            tokio::spawn(Arc::clone(self).propose_all(key, propose));
        }
        outcome.await.ok()
    }

    async fn propose_all<P, F>(self: Arc<Self>, key: K, mut propose: P)
    where
        P: FnMut(Vec<T>) -> F + Send + 'static,
        F: Future<Output = Vec<R>> + Send + 'static,
    {
        let mut running = Running {
            combiner: &self,
            key,
            ended: false,
        };
        while let Some(group) = self.take(key) {
            let (items, answers): (Vec<T>, Vec<_>) = group.into_iter().unzip();
            for (answer, outcome) in answers.into_iter().zip(propose(items).await) {
                // A caller that went away is not waiting for its answer.
                let _ = answer.send(outcome);
            }
        }
        running.ended = true;
    }
}

/// Frees a proposer's place when it panics, so a destination never stays full of proposers
/// that are gone; the waiting proposals go with the next one to arrive.
struct Running<'a, K: Eq + Hash, T, R> {
    combiner: &'a Combiner<K, T, R>,
    key: K,
    ended: bool,
}

impl<K: Eq + Hash, T, R> Drop for Running<'_, K, T, R> {
    fn drop(&mut self) {
        if !self.ended {
            let mut lanes = self
                .combiner
                .lanes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(lane) = lanes.get_mut(&self.key) {
                lane.in_flight = lane.in_flight.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::Semaphore;

    /// A proposer that records each group and holds it until `gate` lets one through.
    fn recording(
        groups: Arc<Mutex<Vec<Vec<u32>>>>,
        gate: Arc<Semaphore>,
    ) -> impl FnMut(Vec<u32>) -> std::pin::Pin<Box<dyn Future<Output = Vec<u32>> + Send>> + Send
    {
        move |items: Vec<u32>| {
            let groups = Arc::clone(&groups);
            let gate = Arc::clone(&gate);
            Box::pin(async move {
                groups.lock().unwrap().push(items.clone());
                gate.acquire().await.unwrap().forget();
                items.into_iter().map(|i| i * 10).collect()
            })
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn an_idle_partition_proposes_at_once_and_alone() {
        let c = Arc::new(Combiner::new(2, 100));
        let groups = Arc::default();
        let gate = Arc::new(Semaphore::new(100));
        let out = c
            .submit(7, 1, recording(Arc::clone(&groups), Arc::clone(&gate)))
            .await;
        assert_eq!(out, Some(10));
        assert_eq!(*groups.lock().unwrap(), vec![vec![1]]);
        let out = c.submit(7, 2, recording(Arc::clone(&groups), gate)).await;
        assert_eq!(out, Some(20));
        assert_eq!(*groups.lock().unwrap(), vec![vec![1], vec![2]]);
    }

    #[tokio::test]
    async fn proposals_waiting_behind_a_full_pipeline_go_together_and_get_their_own_outcome() {
        let c = Arc::new(Combiner::new(2, 3));
        let groups: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let gate = Arc::new(Semaphore::new(0));
        let mut calls = Vec::new();
        for i in 1..=7u32 {
            let c = Arc::clone(&c);
            let p = recording(Arc::clone(&groups), Arc::clone(&gate));
            calls.push(tokio::spawn(async move { (i, c.submit(0, i, p).await) }));
            settle().await;
        }
        // Two in flight with one proposal each; five wait.
        assert_eq!(*groups.lock().unwrap(), vec![vec![1], vec![2]]);
        // Another partition is not held up by partition 0.
        let other = c
            .submit(
                1,
                100,
                recording(Arc::clone(&groups), Arc::new(Semaphore::new(1))),
            )
            .await;
        assert_eq!(other, Some(1000));
        gate.add_permits(100);
        for call in calls {
            let (i, out) = call.await.unwrap();
            assert_eq!(out, Some(i * 10));
        }
        let groups = groups.lock().unwrap().clone();
        let of_0: Vec<_> = groups.into_iter().filter(|g| g != &vec![100]).collect();
        // The waiting five went in groups of at most three, in arrival order.
        assert_eq!(of_0[..2], [vec![1], vec![2]]);
        assert!(of_0[2..].iter().all(|g| g.len() <= 3), "{of_0:?}");
        assert_eq!(
            of_0[2..].concat(),
            vec![3, 4, 5, 6, 7],
            "every waiting proposal once, in order"
        );
        assert_eq!(of_0.len(), 4, "{of_0:?}");
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_strands_nobody() {
        let c = Arc::new(Combiner::new(1, 10));
        let groups: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let gate = Arc::new(Semaphore::new(0));
        let first = {
            let c = Arc::clone(&c);
            let p = recording(Arc::clone(&groups), Arc::clone(&gate));
            tokio::spawn(async move { c.submit(0, 1, p).await })
        };
        settle().await;
        let second = {
            let c = Arc::clone(&c);
            let p = recording(Arc::clone(&groups), Arc::clone(&gate));
            tokio::spawn(async move { c.submit(0, 2, p).await })
        };
        settle().await;
        // The caller whose call started the proposer goes away; the proposer goes on.
        first.abort();
        gate.add_permits(10);
        assert_eq!(second.await.unwrap(), Some(20));
        assert_eq!(*groups.lock().unwrap(), vec![vec![1], vec![2]]);
    }

    #[tokio::test]
    async fn a_proposer_that_panics_frees_its_place() {
        let c = Arc::new(Combiner::new(1, 10));
        let calls = Arc::new(AtomicUsize::new(0));
        let panicking = {
            let calls = Arc::clone(&calls);
            move |_: Vec<u32>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { panic!("proposer bug") }
            }
        };
        assert_eq!(c.submit(0, 1, panicking).await, None);
        let gate = Arc::new(Semaphore::new(1));
        let out = c.submit(0, 2, recording(Arc::default(), gate)).await;
        assert_eq!(out, Some(20), "the partition takes proposals again");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
