//! `flotilla kv bench --etcd A1,A2,A3`: the bench's load through etcd's gRPC API
//! ([`flotilla_etcd::bench`]), against etcd itself or Flotilla's etcd-compatible nodes;
//! appends are `Txn` compare-and-set loops, and `--retry-for` makes the clients fail over.

use std::net::SocketAddr;
use std::process::ExitCode;

use flotilla_etcd::bench::{self as etcd_bench, EtcdLoad};
use flotilla_kv::tcp::ClerkOptions;

use crate::{parse_seconds, BenchLoad};

/// The flags of `kv bench` that send its load through etcd's gRPC API.
#[derive(clap::Args)]
pub struct EtcdArgs {
    /// Drive etcd's gRPC KV API at these endpoints (host:port; etcd's client URLs, or
    /// Flotilla nodes' --grpc addresses) instead of Flotilla's own protocol.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["server", "cluster"])]
    etcd: Vec<String>,
    /// HTTP/2 connections the clients share, round-robin over the endpoints (etcd
    /// benchmark's --conns); at most one per client.
    #[arg(long, default_value_t = 4, requires = "etcd")]
    conns: usize,
    /// Gets as serializable reads (the member's own state), not linearizable ones.
    #[arg(long, requires = "etcd")]
    serializable: bool,
    /// A request not answered within this many seconds counts as failed.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, requires = "etcd")]
    request_timeout: f64,
    /// Fail over: a request that fails or is not answered is sent again to the next
    /// endpoint until this many seconds have passed since its operation began (0: nothing
    /// is retried, as etcd's benchmark). The connections are then made lazily.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0, requires = "etcd")]
    retry_for: f64,
}

impl EtcdArgs {
    /// Whether `--etcd` was given.
    pub fn given(&self) -> bool {
        !self.etcd.is_empty()
    }
}

/// Runs `load` through etcd's API as `args` say and prints the report as `kv bench` does,
/// plus the connections used and the first failure's reason if a request failed.
pub async fn bench(args: &EtcdArgs, load: &BenchLoad) -> anyhow::Result<ExitCode> {
    let timeout = parse_seconds(args.request_timeout)?;
    anyhow::ensure!(!timeout.is_zero(), "--request-timeout must be more than 0");
    let retry_for = parse_seconds(args.retry_for)?;
    let unused = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = load.config(unused, ClerkOptions::default())?;
    let etcd = EtcdLoad {
        endpoints: args.etcd.clone(),
        conns: args.conns,
        serializable: args.serializable,
        request_timeout: timeout,
        connect_timeout: timeout,
        retry_for,
    };
    let result = etcd_bench::run(&etcd, &config).await?;
    load.print(&result.report);
    let reads = if args.serializable {
        "serializable"
    } else {
        "linearizable"
    };
    println!(
        "etcd API: {reads} gets, {} connections over {}{}",
        result.conns,
        args.etcd.join(","),
        if retry_for.is_zero() {
            String::new()
        } else {
            format!(", failover for {retry_for:?}")
        }
    );
    if let Some(error) = result.first_error {
        println!("first failure: {error}");
    }
    Ok(ExitCode::SUCCESS)
}
