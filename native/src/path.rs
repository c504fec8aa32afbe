//! Paths from the document root: parsing them from Python and walking them.

use automerge::{AutoCommit, ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value, ROOT};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyInt, PyString};

use crate::error::OpResult;

/// A path as Python would print it, e.g. `['jobs', 'build', 0]`.
pub fn describe(path: &[Prop]) -> String {
    let parts: Vec<String> = path
        .iter()
        .map(|prop| match prop {
            Prop::Map(key) if key.contains('\'') => format!("\"{key}\""),
            Prop::Map(key) => format!("'{key}'"),
            Prop::Seq(index) => index.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Parse a Python sequence of str keys and non-negative int indexes.
pub fn path_from_py(path: &Bound<'_, PyAny>) -> Result<Vec<Prop>, String> {
    if path.is_instance_of::<PyString>() || path.is_instance_of::<PyBytes>() {
        return Err("path must be a sequence of keys and indexes, not a str or bytes".to_string());
    }
    let iter = path
        .try_iter()
        .map_err(|_| "path must be a sequence of keys and indexes".to_string())?;
    let mut props = Vec::new();
    for element in iter {
        let element = element.map_err(|e| e.to_string())?;
        if let Ok(key) = element.cast::<PyString>() {
            let key = key.to_str().map_err(|e| {
                format!("key in path {} is not valid Unicode: {e}", describe(&props))
            })?;
            props.push(Prop::Map(key.to_string()));
        } else if element.is_instance_of::<PyInt>() && !element.is_instance_of::<PyBool>() {
            match element.extract::<usize>() {
                Ok(index) => props.push(Prop::Seq(index)),
                Err(_) => {
                    return Err(format!(
                        "index {} after {} is not a valid list index",
                        element,
                        describe(&props)
                    ))
                }
            }
        } else {
            let kind = element
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".to_string());
            return Err(format!(
                "path element after {} is a {kind}, expected str or int",
                describe(&props)
            ));
        }
    }
    Ok(props)
}

/// The name of an object type, for messages.
pub fn obj_kind(obj_type: ObjType) -> &'static str {
    match obj_type {
        ObjType::Map | ObjType::Table => "map",
        ObjType::List => "list",
        ObjType::Text => "text",
    }
}

/// The name of a scalar's type, for messages.
pub fn scalar_kind(scalar: &ScalarValue) -> &'static str {
    match scalar {
        ScalarValue::Bytes(_) => "bytes",
        ScalarValue::Str(_) => "str",
        ScalarValue::Int(_) | ScalarValue::Uint(_) => "int",
        ScalarValue::F64(_) => "float",
        ScalarValue::Counter(_) => "counter",
        ScalarValue::Timestamp(_) => "timestamp",
        ScalarValue::Boolean(_) => "bool",
        ScalarValue::Unknown { .. } => "unknown value",
        ScalarValue::Null => "None",
    }
}

/// Check that `prop` can address an element of an object of `obj_type`
/// found at `path`.
pub fn check_prop(obj_type: ObjType, prop: &Prop, path: &[Prop]) -> OpResult<()> {
    let fits = matches!(
        (obj_type, prop),
        (ObjType::Map | ObjType::Table, Prop::Map(_))
            | (ObjType::List | ObjType::Text, Prop::Seq(_))
    );
    if fits {
        Ok(())
    } else {
        let wanted = match prop {
            Prop::Map(key) => format!("key {key:?}"),
            Prop::Seq(index) => format!("index {index}"),
        };
        Err(format!(
            "path {}: the {} there cannot be addressed by {wanted}",
            describe(path),
            obj_kind(obj_type)
        ))
    }
}

/// The object at `path`: Ok(None) when some element of the path is absent,
/// an error when the path runs through a scalar or addresses an object the
/// wrong way.
pub fn resolve(doc: &AutoCommit, path: &[Prop]) -> OpResult<Option<(ObjId, ObjType)>> {
    let mut obj = ROOT;
    let mut obj_type = ObjType::Map;
    for (depth, prop) in path.iter().enumerate() {
        check_prop(obj_type, prop, &path[..depth])?;
        match doc.get(&obj, prop.clone()).map_err(|e| e.to_string())? {
            None => return Ok(None),
            Some((Value::Object(child_type), child)) => {
                obj = child;
                obj_type = child_type;
            }
            Some((Value::Scalar(scalar), _)) => {
                return Err(format!(
                    "path {}: the value at {} is a {}, not a map or list",
                    describe(path),
                    describe(&path[..=depth]),
                    scalar_kind(&scalar)
                ))
            }
        }
    }
    Ok(Some((obj, obj_type)))
}

/// Like [`resolve`], but a missing object is an error.
pub fn resolve_existing(doc: &AutoCommit, path: &[Prop]) -> OpResult<(ObjId, ObjType)> {
    resolve(doc, path)?.ok_or_else(|| format!("path {}: no such object", describe(path)))
}

/// Split a non-empty path into the parent object's path and the last element.
pub fn split_last(path: &[Prop]) -> OpResult<(&[Prop], &Prop)> {
    match path.split_last() {
        Some((last, parent)) => Ok((parent, last)),
        None => Err("path is empty; it must end with a key or index".to_string()),
    }
}
