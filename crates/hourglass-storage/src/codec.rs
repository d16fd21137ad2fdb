//! Value encodings: timers in protobuf (prost), openraft's own types in bincode.
//!
//! A timer's record leaves out its ids: its `CF_TIMERS` key holds them, and decoding takes
//! them from there. Records of older builds still carry them, and decode the same way.

use hourglass_proto::internal::StoredTimer;
use hourglass_types::{TimerDefinition, TimerRecord, TimerState};
use prost::Message;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};
use crate::keys;

pub fn encode_timer(r: &TimerRecord) -> Vec<u8> {
    StoredTimer {
        workflow_id: String::new(),
        timer_id: String::new(),
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

/// Decodes the record stored under the `CF_TIMERS` key `key`.
pub fn decode_timer(key: &[u8], bytes: &[u8]) -> Result<TimerRecord> {
    let (_, timer_key) =
        keys::decode_timer_key(key).ok_or_else(|| Error::corrupt("timer key", hex(key)))?;
    let s = StoredTimer::decode(bytes).map_err(|e| Error::corrupt("timer", e))?;
    Ok(TimerRecord {
        key: timer_key,
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use hourglass_types::TimerKey;

    fn record() -> TimerRecord {
        TimerRecord {
            key: TimerKey {
                workflow_id: "workflow-with-a-long-id".into(),
                timer_id: "timer-with-a-long-id".into(),
            },
            definition: TimerDefinition {
                queue: "q".into(),
                fire_at_ms: Some(5_000),
                delay_ms: None,
                payload: b"x".to_vec(),
            },
            fire_at_ms: 5_000,
            state: TimerState::Fired,
            created_at_ms: 1_000,
            fired_at_ms: Some(5_001),
            finished_at_ms: None,
            attempt: 1,
            fire_seq: Some(42),
        }
    }

    #[test]
    fn a_record_leaves_its_ids_to_its_key() {
        let r = record();
        let key = keys::timer_key(3, &r.key);
        let value = encode_timer(&r);
        assert!(
            !value.windows(7).any(|w| w == b"-a-long"),
            "ids are stored once, in the key"
        );
        assert_eq!(decode_timer(&key, &value).unwrap(), r);
        assert!(decode_timer(b"\0\0\0\x03no-terminator", &value).is_err());
    }

    /// Raft log entries are bincode: a command's variant index and field order are its
    /// on-disk format, which logs written by older builds must still decode to. Each command
    /// here is spelled out byte by byte (u32 LE variant, u64 LE lengths and times, one byte
    /// per `Option` tag), so that reordering variants or fields fails here first.
    #[test]
    fn every_raft_command_keeps_its_encoding() {
        use hourglass_types::{Command, TimerKey};
        fn u32le(n: u32) -> Vec<u8> {
            n.to_le_bytes().to_vec()
        }
        fn u64le(n: u64) -> Vec<u8> {
            n.to_le_bytes().to_vec()
        }
        fn text(t: &str) -> Vec<u8> {
            [u64le(t.len() as u64), t.as_bytes().to_vec()].concat()
        }
        let key = || TimerKey {
            workflow_id: "w".into(),
            timer_id: "t".into(),
        };
        let key_bytes = [text("w"), text("t")].concat();
        let definition = TimerDefinition {
            queue: "q".into(),
            fire_at_ms: Some(5),
            delay_ms: None,
            payload: b"p".to_vec(),
        };
        let definition_bytes = [
            text("q"),
            vec![1],
            u64le(5),
            vec![0],
            u64le(1),
            b"p".to_vec(),
        ]
        .concat();
        let keys = [u64le(1), key_bytes.clone()].concat();
        let cases = [
            (
                Command::Schedule {
                    key: key(),
                    definition: definition.clone(),
                    received_at_ms: 7,
                },
                [
                    u32le(0),
                    key_bytes.clone(),
                    definition_bytes.clone(),
                    u64le(7),
                ]
                .concat(),
            ),
            (
                Command::Cancel {
                    key: key(),
                    received_at_ms: 7,
                },
                [u32le(1), key_bytes.clone(), u64le(7)].concat(),
            ),
            (
                Command::ScheduleMany {
                    timers: vec![(key(), definition)],
                    received_at_ms: 7,
                },
                [u32le(2), u64le(1), key_bytes, definition_bytes, u64le(7)].concat(),
            ),
            (
                Command::Fire {
                    timers: vec![key()],
                    fired_at_ms: 7,
                },
                [u32le(3), keys.clone(), u64le(7)].concat(),
            ),
            (
                Command::Complete {
                    timers: vec![key()],
                    completed_at_ms: 7,
                },
                [u32le(4), keys.clone(), u64le(7)].concat(),
            ),
            (
                Command::Expire {
                    timers: vec![key()],
                    before_ms: 7,
                },
                [u32le(5), keys.clone(), u64le(7)].concat(),
            ),
            (
                Command::FireAhead {
                    timers: vec![key()],
                    now_ms: 7,
                    until_ms: 8,
                },
                [u32le(6), keys, u64le(7), u64le(8)].concat(),
            ),
        ];
        for (command, bytes) in cases {
            assert_eq!(encode(&command), bytes, "{command:?}");
            assert_eq!(decode::<Command>("command", &bytes).unwrap(), command);
        }
    }

    #[test]
    fn a_record_of_an_older_build_with_its_ids_decodes_the_same() {
        let r = record();
        let mut old = StoredTimer::decode(encode_timer(&r).as_slice()).unwrap();
        old.workflow_id = r.key.workflow_id.clone();
        old.timer_id = r.key.timer_id.clone();
        let key = keys::timer_key(3, &r.key);
        assert_eq!(decode_timer(&key, &old.encode_to_vec()).unwrap(), r);
    }
}
