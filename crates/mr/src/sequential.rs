//! The one-process reference run: the lab's `mrsequential`, streaming.
//!
//! [`sequential`] produces `out_dir/mr-out-0` with exactly the content `mrsequential` would:
//! every distinct key of every input, in key order (byte order), one `key value\n` line
//! each, where `value` is the application's reduce over all of the key's values. It is the
//! oracle distributed runs are compared with.
//!
//! Unlike `mrsequential` it never holds the inputs or the pairs in memory: it is the same
//! [`run_map`] / [`run_reduce_with`] code as the workers, with a single reduce partition, in
//! a private scratch directory inside `out_dir` (named `.mr-tmp-sequential-…`, removed
//! afterwards, even on failure). So it handles inputs larger than memory, and `mr-out-0`
//! appears atomically (a rename) and only when complete.

use std::path::{Path, PathBuf};

use crate::app::App;
use crate::exec::ExecApp;
use crate::task::{
    output_path, run_map, run_reduce_with, MapStats, MapTask, ReduceStats, ReduceTask, Reducer,
    TaskError, TEMP_PREFIX,
};

/// What a sequential run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SequentialStats {
    /// One entry per input, in order.
    pub maps: Vec<MapStats>,
    pub reduce: ReduceStats,
}

/// Runs `app` over `inputs` (`(name the app sees, path to read)`, in order) and writes
/// `out_dir/mr-out-0`.
pub fn sequential(
    app: &dyn App,
    inputs: &[(String, PathBuf)],
    out_dir: &Path,
) -> Result<SequentialStats, TaskError> {
    sequential_with(
        app,
        Reducer::PerKey(app),
        inputs,
        out_dir,
        crate::DEFAULT_MEMORY_LIMIT,
    )
}

/// [`sequential`] for the exec app, running its reduce program once for the whole job.
pub fn sequential_exec(
    exec: &ExecApp,
    inputs: &[(String, PathBuf)],
    out_dir: &Path,
) -> Result<SequentialStats, TaskError> {
    sequential_with(
        exec,
        Reducer::Exec(exec),
        inputs,
        out_dir,
        crate::DEFAULT_MEMORY_LIMIT,
    )
}

/// [`sequential`] with a chosen reducer and map memory limit.
pub fn sequential_with(
    map_app: &dyn App,
    reducer: Reducer<'_>,
    inputs: &[(String, PathBuf)],
    out_dir: &Path,
    memory_limit: usize,
) -> Result<SequentialStats, TaskError> {
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}sequential-"))
        .tempdir_in(out_dir)
        .map_err(|source| TaskError::Io {
            action: "create a scratch directory in",
            path: out_dir.to_path_buf(),
            source,
        })?;
    let mut maps = Vec::with_capacity(inputs.len());
    for (id, (name, path)) in inputs.iter().enumerate() {
        maps.push(run_map(
            map_app,
            &MapTask {
                id,
                attempt: 0,
                input_name: name,
                input_path: path,
                input_span: None,
                n_reduce: 1,
                dir: scratch.path(),
                memory_limit,
            },
        )?);
    }
    let reduce = run_reduce_with(
        reducer,
        &ReduceTask {
            id: 0,
            map_attempts: &vec![0; inputs.len()],
            dir: scratch.path(),
            fetched: None,
            output: &output_path(scratch.path(), 0),
        },
    )?;
    let done = output_path(scratch.path(), 0);
    let target = output_path(out_dir, 0);
    std::fs::rename(&done, &target).map_err(|source| TaskError::Io {
        action: "rename the output to",
        path: target.clone(),
        source,
    })?;
    Ok(SequentialStats { maps, reduce })
}
