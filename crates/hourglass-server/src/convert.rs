//! Conversions between the public protobuf messages and domain types, with validation.

use hourglass_proto::v1;
use hourglass_types::{
    validate_timer_key, Command, Error as InputError, Limits, TimerDefinition, TimerKey,
    TimerRecord, TimerState, DEFAULT_QUEUE,
};
use prost_types::{Duration as PbDuration, Timestamp};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Timers further out than this are refused as input mistakes.
const MAX_HORIZON_MS: u64 = 100 * 366 * 24 * 3600 * 1000;

/// The wall clock, for tests that need no cluster time.
#[cfg(test)]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A time in milliseconds since the epoch as a protobuf Timestamp.
pub fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Whole milliseconds of a duration; `None` beyond `u64` (half a billion years).
fn whole_ms(d: Duration) -> Option<u64> {
    u64::try_from(d.as_millis()).ok()
}

/// A request's Timestamp in milliseconds since the epoch. Only the normalized form the
/// protobuf spec allows is accepted (nanos in 0..=999,999,999), so a time has one spelling.
fn timestamp_ms(field: &'static str, t: &Timestamp) -> Result<u64, InputError> {
    let after_epoch =
        || InputError::invalid(field, "must be a valid time after 1970-01-01T00:00:00Z");
    if t.normalized() != *t {
        return Err(after_epoch());
    }
    let since_epoch = SystemTime::try_from(*t)
        .map_err(|_| InputError::invalid(field, "is more than 100 years ahead"))?
        .duration_since(UNIX_EPOCH)
        .map_err(|_| after_epoch())?;
    whole_ms(since_epoch).ok_or_else(|| InputError::invalid(field, "is more than 100 years ahead"))
}

/// A request's Duration in milliseconds. Only the normalized form the protobuf spec allows is
/// accepted (nanos in 0..=999,999,999 with the sign of seconds).
fn duration_ms(field: &'static str, d: &PbDuration) -> Result<u64, InputError> {
    let non_negative = || InputError::invalid(field, "must be a non-negative duration");
    if d.normalized() != *d {
        return Err(non_negative());
    }
    let d = Duration::try_from(*d).map_err(|_| non_negative())?;
    whole_ms(d).ok_or_else(|| InputError::invalid(field, "is more than 100 years ahead"))
}

pub fn timer_key(workflow_id: String, timer_id: String) -> Result<TimerKey, InputError> {
    let key = TimerKey {
        workflow_id,
        timer_id,
    };
    validate_timer_key(&key)?;
    Ok(key)
}

/// A schedule request whose fields are valid; only the horizon, which needs the cluster's time,
/// is left to check.
#[derive(Debug)]
pub struct ValidSchedule {
    key: TimerKey,
    definition: TimerDefinition,
}

/// Validates every field of a schedule request without reading any clock, so bad input is
/// refused as such even while the cluster clock is still unknown.
pub fn validate_schedule(
    req: v1::ScheduleRequest,
    limits: &Limits,
) -> Result<ValidSchedule, InputError> {
    let key = timer_key(req.workflow_id, req.timer_id)?;
    let (fire_at_ms, delay_ms) = match req.when {
        Some(v1::schedule_request::When::FireAt(t)) => (Some(timestamp_ms("fire_at", &t)?), None),
        Some(v1::schedule_request::When::Delay(d)) => (None, Some(duration_ms("delay", &d)?)),
        None => (None, None),
    };
    let definition = TimerDefinition {
        queue: if req.queue.is_empty() {
            DEFAULT_QUEUE.to_owned()
        } else {
            req.queue
        },
        fire_at_ms,
        delay_ms,
        payload: req.payload,
    };
    definition.validate(limits)?;
    Ok(ValidSchedule { key, definition })
}

impl ValidSchedule {
    /// The command to propose, received at cluster time `now_ms`.
    pub fn at(self, now_ms: u64) -> Result<Command, InputError> {
        let Self { key, definition } = self;
        if definition.resolve_fire_at(now_ms) > now_ms.saturating_add(MAX_HORIZON_MS) {
            let field = if definition.delay_ms.is_some() {
                "delay"
            } else {
                "fire_at"
            };
            return Err(InputError::invalid(field, "is more than 100 years ahead"));
        }
        Ok(Command::Schedule {
            key,
            definition,
            received_at_ms: now_ms,
        })
    }
}

pub fn timer(record: TimerRecord, partition: u32) -> v1::Timer {
    let state = match record.state {
        TimerState::Scheduled => v1::TimerState::Scheduled,
        TimerState::Fired => v1::TimerState::Fired,
        TimerState::Completed => v1::TimerState::Completed,
        TimerState::Cancelled => v1::TimerState::Cancelled,
    };
    v1::Timer {
        workflow_id: record.key.workflow_id,
        timer_id: record.key.timer_id,
        queue: record.definition.queue,
        fire_at: Some(timestamp(record.fire_at_ms)),
        payload: record.definition.payload,
        state: state as i32,
        created_at: Some(timestamp(record.created_at_ms)),
        fired_at: record.fired_at_ms.map(timestamp),
        finished_at: record.finished_at_ms.map(timestamp),
        attempt: record.attempt,
        partition,
    }
}

/// Page tokens are the hex of the last timer id returned; opaque to clients.
pub fn encode_page_token(timer_id: &str) -> String {
    timer_id.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_page_token(token: &str) -> Result<Option<String>, InputError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || InputError::invalid("page_token", "is not a token returned by List");
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> v1::ScheduleRequest {
        v1::ScheduleRequest {
            workflow_id: "w".into(),
            timer_id: "t".into(),
            queue: String::new(),
            when: Some(v1::schedule_request::When::Delay(PbDuration {
                seconds: 1,
                nanos: 0,
            })),
            payload: vec![],
        }
    }

    fn schedule_command(
        req: v1::ScheduleRequest,
        limits: &Limits,
        now_ms: u64,
    ) -> Result<Command, InputError> {
        validate_schedule(req, limits)?.at(now_ms)
    }

    fn field_of(r: Result<Command, InputError>) -> &'static str {
        match r {
            Err(InputError::InvalidArgument { field, .. }) => field,
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn schedule_validation_names_fields() {
        let l = Limits::default();
        assert!(matches!(
            schedule_command(req(), &l, 5).unwrap(),
            Command::Schedule { ref definition, .. } if definition.queue == "default"
        ));
        assert_eq!(
            field_of(schedule_command(
                v1::ScheduleRequest {
                    when: None,
                    ..req()
                },
                &l,
                5
            )),
            "fire_at"
        );
        let negative = v1::schedule_request::When::Delay(PbDuration {
            seconds: -1,
            nanos: 0,
        });
        assert_eq!(
            field_of(schedule_command(
                v1::ScheduleRequest {
                    when: Some(negative),
                    ..req()
                },
                &l,
                5
            )),
            "delay"
        );
        let before_epoch = v1::schedule_request::When::FireAt(Timestamp {
            seconds: -5,
            nanos: 0,
        });
        assert_eq!(
            field_of(schedule_command(
                v1::ScheduleRequest {
                    when: Some(before_epoch),
                    ..req()
                },
                &l,
                5
            )),
            "fire_at"
        );
        let far = v1::schedule_request::When::Delay(PbDuration {
            seconds: 200 * 366 * 86400,
            nanos: 0,
        });
        assert_eq!(
            field_of(schedule_command(
                v1::ScheduleRequest {
                    when: Some(far),
                    ..req()
                },
                &l,
                5
            )),
            "delay"
        );
        assert_eq!(
            field_of(schedule_command(
                v1::ScheduleRequest {
                    queue: "a b".into(),
                    ..req()
                },
                &l,
                5
            )),
            "queue"
        );
        assert_eq!(
            field_of(schedule_command(
                v1::ScheduleRequest {
                    payload: vec![0; 65 * 1024],
                    ..req()
                },
                &l,
                5
            )),
            "payload"
        );
        assert_eq!(
            field_of(schedule_command(
                v1::ScheduleRequest {
                    workflow_id: String::new(),
                    ..req()
                },
                &l,
                5
            )),
            "workflow_id"
        );
    }

    /// Times too large for milliseconds in a u64 are refused by the field, never wrapped.
    #[test]
    fn huge_and_non_normalized_times_are_refused() {
        let l = Limits::default();
        let with = |when| v1::ScheduleRequest {
            when: Some(when),
            ..req()
        };
        let huge = (1i64 << 62, 999_999_999);
        let fire_at = v1::schedule_request::When::FireAt(Timestamp {
            seconds: huge.0,
            nanos: huge.1,
        });
        assert_eq!(field_of(schedule_command(with(fire_at), &l, 5)), "fire_at");
        let delay = v1::schedule_request::When::Delay(PbDuration {
            seconds: huge.0,
            nanos: huge.1,
        });
        assert_eq!(field_of(schedule_command(with(delay), &l, 5)), "delay");
        let max = v1::schedule_request::When::FireAt(Timestamp {
            seconds: i64::MAX,
            nanos: 999_999_999,
        });
        assert_eq!(field_of(schedule_command(with(max), &l, 5)), "fire_at");
        for nanos in [-1, 1_000_000_000] {
            let t = v1::schedule_request::When::FireAt(Timestamp { seconds: 5, nanos });
            assert_eq!(field_of(schedule_command(with(t), &l, 5)), "fire_at");
            let d = v1::schedule_request::When::Delay(PbDuration { seconds: 5, nanos });
            assert_eq!(field_of(schedule_command(with(d), &l, 5)), "delay");
        }
        // Milliseconds survive the round trip through the protobuf types.
        let at = 1_700_000_000_123;
        let t = timestamp(at);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
        assert_eq!(timestamp_ms("fire_at", &t).unwrap(), at);
        let d = PbDuration {
            seconds: 3,
            nanos: 7_500_000,
        };
        assert_eq!(duration_ms("delay", &d).unwrap(), 3_007);
    }

    #[test]
    fn page_tokens_round_trip() {
        for id in ["", "t-01", "é\u{0}x"] {
            let token = encode_page_token(id);
            assert_eq!(
                decode_page_token(&token).unwrap().as_deref(),
                if token.is_empty() { None } else { Some(id) }
            );
        }
        assert!(decode_page_token("zz").is_err());
        assert!(decode_page_token("abc").is_err());
    }
}
