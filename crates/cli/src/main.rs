//! `flotilla`: the command-line program. It parses arguments and calls into the library
//! crates; it holds no logic of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use flotilla_kv::bench::{self, BenchConfig};
use flotilla_kv::server::Limits;
use flotilla_kv::tcp::{self, ClerkOptions, ServeOptions, ServerConfig, TcpClerk};
use flotilla_kv::KvError;
use flotilla_kvraft::{lab4, sweep as kvraft_sweep};
use flotilla_lincheck::{history, CheckResult};
use flotilla_raft_sim::{demo, lab3, sweep};
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc, which took 12–18% of a loaded node's CPU: on a
/// 3-node cluster at 64 clients, puts and linearizable gets gained 5–7% in six alternating
/// runs each, p99 unchanged (BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod etcd_bench;
mod kvraft;
mod shard;

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Raft, replicated key/value stores and MapReduce, in the simulator and for real"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The replicated store for real: 3 nodes as processes on loopback, data in a temporary
    /// directory; writes, SIGKILL of the leader, every write read back, the node restarted
    /// and caught up, everything stopped. (`flotilla sim demo` is the simulator's.)
    Demo,
    /// A local cluster of the replicated store.
    #[command(subcommand)]
    Cluster(kvraft::ClusterCommand),
    /// Randomized fault sweeps in the deterministic simulator.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The single-machine key/value server and its clients.
    #[command(subcommand)]
    Kv(KvCommand),
    /// MapReduce: a coordinator and worker processes, and the sequential reference.
    #[command(subcommand)]
    Mr(MrCommand),
    /// A data directory's write-ahead log: look at it, or cut a damaged tail.
    #[command(subcommand)]
    Wal(WalCommand),
    /// The replicated key/value store: a node of the cluster over TCP.
    #[command(subcommand)]
    Kvraft(kvraft::KvraftCommand),
    /// The shard controller of the sharded store: a node over TCP.
    #[command(subcommand)]
    Shardctrler(shard::ShardctrlerCommand),
    /// A shard group of the sharded store: a node over TCP.
    #[command(subcommand)]
    Shardkv(shard::ShardkvCommand),
    /// The sharded store's clients: join, leave, move, status, get, put, append, bench.
    #[command(subcommand)]
    Shard(shard::ShardCommand),
    /// Check a history file (JSON Lines, one operation per line) for linearizability.
    Check {
        file: PathBuf,
        /// Give up (verdict "unknown") after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        budget: f64,
    },
}

/// Which application a worker (or the sequential run) executes.
#[derive(clap::Args, Clone)]
struct AppArgs {
    /// Application: wc, indexer, exec, or a lab test app (mtiming, rtiming, jobcount,
    /// early_exit, crash, nocrash). A worker without it runs the one its coordinator names
    /// (`flotilla mr coordinator --app`).
    #[arg(long)]
    app: Option<String>,
    /// For `--app exec`: the map program (run with `sh -c`; see the exec protocol).
    #[arg(long)]
    map_cmd: Option<String>,
    /// For `--app exec`: the reduce program.
    #[arg(long)]
    reduce_cmd: Option<String>,
    /// For `--app exec`: kill a map or reduce program (with everything it started) after
    /// this many seconds, failing its task. Default: no limit.
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    task_cmd_timeout: Option<f64>,
}

impl AppArgs {
    /// The application `--app` names, if it is given.
    fn load_if_named(&self) -> anyhow::Result<Option<flotilla_mr::worker::WorkerApp>> {
        match &self.app {
            Some(_) => self.load().map(Some),
            None => {
                if self.map_cmd.is_some() || self.reduce_cmd.is_some() {
                    anyhow::bail!("--map-cmd and --reduce-cmd need --app exec");
                }
                Ok(None)
            }
        }
    }

    fn load(&self) -> anyhow::Result<flotilla_mr::worker::WorkerApp> {
        let Some(name) = &self.app else {
            anyhow::bail!("--app is required");
        };
        let spec = flotilla_mr::apps::AppSpec {
            name: name.clone(),
            map_cmd: self.map_cmd.clone(),
            reduce_cmd: self.reduce_cmd.clone(),
            // parse_timeout accepted only what a Duration holds.
            cmd_timeout: self.task_cmd_timeout.map(Duration::from_secs_f64),
        };
        Ok(flotilla_mr::worker::WorkerApp::load(&spec)?)
    }
}

#[derive(Subcommand)]
enum MrCommand {
    /// Hand out the tasks of one job to workers; exits when the job is done.
    Coordinator {
        #[arg(long, default_value = "127.0.0.1:7100")]
        listen: SocketAddr,
        /// Number of reduce tasks (output files mr-out-0 ... mr-out-(N-1)).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        reduce: u32,
        /// Directory for intermediate files and outputs.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Seconds after which a task not reported done is also handed to another worker
        /// (the first attempt to finish counts).
        #[arg(long, default_value_t = 10.0)]
        task_timeout: f64,
        /// A task that fails on this many different workers fails the job; a worker that
        /// fails this many tasks is dismissed.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        max_failures: u32,
        /// Near the end of each phase, hand idle workers backup attempts of the tasks still
        /// running; the first attempt to finish counts (the MapReduce paper's §3.6). Off by
        /// default: the lab's job-count test counts every attempt.
        #[arg(long)]
        backup_tasks: bool,
        /// Keep the intermediate files mr-X-Y after the job.
        #[arg(long)]
        keep_intermediate: bool,
        /// Cut input files larger than this many MiB into map tasks of about this size, at
        /// line boundaries (each split is mapped under its file's name).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1 << 40))]
        split_mb: u64,
        /// How map outputs reach the reduces: through the shared --out directory, or served
        /// over TCP by the worker that wrote them, from its own disk (a worker that is gone
        /// has its map tasks run again).
        #[arg(long, default_value = "shared-dir", value_parser = ["shared-dir", "tcp"])]
        shuffle: String,
        /// Send each map task's input split to its worker, instead of workers reading the
        /// input's path.
        #[arg(long)]
        ship_inputs: bool,
        /// Reduce workers send their finished outputs here (written atomically into --out),
        /// instead of writing them into a shared --out directory.
        #[arg(long)]
        collect_outputs: bool,
        /// Hosts share nothing: the same as --shuffle tcp --ship-inputs --collect-outputs.
        #[arg(long)]
        no_shared_dir: bool,
        /// The built-in application (wc, indexer, ...) that workers started without --app
        /// run.
        #[arg(long)]
        app: Option<String>,
        /// Seconds to keep answering "exit" after the job is done. Workers also exit when the
        /// coordinator is gone, so this only spares them a failed connection.
        #[arg(long, default_value_t = 0.02)]
        linger: f64,
        /// Progress on stderr: a bar on a terminal (auto), plain lines, or none.
        #[arg(long, default_value = "auto", value_parser = ["auto", "lines", "none"])]
        progress: String,
        /// Input files; each is one map task, named as given.
        #[arg(required = true)]
        inputs: Vec<String>,
    },
    /// Run tasks for the coordinator until the job is over or the coordinator is gone.
    Worker {
        #[arg(long, default_value = "127.0.0.1:7100")]
        coordinator: SocketAddr,
        #[command(flatten)]
        app: AppArgs,
        /// MiB of intermediate pairs a map task buffers before spilling to disk.
        #[arg(long, default_value_t = 32)]
        memory_limit_mb: usize,
        /// Where this machine sees the job's shared directory, if not at the coordinator's
        /// path for it (the share is mounted elsewhere here).
        #[arg(long, value_name = "DIR")]
        job_dir: Option<PathBuf>,
        /// Where to make the worker's own directory (map outputs it serves, fetched data),
        /// removed when it exits.
        #[arg(long, value_name = "DIR", default_value = ".")]
        work_dir: PathBuf,
        /// Where to serve the map outputs kept here (--shuffle tcp). Default: the address
        /// through which this host reaches the coordinator, on a free port.
        #[arg(long, value_name = "ADDR")]
        shuffle_listen: Option<SocketAddr>,
    },
    /// The one-process reference: writes mr-out-0 with every key in order.
    Sequential {
        #[command(flatten)]
        app: AppArgs,
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(required = true)]
        inputs: Vec<String>,
    },
}

#[derive(Subcommand)]
enum KvCommand {
    /// Serve a fresh key/value store until interrupted.
    Serve {
        /// Address to listen on (port 0 picks a free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// Execute requests but withhold this share of replies (0 ≤ P < 1), to watch
        /// exactly-once at work.
        #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
        drop_replies: f64,
        /// Seed of the reply-dropping decisions.
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        seed: u64,
        /// Serve at most this many connections at once; the next client is refused with
        /// "the server is at its connection limit".
        #[arg(long, default_value_t = ServerConfig::default().max_connections,
              value_parser = parse_positive)]
        max_connections: usize,
        /// Close a connection that has not completed the handshake within this many seconds.
        #[arg(long, value_name = "SECONDS", value_parser = parse_timeout,
              default_value_t = ServerConfig::default().handshake_timeout.as_secs_f64())]
        handshake_timeout: f64,
        /// Close a connection on which no request arrives for this many seconds after the
        /// last reply (a clerk reconnects on its next operation).
        #[arg(long, value_name = "SECONDS", value_parser = parse_timeout,
              default_value_t = ServerConfig::default().idle_timeout.as_secs_f64())]
        idle_timeout: f64,
        /// Close a connection whose started request does not arrive whole within this many
        /// seconds.
        #[arg(long, value_name = "SECONDS", value_parser = parse_timeout,
              default_value_t = ServerConfig::default().read_timeout.as_secs_f64())]
        read_timeout: f64,
        /// Close a connection that does not take a reply within this many seconds (a client
        /// that stops reading).
        #[arg(long, value_name = "SECONDS", value_parser = parse_timeout,
              default_value_t = ServerConfig::default().write_timeout.as_secs_f64())]
        write_timeout: f64,
        /// Refuse writes of keys longer than this many bytes.
        #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_key)]
        max_key_bytes: usize,
        /// Refuse writes that would make a value longer than this many bytes (a Put of a
        /// longer value, an Append that would grow it past this). Key and value together
        /// must fit in a 64 MiB frame.
        #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_value)]
        max_value_bytes: usize,
    },
    /// Print a key's value (and version).
    Get {
        #[arg(long, default_value = "127.0.0.1:7000")]
        server: SocketAddr,
        #[command(flatten)]
        cluster: ClusterArg,
        key: String,
    },
    /// Set a key's value; with --version, only if the key's version matches (0 = create).
    Put {
        #[arg(long, default_value = "127.0.0.1:7000")]
        server: SocketAddr,
        #[command(flatten)]
        cluster: ClusterArg,
        #[arg(long, conflicts_with = "cluster")]
        version: Option<u64>,
        key: String,
        value: String,
    },
    /// Append to a key's value; prints the value before.
    Append {
        #[arg(long, default_value = "127.0.0.1:7000")]
        server: SocketAddr,
        #[command(flatten)]
        cluster: ClusterArg,
        key: String,
        value: String,
    },
    /// Bounded load: prints ops/s and latency, optionally writes the history.
    Bench {
        #[arg(long, default_value = "127.0.0.1:7000")]
        server: SocketAddr,
        #[command(flatten)]
        cluster: ClusterArg,
        #[command(flatten)]
        load: BenchLoad,
        #[command(flatten)]
        etcd: etcd_bench::EtcdArgs,
    },
}

/// The load of `kv bench` and `shard bench`.
#[derive(clap::Args)]
struct BenchLoad {
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value_t = 100)]
    keys: usize,
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Share of writes that are appends (the rest are puts), in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    append_share: f64,
    /// Share of operations that are gets (the rest are writes), in [0, 1].
    #[arg(long, default_value_t = 0.5)]
    get_share: f64,
    /// Write every operation here (JSON Lines) for `flotilla check`.
    #[arg(long)]
    history: Option<PathBuf>,
}

impl BenchLoad {
    /// The bench's configuration, or why these flags make none.
    fn config(&self, server: SocketAddr, clerk: ClerkOptions) -> anyhow::Result<BenchConfig> {
        if !(0.0..=1.0).contains(&self.get_share) || !(0.0..=1.0).contains(&self.append_share) {
            bail!("--get-share and --append-share must be in [0, 1]");
        }
        Ok(BenchConfig {
            append_share: self.append_share,
            get_share: self.get_share,
            server,
            clients: self.clients,
            duration: parse_seconds(self.seconds)?,
            keys: self.keys,
            value_size: self.value_size,
            history: self.history.clone(),
            clerk,
        })
    }

    /// Prints a run's report (and where its history went).
    fn print(&self, report: &bench::BenchReport) {
        println!("{} clients: {report}", self.clients);
        if let Some(path) = &self.history {
            println!("history written to {}", path.display());
        }
    }
}

/// `--cluster A1,A2,A3`: talk to a replicated cluster (any node; the clerk finds the
/// leader) instead of the single server.
#[derive(clap::Args)]
struct ClusterArg {
    #[arg(long, value_delimiter = ',', conflicts_with = "server")]
    cluster: Vec<SocketAddr>,
}

#[derive(Subcommand)]
enum WalCommand {
    /// Print the log's segments and records and where its good part ends (a torn tail,
    /// which opening cuts off by itself, or corruption, which stops the node from
    /// starting). Changes nothing.
    Inspect { dir: PathBuf },
    /// Cut the log at its last good record, saving what is removed beside it
    /// (`<segment>.removed-<offset>`, later segments renamed `<segment>.removed`). Asks
    /// first unless --yes; refuses while a process holds the directory.
    Repair {
        dir: PathBuf,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum SimCommand {
    /// Run a 5-server Raft group in the simulator through a leader crash, a partition and its
    /// healing, narrating what happens.
    Demo {
        /// Simulation seed (decimal or 0x-hex); the same seed replays the same run.
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        seed: u64,
    },
    /// Random fault schedules against a Raft group, checking safety after every event and
    /// liveness after healing. Prints `N seeds, F failures`.
    Raft {
        /// How many seeds to run (consecutive, starting at --first).
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed of the range.
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        first: u64,
        /// Replay just this seed, with its report.
        #[arg(long, value_parser = parse_seed, conflicts_with_all = ["seeds", "first"])]
        seed: Option<u64>,
        /// Stop at the first failing seed.
        #[arg(long)]
        fail_fast: bool,
    },
    /// Random fault schedules against the replicated KV service under 3–15 clients,
    /// checking every history and that no acknowledged write is lost. Prints
    /// `N seeds, F failures`.
    Kvraft {
        /// How many seeds to run (consecutive, starting at --first).
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed of the range.
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        first: u64,
        /// Replay just this seed, with its report.
        #[arg(long, value_parser = parse_seed, conflicts_with_all = ["seeds", "first"])]
        seed: Option<u64>,
        /// Stop at the first failing seed.
        #[arg(long)]
        fail_fast: bool,
    },
    /// Random joins, leaves and moves of shard groups under crashes, partitions and loss,
    /// with concurrent clients: every history checked, no acknowledged append lost, no
    /// replica holding a shard its configuration gives to another group. Prints
    /// `N seeds, F failures`.
    Shardkv {
        /// How many seeds to run (consecutive, starting at --first).
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed of the range.
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        first: u64,
        /// Replay just this seed, with its report.
        #[arg(long, value_parser = parse_seed, conflicts_with_all = ["seeds", "first"])]
        seed: Option<u64>,
        /// Stop at the first failing seed.
        #[arg(long)]
        fail_fast: bool,
    },
    /// Run Lab 3 scenarios (all, or those whose name contains --scenario) over many seeds:
    /// a stress run like the course's dstest. Prints each failing seed.
    Lab3 {
        /// Only scenarios whose name contains this text (e.g. `figure_8`, `_3d`).
        #[arg(long, default_value = "")]
        scenario: String,
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        first: u64,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Wall time of the whole Lab 4 suite (rsm, 2025 and 2024 kvraft scenarios) at one
    /// seed, and the KV fault sweep's seeds per minute.
    Kvraft {
        /// Seed for the scenarios.
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        seed: u64,
        /// Seeds to run for the sweep rate.
        #[arg(long, default_value_t = 50)]
        sweep_seeds: u64,
    },
    /// The sharded store as processes on loopback: throughput through the sharded clerk
    /// with 1, 2, 4 ... groups under the same load.
    ShardkvScaling {
        /// The group counts to measure, one fresh store each.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        groups: Vec<usize>,
        /// Nodes per group (and in the controller).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Share of gets (the rest are puts), in [0, 1].
        #[arg(long, default_value_t = 0.0)]
        get_share: f64,
    },
    /// The sharded store as processes on loopback: one shard of --keys keys moved from one
    /// group to another; the time until the new owner serves it and the old one dropped it.
    ShardMove {
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Repeat with a fresh store this many times.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Wall time of the 28 Lab 3 scenarios at one seed, and the fault sweep's seeds per minute.
    Raft {
        /// Seed for the scenarios.
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        seed: u64,
        /// Seeds to run for the sweep rate.
        #[arg(long, default_value_t = 200)]
        sweep_seeds: u64,
    },
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..1.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a share in [0, 1)")),
    }
}

/// A count flag that must be at least 1.
fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

/// A timeout flag: a positive number of seconds.
fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && Duration::try_from_secs_f64(s).is_ok() => Ok(s),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

fn parse_seconds(seconds: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| anyhow::anyhow!("{seconds} is not a number of seconds"))
}

pub(crate) fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn parse_seed(text: &str) -> Result<u64, String> {
    flotilla_sim::parse_seed(text)
        .ok_or_else(|| format!("{text:?} is not a seed (a decimal or 0x-hex number)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // In a simulation (and in the benchmarks, which run simulations), simulated disks are torn
    // on purpose: the WAL's notes about cutting off a torn tail are the expected course of the
    // run, not news (RUST_LOG shows them).
    let default_filter = match cli.command {
        Command::Sim(_) | Command::Bench(_) => "info,flotilla_storage::wal=error",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flotilla: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sim(SimCommand::Demo { seed }) => {
            demo::run(seed);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => kvraft::demo(),
        Command::Cluster(command) => kvraft::cluster(command),
        Command::Sim(SimCommand::Raft {
            seeds,
            first,
            seed,
            fail_fast,
        }) => {
            let (first, count) = match seed {
                Some(s) => (s, 1),
                None => (first, seeds),
            };
            if count == 0 {
                bail!("--seeds must be at least 1");
            }
            let (mut deaths, mut seeds_with_deaths) = (0, 0);
            let summary = sweep::sweep(first, count, fail_fast, |s, result| {
                if let Ok(r) = result {
                    deaths += r.storage_deaths;
                    seeds_with_deaths += u64::from(r.storage_deaths > 0);
                }
                match result {
                Ok(r) if seed.is_some() => println!(
                    "seed {s}: ok — {} servers, {} faults, {} leaders, {} entries committed, {} reads confirmed, {} servers killed by I/O errors, {:.1}s virtual, {} invariant checks\n  setup: {:?}",
                    r.servers, r.faults, r.leaders, r.committed, r.reads_confirmed, r.storage_deaths, r.virtual_time.as_secs_f64(), r.invariant_checks, r.setup
                ),
                Ok(_) => {}
                Err(e) => println!("seed {s}: FAILED: {}", e.replace('\n', " ")),
            }
            });
            if seed.is_none() {
                println!("I/O errors killed {deaths} servers on {seeds_with_deaths} seeds");
            }
            Ok(sweep_verdict(
                "raft",
                summary.seeds,
                &summary.failures,
                summary.wall,
            ))
        }
        Command::Sim(SimCommand::Kvraft {
            seeds,
            first,
            seed,
            fail_fast,
        }) => {
            let (first, count) = match seed {
                Some(s) => (s, 1),
                None => (first, seeds),
            };
            if count == 0 {
                bail!("--seeds must be at least 1");
            }
            let summary = flotilla_sim::sweep_seeds(
                first,
                count,
                fail_fast,
                |s| Ok(kvraft_sweep::run_seed(s)),
                |s, result| {
                    match result {
                    Ok(r) if seed.is_some() => println!(
                        "seed {s}: ok — {} operations, {} acknowledged writes, {} faults, {} reads confirmed, {:.1}s virtual, {} invariant checks{}\n  setup: {:?}",
                        r.operations, r.acknowledged_writes, r.faults, r.reads_confirmed,
                        r.virtual_time.as_secs_f64(), r.invariant_checks,
                        if r.undecided { ", history undecided in the checker's budget" } else { "" },
                        r.setup
                    ),
                    Ok(r) if r.undecided => println!("seed {s}: history undecided in the checker's budget"),
                    Ok(_) => {}
                    Err(e) => println!("seed {s}: FAILED: {}", e.replace('\n', " ")),
                }
                },
            );
            Ok(sweep_verdict(
                "kvraft",
                summary.seeds,
                &summary.failures,
                summary.wall,
            ))
        }
        Command::Sim(SimCommand::Shardkv {
            seeds,
            first,
            seed,
            fail_fast,
        }) => {
            let (first, count) = match seed {
                Some(s) => (s, 1),
                None => (first, seeds),
            };
            if count == 0 {
                bail!("--seeds must be at least 1");
            }
            let summary = flotilla_sim::sweep_seeds(
                first,
                count,
                fail_fast,
                |s| Ok(flotilla_shardkv::sweep::run_seed(s)),
                |s, result| {
                    match result {
                    Ok(r) if seed.is_some() => println!(
                        "seed {s}: ok — {} operations, {} acknowledged appends, {} faults, {} reconfigurations ({} configurations), {} ownership checks, {:.1}s virtual{}\n  setup: {:?}",
                        r.operations, r.acknowledged_appends, r.faults, r.reconfigurations,
                        r.configurations, r.ownership_checks, r.virtual_time.as_secs_f64(),
                        if r.undecided { ", history undecided in the checker's budget" } else { "" },
                        r.setup
                    ),
                    Ok(r) if r.undecided => {
                        println!("seed {s}: history undecided in the checker's budget")
                    }
                    Ok(_) => {}
                    Err(e) => println!("seed {s}: FAILED: {}", e.replace('\n', " ")),
                }
                },
            );
            Ok(sweep_verdict(
                "shardkv",
                summary.seeds,
                &summary.failures,
                summary.wall,
            ))
        }
        Command::Sim(SimCommand::Lab3 {
            scenario,
            seeds,
            first,
        }) => stress_lab3(&scenario, first, seeds),
        Command::Bench(BenchCommand::Kvraft { seed, sweep_seeds }) => {
            bench_kvraft(seed, sweep_seeds)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Raft { seed, sweep_seeds }) => {
            bench_raft(seed, sweep_seeds)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::ShardkvScaling {
            groups,
            nodes,
            clients,
            seconds,
            keys,
            value_size,
            get_share,
        }) => shard::bench_scaling(
            &groups,
            nodes,
            clients,
            parse_seconds(seconds)?,
            keys,
            value_size,
            get_share,
        ),
        Command::Bench(BenchCommand::ShardMove {
            keys,
            value_size,
            nodes,
            runs,
        }) => shard::bench_move(keys, value_size, nodes, runs),
        Command::Kv(command) => tokio_runtime()?.block_on(kv(command)),
        Command::Mr(command) => mr(command),
        Command::Wal(command) => wal(command),
        Command::Kvraft(command) => kvraft::run(command),
        Command::Shardctrler(command) => shard::ctrler(command),
        Command::Shardkv(command) => shard::group(command),
        Command::Shard(command) => shard::run(command),
        Command::Check { file, budget } => check_history(&file, parse_seconds(budget)?),
    }
}

/// Prints a get's value and version, or says the key is missing (exit status 1).
fn print_get(key: &str, found: Result<(String, u64), KvError>) -> anyhow::Result<ExitCode> {
    match found {
        Ok((value, version)) => println!("{value}\t(version {version})"),
        Err(KvError::NoKey) => {
            eprintln!("flotilla: no key {key:?}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => bail!("get failed: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn cluster_clerk(members: Vec<SocketAddr>) -> flotilla_kvraft::tcp::ClusterClerk {
    flotilla_kvraft::tcp::ClusterClerk::new(
        members,
        tcp::random_client_id(),
        flotilla_kvraft::tcp::ClusterClerkOptions::default(),
    )
}

async fn kv(command: KvCommand) -> anyhow::Result<ExitCode> {
    let options = ClerkOptions::default();
    match command {
        KvCommand::Serve {
            listen,
            drop_replies,
            seed,
            max_connections,
            handshake_timeout,
            idle_timeout,
            read_timeout,
            write_timeout,
            max_key_bytes,
            max_value_bytes,
        } => {
            let options = ServeOptions {
                drop_replies,
                seed,
                wire: ServerConfig {
                    max_connections,
                    handshake_timeout: parse_seconds(handshake_timeout)?,
                    idle_timeout: parse_seconds(idle_timeout)?,
                    read_timeout: parse_seconds(read_timeout)?,
                    write_timeout: parse_seconds(write_timeout)?,
                    ..ServerConfig::default()
                },
                limits: Limits {
                    max_key: max_key_bytes,
                    max_value: max_value_bytes,
                },
            };
            options.check().map_err(anyhow::Error::msg)?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("flotilla kv: listening on {}", listener.local_addr()?);
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            tcp::serve(listener, options, shutdown).await?;
        }
        KvCommand::Get { cluster, key, .. } if !cluster.cluster.is_empty() => {
            let found = cluster_clerk(cluster.cluster).get(&key).await?;
            return print_get(&key, found);
        }
        KvCommand::Put {
            cluster,
            key,
            value,
            ..
        } if !cluster.cluster.is_empty() => {
            cluster_clerk(cluster.cluster).put(&key, &value).await?;
        }
        KvCommand::Append {
            cluster,
            key,
            value,
            ..
        } if !cluster.cluster.is_empty() => {
            println!(
                "{}",
                cluster_clerk(cluster.cluster).append(&key, &value).await?
            );
        }
        KvCommand::Get { server, key, .. } => {
            let found = TcpClerk::connect(server, options).await?.get(&key).await?;
            return print_get(&key, found);
        }
        KvCommand::Put {
            server,
            version,
            key,
            value,
            ..
        } => {
            let mut clerk = TcpClerk::connect(server, options).await?;
            match version {
                None => clerk.put(&key, &value).await?,
                Some(v) => {
                    if let Err(e) = clerk.put_if_version(&key, &value, v).await? {
                        eprintln!("flotilla: put not done: {e}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
        }
        KvCommand::Append {
            server, key, value, ..
        } => {
            let old = TcpClerk::connect(server, options)
                .await?
                .append(&key, &value)
                .await?;
            println!("{old}");
        }
        KvCommand::Bench {
            server,
            cluster,
            load,
            etcd,
        } => {
            if etcd.given() {
                return etcd_bench::bench(&etcd, &load).await;
            }
            let config = load.config(server, options)?;
            let report = if cluster.cluster.is_empty() {
                bench::run(config).await?
            } else {
                let clerks = (0..load.clients)
                    .map(|_| cluster_clerk(cluster.cluster.clone()))
                    .collect();
                bench::run_clerks(&config, clerks).await?
            };
            load.print(&report);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn mr(command: MrCommand) -> anyhow::Result<ExitCode> {
    use flotilla_mr::server::{
        run_coordinator, CoordinatorConfig, CoordinatorError, ProgressStyle,
    };
    match command {
        MrCommand::Coordinator {
            listen,
            reduce,
            out,
            task_timeout,
            max_failures,
            backup_tasks,
            keep_intermediate,
            split_mb,
            shuffle,
            ship_inputs,
            collect_outputs,
            no_shared_dir,
            app,
            linger,
            progress,
            inputs,
        } => {
            if let Some(name) = &app {
                // Only a built-in app can be named by the coordinator: a worker never runs a
                // command it was sent over the network.
                if name == flotilla_mr::exec::NAME {
                    anyhow::bail!(
                        "--app exec cannot be given to the coordinator: give workers \
                         --app exec with their commands"
                    );
                }
                flotilla_mr::apps::by_name(&flotilla_mr::apps::AppSpec::builtin(name.clone()))?;
            }
            let task_timeout = parse_seconds(task_timeout)?;
            if task_timeout.is_zero() {
                anyhow::bail!("--task-timeout must be more than 0 seconds");
            }
            let config = CoordinatorConfig {
                listen,
                inputs,
                n_reduce: reduce as usize,
                out_dir: out,
                task_timeout,
                max_failures,
                backup_tasks,
                split_bytes: split_mb << 20,
                intermediates_on_workers: no_shared_dir || shuffle == "tcp",
                ship_inputs: no_shared_dir || ship_inputs,
                collect_outputs: no_shared_dir || collect_outputs,
                app,
                linger: parse_seconds(linger)?,
                keep_intermediate,
                progress: match progress.as_str() {
                    "lines" => ProgressStyle::Lines,
                    "none" => ProgressStyle::None,
                    _ => ProgressStyle::Auto,
                },
            };
            let job = run_coordinator(config, |addr| {
                println!("flotilla mr: coordinator listening on {addr}");
            });
            match tokio_runtime()?.block_on(job) {
                Ok(_) => Ok(ExitCode::SUCCESS),
                Err(e @ CoordinatorError::JobFailed(_)) => {
                    eprintln!("flotilla: {e}");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.into()),
            }
        }
        MrCommand::Worker {
            coordinator,
            app,
            memory_limit_mb,
            job_dir,
            work_dir,
            shuffle_listen,
        } => {
            let config = flotilla_mr::worker::WorkerConfig {
                coordinator,
                app: app.load_if_named()?,
                memory_limit: memory_limit_mb.max(1) << 20,
                call_timeout: Duration::from_secs(5),
                job_dir,
                work_dir: Some(work_dir),
                shuffle_listen,
            };
            let summary = tokio_runtime()?.block_on(flotilla_mr::worker::run_worker(config))?;
            tracing::info!(
                maps = summary.maps,
                reduces = summary.reduces,
                failed = summary.failed,
                "worker done: {}",
                summary.ended
            );
            Ok(ExitCode::SUCCESS)
        }
        MrCommand::Sequential { app, out, inputs } => {
            let app = app.load()?;
            let inputs = flotilla_mr::server::resolve_inputs(&inputs)?;
            let inputs: Vec<_> = inputs.into_iter().map(|i| (i.name, i.path)).collect();
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            flotilla_mr::sequential::sequential_with(
                app.mapper(),
                app.reducer(),
                &inputs,
                &out,
                flotilla_mr::DEFAULT_MEMORY_LIMIT,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_history(file: &Path, budget: Duration) -> anyhow::Result<ExitCode> {
    let reader =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let records = history::read_history(std::io::BufReader::new(reader))
        .with_context(|| format!("{}", file.display()))?;
    let started = Instant::now();
    let result = history::check_records(&records, budget)?;
    let took = started.elapsed().as_secs_f64();
    match result {
        CheckResult::Ok => {
            println!(
                "linearizable: {} operations checked in {took:.2}s",
                records.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        CheckResult::Illegal(explanation) => {
            println!(
                "NOT linearizable ({} operations, {took:.2}s):\n{explanation}",
                records.len()
            );
            Ok(ExitCode::FAILURE)
        }
        CheckResult::Unknown => {
            println!(
                "unknown: no verdict within the {budget:?} budget ({} operations)",
                records.len()
            );
            Ok(ExitCode::from(3))
        }
    }
}

fn stress_lab3(filter: &str, first: u64, seeds: u64) -> anyhow::Result<ExitCode> {
    let chosen: Vec<_> = lab3::SCENARIOS
        .iter()
        .filter(|s| s.name.contains(filter))
        .collect();
    if chosen.is_empty() {
        bail!("no Lab 3 scenario name contains {filter:?}");
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut failures = 0;
    for scenario in &chosen {
        for seed in first..first.saturating_add(seeds) {
            if let Err(p) = std::panic::catch_unwind(|| lab3::run_scenario(scenario, seed, false)) {
                failures += 1;
                let msg = flotilla_raft_sim::panic_message(&*p).replace('\n', " ");
                println!("{} seed {seed}: FAILED: {msg}", scenario.name);
                println!(
                    "  replay: SIM_SEED={seed} cargo test --release -- --exact {}",
                    scenario.name
                );
            }
        }
    }
    std::panic::set_hook(hook);
    let runs = chosen.len() as u64 * seeds;
    println!(
        "{runs} runs ({} scenarios x {seeds} seeds), {failures} failures ({:.2}s)",
        chosen.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn wal(command: WalCommand) -> anyhow::Result<ExitCode> {
    use flotilla_storage::wal::{inspect, repair, LogEnd};
    let dir = match &command {
        WalCommand::Inspect { dir } | WalCommand::Repair { dir, .. } => dir.clone(),
    };
    let found = inspect(&dir)?;
    if let WalCommand::Inspect { .. } = command {
        println!(
            "{}: {} segments, {} good records",
            found.dir.display(),
            found.segments.len(),
            found.good_records()
        );
        for leftover in &found.leftovers {
            println!(
                "  {} is left over from an interrupted deletion (opening deletes it)",
                leftover.display()
            );
        }
        for segment in &found.segments {
            println!(
                "{}: segment {}, {} bytes, starts after index {}",
                segment.path.display(),
                segment.seq,
                segment.len,
                segment.base
            );
            for r in &segment.records {
                let what = match (r.segment_start, r.entries) {
                    (Some(end), _) => format!("segment start at index {end}"),
                    (None, Some((a, b))) => format!("entries {a}..={b}"),
                    (None, None) => "no entries".into(),
                };
                let hard = r
                    .hard_state
                    .map(|h| format!(", term {} vote {:?}", h.term, h.vote))
                    .unwrap_or_default();
                let snap = r
                    .snapshot
                    .map(|(i, t)| format!(", snapshot at {i} (term {t})"))
                    .unwrap_or_default();
                println!("  @{:<10} {:>8} B  {what}{hard}{snap}", r.offset, r.len);
            }
        }
        match &found.end {
            LogEnd::Clean => println!("clean: every byte belongs to a good record"),
            LogEnd::TornTail {
                segment,
                offset,
                detail,
            } => println!(
                "torn tail in {} at byte {offset} ({detail}): {} bytes a crash left mid-append; opening cuts them off",
                segment.display(),
                found.bytes_to_cut()
            ),
            LogEnd::Corrupt {
                segment,
                offset,
                detail,
            } => println!(
                "CORRUPT: {} at byte {offset} ({detail}); {} bytes from there on; the node refuses to start. `flotilla wal repair` cuts the log there (keeping a backup), losing what follows",
                segment.display(),
                found.bytes_to_cut()
            ),
            LogEnd::Incomplete { detail } => println!(
                "INCOMPLETE: {detail}; the node refuses to start, and cutting cannot repair this"
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let WalCommand::Repair { yes, .. } = command else {
        unreachable!("inspect returned above")
    };
    let (segment, offset) = match &found.end {
        LogEnd::Clean => {
            println!("{}: clean, nothing to repair", found.dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        LogEnd::Incomplete { detail } => {
            anyhow::bail!(
                "{}: {detail}; cutting the log cannot repair this",
                found.dir.display()
            )
        }
        LogEnd::TornTail {
            segment, offset, ..
        }
        | LogEnd::Corrupt {
            segment, offset, ..
        } => (segment, offset),
    };
    if !yes {
        use std::io::Write;
        print!(
            "cut {} bytes from {} at byte {offset} and every later segment (after {} good records; a backup is kept)? [y/N] ",
            found.bytes_to_cut(),
            segment.display(),
            found.good_records()
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing changed");
            return Ok(ExitCode::FAILURE);
        }
    }
    let done = repair(&dir)?;
    let saved: Vec<String> = done
        .backups
        .iter()
        .map(|b| b.display().to_string())
        .collect();
    println!(
        "cut {} bytes; they are saved in {}",
        done.removed,
        saved.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints a sweep's `N seeds, F failures` line and each failing seed's replay command.
fn sweep_verdict(kind: &str, seeds: u64, failures: &[(u64, String)], wall: Duration) -> ExitCode {
    println!(
        "{seeds} seeds, {} failures ({:.2}s)",
        failures.len(),
        wall.as_secs_f64()
    );
    for (s, _) in failures {
        println!("replay: flotilla sim {kind} --seed {s}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn bench_kvraft(seed: u64, sweep_seeds: u64) -> anyhow::Result<()> {
    let total: usize = lab4::SUITES.iter().map(|(_, s)| s.len()).sum();
    println!("Lab 4 suite: {total} scenarios, one after another on one thread, seed {seed}");
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut virtual_total = 0.0;
    for (suite, scenarios) in lab4::SUITES {
        for scenario in *scenarios {
            let t = Instant::now();
            let result = std::panic::catch_unwind(|| lab4::run_scenario(scenario, seed));
            let virtual_time = result
                .map_err(|p| anyhow::anyhow!(flotilla_sim::panic_message(&*p)))
                .with_context(|| format!("{suite} {} failed at seed {seed}", scenario.name))?;
            virtual_total += virtual_time.as_secs_f64();
            println!(
                "  {suite:<10} {:<64} {:>8.1} ms wall  {:>6.1} s virtual",
                scenario.name,
                t.elapsed().as_secs_f64() * 1e3,
                virtual_time.as_secs_f64()
            );
        }
    }
    std::panic::set_hook(hook);
    let suite = started.elapsed().as_secs_f64();
    println!("suite: {suite:.2} s wall for {virtual_total:.0} s of virtual time");
    if sweep_seeds > 0 {
        let summary = flotilla_sim::sweep_seeds(
            1,
            sweep_seeds,
            false,
            |s| Ok(kvraft_sweep::run_seed(s)),
            |_, _| {},
        );
        let rate = summary.seeds as f64 / summary.wall.as_secs_f64() * 60.0;
        println!(
            "sweep: {} seeds in {:.2} s = {rate:.0} seeds/minute ({} failures)",
            summary.seeds,
            summary.wall.as_secs_f64(),
            summary.failures.len()
        );
        if !summary.failures.is_empty() {
            bail!("sweep failures: {:?}", summary.failures);
        }
    }
    Ok(())
}

fn bench_raft(seed: u64, sweep_seeds: u64) -> anyhow::Result<()> {
    println!("Lab 3 suite: 28 scenarios, one after another on one thread, seed {seed}");
    let started = Instant::now();
    let mut virtual_total = 0.0;
    for scenario in lab3::SCENARIOS {
        let t = Instant::now();
        let result = std::panic::catch_unwind(|| lab3::run_scenario(scenario, seed, false));
        let (_, virtual_time) = result
            .map_err(|p| anyhow::anyhow!(flotilla_raft_sim::panic_message(&*p)))
            .with_context(|| format!("scenario {} failed at seed {seed}", scenario.name))?;
        virtual_total += virtual_time.as_secs_f64();
        println!(
            "  {:<32} {:>8.1} ms wall  {:>6.1} s virtual",
            scenario.name,
            t.elapsed().as_secs_f64() * 1e3,
            virtual_time.as_secs_f64()
        );
    }
    let suite = started.elapsed().as_secs_f64();
    println!("suite: {suite:.2} s wall for {virtual_total:.0} s of virtual time");
    if sweep_seeds > 0 {
        let summary = sweep::sweep(1, sweep_seeds, false, |_, _| {});
        let rate = summary.seeds as f64 / summary.wall.as_secs_f64() * 60.0;
        println!(
            "sweep: {} seeds in {:.2} s = {rate:.0} seeds/minute ({} failures)",
            summary.seeds,
            summary.wall.as_secs_f64(),
            summary.failures.len()
        );
        if !summary.failures.is_empty() {
            bail!("sweep failures: {:?}", summary.failures);
        }
    }
    Ok(())
}
