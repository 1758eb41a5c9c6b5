//! An [`Enforcer`] that keeps the maps in memory: for tests, and to run the agent without a
//! kernel.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Enforcer;
use crate::policy::{MapDiff, MapEntries, Verdict};

/// Shared, cloneable in-memory maps: every clone sees the same state, so a test keeps one
/// clone and gives another to the agent.
#[derive(Clone, Debug, Default)]
pub struct MemoryEnforcer {
    inner: Arc<Mutex<MemoryState>>,
}

/// What a [`MemoryEnforcer`] holds.
#[derive(Clone, Debug, Default)]
pub struct MemoryState {
    pub entries: MapEntries,
    /// Diffs applied and full reconciles done.
    pub applies: u64,
    pub reconciles: u64,
    /// Number of upcoming calls (apply or reconcile) that fail, for error-path tests.
    pub fail_next: u32,
}

/// The error a [`MemoryEnforcer`] returns when told to fail.
#[derive(Debug, thiserror::Error)]
#[error("injected enforcer failure")]
pub struct InjectedFailure;

impl MemoryEnforcer {
    pub fn new() -> MemoryEnforcer {
        MemoryEnforcer::default()
    }

    /// Starts from existing entries (as if pinned by a previous agent).
    pub fn with_entries(entries: MapEntries) -> MemoryEnforcer {
        let e = MemoryEnforcer::default();
        e.lock().entries = entries;
        e
    }

    pub fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // A poisoned lock only means a test thread panicked while holding it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the current entries.
    pub fn entries(&self) -> MapEntries {
        self.lock().entries.clone()
    }

    /// The verdict the kernel would give with the current entries.
    pub fn verdict(&self, src: IpAddr, dst: IpAddr, protocol: u8, dst_port: u16) -> Verdict {
        self.lock().entries.verdict(src, dst, protocol, dst_port)
    }

    /// Makes the next `n` calls fail.
    pub fn fail_next(&self, n: u32) {
        self.lock().fail_next = n;
    }

    fn check_failure(state: &mut MemoryState) -> Result<(), InjectedFailure> {
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return Err(InjectedFailure);
        }
        Ok(())
    }
}

impl Enforcer for MemoryEnforcer {
    type Error = InjectedFailure;

    fn apply(&mut self, diff: &MapDiff) -> Result<(), InjectedFailure> {
        let mut s = self.lock();
        MemoryEnforcer::check_failure(&mut s)?;
        s.entries.apply(diff);
        s.applies += 1;
        Ok(())
    }

    fn reconcile(&mut self, desired: &MapEntries) -> Result<(), InjectedFailure> {
        let mut s = self.lock();
        MemoryEnforcer::check_failure(&mut s)?;
        s.entries = desired.clone();
        s.reconciles += 1;
        Ok(())
    }
}
