//! Round trips per second over loopback with 16 concurrent clients, for checking the wire's
//! speed by hand (it asserts nothing about speed, which depends on the machine):
//!
//! ```sh
//! cargo test --release -p flotilla-wire --test throughput -- --ignored --nocapture
//! ```

mod common;

use std::time::{Duration, Instant};

use common::{bounded, Req, Resp, TestServer, WAIT};
use flotilla_wire::ServerConfig;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, run by hand"]
async fn round_trips_per_second_with_16_clients() {
    const CLIENTS: u64 = 16;
    const RUN: Duration = Duration::from_secs(3);
    let server = TestServer::start(ServerConfig::default()).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            let value = "v".repeat(32);
            while start.elapsed() < RUN {
                let got = client.call(&Req::Echo(value.clone()), WAIT).await.unwrap();
                assert!(matches!(got, Resp::Echo(_)));
                calls += 1;
            }
            calls
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += bounded(task).await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{total} round trips in {secs:.2} s with {CLIENTS} clients: {:.0}/s ({threads} threads)",
        total as f64 / secs
    );
    server.stop().await;
}
