//! 6.5840 Lab 2 (2025) lock tests: mutual exclusion checked through key `l0`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use flotilla_kv::lock::Lock;
use flotilla_kv::sim::KvSim;
use flotilla_kv::KvError;
use flotilla_sim::{run_test, sleep, spawn, with_rng};

async fn run_clients(n: usize, reliable: bool) {
    let sim = KvSim::new(reliable);
    let stop = Rc::new(Cell::new(false));
    let clients: Vec<_> = (0..n)
        .map(|me| {
            let ck = sim.clerk();
            let stop = stop.clone();
            spawn(async move {
                let id = format!("{:016x}", with_rng(|r| r.next_u64()));
                let lock = Lock::new(&ck, "l", id);
                let _ = ck.vput("l0", "", 0).await;
                let mut rounds = 0;
                while !stop.get() {
                    lock.acquire().await;
                    let (value, ver) = ck.vget("l0").await.expect("get failed");
                    assert_eq!(value, "", "two clients acquired lock");
                    let r = ck.vput("l0", &me.to_string(), ver).await;
                    assert!(
                        matches!(r, Ok(()) | Err(KvError::Maybe)),
                        "{me}: put l0 {r:?}"
                    );
                    sleep(Duration::from_millis(10)).await;
                    let r = ck.vput("l0", "", ver + 1).await;
                    assert!(
                        matches!(r, Ok(()) | Err(KvError::Maybe)),
                        "{me}: put l0 {r:?}"
                    );
                    lock.release().await;
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    sleep(Duration::from_secs(2)).await;
    stop.set(true);
    let mut total = 0;
    for c in clients {
        total += c.await;
    }
    assert!(total > 0, "nobody ever held the lock");
}

#[test]
fn lock_one_client_reliable() {
    run_test("lock_one_client_reliable", || run_clients(1, true));
}

#[test]
fn lock_many_clients_reliable() {
    run_test("lock_many_clients_reliable", || run_clients(10, true));
}

#[test]
fn lock_one_client_unreliable() {
    run_test("lock_one_client_unreliable", || run_clients(1, false));
}

#[test]
fn lock_many_clients_unreliable() {
    run_test("lock_many_clients_unreliable", || run_clients(10, false));
}
