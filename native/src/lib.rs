//! `amucrdt._automerge`: the small Python binding to the `automerge` crate
//! that amucrdt needs.
//!
//! Every entry point returns Python values or raises
//! `amucrdt.errors.AutomergeError`; a panic inside the crate is caught, named
//! after the operation, and marks the document as poisoned. The Python-facing
//! contract is `amucrdt/_automerge.pyi`.

use pyo3::prelude::*;

mod document;
mod error;
mod fault;
mod guard;
mod hashes;
mod path;
mod sync_state;
mod value;

#[pymodule]
#[pyo3(name = "_automerge")]
fn automerge_module(module: &Bound<'_, PyModule>) -> PyResult<()> {
    fault::install_quiet_hook();
    module.add_class::<document::Document>()?;
    module.add_class::<sync_state::SyncState>()?;
    module.add_function(wrap_pyfunction!(fault::fault_reload, module)?)?;
    Ok(())
}
