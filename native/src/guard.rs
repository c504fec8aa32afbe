//! Containment: every call into the crate runs here, so a panic becomes a
//! [`Failure`] instead of unwinding into Python, and locks are taken without
//! deadlocking against the interpreter.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use pyo3::Python;

use crate::error::{Failure, OpResult};
use crate::fault;

/// Run `work` for operation `op`, turning an error message or a panic into a
/// [`Failure`] that names `op`. A panic also sets `poisoned`, when given.
pub fn guarded<T>(
    op: &'static str,
    poisoned: Option<&AtomicBool>,
    work: impl FnOnce() -> OpResult<T>,
) -> Result<T, Failure> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        fault::check(op);
        work()
    }));
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(Failure::new(op, message)),
        Err(payload) => {
            if let Some(flag) = poisoned {
                flag.store(true, Ordering::SeqCst);
            }
            Err(Failure::new(
                op,
                format!("internal panic in automerge: {}", payload_text(&*payload)),
            ))
        }
    }
}

/// The message of a panic payload, for the error raised to Python.
fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Lock `mutex` and run `work` on its value.
///
/// `heavy` work always runs with the interpreter released. Light work runs
/// attached when the lock is free; when it is contended the wait (and the
/// work) happens detached, because the holder may need the interpreter to
/// finish, and blocking while attached would deadlock with it.
pub fn with_locked<T, R>(
    py: Python<'_>,
    mutex: &Mutex<T>,
    heavy: bool,
    work: impl FnOnce(&mut T) -> R + Send,
) -> R
where
    T: Send,
    R: Send,
{
    if !heavy {
        match mutex.try_lock() {
            Ok(mut guard) => return work(&mut guard),
            Err(TryLockError::Poisoned(poison)) => return work(&mut poison.into_inner()),
            Err(TryLockError::WouldBlock) => {}
        }
    }
    py.detach(|| work(&mut lock(mutex)))
}

/// Lock `mutex`, blocking; a poisoned lock is still usable because every
/// panic inside the crate is caught before it can unwind through a guard.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
