//! Locks that outlive a panic: a thread that panicked while holding a
//! std lock poisons it, and every later `lock()` would fail. signpost's
//! locks guard plain values left whole between statements (a map, a
//! counter), so the value is still good: take it back and go on.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub trait MutexExt<T> {
    /// `lock()`, taking a poisoned lock back.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> MutexExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub trait RwLockExt<T> {
    /// `read()`, taking a poisoned lock back.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// `write()`, taking a poisoned lock back.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLockExt<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}
