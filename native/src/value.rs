//! Values crossing the boundary: Python objects in, hydrated Automerge values
//! out.
//!
//! Conversion happens while the document is unlocked: Python values are first
//! copied into an [`Input`] tree, and reads produce an owned [`Output`] tree
//! that is turned into Python objects afterwards. No Python code therefore
//! runs while a document lock is held, and no crate code runs outside the
//! guarded region.

use automerge::{hydrate, Prop, ScalarValue};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMapping, PyString, PyTuple,
};

use crate::path::describe;

/// Deepest nesting of dicts and lists accepted from Python, so that a
/// self-referencing structure fails with an error instead of exhausting the
/// stack.
pub const MAX_DEPTH: usize = 256;

/// A value to write, copied out of Python.
#[derive(Debug)]
pub enum Input {
    /// None, bool, int, float, str or bytes.
    Scalar(ScalarValue),
    /// A dict: becomes a new nested map.
    Map(Vec<(String, Input)>),
    /// A list or tuple: becomes a new nested list.
    List(Vec<Input>),
}

/// Copy `value` (found at `path`, used in messages) into an [`Input`].
pub fn input_from_py(value: &Bound<'_, PyAny>, path: &mut Vec<Prop>) -> Result<Input, String> {
    if path.len() > MAX_DEPTH {
        return Err(format!(
            "value at {} is nested deeper than {MAX_DEPTH} levels",
            describe(path)
        ));
    }
    if value.is_none() {
        return Ok(Input::Scalar(ScalarValue::Null));
    }
    // bool before int: bool is a subclass of int in Python.
    if let Ok(flag) = value.cast::<PyBool>() {
        return Ok(Input::Scalar(ScalarValue::Boolean(flag.is_true())));
    }
    if value.is_instance_of::<PyInt>() {
        return match value.extract::<i64>() {
            Ok(number) => Ok(Input::Scalar(ScalarValue::Int(number))),
            Err(_) => Err(format!(
                "int at {} does not fit in 64 bits signed: {}",
                describe(path),
                short_repr(value)
            )),
        };
    }
    if let Ok(number) = value.cast::<PyFloat>() {
        return Ok(Input::Scalar(ScalarValue::F64(number.value())));
    }
    if let Ok(text) = value.cast::<PyString>() {
        let text = text
            .to_str()
            .map_err(|e| format!("str at {} is not valid Unicode: {e}", describe(path)))?;
        return Ok(Input::Scalar(ScalarValue::Str(text.into())));
    }
    if let Ok(data) = value.cast::<PyBytes>() {
        return Ok(Input::Scalar(ScalarValue::Bytes(data.as_bytes().to_vec())));
    }
    if let Ok(data) = value.cast::<PyByteArray>() {
        return Ok(Input::Scalar(ScalarValue::Bytes(data.to_vec())));
    }
    if let Ok(dict) = value.cast::<PyDict>() {
        let mut entries = Vec::with_capacity(dict.len());
        for (key, item) in dict.iter() {
            let key = map_key(&key, path)?;
            path.push(Prop::Map(key.clone()));
            let converted = input_from_py(&item, path);
            path.pop();
            entries.push((key, converted?));
        }
        return Ok(Input::Map(entries));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let mut items = Vec::with_capacity(value.len().unwrap_or(0));
        for (index, item) in value.try_iter().map_err(|e| e.to_string())?.enumerate() {
            let item = item.map_err(|e| e.to_string())?;
            path.push(Prop::Seq(index));
            let converted = input_from_py(&item, path);
            path.pop();
            items.push(converted?);
        }
        return Ok(Input::List(items));
    }
    Err(format!(
        "value at {} has unsupported type {}",
        describe(path),
        type_name(value)
    ))
}

/// The entries of a mapping (any `collections.abc.Mapping`), copied out.
pub fn entries_from_py(
    entries: &Bound<'_, PyAny>,
    path: &mut Vec<Prop>,
) -> Result<Vec<(String, Input)>, String> {
    let pairs: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)> =
        if let Ok(dict) = entries.cast::<PyDict>() {
            dict.iter().collect()
        } else if let Ok(mapping) = entries.cast::<PyMapping>() {
            let items = mapping.items().map_err(|e| e.to_string())?;
            let mut pairs = Vec::with_capacity(items.len());
            for pair in items.iter() {
                pairs.push(pair.extract().map_err(|e: PyErr| e.to_string())?);
            }
            pairs
        } else {
            return Err(format!(
                "entries must be a mapping, not {}",
                type_name(entries)
            ));
        };
    let mut converted = Vec::with_capacity(pairs.len());
    for (key, item) in pairs {
        let key = map_key(&key, path)?;
        path.push(Prop::Map(key.clone()));
        let value = input_from_py(&item, path);
        path.pop();
        converted.push((key, value?));
    }
    Ok(converted)
}

fn map_key(key: &Bound<'_, PyAny>, path: &[Prop]) -> Result<String, String> {
    match key.cast::<PyString>() {
        Ok(text) => text
            .to_str()
            .map(str::to_string)
            .map_err(|e| format!("key in map at {} is not valid Unicode: {e}", describe(path))),
        Err(_) => Err(format!(
            "key {} in map at {} is a {}, keys must be str",
            short_repr(key),
            describe(path),
            type_name(key)
        )),
    }
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// `repr(value)`, cut to a length that fits in an error message.
fn short_repr(value: &Bound<'_, PyAny>) -> String {
    let text = value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".to_string());
    if text.chars().count() > 60 {
        let head: String = text.chars().take(57).collect();
        format!("{head}...")
    } else {
        text
    }
}

/// A scalar as a Python object: counters and timestamps become int.
pub fn scalar_to_py<'py>(py: Python<'py>, scalar: &ScalarValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match scalar {
        ScalarValue::Null => py.None().into_bound(py),
        ScalarValue::Boolean(flag) => PyBool::new(py, *flag).to_owned().into_any(),
        ScalarValue::Int(number) | ScalarValue::Timestamp(number) => {
            number.into_pyobject(py)?.into_any()
        }
        ScalarValue::Uint(number) => number.into_pyobject(py)?.into_any(),
        ScalarValue::Counter(counter) => i64::from(counter).into_pyobject(py)?.into_any(),
        ScalarValue::F64(number) => PyFloat::new(py, *number).into_any(),
        ScalarValue::Str(text) => PyString::new(py, text).into_any(),
        ScalarValue::Bytes(data) => PyBytes::new(py, data).into_any(),
        // A type from a newer Automerge: its raw bytes are the best we have.
        ScalarValue::Unknown { bytes, .. } => PyBytes::new(py, bytes).into_any(),
    })
}

/// A value read from a document, owned and detached from the crate's types,
/// so that turning it into Python objects runs no crate code.
#[derive(Debug)]
pub enum Output {
    /// A scalar as stored.
    Scalar(ScalarValue),
    /// A text object's content.
    Text(String),
    /// A map's entries, sorted by key so dicts always iterate the same way.
    Map(Vec<(String, Output)>),
    /// A list's items in order.
    List(Vec<Output>),
}

impl Output {
    /// Copy a hydrated value; runs inside the guarded region.
    pub fn from_hydrated(value: &hydrate::Value) -> Output {
        match value {
            hydrate::Value::Scalar(scalar) => Output::Scalar(scalar.clone()),
            hydrate::Value::Map(map) => {
                let mut entries: Vec<(String, Output)> = map
                    .iter()
                    .map(|(key, entry)| (key.clone(), Output::from_hydrated(&entry.value)))
                    .collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                Output::Map(entries)
            }
            hydrate::Value::List(list) => Output::List(
                list.iter()
                    .map(|entry| Output::from_hydrated(&entry.value))
                    .collect(),
            ),
            hydrate::Value::Text(text) => Output::Text(text.to_string()),
        }
    }

    /// The value as nested Python dicts, lists and scalars.
    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Output::Scalar(scalar) => scalar_to_py(py, scalar),
            Output::Text(text) => Ok(PyString::new(py, text).into_any()),
            Output::Map(entries) => {
                let dict = PyDict::new(py);
                for (key, value) in entries {
                    dict.set_item(PyString::new(py, key), value.to_py(py)?)?;
                }
                Ok(dict.into_any())
            }
            Output::List(items) => {
                let items = items
                    .iter()
                    .map(|item| item.to_py(py))
                    .collect::<PyResult<Vec<_>>>()?;
                Ok(PyList::new(py, items)?.into_any())
            }
        }
    }
}
