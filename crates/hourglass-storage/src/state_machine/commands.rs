//! What a command does to a partition's timers, without storage: a pure function from the
//! timers it reads to the changes it makes and the answer it gives.
//!
//! A change is a timer's place in the indexes before the command and its record after.
//! Everything else follows from them and is written by the caller: the record, its place in
//! the indexes (a scheduled timer in the due index, a fired one in the fired index, a finished
//! one among the tombstones), the count of scheduled timers, and the events for the leader's
//! engine.
//!
//! A `Fire` of a thousand timers with large payloads holds a lot: each record is read once and
//! moved into its change, and copied only into the response, which needs its own.

use std::collections::HashMap;

use hourglass_types::{
    Command, CommandResponse, TimerDefinition, TimerKey, TimerRecord, TimerState,
};

use crate::keys::IndexEntry;

/// The partition state a command reads.
pub(crate) trait PartitionView {
    type Error;
    fn timer(&self, key: &TimerKey) -> Result<Option<TimerRecord>, Self::Error>;
    /// The latest time a `Fire` committed; the partition's time never goes below it.
    fn high_water_ms(&self) -> Result<u64, Self::Error>;
}

/// One timer's index entry before a command and its record after (`None`: absent, or for
/// `before` also a record without an index entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub key: TimerKey,
    pub before: Option<IndexEntry>,
    pub after: Option<TimerRecord>,
}

/// What applying a command does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Effects {
    /// At most one per timer, in the order the command touched them.
    pub changes: Vec<Change>,
    /// The partition's new high-water time, when it moves.
    pub high_water_ms: Option<u64>,
    pub response: CommandResponse,
}

/// Applies `command`, the log entry at `index`, to the partition `view` shows.
pub(crate) fn apply<V: PartitionView>(
    view: &V,
    index: u64,
    command: Command,
) -> Result<Effects, V::Error> {
    let mut changes = Changes::new(view);
    let mut high_water_ms = None;
    let response = match command {
        Command::Schedule {
            key,
            definition,
            received_at_ms,
        } => schedule(&mut changes, key, definition, received_at_ms)?,
        Command::ScheduleMany {
            timers,
            received_at_ms,
        } => {
            // Later items see earlier ones of the same command: a repeat inside one batch
            // behaves like a repeat across batches.
            let mut responses = Vec::with_capacity(timers.len());
            for (key, definition) in timers {
                responses.push(schedule(&mut changes, key, definition, received_at_ms)?);
            }
            CommandResponse::Many(responses)
        }
        Command::Cancel {
            key,
            received_at_ms,
        } => match changes.get(&key)? {
            None => CommandResponse::NotFound,
            Some(record) => match record.state {
                TimerState::Scheduled => {
                    let record = changes.edit(&key);
                    record.state = TimerState::Cancelled;
                    record.finished_at_ms = Some(received_at_ms);
                    CommandResponse::Cancelled {
                        timer: record.clone(),
                    }
                }
                TimerState::Cancelled => CommandResponse::Cancelled {
                    timer: record.clone(),
                },
                TimerState::Fired | TimerState::Completed => CommandResponse::AlreadyFired {
                    timer: record.clone(),
                },
            },
        },
        Command::Fire {
            timers,
            fired_at_ms,
        } => {
            let (response, moved) =
                fire(&mut changes, view, index, timers, fired_at_ms, fired_at_ms)?;
            high_water_ms = moved;
            response
        }
        Command::FireAhead {
            timers,
            now_ms,
            until_ms,
        } => {
            let (response, moved) = fire(&mut changes, view, index, timers, now_ms, until_ms)?;
            high_water_ms = moved;
            response
        }
        Command::Complete {
            timers,
            completed_at_ms,
        } => {
            let mut count = 0;
            for key in dedup(timers) {
                if changes.get(&key)?.map(|r| r.state) != Some(TimerState::Fired) {
                    continue;
                }
                let record = changes.edit(&key);
                record.state = TimerState::Completed;
                record.finished_at_ms = Some(completed_at_ms);
                count += 1;
            }
            CommandResponse::Completed { count }
        }
        Command::Expire { timers, before_ms } => {
            let mut count = 0;
            for key in dedup(timers) {
                let Some(record) = changes.get(&key)? else {
                    continue;
                };
                let finished = record.finished_at_ms.filter(|_| record.state.is_terminal());
                if finished.is_some_and(|f| f < before_ms) {
                    changes.set(&key, None);
                    count += 1;
                }
            }
            CommandResponse::Expired { count }
        }
    };
    Ok(Effects {
        changes: changes.into_changes(),
        high_water_ms,
        response,
    })
}

/// Moves the listed timers still SCHEDULED and due by `until_ms` (or by the partition's time,
/// if later) to FIRED, each at the later of the partition's time and its own due instant;
/// returns the answer and the partition's new high-water time, if it moved.
fn fire<V: PartitionView>(
    changes: &mut Changes<'_, V>,
    view: &V,
    index: u64,
    timers: Vec<TimerKey>,
    now_ms: u64,
    until_ms: u64,
) -> Result<(CommandResponse, Option<u64>), V::Error> {
    // The partition's time never goes back, whatever the proposer's clock says, and
    // everything fired carries a time at or after its own due instant.
    let high_water = view.high_water_ms()?;
    let now = now_ms.max(high_water);
    let until = until_ms.max(now);
    let mut fired = Vec::new();
    let mut not_due = Vec::new();
    for key in dedup(timers) {
        let Some(record) = changes.get(&key)? else {
            continue;
        };
        if record.state != TimerState::Scheduled {
            continue;
        }
        if record.fire_at_ms > until {
            not_due.push((key, record.fire_at_ms));
            continue;
        }
        let record = changes.edit(&key);
        record.state = TimerState::Fired;
        record.fired_at_ms = Some(now.max(record.fire_at_ms));
        record.attempt = 1;
        record.fire_seq = Some(index);
        fired.push(record.clone());
    }
    let response = CommandResponse::Fired {
        timers: fired,
        not_due,
    };
    Ok((response, (now > high_water).then_some(now)))
}

/// Creates a timer unless its key is taken: an identical definition is an idempotent repeat,
/// another one is refused.
fn schedule<V: PartitionView>(
    changes: &mut Changes<'_, V>,
    key: TimerKey,
    definition: TimerDefinition,
    received_at_ms: u64,
) -> Result<CommandResponse, V::Error> {
    if let Some(existing) = changes.get(&key)? {
        let existing = existing.clone();
        return Ok(if existing.definition == definition {
            CommandResponse::Scheduled {
                timer: existing,
                created: false,
            }
        } else {
            CommandResponse::AlreadyExists { existing }
        });
    }
    let record = TimerRecord {
        fire_at_ms: definition.resolve_fire_at(received_at_ms),
        key: key.clone(),
        definition,
        state: TimerState::Scheduled,
        created_at_ms: received_at_ms,
        fired_at_ms: None,
        finished_at_ms: None,
        attempt: 0,
        fire_seq: None,
    };
    changes.set(&key, Some(record.clone()));
    Ok(CommandResponse::Scheduled {
        timer: record,
        created: true,
    })
}

/// Removes repeated keys, keeping the first occurrence, so one command touches a key once.
fn dedup(mut keys: Vec<TimerKey>) -> Vec<TimerKey> {
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys
}

/// The changes of one command so far, read through: a later step sees an earlier one's
/// record, not the stored one.
struct Changes<'a, V> {
    view: &'a V,
    /// Every timer read, in the order first read, and whether the command changed it.
    read: Vec<(Change, bool)>,
    /// Where each timer read is in `read`.
    at: HashMap<TimerKey, usize>,
}

impl<'a, V: PartitionView> Changes<'a, V> {
    fn new(view: &'a V) -> Self {
        Changes {
            view,
            read: Vec::new(),
            at: HashMap::new(),
        }
    }

    /// The timer's record as the command left it so far.
    fn get(&mut self, key: &TimerKey) -> Result<Option<&TimerRecord>, V::Error> {
        let i = match self.at.get(key) {
            Some(&i) => i,
            None => {
                let stored = self.view.timer(key)?;
                let i = self.read.len();
                self.read.push((
                    Change {
                        key: key.clone(),
                        before: stored.as_ref().and_then(IndexEntry::of),
                        after: stored,
                    },
                    false,
                ));
                self.at.insert(key.clone(), i);
                i
            }
        };
        Ok(self.read[i].0.after.as_ref())
    }

    /// The changed record of a key read before.
    fn slot(&mut self, key: &TimerKey) -> &mut Option<TimerRecord> {
        let i = *self
            .at
            .get(key)
            .expect("a timer is read before it is changed");
        let (change, changed) = &mut self.read[i];
        *changed = true;
        &mut change.after
    }

    /// Changes in place the record of a timer read before and found.
    fn edit(&mut self, key: &TimerKey) -> &mut TimerRecord {
        self.slot(key)
            .as_mut()
            .expect("a timer is found before it is edited")
    }

    /// Replaces the record of a timer read before.
    fn set(&mut self, key: &TimerKey, after: Option<TimerRecord>) {
        *self.slot(key) = after;
    }

    fn into_changes(self) -> Vec<Change> {
        self.read
            .into_iter()
            .filter_map(|(change, changed)| changed.then_some(change))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A partition held in a map.
    #[derive(Default)]
    struct Partition {
        timers: BTreeMap<TimerKey, TimerRecord>,
        high_water_ms: u64,
        /// Where the payload of each record read is, to tell it from a copy.
        payloads_read: RefCell<Vec<*const u8>>,
    }

    impl PartitionView for Partition {
        type Error = std::convert::Infallible;
        fn timer(&self, key: &TimerKey) -> Result<Option<TimerRecord>, Self::Error> {
            let record = self.timers.get(key).cloned();
            if let Some(r) = &record {
                self.payloads_read
                    .borrow_mut()
                    .push(r.definition.payload.as_ptr());
            }
            Ok(record)
        }
        fn high_water_ms(&self) -> Result<u64, Self::Error> {
            Ok(self.high_water_ms)
        }
    }

    impl Partition {
        /// Applies a command and keeps its effects, as the state machine writes them.
        fn run(&mut self, index: u64, command: Command) -> Effects {
            let effects = apply(&*self, index, command).unwrap();
            for c in &effects.changes {
                match &c.after {
                    Some(r) => self.timers.insert(c.key.clone(), r.clone()),
                    None => self.timers.remove(&c.key),
                };
            }
            if let Some(h) = effects.high_water_ms {
                self.high_water_ms = h;
            }
            effects
        }
    }

    fn key(id: &str) -> TimerKey {
        TimerKey {
            workflow_id: "w".into(),
            timer_id: id.into(),
        }
    }

    fn at(fire_at_ms: u64) -> TimerDefinition {
        TimerDefinition {
            queue: "q".into(),
            fire_at_ms: Some(fire_at_ms),
            delay_ms: None,
            payload: vec![1],
        }
    }

    fn schedule(id: &str, fire_at_ms: u64) -> Command {
        Command::Schedule {
            key: key(id),
            definition: at(fire_at_ms),
            received_at_ms: 10,
        }
    }

    fn state(p: &Partition, id: &str) -> Option<TimerState> {
        p.timers.get(&key(id)).map(|r| r.state)
    }

    #[test]
    fn schedule_creates_once_and_repeats_are_idempotent_or_refused() {
        let mut p = Partition::default();
        let e = p.run(1, schedule("a", 100));
        assert_eq!(e.changes.len(), 1);
        assert_eq!(e.changes[0].before, None);
        assert!(matches!(
            e.response,
            CommandResponse::Scheduled { created: true, .. }
        ));
        let e = p.run(2, schedule("a", 100));
        assert!(e.changes.is_empty(), "a repeat changes nothing");
        assert!(matches!(
            e.response,
            CommandResponse::Scheduled { created: false, .. }
        ));
        let e = p.run(3, schedule("a", 200));
        assert!(e.changes.is_empty());
        assert!(matches!(e.response, CommandResponse::AlreadyExists { .. }));
        // Inside one command, a later item sees an earlier one.
        let e = p.run(
            4,
            Command::ScheduleMany {
                timers: vec![(key("b"), at(5)), (key("b"), at(5)), (key("b"), at(6))],
                received_at_ms: 10,
            },
        );
        assert_eq!(e.changes.len(), 1);
        let CommandResponse::Many(r) = e.response else {
            panic!("{:?}", e.response)
        };
        assert!(matches!(
            r[0],
            CommandResponse::Scheduled { created: true, .. }
        ));
        assert!(matches!(
            r[1],
            CommandResponse::Scheduled { created: false, .. }
        ));
        assert!(matches!(r[2], CommandResponse::AlreadyExists { .. }));
    }

    #[test]
    fn fire_moves_only_due_scheduled_timers_at_the_partitions_time() {
        let mut p = Partition {
            high_water_ms: 150,
            ..Partition::default()
        };
        for (id, due) in [("due", 100), ("late", 140), ("later", 500), ("gone", 100)] {
            p.run(1, schedule(id, due));
        }
        p.run(
            2,
            Command::Cancel {
                key: key("gone"),
                received_at_ms: 20,
            },
        );
        // A proposer whose clock is behind: the partition's time (150) still rules.
        let e = p.run(
            9,
            Command::Fire {
                timers: vec![
                    key("late"),
                    key("due"),
                    key("later"),
                    key("gone"),
                    key("due"),
                    key("nope"),
                ],
                fired_at_ms: 120,
            },
        );
        assert_eq!(e.high_water_ms, None, "time never goes back");
        let CommandResponse::Fired { timers, not_due } = e.response else {
            panic!()
        };
        let fired: Vec<_> = timers
            .iter()
            .map(|r| (r.key.timer_id.as_str(), r.fired_at_ms, r.fire_seq))
            .collect();
        assert_eq!(
            fired,
            [("late", Some(150), Some(9)), ("due", Some(150), Some(9))]
        );
        assert_eq!(not_due, [(key("later"), 500)]);
        assert_eq!(e.changes.len(), 2);
        assert_eq!(state(&p, "later"), Some(TimerState::Scheduled));
        // A later time moves the partition's time.
        let e = p.run(
            10,
            Command::Fire {
                timers: vec![key("later")],
                fired_at_ms: 600,
            },
        );
        assert_eq!(e.high_water_ms, Some(600));
        assert_eq!(state(&p, "later"), Some(TimerState::Fired));
    }

    #[test]
    fn a_fire_ahead_fires_timers_due_by_its_horizon_at_their_own_instant() {
        let mut p = Partition {
            high_water_ms: 100,
            ..Partition::default()
        };
        for (id, due) in [("past", 90), ("soon", 130), ("edge", 150), ("later", 151)] {
            p.run(1, schedule(id, due));
        }
        let e = p.run(
            7,
            Command::FireAhead {
                timers: vec![key("past"), key("soon"), key("edge"), key("later")],
                now_ms: 120,
                until_ms: 150,
            },
        );
        // The partition's time is the proposer's now, never the horizon.
        assert_eq!(e.high_water_ms, Some(120));
        let CommandResponse::Fired { timers, not_due } = e.response else {
            panic!()
        };
        let fired: Vec<_> = timers
            .iter()
            .map(|r| (r.key.timer_id.as_str(), r.fired_at_ms))
            .collect();
        assert_eq!(
            fired,
            [
                ("past", Some(120)),
                ("soon", Some(130)),
                ("edge", Some(150))
            ],
            "each at the later of the partition's time and its own due instant"
        );
        assert_eq!(not_due, [(key("later"), 151)]);
        // A cancel committed before the due instant of a timer fired ahead: already fired.
        let e = p.run(
            8,
            Command::Cancel {
                key: key("soon"),
                received_at_ms: 121,
            },
        );
        assert!(matches!(e.response, CommandResponse::AlreadyFired { .. }));
        // A horizon behind the partition's time is the partition's time, as for `Fire`.
        p.run(9, schedule("x", 119));
        let e = p.run(
            10,
            Command::FireAhead {
                timers: vec![key("x")],
                now_ms: 50,
                until_ms: 60,
            },
        );
        assert_eq!(e.high_water_ms, None);
        assert_eq!(state(&p, "x"), Some(TimerState::Fired));
    }

    #[test]
    fn cancel_complete_and_expire_follow_the_timers_state() {
        let mut p = Partition::default();
        p.run(1, schedule("f", 1));
        p.run(1, schedule("c", 1));
        p.run(
            2,
            Command::Fire {
                timers: vec![key("f")],
                fired_at_ms: 5,
            },
        );
        // A cancel after the fire answers already-fired and changes nothing.
        let e = p.run(
            3,
            Command::Cancel {
                key: key("f"),
                received_at_ms: 6,
            },
        );
        assert!(matches!(e.response, CommandResponse::AlreadyFired { .. }));
        assert!(e.changes.is_empty());
        let e = p.run(
            4,
            Command::Cancel {
                key: key("c"),
                received_at_ms: 7,
            },
        );
        assert!(matches!(e.response, CommandResponse::Cancelled { .. }));
        // Complete takes only fired timers.
        let e = p.run(
            5,
            Command::Complete {
                timers: vec![key("f"), key("c"), key("f")],
                completed_at_ms: 8,
            },
        );
        assert_eq!(e.response, CommandResponse::Completed { count: 1 });
        assert_eq!(state(&p, "f"), Some(TimerState::Completed));
        // Expire removes finished timers older than the cutoff only.
        let e = p.run(
            6,
            Command::Expire {
                timers: vec![key("f"), key("c")],
                before_ms: 8,
            },
        );
        assert_eq!(e.response, CommandResponse::Expired { count: 1 });
        assert_eq!(state(&p, "c"), None);
        assert_eq!(state(&p, "f"), Some(TimerState::Completed));
        assert_eq!(e.changes[0].after, None);
    }

    #[test]
    fn a_fire_keeps_no_copy_of_a_payload_but_the_answers() {
        let mut p = Partition::default();
        for id in ["a", "b"] {
            p.run(
                1,
                Command::Schedule {
                    key: key(id),
                    definition: TimerDefinition {
                        payload: vec![7; 64 * 1024],
                        ..at(5)
                    },
                    received_at_ms: 1,
                },
            );
        }
        let e = apply(
            &p,
            2,
            Command::Fire {
                timers: vec![key("a"), key("b")],
                fired_at_ms: 10,
            },
        )
        .unwrap();
        let CommandResponse::Fired { timers, .. } = &e.response else {
            panic!("{:?}", e.response)
        };
        assert_eq!(e.changes.len(), 2);
        let read = p.payloads_read.borrow();
        for (change, fired) in e.changes.iter().zip(timers) {
            // Before: only where the timer was indexed, no payload.
            assert_eq!(change.before, Some(IndexEntry::Due { fire_at_ms: 5 }));
            let after = change.after.as_ref().expect("fired, not removed");
            assert_eq!(after, fired);
            // After: the record read, moved rather than copied.
            assert!(read.contains(&after.definition.payload.as_ptr()));
            assert!(!read.contains(&fired.definition.payload.as_ptr()));
        }
    }
}
