//! Histories whose search branches over the orders of many concurrent read-only operations:
//! the shape of the replicated key/value tests (2025 API, one key, many clients looping
//! conditional put, usually `ErrVersion`, then get), where every client's first put waits
//! for a leader. Without the forced step for read-only operations (`Model::is_read_only`,
//! `src/search.rs`), the checker tried every subset of the failed puts before giving up on a
//! wrong choice, and ran out of any budget.

use std::time::{Duration, Instant};

use flotilla_lincheck::models::{
    KvError, VersionedInput, VersionedKvModel, VersionedOp, VersionedOutput, VersionedState,
};
use flotilla_lincheck::{check, CheckResult, Operation};

type VOp = Operation<VersionedInput, VersionedOutput>;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// How long the first calls wait for a leader.
const LEADER_WAIT: u64 = 300_000;

/// `clients` clients on key "k". Client `c` (0 to `clients - 1`) first puts `"h{c}"` at
/// version 0, called at `c` and returning after [`LEADER_WAIT`]; the put of client
/// `winner` takes effect first (OK), the others after it (`ErrVersion`). One more client
/// (number `clients`) gets the key at the start, called after the winner's put and taking
/// effect before it: it reads `""`. Then every client loops, `rounds` times: get, then put
/// a new value at the version the get saw (usually `ErrVersion`: another client got there
/// first), each call soon after the previous one returned, overlapping the other clients'
/// calls. The answers are those of a correct server at a point inside each interval, so the
/// history is linearizable.
fn leader_wait_history(clients: u64, winner: u64, rounds: u64, seed: u64) -> Vec<VOp> {
    assert!(winner < clients);
    let mut rng = Rng(seed);
    // (client, input, call, ret, effect point) of every operation; answers come later.
    let mut ops: Vec<(i64, VersionedInput, u64, u64, u64)> = Vec::new();
    let mut free_at = vec![0u64; clients as usize + 1];
    for client in 0..clients {
        let call = client;
        let ret = LEADER_WAIT + client;
        let effect = if client == winner {
            clients + 1
        } else {
            clients + 2 + rng.below(ret - clients - 2)
        };
        let input = VersionedInput::put("k", format!("h{client}"), 0);
        ops.push((client as i64, input, call, ret, effect));
        free_at[client as usize] = ret;
    }
    let reader = clients;
    ops.push((
        reader as i64,
        VersionedInput::get("k"),
        winner + 1,
        LEADER_WAIT + clients,
        winner + 1,
    ));
    free_at[reader as usize] = LEADER_WAIT + clients;
    for round in 0..rounds {
        for client in 0..=clients {
            for op in 0..2 {
                let call = free_at[client as usize] + 1 + rng.below(3);
                let ret = call + 1 + rng.below(200);
                let effect = call + rng.below(ret - call + 1);
                free_at[client as usize] = ret;
                let input = match op {
                    0 => VersionedInput::get("k"),
                    // The version is filled in from the get's answer below.
                    _ => VersionedInput::put("k", format!("c{client}-{round}"), 0),
                };
                ops.push((client as i64, input, call, ret, effect));
            }
        }
    }

    // A correct server, at the effect points in time order.
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&index| (ops[index].4, index));
    let mut state = VersionedState::default();
    let mut seen_version = vec![0u64; clients as usize + 1];
    let mut outputs: Vec<Option<VersionedOutput>> = vec![None; ops.len()];
    for index in order {
        let (client, input, ..) = &mut ops[index];
        let client = *client as usize;
        let output = match input.op {
            VersionedOp::Get => {
                seen_version[client] = state.version;
                let error = if state.version == 0 {
                    KvError::NoKey
                } else {
                    KvError::Ok
                };
                VersionedOutput::get(state.value.clone(), state.version, error)
            }
            VersionedOp::Put => {
                // A tail put's version is what the client's get before it saw (that get took
                // effect before it returned, so before this put was called).
                if !input.value.starts_with('h') {
                    input.version = seen_version[client];
                }
                if input.version == state.version {
                    state.value = input.value.clone();
                    state.version += 1;
                    VersionedOutput::put(KvError::Ok)
                } else {
                    VersionedOutput::put(KvError::Version)
                }
            }
        };
        outputs[index] = Some(output);
    }
    let history: Vec<VOp> = ops
        .into_iter()
        .zip(outputs)
        .map(|((client, input, call, ret, _), output)| Operation {
            client,
            input,
            output,
            call,
            ret: Some(ret),
        })
        .collect();
    let head = &history[..clients as usize];
    assert_eq!(
        head.iter()
            .filter(|op| op.output.as_ref().unwrap().error == KvError::Ok)
            .count(),
        1,
        "one first put wins"
    );
    history
}

/// Checks with `budget`, printing how long it took.
fn timed_check(name: &str, history: &[VOp], budget: Duration) -> CheckResult {
    let started = Instant::now();
    let result = check(&VersionedKvModel, history, budget);
    eprintln!(
        "{name}: {} operations, {:?} in {:?}",
        history.len(),
        match &result {
            CheckResult::Ok => "Ok",
            CheckResult::Illegal(_) => "Illegal",
            CheckResult::Unknown => "Unknown",
        },
        started.elapsed()
    );
    result
}

const BUDGET: Duration = Duration::from_secs(5);

#[test]
fn many_failed_puts_waiting_for_a_leader_then_a_long_tail_are_decided() {
    for (seed, winner) in [(1, 12), (2, 0), (3, 24)] {
        let history = leader_wait_history(25, winner, 60, seed);
        assert!(history.len() > 3_000);
        let result = timed_check("leader wait", &history, BUDGET);
        assert_eq!(result, CheckResult::Ok, "seed {seed}");
    }
}

#[test]
fn the_same_history_with_a_read_of_a_value_never_written_is_illegal() {
    for (seed, winner) in [(1, 12), (2, 0), (3, 24)] {
        let mut history = leader_wait_history(25, winner, 60, seed);
        // A get in the middle of the tail reads a value no put wrote.
        let (index, _) = history
            .iter()
            .enumerate()
            .filter(|(_, op)| op.input.op == VersionedOp::Get)
            .nth(1_000)
            .expect("enough gets");
        let output = history[index].output.as_mut().unwrap();
        output.value = "never written".to_string();
        let result = timed_check("leader wait, bad read", &history, BUDGET);
        let CheckResult::Illegal(explanation) = result else {
            panic!("seed {seed}: expected Illegal, got {result:?}");
        };
        assert!(
            explanation
                .blocked
                .iter()
                .any(|blocked| blocked.op.index == index),
            "seed {seed}: the bad read is not among the blocked operations: {explanation}"
        );
    }
}

/// The head alone, with no tail: also a stress of the forced step's undo, since the winner's
/// put comes before the reader's get in the scan and must be undone.
#[test]
fn only_the_concurrent_first_puts_and_the_reader() {
    let history = leader_wait_history(25, 12, 0, 4);
    assert_eq!(
        timed_check("leader wait, head", &history, BUDGET),
        CheckResult::Ok
    );
    let mut history = history;
    // The reader saw the winner's value: legal too (it took effect after the winner's put).
    let winner_value = history[12].input.value.clone();
    history[25].output.as_mut().unwrap().value = winner_value;
    assert_eq!(
        timed_check("leader wait, head", &history, BUDGET),
        CheckResult::Ok
    );
    // A loser's value was never written.
    history[25].output.as_mut().unwrap().value = "h3".to_string();
    assert!(timed_check("leader wait, head", &history, BUDGET).is_illegal());
}
