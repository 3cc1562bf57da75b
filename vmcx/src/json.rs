//! The tree as JSON, for `hvkit vmcx dump --json` and `hvkit vmcx new
//! --from`: every key is `{"type": T, "value": V}`; a node's value is an
//! object of its children in insertion order, and a name that several
//! siblings share maps to an array of their `{type, value}` objects (in
//! order). Arrays are hex strings; doubles that JSON cannot hold are the
//! strings "NaN", "inf", "-inf". Optional `"flags"` (entry flags other than
//! the file-object bit) and `"change_tracking"` (a node's sequence) appear
//! when non-zero.

use crate::error::{Error, Result};
use crate::format::KeyType;
use crate::tree::{from_hex, to_hex, KeyId, Tree, Value};
use serde_json::{json, Map, Value as J};

/// Deepest nesting of keys [`to_json`] converts (real files nest fewer
/// than ten levels; the conversion recurses, and a hostile file can nest
/// as deep as it has keys).
pub const MAX_DEPTH: usize = 256;

/// The tree under `id` as JSON; `resolve` turns file-object values into
/// inline ones (e.g. [`crate::Store::value`]).
pub fn to_json(tree: &Tree, id: KeyId, resolve: &dyn Fn(KeyId) -> Result<Value>) -> Result<J> {
    to_json_at(tree, id, resolve, 0)
}

fn to_json_at(
    tree: &Tree,
    id: KeyId,
    resolve: &dyn Fn(KeyId) -> Result<Value>,
    depth: usize,
) -> Result<J> {
    if depth > MAX_DEPTH {
        return Err(Error::Invalid(format!(
            "{}: keys nested deeper than {MAX_DEPTH} levels cannot be converted to JSON",
            tree.path(id)
        )));
    }
    let k = tree.key(id);
    let value = match &k.value {
        Value::Node => {
            let mut m = Map::new();
            let children = tree.children(id);
            // Children grouped by name, groups in order of first appearance.
            let mut groups: Vec<(&str, Vec<KeyId>)> = Vec::new();
            let mut by_name: std::collections::HashMap<&str, usize> =
                std::collections::HashMap::new();
            for &c in children {
                let name = tree.key(c).name.as_str();
                match by_name.get(name) {
                    Some(&g) => groups[g].1.push(c),
                    None => {
                        by_name.insert(name, groups.len());
                        groups.push((name, vec![c]));
                    }
                }
            }
            for (name, ids) in groups {
                if let [one] = ids[..] {
                    m.insert(name.to_string(), to_json_at(tree, one, resolve, depth + 1)?);
                } else {
                    let mut arr = Vec::with_capacity(ids.len());
                    for c in ids {
                        arr.push(to_json_at(tree, c, resolve, depth + 1)?);
                    }
                    m.insert(name.to_string(), J::Array(arr));
                }
            }
            J::Object(m)
        }
        Value::Blob(_) => leaf(&resolve(id)?),
        v => leaf(v),
    };
    let mut o = Map::new();
    o.insert("type".into(), J::String(k.value.key_type().name().into()));
    o.insert("value".into(), value);
    if k.flags != 0 {
        o.insert("flags".into(), json!(k.flags));
    }
    if k.change_tracking != 0 {
        o.insert("change_tracking".into(), json!(k.change_tracking));
    }
    Ok(J::Object(o))
}

fn leaf(v: &Value) -> J {
    match v {
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Double(d) if d.is_finite() => json!(d),
        Value::Double(d) if d.is_nan() => json!("NaN"),
        Value::Double(d) => json!(if *d > 0.0 { "inf" } else { "-inf" }),
        Value::String(s) => json!(s),
        Value::Array(b) => json!(to_hex(b)),
        Value::Bool(b) => json!(b),
        Value::Node | Value::Blob(_) => J::Null,
    }
}

/// A tree from JSON in the form [`to_json`] writes (the top level is the
/// root node).
pub fn from_json(j: &J) -> Result<Tree> {
    let mut t = Tree::new();
    let o = j
        .as_object()
        .ok_or_else(|| bad("/", "expected {\"type\": \"node\", \"value\": {...}}"))?;
    if o.get("type").and_then(J::as_str) != Some("node") {
        return Err(bad("/", "the top level must be a node"));
    }
    children_from(&mut t, Tree::ROOT, o.get("value").unwrap_or(&J::Null), "")?;
    Ok(t)
}

fn bad(at: &str, why: &str) -> Error {
    Error::Invalid(format!("JSON at {at}: {why}"))
}

fn children_from(t: &mut Tree, parent: KeyId, v: &J, at: &str) -> Result<()> {
    let m = v
        .as_object()
        .ok_or_else(|| bad(at, "a node's value must be an object"))?;
    for (name, child) in m {
        let here = format!("{at}/{name}");
        match child {
            J::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    key_from(t, parent, name, item, &format!("{here}[{i}]"))?;
                }
            }
            _ => key_from(t, parent, name, child, &here)?,
        }
    }
    Ok(())
}

fn key_from(t: &mut Tree, parent: KeyId, name: &str, j: &J, at: &str) -> Result<()> {
    let o = j
        .as_object()
        .ok_or_else(|| bad(at, "expected {\"type\": ..., \"value\": ...}"))?;
    let ty = o
        .get("type")
        .and_then(J::as_str)
        .and_then(KeyType::from_name)
        .ok_or_else(|| {
            bad(
                at,
                "missing or unknown \"type\" (int, uint, double, string, array, bool, node)",
            )
        })?;
    let v = o.get("value").unwrap_or(&J::Null);
    let wrong = || bad(at, &format!("value does not fit type {}", ty.name()));
    let value = match ty {
        KeyType::Int => Value::Int(v.as_i64().ok_or_else(wrong)?),
        KeyType::UInt => Value::UInt(v.as_u64().ok_or_else(wrong)?),
        KeyType::Double => Value::Double(match v {
            J::String(s) if s == "NaN" => f64::NAN,
            J::String(s) if s == "inf" => f64::INFINITY,
            J::String(s) if s == "-inf" => f64::NEG_INFINITY,
            _ => v.as_f64().ok_or_else(wrong)?,
        }),
        KeyType::String => Value::String(v.as_str().ok_or_else(wrong)?.to_string()),
        KeyType::Array => Value::Array(from_hex(v.as_str().ok_or_else(wrong)?).ok_or_else(wrong)?),
        KeyType::Bool => Value::Bool(v.as_bool().ok_or_else(wrong)?),
        KeyType::Node => Value::Node,
        KeyType::Free => return Err(wrong()),
    };
    let id = t.add(parent, name, value);
    if let Some(f) = o.get("flags") {
        t.key_mut(id).flags = f
            .as_u64()
            .and_then(|f| u8::try_from(f).ok())
            .ok_or_else(|| bad(at, "flags must be 0..255"))?
            & !crate::format::FLAG_FILE_OBJECT;
    }
    if let Some(c) = o.get("change_tracking") {
        t.key_mut(id).change_tracking = c
            .as_u64()
            .ok_or_else(|| bad(at, "change_tracking must be an unsigned integer"))?;
    }
    if ty == KeyType::Node {
        children_from(t, id, v, at)?;
    }
    Ok(())
}
