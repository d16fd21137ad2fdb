//! Human and JSON renderings of API messages.

use base64::Engine;
use hourglass_client::v1;
use serde_json::{json, Value};

/// RFC 3339 in UTC with milliseconds; `None` when unset or outside 1970..=9999.
pub fn rfc3339(t: &Option<prost_types::Timestamp>) -> Option<String> {
    /// The first second of the year 10000: RFC 3339 has four-digit years.
    const YEAR_10000: u64 = 253_402_300_800;
    let at = std::time::SystemTime::try_from((*t)?).ok()?;
    let since_epoch = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    (since_epoch.as_secs() < YEAR_10000).then(|| humantime::format_rfc3339_millis(at).to_string())
}

fn state(s: i32) -> &'static str {
    match v1::TimerState::try_from(s).unwrap_or(v1::TimerState::Unspecified) {
        v1::TimerState::Scheduled => "scheduled",
        v1::TimerState::Fired => "fired",
        v1::TimerState::Completed => "completed",
        v1::TimerState::Cancelled => "cancelled",
        v1::TimerState::Unspecified => "unspecified",
    }
}

/// Payload as UTF-8 text when it is valid UTF-8, else base64, and which of the two.
pub fn payload(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            "base64",
        ),
    }
}

pub fn timer_json(t: &v1::Timer) -> Value {
    let (payload, encoding) = payload(&t.payload);
    json!({
        "workflow_id": t.workflow_id,
        "timer_id": t.timer_id,
        "queue": t.queue,
        "state": state(t.state),
        "fire_at": rfc3339(&t.fire_at),
        "created_at": rfc3339(&t.created_at),
        "fired_at": rfc3339(&t.fired_at),
        "finished_at": rfc3339(&t.finished_at),
        "attempt": t.attempt,
        "partition": t.partition,
        "payload": payload,
        "payload_encoding": encoding,
    })
}

pub fn timer_text(t: &v1::Timer) -> String {
    let (payload, encoding) = payload(&t.payload);
    let mut s = format!(
        "{}/{}  {}  queue={}  fire_at={}  partition={}",
        t.workflow_id,
        t.timer_id,
        state(t.state),
        t.queue,
        rfc3339(&t.fire_at).unwrap_or_default(),
        t.partition
    );
    if let Some(at) = rfc3339(&t.finished_at) {
        s.push_str(&format!("  finished_at={at}"));
    }
    if !t.payload.is_empty() {
        s.push_str(&format!("  payload({encoding})={payload:?}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    #[test]
    fn timestamps_print_as_rfc3339_within_its_years() {
        let t = |seconds, nanos| Some(Timestamp { seconds, nanos });
        assert_eq!(
            rfc3339(&t(1_700_000_000, 123_456_789)).as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(
            rfc3339(&t(0, 0)).as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(rfc3339(&None), None);
        assert_eq!(rfc3339(&t(-1, 0)), None);
        assert_eq!(rfc3339(&t(253_402_300_800, 0)), None);
        assert_eq!(rfc3339(&t(1 << 62, 5)), None);
    }
}
