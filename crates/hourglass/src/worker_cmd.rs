//! `hourglass worker`.

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::Context;
use hourglass_client::{v1, Worker, WorkerOptions};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::cli::{Global, WorkerArgs};
use crate::output::{payload, rfc3339};
use crate::{usage, Failure};

pub fn delivery_json(d: &v1::Delivery) -> serde_json::Value {
    let (text, encoding) = payload(&d.payload);
    json!({
        "workflow_id": d.workflow_id,
        "timer_id": d.timer_id,
        "queue": d.queue,
        "fire_at": rfc3339(&d.fire_at),
        "fired_at": rfc3339(&d.fired_at),
        "delivered_at": rfc3339(&d.delivered_at),
        "attempt": d.attempt,
        "partition": d.partition,
        "payload": text,
        "payload_encoding": encoding,
    })
}

async fn run_command(cmd: &str, d: &v1::Delivery) -> anyhow::Result<bool> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("HOURGLASS_WORKFLOW_ID", &d.workflow_id)
        .env("HOURGLASS_TIMER_ID", &d.timer_id)
        .env("HOURGLASS_QUEUE", &d.queue)
        .env("HOURGLASS_ATTEMPT", d.attempt.to_string())
        .env("HOURGLASS_FIRE_AT", rfc3339(&d.fire_at).unwrap_or_default())
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{cmd}`"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine.
        let _ = stdin.write_all(&d.payload).await;
    }
    Ok(child.wait().await?.success())
}

pub async fn run(global: &Global, args: WorkerArgs) -> Result<(), Failure> {
    hourglass_types::validate_queue(&args.queue).map_err(|e| usage(format!("--queue: {e}")))?;
    let client = Arc::new(global.client()?);
    let mut options = WorkerOptions::new(args.queue.clone());
    options.credits = args.credits;
    if let Some(id) = args.worker_id {
        options.worker_id = id;
    }
    let mut worker = Worker::start(client, options).await?;
    eprintln!("worker: receiving queue {:?}", args.queue);
    let mut received = 0u64;
    while let Some(delivery) = worker.next().await {
        let d = &delivery.timer;
        let handled = match &args.exec {
            None => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", delivery_json(d))
                    .and_then(|_| out.flush())
                    .is_ok()
            }
            Some(cmd) => match run_command(cmd, d).await {
                Ok(true) => true,
                Ok(false) => {
                    eprintln!(
                        "worker: `{cmd}` failed for {}/{}; not acknowledged",
                        d.workflow_id, d.timer_id
                    );
                    false
                }
                Err(e) => {
                    eprintln!("worker: {e:#}");
                    false
                }
            },
        };
        if args.exec.is_none() && !handled {
            // Nobody reads our output any more: stop without acknowledging.
            return Ok(());
        }
        if handled {
            delivery.ack();
        }
        received += 1;
        if args.max_deliveries.is_some_and(|m| received >= m) {
            // Let the last acks leave before the streams close.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            return Ok(());
        }
    }
    Ok(())
}
