use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Upper bound on `workflow_id` and `timer_id`, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 256;
/// Upper bound on `queue`, in bytes.
pub const MAX_QUEUE_BYTES: usize = 128;
/// The queue a timer goes to when the request names none.
pub const DEFAULT_QUEUE: &str = "default";

/// `(workflow_id, timer_id)`: the name of a timer (G6).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimerKey {
    pub workflow_id: String,
    pub timer_id: String,
}

/// What a client asked for. Two schedules of the same key are "identical" when their
/// definitions are equal; a `delay` is kept as given so that a retried relative schedule is
/// recognised as the same request even though it arrives at a later instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerDefinition {
    pub queue: String,
    /// Absolute due time when the request gave `fire_at`, otherwise `None`.
    pub fire_at_ms: Option<u64>,
    /// Relative due time when the request gave `delay`.
    pub delay_ms: Option<u64>,
    #[serde(with = "serde_bytes_compat")]
    pub payload: Vec<u8>,
}

/// Lifecycle of a timer: SCHEDULED → FIRED → COMPLETED, or SCHEDULED → CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerState {
    Scheduled,
    Fired,
    Completed,
    Cancelled,
}

impl TimerState {
    pub fn is_terminal(self) -> bool {
        matches!(self, TimerState::Completed | TimerState::Cancelled)
    }
}

/// A timer as the state machine holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRecord {
    pub key: TimerKey,
    pub definition: TimerDefinition,
    /// The resolved due instant, milliseconds since the Unix epoch.
    pub fire_at_ms: u64,
    pub state: TimerState,
    pub created_at_ms: u64,
    pub fired_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub attempt: u32,
    /// The log index of the `Fire` that fired it: fired timers of a partition are delivered
    /// in this order.
    pub fire_seq: Option<u64>,
}

/// Limits applied to requests; the payload bound is configurable per cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 64 * 1024,
        }
    }
}

fn validate_id(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {} bytes, at most {MAX_ID_BYTES} allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Checks `workflow_id` and `timer_id`: 1..=256 bytes of UTF-8 (the type guarantees UTF-8),
/// without control characters.
pub fn validate_timer_key(key: &TimerKey) -> Result<()> {
    validate_id("workflow_id", &key.workflow_id)?;
    validate_id("timer_id", &key.timer_id)
}

/// Checks a queue name: 1..=128 bytes of `[A-Za-z0-9._-]`.
pub fn validate_queue(queue: &str) -> Result<()> {
    if queue.is_empty() {
        return Err(Error::invalid("queue", "must not be empty"));
    }
    if queue.len() > MAX_QUEUE_BYTES {
        return Err(Error::invalid(
            "queue",
            format!(
                "is {} bytes, at most {MAX_QUEUE_BYTES} allowed",
                queue.len()
            ),
        ));
    }
    if let Some(c) = queue
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(
            "queue",
            format!("contains {c:?}; only [A-Za-z0-9._-] allowed"),
        ));
    }
    Ok(())
}

impl TimerDefinition {
    /// Validates the definition and resolves its due instant against `now_ms`, the receiving
    /// node's clock.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        validate_queue(&self.queue)?;
        if self.payload.len() > limits.max_payload_bytes {
            return Err(Error::invalid(
                "payload",
                format!(
                    "is {} bytes, at most {} allowed",
                    self.payload.len(),
                    limits.max_payload_bytes
                ),
            ));
        }
        match (self.fire_at_ms, self.delay_ms) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            (None, None) => Err(Error::invalid(
                "fire_at",
                "one of fire_at or delay is required",
            )),
            (Some(_), Some(_)) => Err(Error::invalid("fire_at", "give fire_at or delay, not both")),
        }
    }

    /// The due instant of a schedule received at `now_ms`.
    pub fn resolve_fire_at(&self, now_ms: u64) -> u64 {
        match (self.fire_at_ms, self.delay_ms) {
            (Some(at), _) => at,
            (None, Some(delay)) => now_ms.saturating_add(delay),
            (None, None) => now_ms,
        }
    }
}

/// serde for payload bytes as one compact byte string rather than a sequence of numbers.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> TimerDefinition {
        TimerDefinition {
            queue: DEFAULT_QUEUE.into(),
            fire_at_ms: Some(1),
            delay_ms: None,
            payload: vec![],
        }
    }

    #[test]
    fn ids_are_bounded_and_non_empty() {
        let ok = TimerKey {
            workflow_id: "w".repeat(MAX_ID_BYTES),
            timer_id: "t".into(),
        };
        assert!(validate_timer_key(&ok).is_ok());
        let long = TimerKey {
            workflow_id: "w".repeat(MAX_ID_BYTES + 1),
            timer_id: "t".into(),
        };
        assert!(matches!(
            validate_timer_key(&long),
            Err(Error::InvalidArgument {
                field: "workflow_id",
                ..
            })
        ));
        let empty = TimerKey {
            workflow_id: "w".into(),
            timer_id: String::new(),
        };
        assert!(matches!(
            validate_timer_key(&empty),
            Err(Error::InvalidArgument {
                field: "timer_id",
                ..
            })
        ));
        // Multi-byte characters count in bytes, not chars.
        let wide = TimerKey {
            workflow_id: "é".repeat(129),
            timer_id: "t".into(),
        };
        assert!(validate_timer_key(&wide).is_err());
    }

    #[test]
    fn queue_charset() {
        assert!(validate_queue("billing.v2_retry-1").is_ok());
        for bad in ["", "a b", "a/b", "ü", &"q".repeat(129)] {
            assert!(
                matches!(
                    validate_queue(bad),
                    Err(Error::InvalidArgument { field: "queue", .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn payload_limit_and_when() {
        let limits = Limits {
            max_payload_bytes: 4,
        };
        let mut d = def();
        d.payload = vec![0; 5];
        assert!(matches!(
            d.validate(&limits),
            Err(Error::InvalidArgument {
                field: "payload",
                ..
            })
        ));
        let mut d = def();
        d.fire_at_ms = None;
        assert!(matches!(
            d.validate(&limits),
            Err(Error::InvalidArgument {
                field: "fire_at",
                ..
            })
        ));
        d.delay_ms = Some(10);
        assert!(d.validate(&limits).is_ok());
        assert_eq!(d.resolve_fire_at(100), 110);
    }
}
