//! Human and JSON renderings of API messages.

use base64::Engine;
use hourglass_client::v1;
use serde_json::{json, Value};

pub fn rfc3339(t: &Option<prost_types::Timestamp>) -> Option<String> {
    let t = t.as_ref()?;
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::new(u64::try_from(t.seconds).ok()?, u32::try_from(t.nanos).ok()?);
    Some(humantime::format_rfc3339_millis(at).to_string())
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
