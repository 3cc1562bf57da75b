//! VP registers as JSON (for `hvkit vmrs info --json` and `create
//! --vp-regs`): an array of objects, one per VP, with `index`, the general
//! registers by name (`rax` … `rflags`), `cr0` … `efer`, `xcr0`, `cpl`,
//! segments as `{base, limit, selector, attributes}` and `idtr`/`gdtr` as
//! `{base, limit}`. Numbers may be JSON numbers or strings (`"0x1ad000"`).
//! Missing registers are zero.

use crate::error::{Error, Result};
use crate::partition_state::{Segment, Table, VpRegisters, CONTROL_NAMES, GP_NAMES, SEGMENT_NAMES};
use serde_json::{json, Map, Value as J};

fn hex(v: u64) -> J {
    J::String(format!("{v:#x}"))
}

/// One VP as JSON (numbers as hex strings).
pub fn to_json(v: &VpRegisters) -> J {
    let mut m = Map::new();
    m.insert("index".into(), json!(v.index));
    for (n, x) in GP_NAMES.iter().zip(v.gp) {
        m.insert((*n).into(), hex(x));
    }
    for (n, x) in CONTROL_NAMES.iter().zip(v.control) {
        m.insert((*n).into(), hex(x));
    }
    m.insert("xcr0".into(), hex(v.xcr0));
    m.insert("cpl".into(), json!(v.cpl));
    for (n, s) in SEGMENT_NAMES.iter().zip(v.segments) {
        m.insert(
            (*n).into(),
            json!({"base": hex(s.base), "limit": hex(u64::from(s.limit)), "selector": hex(u64::from(s.selector)), "attributes": hex(u64::from(s.attributes))}),
        );
    }
    m.insert(
        "idtr".into(),
        json!({"base": hex(v.idtr.base), "limit": hex(u64::from(v.idtr.limit))}),
    );
    m.insert(
        "gdtr".into(),
        json!({"base": hex(v.gdtr.base), "limit": hex(u64::from(v.gdtr.limit))}),
    );
    J::Object(m)
}

fn num(j: &J, what: &str) -> Result<u64> {
    match j {
        J::Number(n) => n.as_u64().ok_or_else(|| bad(what)),
        J::String(s) => match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(h) => u64::from_str_radix(h, 16).map_err(|_| bad(what)),
            None => s.parse().map_err(|_| bad(what)),
        },
        _ => Err(bad(what)),
    }
}

fn bad(what: &str) -> Error {
    Error::Invalid(format!(
        "VP registers JSON: {what} is not an unsigned number"
    ))
}

fn field(o: &Map<String, J>, k: &str, what: &str) -> Result<u64> {
    o.get(k).map_or(Ok(0), |j| num(j, &format!("{what}.{k}")))
}

/// VPs from JSON: an array, or an object with a `vps` array.
pub fn from_json(j: &J) -> Result<Vec<VpRegisters>> {
    let arr = match j {
        J::Array(a) => a,
        J::Object(o) => o.get("vps").and_then(J::as_array).ok_or_else(|| {
            Error::Invalid("VP registers JSON: expected an array of VPs or {\"vps\": [...]}".into())
        })?,
        _ => {
            return Err(Error::Invalid(
                "VP registers JSON: expected an array".into(),
            ))
        }
    };
    let mut out = Vec::new();
    for (i, v) in arr.iter().enumerate() {
        let o = v
            .as_object()
            .ok_or_else(|| Error::Invalid(format!("VP registers JSON: VP {i} is not an object")))?;
        let known: Vec<&str> = GP_NAMES
            .iter()
            .chain(CONTROL_NAMES.iter())
            .chain(SEGMENT_NAMES.iter())
            .copied()
            .chain(["index", "xcr0", "cpl", "idtr", "gdtr"])
            .collect();
        if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(Error::Invalid(format!(
                "VP registers JSON: VP {i}: unknown register {k:?}"
            )));
        }
        let w = |x: u64, max: u64, what: &str| {
            if x > max {
                Err(Error::Invalid(format!(
                    "VP registers JSON: {what} = {x:#x} does not fit"
                )))
            } else {
                Ok(x)
            }
        };
        let mut r = VpRegisters {
            index: w(field(o, "index", "vp")?, u64::from(u32::MAX), "index")? as u32,
            ..VpRegisters::default()
        };
        if !o.contains_key("index") {
            r.index = i as u32;
        }
        for (k, n) in GP_NAMES.iter().enumerate() {
            r.gp[k] = field(o, n, "vp")?;
        }
        for (k, n) in CONTROL_NAMES.iter().enumerate() {
            r.control[k] = field(o, n, "vp")?;
        }
        r.xcr0 = field(o, "xcr0", "vp")?;
        r.cpl = w(field(o, "cpl", "vp")?, 3, "cpl")? as u8;
        for (k, n) in SEGMENT_NAMES.iter().enumerate() {
            if let Some(s) = o.get(*n) {
                let s = s.as_object().ok_or_else(|| {
                    Error::Invalid(format!("VP registers JSON: {n} is not an object"))
                })?;
                r.segments[k] = Segment {
                    base: field(s, "base", n)?,
                    limit: w(field(s, "limit", n)?, u64::from(u32::MAX), "limit")? as u32,
                    selector: w(field(s, "selector", n)?, 0xFFFF, "selector")? as u16,
                    attributes: w(field(s, "attributes", n)?, 0xFFFF, "attributes")? as u16,
                };
            }
        }
        for (n, slot) in [("idtr", &mut r.idtr), ("gdtr", &mut r.gdtr)] {
            if let Some(t) = o.get(n) {
                let t = t.as_object().ok_or_else(|| {
                    Error::Invalid(format!("VP registers JSON: {n} is not an object"))
                })?;
                *slot = Table {
                    base: field(t, "base", n)?,
                    limit: w(field(t, "limit", n)?, 0xFFFF, "limit")? as u16,
                };
            }
        }
        out.push(r);
    }
    let mut seen = std::collections::HashSet::new();
    for r in &out {
        if !seen.insert(r.index) {
            return Err(Error::Invalid(format!(
                "VP registers JSON: VP index {} appears twice",
                r.index
            )));
        }
        if r.index >= 240 {
            return Err(Error::Invalid(format!(
                "VP registers JSON: VP index {} (at most 239)",
                r.index
            )));
        }
    }
    Ok(out)
}
