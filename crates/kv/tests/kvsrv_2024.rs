//! 6.5840 Lab 2 (2024): Put/Append/Get with exactly-once semantics, in the simulator.
//! Every concurrent history is checked for linearizability.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use flotilla_kv::sim::{KvSim, SimClerk};
use flotilla_sim::{run_test, sleep, spawn, with_rng};

/// Each `x <client> <k> y` for k < count occurs exactly once in `value`, in order of k.
fn check_appends(value: &str, client: usize, count: usize) {
    let mut last_offset = None;
    for k in 0..count {
        let wanted = format!("x {client} {k} y");
        let offset = value.find(&wanted).unwrap_or_else(|| {
            panic!("{client} missing element {wanted} in Append result {value}")
        });
        assert_eq!(
            offset,
            value.rfind(&wanted).unwrap(),
            "duplicate element {wanted} in Append result"
        );
        if let Some(last) = last_offset {
            assert!(
                offset > last,
                "wrong order for element {wanted} in Append result"
            );
        }
        last_offset = Some(offset);
    }
}

async fn client_loop(clerk: SimClerk, cli: usize, stop: Rc<Cell<bool>>) -> usize {
    let key = cli.to_string();
    let me = cli as i64;
    clerk.logged_put(me, &key, "").await;
    let mut last = String::new();
    let mut j = 0;
    while !stop.get() {
        let nv = format!("x {cli} {j} y");
        if with_rng(|r| r.below(1000) < 500) {
            let old = clerk.logged_append(me, &key, &nv).await;
            if j > 0 {
                let previous = format!("x {cli} {} y", j - 1);
                assert!(
                    old.contains(&previous),
                    "old {old} not in return {previous}"
                );
            }
            assert!(
                !old.contains(&nv),
                "new value {nv} in returned values {old}"
            );
            last.push_str(&nv);
            j += 1;
        } else {
            let value = clerk.logged_get(me, &key).await;
            assert_eq!(value, last, "get wrong value, key {key}");
        }
    }
    j
}

/// The lab's GenericTest: rounds of concurrent clients appending to and reading their own
/// keys, then a check of every key and of the whole history.
async fn generic_test(nclients: usize, unreliable: bool) {
    let sim = KvSim::new(!unreliable);
    let checker = sim.clerk();
    for _round in 0..3 {
        let stop = Rc::new(Cell::new(false));
        let clients: Vec<_> = (0..nclients)
            .map(|cli| spawn(client_loop(sim.clerk(), cli, stop.clone())))
            .collect();
        sleep(Duration::from_secs(1)).await;
        stop.set(true);
        for (cli, client) in clients.into_iter().enumerate() {
            let count = client.await;
            let value = checker.logged_get(0, &cli.to_string()).await;
            check_appends(&value, cli, count);
        }
    }
    sim.check_linearizable(KvSim::CHECK_BUDGET);
}

#[test]
fn basic_2() {
    run_test("basic_2", || generic_test(1, false));
}

#[test]
fn concurrent_2() {
    run_test("concurrent_2", || generic_test(5, false));
}

#[test]
fn unreliable_2() {
    run_test("unreliable_2", || generic_test(5, true));
}

#[test]
fn unreliable_one_key_2() {
    run_test("unreliable_one_key_2", || async {
        let sim = KvSim::new(false);
        sim.clerk().put("k", "").await;
        let clients: Vec<_> = (0..5)
            .map(|me| {
                let clerk = sim.clerk();
                spawn(async move {
                    for n in 0..10 {
                        let nv = format!("x {me} {n} y");
                        let old = clerk.append("k", &nv).await;
                        assert!(
                            !old.contains(&nv),
                            "new value {nv} in returned values {old}"
                        );
                    }
                })
            })
            .collect();
        for client in clients {
            client.await;
        }
        let value = sim.clerk().get("k").await;
        for me in 0..5 {
            check_appends(&value, me, 10);
        }
    });
}
