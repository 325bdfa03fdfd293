//! The exec app from Rust: word count by the awk (or Python) programs in `examples/exec/`.
//!
//! ```text
//! cargo run -p flotilla-mr --example exec_wc -- OUT_DIR FILE...          # awk
//! FLOTILLA_EXAMPLE_PYTHON=1 cargo run -p flotilla-mr --example exec_wc -- OUT_DIR FILE...
//! ```
//!
//! It runs the sequential reference with the exec app, so the reduce program runs once for
//! the whole job; a distributed job runs the same programs through the workers
//! (`flotilla mr worker --app exec --map-cmd … --reduce-cmd …`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use flotilla_mr::exec::ExecApp;
use flotilla_mr::sequential::sequential_exec;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(out_dir), inputs) = (args.next(), args.collect::<Vec<_>>()) else {
        eprintln!("usage: exec_wc OUT_DIR FILE...");
        return ExitCode::from(2);
    };
    if inputs.is_empty() {
        eprintln!("usage: exec_wc OUT_DIR FILE...");
        return ExitCode::from(2);
    }
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/exec");
    let script = |name: &str| format!("'{}'", scripts.join(name).display());
    let app = if std::env::var_os("FLOTILLA_EXAMPLE_PYTHON").is_some() {
        ExecApp::new(
            format!("python3 {}", script("wc_map.py")),
            format!("python3 {}", script("wc_reduce.py")),
        )
    } else {
        ExecApp::new(
            format!("sh {}", script("wc-map.sh")),
            format!("sh {}", script("wc-reduce.sh")),
        )
    };
    let inputs: Vec<(String, PathBuf)> = inputs
        .into_iter()
        .map(|name| (name.clone(), PathBuf::from(name)))
        .collect();
    match sequential_exec(&app, &inputs, out_dir.as_ref()) {
        Ok(stats) => {
            println!(
                "{} words written to {}/mr-out-0",
                stats.reduce.keys, out_dir
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("exec_wc: {e}");
            ExitCode::FAILURE
        }
    }
}
