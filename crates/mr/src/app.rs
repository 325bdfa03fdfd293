//! What a MapReduce application is: a `map` over one input and a `reduce` over one key.
//!
//! Applications are chosen by name on the worker's command line ([`crate::apps::by_name`]);
//! a Rust program can also run its own [`App`] with [`crate::run`] (see `examples/`).
//!
//! Contract (the same as 6.5840 Lab 1's `Map`/`Reduce`, made streaming):
//! - `map(name, contents, emit)`: `name` is the input's name exactly as given to the
//!   coordinator; `contents` streams the input's bytes (it may be larger than memory, and
//!   may hold a single 100 MB line); `emit(key, value)` any number of times.
//! - `reduce(key, values)`: called once per distinct key of a reduce task, in key order, with
//!   every value emitted for that key by every map task (in no particular order); returns the
//!   text that follows the key on its output line (`key value\n`).
//! - Either may fail with an error: the task is then reported failed and given to another
//!   worker (a crash or a stall is handled the same way, by the coordinator's timeout).
//! - `combine(key, values)` (optional, the paper's §4.3 combiner; [`App::has_combiner`]):
//!   run by a map task on its own output before it is written — as the pairs are emitted
//!   (gathered by key in memory) and again as sorted runs are written and merged — on some
//!   of the values it emitted for `key`, returning one value that stands for them. It may run zero, one or
//!   several times on any part of a key's values, on values it returned itself included, so
//!   `reduce` must give the same result either way (word count: a sum).
//! - All of them must be deterministic in what they output for the job's output to be well defined
//!   (the test applications that probe timing and parallelism are the exception by design).

use std::io::{self, BufRead};

/// Receives one intermediate pair.
pub type Emit<'a> = dyn FnMut(&str, &str) -> io::Result<()> + 'a;

pub trait App: Send + Sync {
    /// The name the worker's `--app` selects.
    fn name(&self) -> &str;

    fn map(&self, name: &str, contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()>;

    fn reduce(&self, key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String>;

    /// Whether map tasks run [`App::combine`] on their output. Default: no combiner.
    fn has_combiner(&self) -> bool {
        false
    }

    /// Combines some of the values one map task emitted for `key` into one (see the module
    /// docs). Called only if [`App::has_combiner`].
    fn combine(&self, key: &str, values: &mut dyn Iterator<Item = &str>) -> io::Result<String> {
        let _ = values;
        Err(io::Error::other(format!(
            "app {} has no combiner (asked to combine key {key:?})",
            self.name()
        )))
    }
}
