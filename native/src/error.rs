//! How a failed operation reaches Python: as `amucrdt.errors.AutomergeError`.
//!
//! The exception class lives in the pure-Python package so that callers catch
//! one family of errors. The binding imports it once and keeps the class.

use std::fmt;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// A binding operation that failed: its Python name and what went wrong.
#[derive(Debug)]
pub struct Failure {
    /// The Python method name of the operation, e.g. `"receive_sync_message"`.
    pub op: &'static str,
    /// What went wrong, naming the bad value or path.
    pub message: String,
}

impl Failure {
    /// A failure of `op` described by `message`.
    pub fn new(op: &'static str, message: impl Into<String>) -> Self {
        Failure {
            op,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.message)
    }
}

/// The result of the pure-Rust part of an operation; the message is prefixed
/// with the operation's name when it becomes a [`Failure`].
pub type OpResult<T> = Result<T, String>;

/// `amucrdt.errors.AutomergeError`, imported on first use.
static AUTOMERGE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

impl From<Failure> for PyErr {
    fn from(failure: Failure) -> PyErr {
        Python::attach(|py| {
            match AUTOMERGE_ERROR.import(py, "amucrdt.errors", "AutomergeError") {
                Ok(class) => PyErr::from_type(class.clone(), failure.to_string()),
                // Only reachable when the pure-Python package is broken; the
                // message still says what failed.
                Err(import_error) => PyRuntimeError::new_err(format!(
                    "{failure} (amucrdt.errors.AutomergeError unavailable: {import_error})"
                )),
            }
        })
    }
}
