//! # flotilla-mr: MapReduce with a coordinator and worker processes
//!
//! 6.5840 Lab 1 as a tool: a coordinator process hands map and reduce tasks to worker
//! processes over TCP, re-issues the tasks of workers that crash or stall, and the job's
//! outputs appear atomically. Workers stream their input and spill sorted runs to disk, so
//! their memory stays bounded whatever the input size.
//!
//! - [`app`]: the `App` trait (map and reduce); [`apps`]: the built-in applications and the
//!   lab's test applications; [`exec`]: map and reduce as external programs (each run in
//!   its own process group, on a leash: `program.rs`).
//! - [`coordinator`]: the sans-IO coordinator (task assignment, timeouts, the first report
//!   of a task wins, failures per task and per worker, re-running lost map outputs).
//! - [`protocol`]: worker ⇄ coordinator messages; [`server`]: the coordinator over TCP;
//!   [`worker`]: the worker loop; [`shuffle`]: map outputs served by the workers that hold
//!   them, for jobs without a shared file system.
//! - [`task`]: running one map or reduce task (on a shared directory or a worker's own);
//!   [`partition`]: `ihash`;
//!   [`words`]: the word splitter; [`sequential`]: the one-process reference.
//! - [`texts`]: where the lab's input texts are (tests, examples, benchmarks).
//! - [`run`]: a whole job in one call (coordinator and workers in this process), for Rust
//!   programs with their own `App`.

pub mod app;
pub mod apps;
pub mod coordinator;
pub mod exec;
pub mod partition;
mod program;
pub mod protocol;
mod run;
pub mod sequential;
pub mod server;
pub mod shuffle;
pub mod task;
pub mod texts;
pub mod words;
pub mod worker;

pub use app::{App, Emit};
pub use run::{run, Job, DEFAULT_MEMORY_LIMIT};
