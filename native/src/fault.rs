//! The fault switch: makes a chosen binding operation panic, for tests.
//!
//! `AMUCRDT_FAULT="operation:n"` makes the n-th call (1-based) of the named
//! operation panic inside the region that [`crate::guard`] protects, so tests
//! can show that a panic in the crate never escapes as a Python
//! `PanicException`. The variable is read lazily on the first guarded call and
//! again by `fault_reload()`; while it is unset a call costs one relaxed
//! atomic load.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use pyo3::prelude::*;

/// The switch has not read the environment yet.
const UNREAD: u8 = 0;
/// No fault is configured.
const OFF: u8 = 1;
/// A fault is configured in `TARGET_OP` and `TARGET_CALL`.
const ARMED: u8 = 2;

/// One of `UNREAD`, `OFF`, `ARMED`; changed only by [`reload`].
static STATE: AtomicU8 = AtomicU8::new(UNREAD);
/// Index into `NAMES` of the operation that should fail.
static TARGET_OP: AtomicUsize = AtomicUsize::new(0);
/// Which call of the target operation panics (1-based).
static TARGET_CALL: AtomicU64 = AtomicU64::new(0);
/// Calls of the target operation since the last reload.
static CALLS: AtomicU64 = AtomicU64::new(0);
/// Operation names seen in `AMUCRDT_FAULT`, so an index fits in an atomic.
static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
/// Serializes reloads, so a half-written configuration is never armed.
static RELOAD: Mutex<()> = Mutex::new(());

thread_local! {
    /// Set on the thread that is about to panic on purpose, so the panic hook
    /// stays quiet for injected faults and only for them.
    static INJECTING: Cell<bool> = const { Cell::new(false) };
}

/// Re-read `AMUCRDT_FAULT` and restart the call count.
pub fn reload() {
    let _serial = RELOAD.lock().unwrap_or_else(|e| e.into_inner());
    reload_serialized();
}

/// The body of [`reload`]; the caller holds `RELOAD`.
fn reload_serialized() {
    STATE.store(UNREAD, Ordering::SeqCst);
    CALLS.store(0, Ordering::SeqCst);
    let parsed = std::env::var("AMUCRDT_FAULT")
        .ok()
        .and_then(|spec| parse(&spec));
    match parsed {
        Some((name, call)) => {
            let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
            let index = match names.iter().position(|n| *n == name) {
                Some(i) => i,
                None => {
                    // Leaks one short string per distinct operation name ever
                    // configured; tests configure a handful.
                    names.push(Box::leak(name.into_boxed_str()));
                    names.len() - 1
                }
            };
            TARGET_OP.store(index, Ordering::SeqCst);
            TARGET_CALL.store(call, Ordering::SeqCst);
            STATE.store(ARMED, Ordering::SeqCst);
        }
        None => STATE.store(OFF, Ordering::SeqCst),
    }
}

/// `"operation:n"` as (operation, n); None for anything else.
fn parse(spec: &str) -> Option<(String, u64)> {
    let (name, call) = spec.trim().rsplit_once(':')?;
    let call: u64 = call.trim().parse().ok()?;
    let name = name.trim();
    if name.is_empty() || call == 0 {
        return None;
    }
    Some((name.to_string(), call))
}

/// Panic if the switch selects this call of `op`.
///
/// Must be called inside the guarded region of the operation.
#[inline]
pub fn check(op: &'static str) {
    let state = STATE.load(Ordering::Relaxed);
    if state == OFF {
        return;
    }
    check_slow(op, state);
}

#[cold]
fn check_slow(op: &'static str, state: u8) {
    if state == UNREAD {
        let _serial = RELOAD.lock().unwrap_or_else(|e| e.into_inner());
        if STATE.load(Ordering::SeqCst) == UNREAD {
            reload_serialized();
        }
    }
    if STATE.load(Ordering::SeqCst) != ARMED {
        return;
    }
    let is_target = {
        let names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
        names.get(TARGET_OP.load(Ordering::SeqCst)) == Some(&op)
    };
    if !is_target {
        return;
    }
    let call = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if call == TARGET_CALL.load(Ordering::SeqCst) {
        INJECTING.with(|flag| flag.set(true));
        panic!("fault injected by AMUCRDT_FAULT into call {call} of {op}");
    }
}

/// Install a panic hook that keeps injected faults off stderr.
///
/// Real panics still reach the previous hook and are printed once.
pub fn install_quiet_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if INJECTING.with(|flag| flag.replace(false)) {
                return;
            }
            previous(info);
        }));
    });
}

/// Re-read the `AMUCRDT_FAULT` environment variable (testing only).
#[pyfunction]
pub fn fault_reload() {
    reload();
}
