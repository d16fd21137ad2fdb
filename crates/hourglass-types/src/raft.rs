//! The replicated commands and the openraft type configuration shared by storage and server.

use serde::{Deserialize, Serialize};

use crate::timer::{TimerDefinition, TimerKey, TimerRecord};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// One Raft group per partition replica; all groups share this configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        // A snapshot is a file on the node's disk, streamed in chunks by openraft.
        SnapshotData = tokio::fs::File,
);

/// A state-machine command of one partition. Commands carry the proposer's clock reading so
/// that applying them is deterministic on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Schedule {
        key: TimerKey,
        definition: TimerDefinition,
        /// The receiving node's clock when the request arrived; anchors `delay`.
        received_at_ms: u64,
    },
    Cancel {
        key: TimerKey,
        received_at_ms: u64,
    },
    /// Many schedules of one partition in one entry, answered by `CommandResponse::Many` in
    /// the same order.
    ScheduleMany {
        timers: Vec<(TimerKey, TimerDefinition)>,
        received_at_ms: u64,
    },
    /// Proposed by the partition leader's timer engine with its cluster time. The partition's
    /// time becomes `max(fired_at_ms, its high-water time)` (it never goes back); each listed
    /// timer that is still SCHEDULED and due by that time becomes FIRED at that time; anything
    /// else is left alone, which also fences a deposed leader's late proposal and a cancel
    /// that won the race.
    Fire {
        timers: Vec<TimerKey>,
        fired_at_ms: u64,
    },
    /// Acknowledged deliveries: each listed FIRED timer becomes COMPLETED (a tombstone).
    Complete {
        timers: Vec<TimerKey>,
        completed_at_ms: u64,
    },
    /// Forgets tombstones (completed or cancelled timers) that finished before `before_ms`:
    /// the end of their retention period, after which the name may be used again.
    Expire {
        timers: Vec<TimerKey>,
        before_ms: u64,
    },
    /// A `Fire` that also takes timers due a little later (fire-ahead), so that the Raft round
    /// trip is over by their due instant: the partition's time becomes `max(now_ms, its
    /// high-water time)` as for `Fire`, and each listed timer still SCHEDULED and due by
    /// `max(until_ms, that time)` becomes FIRED at `max(that time, its fire_at)`, the instant
    /// it is meant to be delivered. The leader hands none to a worker before its due instant
    /// by cluster time (G2); a cancel that commits in between answers ALREADY_FIRED (G4).
    /// Last among the variants, so that logs written before it still decode.
    FireAhead {
        timers: Vec<TimerKey>,
        now_ms: u64,
        until_ms: u64,
    },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Schedule { key, .. } => {
                write!(f, "schedule {}/{}", key.workflow_id, key.timer_id)
            }
            Command::Cancel { key, .. } => write!(f, "cancel {}/{}", key.workflow_id, key.timer_id),
            Command::ScheduleMany { timers, .. } => write!(f, "schedule {} timers", timers.len()),
            Command::Fire { timers, .. } | Command::FireAhead { timers, .. } => {
                write!(f, "fire {} timers", timers.len())
            }
            Command::Complete { timers, .. } => write!(f, "complete {} timers", timers.len()),
            Command::Expire { timers, .. } => write!(f, "expire {} tombstones", timers.len()),
        }
    }
}

/// The outcome of applying a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// The timer exists with this definition; `created` is false for an idempotent repeat.
    Scheduled {
        timer: TimerRecord,
        created: bool,
    },
    /// A different definition already lives under this key.
    AlreadyExists {
        existing: TimerRecord,
    },
    /// The timer is (now or already) cancelled.
    Cancelled {
        timer: TimerRecord,
    },
    /// The timer fired before the cancel was applied.
    AlreadyFired {
        timer: TimerRecord,
    },
    NotFound,
    /// The timers a `Fire` moved to FIRED, in the order given; only these may be delivered.
    /// `not_due` lists the timers still SCHEDULED but due after the partition's time (with
    /// their `fire_at_ms`): the engine must fire them later, never drop them.
    Fired {
        timers: Vec<TimerRecord>,
        not_due: Vec<(TimerKey, u64)>,
    },
    /// How many timers a `Complete` moved to COMPLETED.
    Completed {
        count: u64,
    },
    /// How many tombstones an `Expire` removed.
    Expired {
        count: u64,
    },
    /// One response per item of a `ScheduleMany`.
    Many(Vec<CommandResponse>),
    /// Responses of membership and blank entries.
    None,
}
