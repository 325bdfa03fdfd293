//! The lab's probing applications (mtiming, rtiming, jobcount: spec §3), which keep marker
//! files in the current directory.
//!
//! The current directory belongs to the whole process, so this test has a test binary of its
//! own: in a binary shared with other tests, a child process they start could inherit the
//! scratch directory just as it is deleted.

use std::path::Path;

use flotilla_mr::app::App;
use flotilla_mr::apps::{by_name, AppSpec};

fn app(name: &str) -> Box<dyn App> {
    by_name(&AppSpec::builtin(name)).unwrap()
}

fn map_pairs(app: &dyn App, name: &str, text: &[u8]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut reader: &[u8] = text;
    app.map(name, &mut reader, &mut |k: &str, v: &str| {
        pairs.push((k.to_owned(), v.to_owned()));
        Ok(())
    })
    .unwrap();
    pairs.sort();
    pairs
}

fn reduce(app: &dyn App, key: &str, values: &[&str]) -> String {
    let mut values = values.iter().map(|v| v.to_string());
    app.reduce(key, &mut values).unwrap()
}

/// mtiming, rtiming and jobcount work in the current directory, so this test moves the
/// process into a scratch directory.
#[test]
fn probing_apps_use_marker_files_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    let pid = std::process::id();

    // A marker of a live process (this one, under another phase's name is not counted) and
    // of a dead pid: only live "map" markers count.
    std::fs::write(format!("mr-worker-map-{}", u32::MAX - 1), "x").unwrap();
    std::fs::write(format!("mr-worker-reduce-{pid}"), "x").unwrap();
    let pairs = map_pairs(app("mtiming").as_ref(), "in", b"");
    assert_eq!(pairs[0], (format!("parallel-{pid}"), "1".into()));
    assert_eq!(pairs[1].0, format!("times-{pid}"));
    let time: f64 = pairs[1].1.parse().unwrap();
    assert!(time > 1.6e9 && pairs[1].1.split('.').nth(1).unwrap().len() == 1);
    assert!(
        !Path::new(&format!("mr-worker-map-{pid}")).exists(),
        "marker removed"
    );
    std::fs::remove_file(format!("mr-worker-reduce-{pid}")).unwrap();

    assert_eq!(reduce(app("rtiming").as_ref(), "a", &["1"]), "1");
    assert_eq!(
        reduce(app("mtiming").as_ref(), "k", &["2", "1", "10"]),
        "1 10 2"
    );

    let jobcount = app("jobcount");
    assert_eq!(
        map_pairs(jobcount.as_ref(), "in", b""),
        [("a".into(), "x".into())]
    );
    assert!(Path::new(&format!("mr-worker-jobcount-{pid}-0")).exists());
    std::fs::write("mr-worker-jobcount-other", "x").unwrap();
    assert_eq!(reduce(jobcount.as_ref(), "a", &["x"]), "2");
}
