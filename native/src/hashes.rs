//! Change hashes and raw byte strings crossing the boundary.

use automerge::ChangeHash;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

/// A hash as lowercase hex, for messages.
pub fn hex(hash: &ChangeHash) -> String {
    hash.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copy a Python sequence of bytes objects; `what` names it in messages.
pub fn bytes_list_from_py(seq: &Bound<'_, PyAny>, what: &str) -> Result<Vec<Vec<u8>>, String> {
    if seq.is_instance_of::<PyBytes>() || seq.is_instance_of::<PyString>() {
        return Err(format!(
            "{what} must be a sequence of bytes, not a single value"
        ));
    }
    let iter = seq
        .try_iter()
        .map_err(|_| format!("{what} must be a sequence of bytes"))?;
    let mut out = Vec::new();
    for (index, item) in iter.enumerate() {
        let item = item.map_err(|e| e.to_string())?;
        match item.cast::<PyBytes>() {
            Ok(data) => out.push(data.as_bytes().to_vec()),
            Err(_) => {
                let kind = item
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "?".to_string());
                return Err(format!("{what}[{index}] is a {kind}, expected bytes"));
            }
        }
    }
    Ok(out)
}

/// Copy a Python sequence of 32-byte change hashes.
pub fn hashes_from_py(seq: &Bound<'_, PyAny>, what: &str) -> Result<Vec<ChangeHash>, String> {
    bytes_list_from_py(seq, what)?
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            ChangeHash::try_from(raw.as_slice()).map_err(|_| {
                format!(
                    "{what}[{index}] is {} bytes long, a change hash is 32",
                    raw.len()
                )
            })
        })
        .collect()
}

/// Hashes as a Python list of bytes.
pub fn hashes_to_py<'py>(py: Python<'py>, hashes: &[ChangeHash]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, hashes.iter().map(|h| PyBytes::new(py, &h.0)))
}

/// Byte strings as a Python list of bytes.
pub fn bytes_list_to_py<'py>(py: Python<'py>, items: &[Vec<u8>]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, items.iter().map(|b| PyBytes::new(py, b)))
}
