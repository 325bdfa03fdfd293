//! The harness's recorder and checker against a server that is wrong on purpose: one that
//! acknowledges writes and forgets them. A history that shows it must come out of the
//! recorder not linearizable, whether the read that misses the write is the writer's own next
//! call or another client's call at the very instant the write returned; and operations that
//! did overlap must stay concurrent in the record, so the same server is not blamed for what
//! a correct one could have answered.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use flotilla_kv::sim::KvSim;
use flotilla_kv::{KvError, KvServer, Reply, Request};
use flotilla_lincheck::history::{check_records, read_history};
use flotilla_lincheck::CheckResult;
use flotilla_sim::{run_test, spawn};

const BUDGET: Duration = Duration::from_secs(10);

/// A server that answers every write as done and never applies it.
fn forgets_writes(server: &mut KvServer, request: Request) -> Reply {
    match request {
        Request::Put { .. } | Request::PutIfVersion { .. } => Reply::Done,
        other => server.handle(other),
    }
}

/// The checker's explanation of `sim`'s history, which must be illegal.
fn explanation_of_illegal(sim: &KvSim) -> String {
    match sim.check(BUDGET) {
        CheckResult::Illegal(explanation) => explanation.to_string(),
        other => panic!(
            "the checker gave {other:?} for a history of a lost write: {:#?}",
            sim.history()
        ),
    }
}

#[test]
fn a_clients_read_that_misses_its_own_earlier_put_is_not_linearizable() {
    run_test("a_clients_read_that_misses_its_own_earlier_put", || async {
        let sim = KvSim::with_handler(true, forgets_writes);
        let clerk = sim.clerk();
        clerk.logged_put(1, "k", "v").await;
        assert_eq!(clerk.logged_get(1, "k").await, "", "the server forgets");
        let explanation = explanation_of_illegal(&sim);
        assert!(
            explanation.contains(r#"get "k" returned "" but the value was "v""#),
            "{explanation}"
        );
        let history = sim.history();
        assert!(
            history[0].ret < history[1].call,
            "the get was called after the put returned: {history:#?}"
        );
    });
}

#[test]
fn the_history_file_of_a_failed_check_is_rejected_by_flotilla_check_too() {
    run_test("the_history_file_of_a_failed_check", || async {
        let sim = KvSim::with_handler(true, forgets_writes);
        let clerk = sim.clerk();
        clerk.logged_put(1, "k", "v").await;
        clerk.logged_get(1, "k").await;
        let failure = catch_unwind(AssertUnwindSafe(|| sim.check_linearizable(BUDGET)))
            .expect_err("check_linearizable must fail the test");
        let message = failure
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        let path = message
            .split("history written to ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_else(|| panic!("no history file named in: {message}"));
        let file = std::fs::File::open(path).expect("the history file");
        let records = read_history(std::io::BufReader::new(file)).expect("a readable history");
        std::fs::remove_file(path).expect("removing the history file");
        assert_eq!(records.len(), 2);
        assert!(records[0].ret.expect("returned") < records[1].call);
        assert!(check_records(&records, BUDGET).unwrap().is_illegal());
    });
}

#[test]
fn a_versioned_read_that_misses_the_clients_own_put_is_not_linearizable() {
    run_test(
        "a_versioned_read_that_misses_the_clients_own_put",
        || async {
            let sim = KvSim::with_handler(true, forgets_writes);
            let clerk = sim.clerk();
            assert_eq!(clerk.logged_vput(1, "k", "v", 0).await, Ok(()));
            assert_eq!(clerk.logged_vget(1, "k").await, Err(KvError::NoKey));
            let explanation = explanation_of_illegal(&sim);
            assert!(explanation.contains(r#"key "k""#), "{explanation}");
        },
    );
}

#[test]
fn a_read_called_by_another_client_the_instant_a_put_returned_must_see_it() {
    run_test("a_read_called_the_instant_a_put_returned", || async {
        let sim = KvSim::with_handler(true, forgets_writes);
        let (writer, reader) = (sim.clerk(), sim.clerk());
        writer.logged_put(1, "k", "v").await;
        // No virtual time passes between the put's return and this call.
        assert_eq!(reader.logged_get(2, "k").await, "");
        let explanation = explanation_of_illegal(&sim);
        assert!(
            explanation.contains(r#"get "k" returned "" but the value was "v""#),
            "{explanation}"
        );
    });
}

#[test]
fn operations_that_overlapped_stay_concurrent_in_the_record() {
    run_test("operations_that_overlapped_stay_concurrent", || async {
        let sim = KvSim::with_handler(true, forgets_writes);
        // Each round, a put and a get of one key called at the same instant: the get may
        // take effect first, so its "" is legal even from a server that loses the put.
        for round in 0..20 {
            let key = format!("k{round}");
            let (writer, reader) = (sim.clerk(), sim.clerk());
            let put_key = key.clone();
            let put = spawn(async move { writer.logged_put(1, &put_key, "v").await });
            let get = spawn(async move { reader.logged_get(2, &key).await });
            put.await;
            assert_eq!(get.await, "");
        }
        assert_eq!(sim.check(BUDGET), CheckResult::Ok);
        // The rounds where the put returned first are the ones that a recorder stamping
        // calls late would have wrongly ordered; make sure there are some.
        let history = sim.history();
        let put_first = history
            .chunks(2)
            .filter(|round| {
                let (put, get) = match round[0].client {
                    1 => (&round[0], &round[1]),
                    _ => (&round[1], &round[0]),
                };
                put.ret < get.ret
            })
            .count();
        assert!(put_first > 0, "{history:#?}");
    });
}
