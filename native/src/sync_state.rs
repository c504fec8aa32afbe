//! `SyncState`: the per-peer state of the Automerge sync protocol.

use std::sync::Mutex;

use automerge::sync::State;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::guard::{guarded, with_locked};
use crate::hashes::hashes_to_py;

/// The per-peer state of the Automerge sync protocol.
#[pyclass(module = "amucrdt._automerge", frozen)]
pub struct SyncState {
    /// The crate's state; a document locks it, after its own lock, while it
    /// generates or receives a message for this peer.
    pub(crate) inner: Mutex<State>,
}

#[pymethods]
impl SyncState {
    /// A fresh state, for a peer not synced with before.
    #[new]
    fn new() -> Self {
        SyncState {
            inner: Mutex::new(State::new()),
        }
    }

    /// The persistent part of the state (shared heads), encoded.
    fn encode<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let data = with_locked(py, &self.inner, false, |state| {
            guarded("encode", None, || Ok(state.encode()))
        })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Rebuild a state from `encode()` output.
    #[staticmethod]
    fn decode(data: &[u8]) -> PyResult<Self> {
        let state = guarded("decode", None, || {
            State::decode(data)
                .map_err(|e| format!("cannot decode {} bytes as a sync state: {e}", data.len()))
        })?;
        Ok(SyncState {
            inner: Mutex::new(state),
        })
    }

    /// Heads both sides are known to hold.
    #[getter]
    fn shared_heads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let heads = with_locked(py, &self.inner, false, |state| state.shared_heads.clone());
        hashes_to_py(py, &heads)
    }

    /// Heads the peer reported in its last message, None before any.
    #[getter]
    fn their_heads<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let heads = with_locked(py, &self.inner, false, |state| state.their_heads.clone());
        heads.map(|h| hashes_to_py(py, &h)).transpose()
    }

    /// Our heads as of the last message generated for this peer.
    #[getter]
    fn last_sent_heads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let heads = with_locked(py, &self.inner, false, |state| {
            state.last_sent_heads.clone()
        });
        hashes_to_py(py, &heads)
    }
}
