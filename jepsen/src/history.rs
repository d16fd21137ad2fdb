//! The recorded history: every client invocation and its completion, every delivery, every
//! nemesis action, one JSON object per line.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch by the harness's clock, which no nemesis skews.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Invoke,
    /// Completed with a definite answer.
    Ok,
    /// Definitely did not take effect.
    Fail,
    /// Outcome unknown (timeout, connection lost): may or may not have taken effect.
    Info,
    /// A worker received a timer.
    Deliver,
    Nemesis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Harness clock, ms since the epoch.
    pub time: u64,
    pub process: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// `schedule`, `cancel`, `get`, or for nemeses the fault's name.
    #[serde(default)]
    pub f: String,
    /// `workflow_id/timer_id`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Schedules: the absolute time the client asked for (harness clock, ms since the epoch).
    /// Only the client's own record; the server's answer goes to `server_fire_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_at: Option<u64>,
    /// Schedules: the delay the client asked for instead of an absolute time, in ms. The timer
    /// cannot be due before the invocation's `time` plus this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// The server's echo of the timer's fire_at (schedule answers, deliveries). Recorded for
    /// diagnosis only: the checker never judges by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_fire_at: Option<u64>,
    /// Cancel outcome (`cancelled`, `already_fired`, `not_found`), nemesis detail, or error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Deliveries: the server's time of the fire (as committed) and the delivering node's
    /// time when it handed the delivery to the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<u64>,
    /// Nemesis actions on one node (`start clock-skew`, and the heal that undoes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// Whether that node led at least one partition when the nemesis acted (by the cluster
    /// status it read just before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
    /// The partitions that node led then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leader_of: Vec<u32>,
    /// The node's wall clock offset from true time after the action, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_ms: Option<i64>,
}

impl Event {
    pub fn new(process: &str, kind: Kind, f: &str) -> Self {
        Event {
            time: now_ms(),
            process: process.to_owned(),
            kind,
            f: f.to_owned(),
            key: String::new(),
            fire_at: None,
            delay_ms: None,
            server_fire_at: None,
            value: String::new(),
            attempt: None,
            fired_at: None,
            delivered_at: None,
            node: None,
            leader: None,
            leader_of: Vec::new(),
            offset_ms: None,
        }
    }

    pub fn key(mut self, key: &str) -> Self {
        self.key = key.to_owned();
        self
    }

    pub fn fire_at(mut self, at: u64) -> Self {
        self.fire_at = Some(at);
        self
    }

    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.delay_ms = Some(ms);
        self
    }

    pub fn at(mut self, time: u64) -> Self {
        self.time = time;
        self
    }

    pub fn value(mut self, v: impl Into<String>) -> Self {
        self.value = v.into();
        self
    }
}

/// Appends events to a JSON-lines file as they happen, so a crashed run leaves its history.
#[derive(Clone)]
pub struct Recorder {
    out: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl Recorder {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)?;
        Ok(Recorder {
            out: Arc::new(Mutex::new(std::io::BufWriter::new(file))),
        })
    }

    pub fn record(&self, event: Event) {
        let line = serde_json::to_string(&event).expect("events serialize");
        let mut out = self.out.lock().expect("history lock");
        let _ = writeln!(out, "{line}");
    }

    pub fn flush(&self) {
        let _ = self.out.lock().expect("history lock").flush();
    }
}

pub fn read(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = std::fs::File::open(path)?;
    let mut events = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(
            serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_fields_round_trip_and_old_lines_still_parse() {
        let mut e = Event::new("nemesis", Kind::Nemesis, "start clock-skew").at(7);
        e.node = Some(2);
        e.leader = Some(true);
        e.leader_of = vec![3, 5];
        e.offset_ms = Some(-600_000);
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains("\"offset_ms\":-600000"), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);

        let s = Event::new("client-0", Kind::Invoke, "schedule")
            .key("w/t")
            .delay_ms(1_500);
        let back: Event = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.delay_ms, Some(1_500));
        assert_eq!(back.fire_at, None);

        let old = r#"{"time":1,"process":"worker-0","type":"deliver","f":"deliver","key":"w/t","fire_at":5,"attempt":1,"fired_at":5,"delivered_at":6}"#;
        let e: Event = serde_json::from_str(old).unwrap();
        assert_eq!(
            (e.fired_at, e.delivered_at, e.node),
            (Some(5), Some(6), None)
        );
    }
}
