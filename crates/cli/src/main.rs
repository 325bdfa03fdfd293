//! `flotilla`: the command-line program. It parses arguments and calls into the library
//! crates; it holds no logic of its own.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use flotilla_raft_sim::{demo, lab3, sweep};

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
    /// Run a 5-server Raft group in the simulator through a leader crash, a partition and its
    /// healing, narrating what happens.
    Demo {
        /// Simulation seed (decimal or 0x-hex); the same seed replays the same run.
        #[arg(long, value_parser = parse_seed, default_value = "1")]
        seed: u64,
    },
    /// Randomized fault sweeps in the deterministic simulator.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum SimCommand {
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

fn parse_seed(text: &str) -> Result<u64, String> {
    flotilla_sim::parse_seed(text)
        .ok_or_else(|| format!("{text:?} is not a seed (a decimal or 0x-hex number)"))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flotilla: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo { seed } => {
            demo::run(seed);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(SimCommand::Raft { seeds, first, seed }) => {
            let (first, count) = match seed {
                Some(s) => (s, 1),
                None => (first, seeds),
            };
            if count == 0 {
                bail!("--seeds must be at least 1");
            }
            let summary = sweep::sweep(first, count, |s, result| {
                match result {
                Ok(r) if seed.is_some() => println!(
                    "seed {s}: ok — {} servers, {} faults, {} leaders, {} entries committed, {:.1}s virtual, {} invariant checks",
                    r.servers, r.faults, r.leaders, r.committed, r.virtual_time.as_secs_f64(), r.invariant_checks
                ),
                Ok(_) => {}
                Err(e) => println!("seed {s}: FAILED: {}", e.replace('\n', " ")),
            }
            });
            println!(
                "{} seeds, {} failures ({:.2}s)",
                summary.seeds,
                summary.failures.len(),
                summary.wall.as_secs_f64()
            );
            for (s, _) in &summary.failures {
                println!("replay: flotilla sim raft --seed {s}");
            }
            Ok(if summary.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Sim(SimCommand::Lab3 {
            scenario,
            seeds,
            first,
        }) => stress_lab3(&scenario, first, seeds),
        Command::Bench(BenchCommand::Raft { seed, sweep_seeds }) => {
            bench_raft(seed, sweep_seeds)?;
            Ok(ExitCode::SUCCESS)
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
        let summary = sweep::sweep(1, sweep_seeds, |_, _| {});
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
