//! 6.5840 Lab 2 (2025): versioned Put with ErrVersion / ErrMaybe, in the simulator.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use flotilla_kv::sim::{KvSim, SimClerk};
use flotilla_kv::KvError;
use flotilla_sim::{run_test, sleep, spawn};

#[test]
fn reliable_put() {
    run_test("reliable_put", || async {
        let sim = KvSim::new(true);
        let ck = sim.clerk();
        let val = "6.5840";
        assert_eq!(ck.vput("k", val, 0).await, Ok(()), "Put err");
        assert_eq!(
            ck.vget("k").await,
            Ok((val.to_string(), 1)),
            "Get wrong value or version"
        );
        assert_eq!(
            ck.vput("k", val, 0).await,
            Err(KvError::Version),
            "expected Put to fail with ErrVersion"
        );
        assert_eq!(
            ck.vput("y", val, 1).await,
            Err(KvError::NoKey),
            "expected Put to fail with ErrNoKey"
        );
        assert_eq!(
            ck.vget("y").await,
            Err(KvError::NoKey),
            "expected Get to fail with ErrNoKey"
        );
    });
}

/// The lab's OnePut: put (me, ver) at `ver` until a put is OK or Maybe; returns the version
/// read back and whether the put was OK.
async fn one_put(ck: &SimClerk, me: i64, key: &str, mut ver: u64) -> (u64, Result<(), KvError>) {
    loop {
        let value = format!("{{\"Id\":{me},\"V\":{ver}}}");
        let result = ck.logged_vput(me, key, &value, ver).await;
        assert!(
            matches!(result, Ok(()) | Err(KvError::Version) | Err(KvError::Maybe)),
            "Wrong error {result:?}"
        );
        let (_, ver0) = ck.logged_vget(me, key).await.expect("Get failed");
        ver = ver0;
        if matches!(result, Ok(()) | Err(KvError::Maybe)) {
            return (ver, result);
        }
    }
}

#[test]
fn put_concurrent_reliable() {
    run_test("put_concurrent_reliable", || async {
        let sim = KvSim::new(true);
        let stop = Rc::new(Cell::new(false));
        let clients: Vec<_> = (0..10i64)
            .map(|me| {
                let ck = sim.clerk();
                let stop = stop.clone();
                spawn(async move {
                    let (mut ok, mut maybe, mut ver) = (0, 0, 0);
                    while !stop.get() {
                        let (v, result) = one_put(&ck, me, "k", ver).await;
                        ver = v;
                        match result {
                            Ok(()) => ok += 1,
                            Err(_) => maybe += 1,
                        }
                    }
                    (ok, maybe)
                })
            })
            .collect();
        sleep(Duration::from_secs(1)).await;
        stop.set(true);
        let (mut ok, mut maybe) = (0, 0);
        for c in clients {
            let (o, m) = c.await;
            ok += o;
            maybe += m;
        }
        let (_, ver0) = sim.clerk().logged_vget(-1, "k").await.expect("final Get");
        assert_eq!(
            ver0, ok,
            "Reliable: Wrong number of puts: server {ver0} clients {ok}+{maybe}"
        );
        assert_eq!(maybe, 0, "no ErrMaybe on a reliable network");
        sim.check_linearizable(Duration::from_secs(10));
    });
}

#[test]
fn unreliable_net() {
    run_test("unreliable_net", || async {
        let sim = KvSim::new(false);
        let ck = sim.clerk();
        let mut retried = false;
        for attempt in 0..100u64 {
            let mut i = 0u64;
            loop {
                let value = format!("{i}");
                match ck.logged_vput(0, "k", &value, attempt).await {
                    Err(KvError::Maybe) => {
                        retried = true;
                        i += 1;
                    }
                    result => {
                        if i > 0 {
                            assert_eq!(
                                result,
                                Err(KvError::Version),
                                "Put shouldn't have happen more than once"
                            );
                        } else {
                            assert_eq!(result, Ok(()), "first put of a round must succeed");
                        }
                        break;
                    }
                }
            }
            let (value, version) = ck.logged_vget(0, "k").await.expect("Get");
            assert_eq!(version, attempt + 1, "Wrong version");
            assert_eq!(value, "0", "Wrong value");
        }
        assert!(retried, "Clerk.Put never returned ErrMaybe");
        sim.check_linearizable(KvSim::CHECK_BUDGET);
    });
}
