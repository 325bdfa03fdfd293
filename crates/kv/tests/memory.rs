//! 6.5840 Lab 2 memory tests: the server keeps no copy of values it has overwritten, no
//! per-clerk state for readers, and O(1) small state per writer.
//!
//! Go measures the live heap after a forced GC; here a counting global allocator measures
//! live bytes of the whole test process (server, clerks, simulated network), with the same
//! thresholds. The tests of this file run one at a time so they cannot disturb each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use flotilla_kv::sim::KvSim;
use flotilla_kv::KvError;
use flotilla_sim::{run_test, sleep, with_rng};

struct CountingAllocator;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Memory tests measure the whole process: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn live() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Runs one memory test in the simulator, never beside another one.
fn memory_test<F, Fut>(name: &str, body: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    run_test(name, body);
}

/// Live bytes gained across `work`, each side measured after a second of quiet (as the lab
/// measures after a GC and a sleep).
async fn growth_across(work: impl std::future::Future<Output = ()>) -> isize {
    sleep(Duration::from_secs(1)).await;
    let m0 = live();
    work.await;
    sleep(Duration::from_secs(1)).await;
    live() - m0
}

const MIB: isize = 1 << 20;

fn random_value(len: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    with_rng(|r| {
        (0..len)
            .map(|_| LETTERS[r.below(LETTERS.len() as u64) as usize] as char)
            .collect()
    })
}

#[test]
fn mem_get_2() {
    memory_test("mem_get_2", || async {
        let base = live();
        let sim = KvSim::new(false);
        let (ck0, ck1) = (sim.clerk(), sim.clerk());
        let value = random_value(10 << 20);
        ck0.put("k", &value).await;
        let len = value.len();
        drop(value);
        assert_eq!(ck0.get("k").await.len(), len, "incorrect len");
        assert_eq!(ck1.get("k").await.len(), len, "incorrect len");
        ck0.put("k", "0").await;
        let used = (live() - base) / MIB;
        assert!(used < 10, "error: server using too much memory {used} MiB");
    });
}

#[test]
fn mem_put_2() {
    memory_test("mem_put_2", || async {
        let base = live();
        let sim = KvSim::new(true);
        let (ck0, ck1) = (sim.clerk(), sim.clerk());
        let value = random_value(10 << 20);
        ck0.put("k", &value).await;
        drop(value);
        ck1.put("k", "").await;
        let used = (live() - base) / MIB;
        assert!(used < 10, "error: server using too much memory {used} MiB");
    });
}

#[test]
fn mem_append_2() {
    memory_test("mem_append_2", || async {
        let base = live();
        let sim = KvSim::new(true);
        let (ck0, ck1) = (sim.clerk(), sim.clerk());
        let v0 = random_value(10 << 20);
        ck0.append("k", &v0).await;
        drop(v0);
        let v1 = random_value(10 << 20);
        let old = ck1.append("k", &v1).await;
        drop((v1, old));
        let used = (live() - base) / MIB;
        assert!(used <= 30, "error: server using too much memory {used} MiB");
    });
}

const NCLIENT: usize = 100_000;

#[test]
fn mem_put_many() {
    memory_test("mem_put_many", || async {
        let sim = KvSim::new(true);
        let value = random_value(1000);
        let clerks: Vec<_> = (0..NCLIENT).map(|_| sim.clerk()).collect();
        let grown = growth_across(async {
            for ck in &clerks {
                ck.put("k", &value).await;
            }
        })
        .await;
        let per_clerk = grown / NCLIENT as isize;
        assert!(
            grown <= NCLIENT as isize * 200,
            "error: server using too much memory: {per_clerk} bytes per clerk"
        );
        assert_eq!(sim.server().sessions(), NCLIENT);
    });
}

#[test]
fn mem_get_many() {
    memory_test("mem_get_many", || async {
        let sim = KvSim::new(true);
        sim.clerk().put("0", "").await;
        let clerks: Vec<_> = (0..NCLIENT).map(|_| sim.clerk()).collect();
        let grown = growth_across(async {
            for ck in &clerks {
                ck.get("0").await;
            }
        })
        .await;
        let per_clerk = grown / NCLIENT as isize;
        assert!(
            grown < NCLIENT as isize * 10,
            "error: server using too much memory: {per_clerk} bytes per clerk"
        );
    });
}

#[test]
fn mem_put_many_clients_reliable() {
    memory_test("mem_put_many_clients_reliable", || async {
        let sim = KvSim::new(true);
        let value = random_value(1000);
        let clerks: Vec<_> = (0..NCLIENT).map(|_| sim.clerk()).collect();
        for ck in &clerks {
            assert_eq!(ck.vput("k", "", 1).await, Err(KvError::NoKey));
        }
        let grown = growth_across(async {
            for (i, ck) in clerks.iter().enumerate() {
                assert_eq!(ck.vput("k", &value, i as u64).await, Ok(()), "Put error");
            }
        })
        .await;
        let per_clerk = grown / NCLIENT as isize;
        assert!(
            grown <= NCLIENT as isize * 200,
            "error: server using too much memory: {per_clerk} bytes per clerk"
        );
    });
}
