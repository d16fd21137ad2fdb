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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_at: Option<u64>,
    /// Cancel outcome (`cancelled`, `already_fired`, `not_found`), nemesis detail, or error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Server clock of the fire and of the delivery, for deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<u64>,
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
            value: String::new(),
            attempt: None,
            fired_at: None,
            delivered_at: None,
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
