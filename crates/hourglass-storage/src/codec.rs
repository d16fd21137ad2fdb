//! Value encodings: timers in protobuf (prost), openraft's own types in bincode.

use hourglass_proto::internal::StoredTimer;
use hourglass_types::{TimerDefinition, TimerKey, TimerRecord, TimerState};
use prost::Message;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

pub fn encode_timer(r: &TimerRecord) -> Vec<u8> {
    StoredTimer {
        workflow_id: r.key.workflow_id.clone(),
        timer_id: r.key.timer_id.clone(),
        queue: r.definition.queue.clone(),
        requested_fire_at_ms: r.definition.fire_at_ms,
        delay_ms: r.definition.delay_ms,
        payload: r.definition.payload.clone(),
        fire_at_ms: r.fire_at_ms,
        state: state_code(r.state),
        created_at_ms: r.created_at_ms,
        fired_at_ms: r.fired_at_ms,
        finished_at_ms: r.finished_at_ms,
        attempt: r.attempt,
        fire_seq: r.fire_seq,
    }
    .encode_to_vec()
}

pub fn decode_timer(bytes: &[u8]) -> Result<TimerRecord> {
    let s = StoredTimer::decode(bytes).map_err(|e| Error::corrupt("timer", e))?;
    Ok(TimerRecord {
        key: TimerKey {
            workflow_id: s.workflow_id,
            timer_id: s.timer_id,
        },
        definition: TimerDefinition {
            queue: s.queue,
            fire_at_ms: s.requested_fire_at_ms,
            delay_ms: s.delay_ms,
            payload: s.payload,
        },
        fire_at_ms: s.fire_at_ms,
        state: state_from_code(s.state)?,
        created_at_ms: s.created_at_ms,
        fired_at_ms: s.fired_at_ms,
        finished_at_ms: s.finished_at_ms,
        attempt: s.attempt,
        fire_seq: s.fire_seq,
    })
}

/// The same numbering as `hourglass.v1.TimerState`.
fn state_code(s: TimerState) -> i32 {
    match s {
        TimerState::Scheduled => 1,
        TimerState::Fired => 2,
        TimerState::Completed => 3,
        TimerState::Cancelled => 4,
    }
}

fn state_from_code(c: i32) -> Result<TimerState> {
    Ok(match c {
        1 => TimerState::Scheduled,
        2 => TimerState::Fired,
        3 => TimerState::Completed,
        4 => TimerState::Cancelled,
        other => return Err(Error::corrupt("timer state", other)),
    })
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("bincode serialization of in-memory values cannot fail")
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    bincode::deserialize(bytes).map_err(|e| Error::corrupt(what, e))
}
