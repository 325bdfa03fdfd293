//! 6.5840 2025's `kvtest` client helpers for versioned Put/Get, shared by every 2025 test
//! suite whose clerk is a [`SimClerk`] (kvraft1 and shardkv1): put until it sticks, check a
//! key, and the concurrent `OneClientPut` clients whose histories the checker judges.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use flotilla_sim::{sleep, spawn, with_rng};

use crate::sim::{ClerkTransport, SimClerk};
use crate::KvError;

/// `PutAtLeastOnce`: put until OK, stepping the version past `ErrMaybe`/`ErrVersion`;
/// returns the key's version after the put. Assumes no one else writes the key.
pub async fn put_at_least_once<T: ClerkTransport>(
    ck: &SimClerk<T>,
    key: &str,
    value: &str,
    mut ver: u64,
) -> u64 {
    loop {
        match ck.logged_vput(0, key, value, ver).await {
            Ok(()) => return ver + 1,
            Err(KvError::Maybe) | Err(KvError::Version) => ver += 1,
            Err(e) => assert!(ver == 0, "Put of {key} at version {ver}: {e}"),
        }
    }
}

/// `CheckGet`: the key holds exactly (value, version).
pub async fn check_get<T: ClerkTransport>(ck: &SimClerk<T>, key: &str, value: &str, version: u64) {
    let got = ck.logged_vget(0, key).await;
    assert_eq!(
        got,
        Ok((value.to_string(), version)),
        "Get({key}) wrong value or version"
    );
}

/// `OnePut`: put `{me, ver}` until OK or Maybe; returns the version read back and whether
/// the put was OK.
pub async fn one_put<T: ClerkTransport>(
    ck: &SimClerk<T>,
    me: i64,
    key: &str,
    mut ver: u64,
) -> (u64, bool) {
    loop {
        let value = format!("{me} {ver}");
        let result = ck.logged_vput(me, key, &value, ver).await;
        assert!(
            matches!(result, Ok(()) | Err(KvError::Version) | Err(KvError::Maybe)),
            "Wrong error {result:?}"
        );
        let (stored, ver0) = ck.logged_vget(me, key).await.expect("Get failed");
        if result.is_ok() && ver0 == ver + 1 {
            let mut parts = stored.split(' ').map(|p| p.parse::<u64>().ok());
            let (id, v) = (parts.next().flatten(), parts.next().flatten());
            assert!(
                id == Some(me as u64) || v == Some(ver),
                "Wrong value {stored:?} after my put of {value:?}"
            );
        }
        ver = ver0;
        if matches!(result, Ok(()) | Err(KvError::Maybe)) {
            return (ver, result.is_ok());
        }
    }
}

/// What the `OneClientPut` clients did.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientResult {
    pub ok: u64,
    pub maybe: u64,
}

/// `SpawnClientsAndWait` with `OneClientPut`: `n` clients (each a clerk from `make`) put to
/// `keys` until `phase` is over; returns their summed counts.
pub async fn spawn_clients_and_wait<T: ClerkTransport + 'static>(
    make: impl Fn() -> SimClerk<T> + Clone + 'static,
    n: usize,
    keys: Rc<Vec<String>>,
    phase: Duration,
) -> ClientResult {
    let done = Rc::new(Cell::new(false));
    let tasks: Vec<_> = (0..n)
        .map(|cli| {
            let (make, keys, done) = (make.clone(), keys.clone(), done.clone());
            spawn(async move {
                let ck = make();
                let mut versions = vec![0u64; keys.len()];
                let mut res = ClientResult::default();
                while !done.get() {
                    let k = if keys.len() == 1 {
                        0
                    } else {
                        with_rng(|r| r.below(keys.len() as u64)) as usize
                    };
                    let (ver, ok) = one_put(&ck, cli as i64, &keys[k], versions[k]).await;
                    versions[k] = ver;
                    if ok {
                        res.ok += 1;
                    } else {
                        res.maybe += 1;
                    }
                }
                res
            })
        })
        .collect();
    sleep(phase).await;
    done.set(true);
    let mut total = ClientResult::default();
    for task in tasks {
        let r = task.await;
        total.ok += r.ok;
        total.maybe += r.maybe;
    }
    total
}
