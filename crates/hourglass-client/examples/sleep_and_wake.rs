//! Schedules a few timers and handles them as a worker.
//!
//! Start a cluster (`deploy/local-cluster.sh up`), then:
//!
//! ```sh
//! cargo run --release -p hourglass-client --example sleep_and_wake -- 127.0.0.1:7001
//! ```

use std::sync::Arc;
use std::time::Duration;

use hourglass_client::{v1, Client, Worker, WorkerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints: Vec<String> = std::env::args().skip(1).collect();
    let endpoints = if endpoints.is_empty() {
        vec!["127.0.0.1:7001".to_string()]
    } else {
        endpoints
    };
    let client = Arc::new(Client::new(&endpoints)?);

    let workflow = format!("example-{}", std::process::id());
    for (i, secs) in [1u64, 2, 3].into_iter().enumerate() {
        let response = client
            .schedule(v1::ScheduleRequest {
                workflow_id: workflow.clone(),
                timer_id: format!("wake-{i}"),
                queue: "example".into(),
                when: Some(v1::schedule_request::When::Delay(prost_types::Duration {
                    seconds: secs as i64,
                    nanos: 0,
                })),
                payload: format!("sleep {secs}s").into_bytes(),
            })
            .await?;
        println!(
            "scheduled {}/{} (created: {})",
            workflow,
            format_args!("wake-{i}"),
            response.created
        );
    }

    let mut worker = Worker::start(Arc::clone(&client), WorkerOptions::new("example")).await?;
    let mut handled = 0;
    while handled < 3 {
        let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_secs(30), worker.next()).await
        else {
            return Err("timers did not arrive within 30 s".into());
        };
        let t = &delivery.timer;
        if t.workflow_id != workflow {
            // Another run's timer on the same queue: acknowledge it too, it is handled.
            delivery.ack();
            continue;
        }
        println!(
            "woke {}/{} attempt {} payload {:?}",
            t.workflow_id,
            t.timer_id,
            t.attempt,
            String::from_utf8_lossy(&t.payload)
        );
        delivery.ack();
        handled += 1;
    }
    Ok(())
}
