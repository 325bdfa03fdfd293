//! A disk that loses what was not synced.
//!
//! `Disk<D>` holds a durable value `D` (whatever the component persists: a Raft log, a KV
//! snapshot…) and a queue of writes that have been issued but not yet synced. [`Disk::sync`]
//! applies the queued writes to the durable value, in order; [`Disk::crash`] throws them away,
//! as a power cut would. A component that follows "persist, then sync, then act" survives any
//! crash the simulator injects between those steps; one that acts before syncing is caught.

use std::fmt;

type Write<D> = Box<dyn FnOnce(&mut D)>;

pub struct Disk<D> {
    durable: D,
    unsynced: Vec<Write<D>>,
    syncs: u64,
    lost_writes: u64,
}

impl<D> Disk<D> {
    pub fn new(durable: D) -> Self {
        Disk {
            durable,
            unsynced: Vec::new(),
            syncs: 0,
            lost_writes: 0,
        }
    }

    /// Issues a write. It takes effect at the next `sync`, or never if a crash comes first.
    pub fn write(&mut self, w: impl FnOnce(&mut D) + 'static) {
        self.unsynced.push(Box::new(w));
    }

    /// Makes every issued write durable, in issue order.
    pub fn sync(&mut self) {
        for w in self.unsynced.drain(..) {
            w(&mut self.durable);
        }
        self.syncs += 1;
    }

    /// Power loss: unsynced writes vanish. Returns how many were lost.
    pub fn crash(&mut self) -> usize {
        let lost = self.unsynced.len();
        self.lost_writes += lost as u64;
        self.unsynced.clear();
        lost
    }

    /// What would be found after a crash now.
    pub fn durable(&self) -> &D {
        &self.durable
    }

    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// (syncs done, writes lost to crashes).
    pub fn stats(&self) -> (u64, u64) {
        (self.syncs, self.lost_writes)
    }
}

impl<D: fmt::Debug> fmt::Debug for Disk<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Disk")
            .field("durable", &self.durable)
            .field("unsynced", &self.unsynced.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loses_only_unsynced_writes() {
        let mut disk = Disk::new(Vec::<u32>::new());
        disk.write(|v| v.push(1));
        disk.sync();
        disk.write(|v| v.push(2));
        assert_eq!(disk.crash(), 1);
        disk.sync();
        assert_eq!(disk.durable(), &vec![1]);
    }
}
