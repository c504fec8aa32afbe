//! `Document`: one Automerge document, the crate's `AutoCommit`, for Python.
//!
//! Every method converts its Python arguments first, then locks the document
//! and runs pure Rust inside [`guarded`], then converts the result. Heavy work
//! (load, save, merge, sync, change exchange) runs with the interpreter
//! released.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use automerge::sync::{Message, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ObjId, ObjType, PatchAction, PatchLog, Prop, ReadDoc,
    Value, ROOT,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::error::{Failure, OpResult};
use crate::guard::{guarded, lock, with_locked};
use crate::hashes::{bytes_list_from_py, bytes_list_to_py, hashes_from_py, hashes_to_py, hex};
use crate::path::{
    check_prop, describe, obj_kind, path_from_py, resolve, resolve_existing, split_last,
};
use crate::sync_state::SyncState;
use crate::value::{entries_from_py, input_from_py, Input, Output};

/// An Automerge document (the crate's `AutoCommit`).
#[pyclass(module = "amucrdt._automerge", frozen)]
pub struct Document {
    /// The document itself; every operation holds this lock while it runs.
    doc: Mutex<AutoCommit>,
    /// Set once a panic was caught inside an operation on this document; the
    /// document may then be inconsistent and should be rebuilt by the caller.
    poisoned: AtomicBool,
}

impl Document {
    fn from_doc(doc: AutoCommit) -> Self {
        Document {
            doc: Mutex::new(doc),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Run `work` as operation `op` on the locked document.
    fn run<R: Send>(
        &self,
        py: Python<'_>,
        op: &'static str,
        heavy: bool,
        work: impl FnOnce(&mut AutoCommit) -> OpResult<R> + Send,
    ) -> PyResult<R> {
        let poisoned = &self.poisoned;
        with_locked(py, &self.doc, heavy, |doc| {
            guarded(op, Some(poisoned), || work(doc))
        })
        .map_err(PyErr::from)
    }
}

/// An argument that failed to convert, as an error naming `op`.
fn arg<T>(op: &'static str, converted: Result<T, String>) -> PyResult<T> {
    converted.map_err(|message| Failure::new(op, message).into())
}

fn actor_from(bytes: &[u8]) -> OpResult<ActorId> {
    if bytes.is_empty() {
        return Err("actor id is empty".to_string());
    }
    Ok(ActorId::from(bytes))
}

fn automerge_err(error: automerge::AutomergeError) -> String {
    error.to_string()
}

/// The value at `path`, copied out; None when absent.
fn read_value(doc: &AutoCommit, path: &[Prop]) -> OpResult<Option<Output>> {
    let Some((parent, last)) = path.split_last().map(|(l, p)| (p, l)) else {
        return read_object(doc, &ROOT).map(Some);
    };
    let Some((obj, obj_type)) = resolve(doc, parent)? else {
        return Ok(None);
    };
    check_prop(obj_type, last, parent)?;
    match doc.get(&obj, last.clone()).map_err(automerge_err)? {
        None => Ok(None),
        Some((value, id)) => hydrate_one(doc, value, &id).map(Some),
    }
}

fn hydrate_one(doc: &AutoCommit, value: Value<'_>, id: &ObjId) -> OpResult<Output> {
    match value {
        Value::Scalar(scalar) => Ok(Output::Scalar(scalar.into_owned())),
        Value::Object(_) => read_object(doc, id),
    }
}

/// The object `obj` with everything below it, copied out.
fn read_object(doc: &AutoCommit, obj: &ObjId) -> OpResult<Output> {
    let hydrated = doc.hydrate(obj, None).map_err(automerge_err)?;
    Ok(Output::from_hydrated(&hydrated))
}

/// The parent object of `path` and its type; an error when it does not exist.
fn parent_of<'p>(
    doc: &AutoCommit,
    path: &'p [Prop],
) -> OpResult<(ObjId, ObjType, &'p [Prop], &'p Prop)> {
    let (parent, last) = split_last(path)?;
    let (obj, obj_type) = resolve(doc, parent)?.ok_or_else(|| {
        format!(
            "path {}: the parent object {} does not exist",
            describe(path),
            describe(parent)
        )
    })?;
    check_prop(obj_type, last, parent)?;
    Ok((obj, obj_type, parent, last))
}

fn check_index(
    doc: &AutoCommit,
    obj: &ObjId,
    index: usize,
    path: &[Prop],
    end_ok: bool,
) -> OpResult<()> {
    let len = doc.length(obj);
    if index < len || (end_ok && index == len) {
        Ok(())
    } else {
        Err(format!(
            "path {}: index {index} is out of range for a list of length {len}",
            describe(path)
        ))
    }
}

/// Write `input` at `prop` of `obj`, replacing what was there.
fn put_input(doc: &mut AutoCommit, obj: &ObjId, prop: Prop, input: Input) -> OpResult<()> {
    match input {
        Input::Scalar(scalar) => doc.put(obj, prop, scalar).map_err(automerge_err),
        Input::Map(entries) => {
            let child = doc
                .put_object(obj, prop, ObjType::Map)
                .map_err(automerge_err)?;
            fill_map(doc, &child, entries)
        }
        Input::List(items) => {
            let child = doc
                .put_object(obj, prop, ObjType::List)
                .map_err(automerge_err)?;
            fill_list(doc, &child, items)
        }
    }
}

/// Insert `input` into the list `obj` before `index`.
fn insert_input(doc: &mut AutoCommit, obj: &ObjId, index: usize, input: Input) -> OpResult<()> {
    match input {
        Input::Scalar(scalar) => doc.insert(obj, index, scalar).map_err(automerge_err),
        Input::Map(entries) => {
            let child = doc
                .insert_object(obj, index, ObjType::Map)
                .map_err(automerge_err)?;
            fill_map(doc, &child, entries)
        }
        Input::List(items) => {
            let child = doc
                .insert_object(obj, index, ObjType::List)
                .map_err(automerge_err)?;
            fill_list(doc, &child, items)
        }
    }
}

fn fill_map(doc: &mut AutoCommit, map: &ObjId, entries: Vec<(String, Input)>) -> OpResult<()> {
    for (key, value) in entries {
        put_input(doc, map, Prop::Map(key), value)?;
    }
    Ok(())
}

fn fill_list(doc: &mut AutoCommit, list: &ObjId, items: Vec<Input>) -> OpResult<()> {
    for (index, value) in items.into_iter().enumerate() {
        insert_input(doc, list, index, value)?;
    }
    Ok(())
}

/// True when `doc` holds the change `hash`.
fn holds(doc: &mut AutoCommit, hash: &ChangeHash) -> bool {
    doc.get_change_meta_by_hash(hash).is_some()
}

fn require_known(doc: &mut AutoCommit, hashes: &[ChangeHash], what: &str) -> OpResult<()> {
    for hash in hashes {
        if !holds(doc, hash) {
            return Err(format!("{what} names unknown change {}", hex(hash)));
        }
    }
    Ok(())
}

/// A patch as (path of the object, key or index, action).
fn patch_parts(patch: automerge::Patch) -> (Vec<Prop>, Prop, &'static str) {
    let path = patch.path.into_iter().map(|(_, prop)| prop).collect();
    let (key, action) = match patch.action {
        PatchAction::PutMap { key, .. } => (Prop::Map(key), "put"),
        PatchAction::PutSeq { index, .. } => (Prop::Seq(index), "put"),
        PatchAction::Insert { index, .. } => (Prop::Seq(index), "insert"),
        PatchAction::SpliceText { index, .. } => (Prop::Seq(index), "splice"),
        PatchAction::Increment { prop, .. } => (prop, "increment"),
        PatchAction::Conflict { prop } => (prop, "conflict"),
        PatchAction::DeleteMap { key } => (Prop::Map(key), "delete"),
        PatchAction::DeleteSeq { index, .. } => (Prop::Seq(index), "delete"),
        PatchAction::Mark { marks } => (Prop::Seq(marks.first().map_or(0, |m| m.start)), "mark"),
    };
    (path, key, action)
}

/// Patches as the Python list of (path, key, action) tuples.
fn patches_to_py<'py>(
    py: Python<'py>,
    patches: &[(Vec<Prop>, Prop, &'static str)],
) -> PyResult<Bound<'py, PyList>> {
    let items = patches
        .iter()
        .map(|(path, key, action)| {
            let path = path
                .iter()
                .map(|p| prop_to_py(py, p))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(
                py,
                [
                    PyList::new(py, path)?.into_any(),
                    prop_to_py(py, key)?,
                    action.into_pyobject(py)?.into_any(),
                ],
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

fn prop_to_py<'py>(py: Python<'py>, prop: &Prop) -> PyResult<Bound<'py, PyAny>> {
    Ok(match prop {
        Prop::Map(key) => key.into_pyobject(py)?.into_any(),
        Prop::Seq(index) => index.into_pyobject(py)?.into_any(),
    })
}

#[pymethods]
impl Document {
    /// A new empty document; a random actor id unless one is given.
    #[new]
    #[pyo3(signature = (actor=None))]
    fn new(actor: Option<&[u8]>) -> PyResult<Self> {
        let doc = guarded("Document", None, || {
            let mut doc = AutoCommit::new();
            if let Some(actor) = actor {
                doc.set_actor(actor_from(actor)?);
            }
            Ok(doc)
        })?;
        Ok(Self::from_doc(doc))
    }

    /// Load a document saved by `save()` (or concatenated saves and changes).
    #[staticmethod]
    #[pyo3(signature = (data, actor=None))]
    fn load(py: Python<'_>, data: &[u8], actor: Option<&[u8]>) -> PyResult<Self> {
        let doc = py.detach(|| {
            guarded("load", None, || {
                if data.is_empty() {
                    return Err("no data: 0 bytes is not a saved document".to_string());
                }
                let mut doc = AutoCommit::load(data)
                    .map_err(|e| format!("cannot load {} bytes: {e}", data.len()))?;
                if let Some(actor) = actor {
                    doc.set_actor(actor_from(actor)?);
                }
                Ok(doc)
            })
        })?;
        Ok(Self::from_doc(doc))
    }

    /// True once a panic was caught inside this document.
    #[getter]
    fn poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// The whole document, compressed, in Automerge's binary format.
    fn save<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.run(py, "save", true, |doc| Ok(doc.save()))?;
        Ok(PyBytes::new(py, &data))
    }

    /// The changes made since `heads` (incremental save), b"" if none.
    fn save_after<'py>(
        &self,
        py: Python<'py>,
        heads: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let heads = arg("save_after", hashes_from_py(heads, "heads"))?;
        let data = self.run(
            py,
            "save_after",
            true,
            move |doc| Ok(doc.save_after(&heads)),
        )?;
        Ok(PyBytes::new(py, &data))
    }

    /// Apply bytes from `save_after` or `save`; returns the ops applied.
    fn load_incremental(&self, py: Python<'_>, data: &[u8]) -> PyResult<usize> {
        self.run(py, "load_incremental", true, |doc| {
            doc.load_incremental(data)
                .map_err(|e| format!("cannot load {} bytes: {e}", data.len()))
        })
    }

    /// An independent copy; a fresh random actor unless one is given.
    #[pyo3(signature = (actor=None))]
    fn fork(&self, py: Python<'_>, actor: Option<&[u8]>) -> PyResult<Self> {
        let forked = self.run(py, "fork", true, |doc| {
            let mut forked = doc.fork();
            if let Some(actor) = actor {
                forked.set_actor(actor_from(actor)?);
            }
            Ok(forked)
        })?;
        Ok(Self::from_doc(forked))
    }

    /// Merge every change of `other` into this document; returns the
    /// hashes of the changes that were new here.
    fn merge<'py>(
        &self,
        py: Python<'py>,
        other: &Bound<'py, Document>,
    ) -> PyResult<Bound<'py, PyList>> {
        let other = other.get();
        if std::ptr::eq(self, other) {
            return Ok(PyList::empty(py));
        }
        let poisoned = &self.poisoned;
        let added = py.detach(|| {
            // Lock in address order so two threads merging the same pair in
            // opposite directions cannot deadlock.
            let (mut mine, mut theirs);
            if (self as *const Document) < (other as *const Document) {
                mine = lock(&self.doc);
                theirs = lock(&other.doc);
            } else {
                theirs = lock(&other.doc);
                mine = lock(&self.doc);
            }
            guarded("merge", Some(poisoned), || {
                // The crate's own merge reports the resulting heads; the
                // contract is the hashes that were new here.
                let added = mine.get_changes_added(&mut theirs);
                let hashes: Vec<ChangeHash> = added.iter().map(Change::hash).collect();
                mine.apply_changes(added).map_err(automerge_err)?;
                Ok(hashes)
            })
        })?;
        hashes_to_py(py, &added)
    }

    /// The current heads, sorted; commits pending operations first.
    fn heads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut heads = self.run(py, "heads", false, |doc| Ok(doc.get_heads()))?;
        heads.sort_unstable();
        hashes_to_py(py, &heads)
    }

    /// This document's actor id.
    fn actor<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let actor = self.run(py, "actor", false, |doc| {
            Ok(doc.get_actor().to_bytes().to_vec())
        })?;
        Ok(PyBytes::new(py, &actor))
    }

    /// Use `actor` for changes made from now on.
    fn set_actor(&self, py: Python<'_>, actor: &[u8]) -> PyResult<()> {
        self.run(py, "set_actor", false, |doc| {
            doc.set_actor(actor_from(actor)?);
            Ok(())
        })
    }

    /// Commit pending operations as one change stamped `time` (ms, 0 when
    /// None); returns its hash, or None when nothing was pending.
    #[pyo3(signature = (message=None, time=None))]
    fn commit<'py>(
        &self,
        py: Python<'py>,
        message: Option<String>,
        time: Option<i64>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let mut options = CommitOptions::default().with_time(time.unwrap_or(0));
        if let Some(message) = message {
            options = options.with_message(message);
        }
        let hash = self.run(py, "commit", false, move |doc| Ok(doc.commit_with(options)))?;
        Ok(hash.map(|h| PyBytes::new(py, &h.0)))
    }

    // Reading ---------------------------------------------------------------

    /// The value at `path` (objects materialized), None when absent.
    fn get<'py>(&self, py: Python<'py>, path: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let path = arg("get", path_from_py(path))?;
        let value = self.run(py, "get", false, move |doc| read_value(doc, &path))?;
        match value {
            Some(value) => value.to_py(py),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// Every concurrent value at `path`; the last is the one `get` returns.
    fn get_all<'py>(
        &self,
        py: Python<'py>,
        path: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let path = arg("get_all", path_from_py(path))?;
        let values = self.run(py, "get_all", false, move |doc| {
            let (parent, last) = split_last(&path)?;
            let Some((obj, obj_type)) = resolve(doc, parent)? else {
                return Ok(Vec::new());
            };
            check_prop(obj_type, last, parent)?;
            doc.get_all(&obj, last.clone())
                .map_err(automerge_err)?
                .into_iter()
                .map(|(value, id)| hydrate_one(doc, value, &id))
                .collect::<OpResult<Vec<_>>>()
        })?;
        let items = values
            .iter()
            .map(|v| v.to_py(py))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// The object at `path` as nested dicts and lists, in one call.
    #[pyo3(signature = (path=None))]
    fn materialize<'py>(
        &self,
        py: Python<'py>,
        path: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let path = match path {
            Some(path) => arg("materialize", path_from_py(path))?,
            None => Vec::new(),
        };
        let value = self.run(py, "materialize", true, move |doc| {
            let (obj, _) = resolve_existing(doc, &path)?;
            read_object(doc, &obj)
        })?;
        value.to_py(py)
    }

    /// The keys of the map at `path`, sorted.
    #[pyo3(signature = (path=None))]
    fn keys(&self, py: Python<'_>, path: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
        let path = match path {
            Some(path) => arg("keys", path_from_py(path))?,
            None => Vec::new(),
        };
        let mut keys = self.run(py, "keys", false, move |doc| {
            let (obj, obj_type) = resolve_existing(doc, &path)?;
            if !matches!(obj_type, ObjType::Map | ObjType::Table) {
                return Err(format!(
                    "path {}: keys needs a map, found a {}",
                    describe(&path),
                    obj_kind(obj_type)
                ));
            }
            Ok(doc.keys(&obj).collect::<Vec<String>>())
        })?;
        keys.sort_unstable();
        Ok(keys)
    }

    /// Number of keys of a map or items of a list at `path`.
    #[pyo3(signature = (path=None))]
    fn length(&self, py: Python<'_>, path: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let path = match path {
            Some(path) => arg("length", path_from_py(path))?,
            None => Vec::new(),
        };
        self.run(py, "length", false, move |doc| {
            let (obj, _) = resolve_existing(doc, &path)?;
            Ok(doc.length(&obj))
        })
    }

    // Writing ---------------------------------------------------------------

    /// Set the map key or list index that ends `path` to `value`.
    fn put(
        &self,
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let path = arg("put", path_from_py(path))?;
        let input = arg("put", input_from_py(value, &mut path.clone()))?;
        self.run(py, "put", false, move |doc| {
            let (obj, obj_type, _, last) = parent_of(doc, &path)?;
            match (obj_type, last) {
                (ObjType::Text, _) => Err(format!(
                    "path {}: writing into text is not supported",
                    describe(&path)
                )),
                (_, Prop::Seq(index)) => {
                    check_index(doc, &obj, *index, &path, false)?;
                    put_input(doc, &obj, last.clone(), input)
                }
                (_, Prop::Map(_)) => put_input(doc, &obj, last.clone(), input),
            }
        })
    }

    /// `put` every entry of `entries` into the map at `path`.
    fn update(
        &self,
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        entries: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let path = arg("update", path_from_py(path))?;
        let entries = arg("update", entries_from_py(entries, &mut path.clone()))?;
        self.run(py, "update", false, move |doc| {
            let (obj, obj_type) = resolve_existing(doc, &path)?;
            if !matches!(obj_type, ObjType::Map | ObjType::Table) {
                return Err(format!(
                    "path {}: update needs a map, found a {}",
                    describe(&path),
                    obj_kind(obj_type)
                ));
            }
            fill_map(doc, &obj, entries)
        })
    }

    /// Insert `value` into a list; `path` ends with the index.
    fn insert(
        &self,
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let path = arg("insert", path_from_py(path))?;
        let input = arg("insert", input_from_py(value, &mut path.clone()))?;
        self.run(py, "insert", false, move |doc| {
            let (obj, obj_type, _, last) = parent_of(doc, &path)?;
            match (obj_type, last) {
                (ObjType::List, Prop::Seq(index)) => {
                    check_index(doc, &obj, *index, &path, true)?;
                    insert_input(doc, &obj, *index, input)
                }
                _ => Err(format!(
                    "path {}: insert needs a list and an index, found a {}",
                    describe(&path),
                    obj_kind(obj_type)
                )),
            }
        })
    }

    /// Delete the map key or list index that ends `path`.
    fn delete(&self, py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<()> {
        let path = arg("delete", path_from_py(path))?;
        self.run(py, "delete", false, move |doc| {
            let (obj, _, _, last) = parent_of(doc, &path)?;
            match last {
                Prop::Seq(index) => check_index(doc, &obj, *index, &path, false)?,
                Prop::Map(key) => {
                    if doc
                        .get(&obj, key.as_str())
                        .map_err(automerge_err)?
                        .is_none()
                    {
                        return Ok(());
                    }
                }
            }
            doc.delete(&obj, last.clone()).map_err(automerge_err)
        })
    }

    // Changes ---------------------------------------------------------------

    /// Raw bytes of every change not in the history of `since`.
    fn get_changes<'py>(
        &self,
        py: Python<'py>,
        since: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let since = arg("get_changes", hashes_from_py(since, "since"))?;
        let changes = self.run(py, "get_changes", true, move |doc| {
            Ok(doc
                .get_changes(&since)
                .into_iter()
                .map(|mut change| change.bytes().into_owned())
                .collect::<Vec<Vec<u8>>>())
        })?;
        bytes_list_to_py(py, &changes)
    }

    /// Apply raw changes (from `get_changes` of any document).
    fn apply_changes(&self, py: Python<'_>, changes: &Bound<'_, PyAny>) -> PyResult<()> {
        let raw = arg("apply_changes", bytes_list_from_py(changes, "changes"))?;
        self.run(py, "apply_changes", true, move |doc| {
            let mut parsed = Vec::with_capacity(raw.len());
            for (index, bytes) in raw.into_iter().enumerate() {
                let len = bytes.len();
                parsed
                    .push(Change::from_bytes(bytes).map_err(|e| {
                        format!("changes[{index}] ({len} bytes) is malformed: {e}")
                    })?);
            }
            doc.apply_changes(parsed).map_err(automerge_err)
        })
    }

    /// Hash of the newest change made by this document's actor.
    fn last_local_change<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let hash = self.run(py, "last_local_change", false, |doc| {
            Ok(doc.get_last_local_change().map(|change| change.hash()))
        })?;
        Ok(hash.map(|h| PyBytes::new(py, &h.0)))
    }

    /// True when every hash in `hashes` is a change held here.
    fn has_all(&self, py: Python<'_>, hashes: &Bound<'_, PyAny>) -> PyResult<bool> {
        let hashes = arg("has_all", hashes_from_py(hashes, "hashes"))?;
        self.run(py, "has_all", false, move |doc| {
            Ok(hashes.iter().all(|hash| holds(doc, hash)))
        })
    }

    /// True when every hash in `hashes` is in the history of `heads`; False
    /// when a head is not held here.
    fn covers(
        &self,
        py: Python<'_>,
        heads: &Bound<'_, PyAny>,
        hashes: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let heads = arg("covers", hashes_from_py(heads, "heads"))?;
        let hashes = arg("covers", hashes_from_py(hashes, "hashes"))?;
        self.run(py, "covers", true, move |doc| {
            if !heads.iter().all(|head| holds(doc, head)) {
                return Ok(false);
            }
            let head_set: HashSet<&ChangeHash> = heads.iter().collect();
            let rest: Vec<&ChangeHash> = hashes.iter().filter(|h| !head_set.contains(h)).collect();
            if rest.is_empty() {
                return Ok(true);
            }
            if !rest.iter().all(|hash| holds(doc, hash)) {
                return Ok(false);
            }
            // Every change outside the history of `heads`; usually few, since
            // callers ask about heads close to the current ones.
            let outside: HashSet<ChangeHash> = doc
                .get_changes_meta(&heads)
                .into_iter()
                .map(|meta| meta.hash)
                .collect();
            Ok(rest.iter().all(|hash| !outside.contains(*hash)))
        })
    }

    /// What changed between two sets of heads, as (path, key, action).
    fn diff<'py>(
        &self,
        py: Python<'py>,
        before: &Bound<'py, PyAny>,
        after: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let before = arg("diff", hashes_from_py(before, "before"))?;
        let after = arg("diff", hashes_from_py(after, "after"))?;
        let patches = self.run(py, "diff", true, move |doc| {
            require_known(doc, &before, "before")?;
            require_known(doc, &after, "after")?;
            Ok(doc
                .diff(&before, &after)
                .into_iter()
                .map(patch_parts)
                .collect::<Vec<_>>())
        })?;
        patches_to_py(py, &patches)
    }

    // Sync ------------------------------------------------------------------

    /// The next sync message for the peer of `state`, None if none is due.
    fn generate_sync_message<'py>(
        &self,
        py: Python<'py>,
        state: &Bound<'py, SyncState>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let state = state.get();
        let message = self.run(py, "generate_sync_message", true, |doc| {
            let mut state = lock(&state.inner);
            Ok(doc
                .sync()
                .generate_sync_message(&mut state)
                .map(Message::encode))
        })?;
        Ok(message.map(|m| PyBytes::new(py, &m)))
    }

    /// Apply a sync message from the peer of `state`.
    ///
    /// Returns the patches the message made, as `diff` does, at a cost that
    /// grows with the message rather than with the document.
    fn receive_sync_message<'py>(
        &self,
        py: Python<'py>,
        state: &Bound<'py, SyncState>,
        message: &[u8],
    ) -> PyResult<Bound<'py, PyList>> {
        let state = state.get();
        let patches = self.run(py, "receive_sync_message", true, |doc| {
            let decoded = Message::decode(message)
                .map_err(|e| format!("malformed sync message ({} bytes): {e}", message.len()))?;
            let mut state = lock(&state.inner);
            let mut log = PatchLog::active();
            doc.sync()
                .receive_sync_message_log_patches(&mut state, decoded, &mut log)
                .map_err(automerge_err)?;
            Ok(doc
                .make_patches(&mut log)
                .into_iter()
                .map(patch_parts)
                .collect::<Vec<_>>())
        })?;
        patches_to_py(py, &patches)
    }
}
