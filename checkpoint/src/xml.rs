//! The 2012 R2 (and 2008) XML configuration: the same key tree as a
//! `.vmcx`, as UTF-16 (or UTF-8) XML elements whose `type` attribute gives
//! the value type: `integer`, `string`, `bool` (`True`/`False`), `bytes`
//! (base64); elements without a type are nodes (research note on
//! vmcx-vmrs §5, the two corpus files). Read only.

use crate::error::{Error, Result};
use base64::Engine;
use std::path::Path;
use vmcx::{Tree, Value};

/// Largest XML configuration read (the corpus files are under 40 KiB).
pub const MAX_XML: u64 = 16 << 20;

/// Reads an XML configuration into a key tree (the document element is
/// the top node, `configuration`).
pub fn read(path: &Path) -> Result<Tree> {
    parse(path, &crate::config::read_bytes(path)?)
}

/// Parses XML configuration bytes (UTF-16LE/BE with a byte-order mark, or
/// UTF-8).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Tree> {
    let text = decode(bytes).ok_or_else(|| Error::corrupt(path, "not UTF-16 or UTF-8 text"))?;
    let doc = roxmltree::Document::parse(&text)
        .map_err(|e| Error::corrupt(path, format!("not a Hyper-V XML configuration: {e}")))?;
    let mut tree = Tree::new();
    let top = doc.root_element();
    let mut stack = vec![(top, Tree::ROOT)];
    while let Some((el, parent)) = stack.pop() {
        let name = el.tag_name().name();
        let value = match el.attribute("type") {
            None => Value::Node,
            Some(ty) => {
                let t = el.text().unwrap_or("").trim();
                match ty {
                    "integer" => Value::Int(t.parse().map_err(|_| {
                        Error::corrupt(path, format!("<{name}>: {t:?} is not an integer"))
                    })?),
                    "string" => Value::String(el.text().unwrap_or("").to_string()),
                    "bool" => Value::Bool(match t.to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(Error::corrupt(
                                path,
                                format!("<{name}>: {t:?} is not a bool"),
                            ))
                        }
                    }),
                    "bytes" => {
                        let clean: String = t.chars().filter(|c| !c.is_whitespace()).collect();
                        Value::Array(
                            base64::engine::general_purpose::STANDARD
                                .decode(clean)
                                .map_err(|e| {
                                    Error::corrupt(path, format!("<{name}>: bad base64: {e}"))
                                })?,
                        )
                    }
                    other => {
                        return Err(Error::corrupt(
                            path,
                            format!("<{name}>: unknown value type {other:?}"),
                        ))
                    }
                }
            }
        };
        let is_node = value == Value::Node;
        let id = tree.add(parent, name, value);
        if is_node {
            // Children in document order (the stack reverses them).
            let kids: Vec<_> = el.children().filter(|c| c.is_element()).collect();
            for c in kids.into_iter().rev() {
                stack.push((c, id));
            }
        }
    }
    Ok(tree)
}

fn decode(b: &[u8]) -> Option<String> {
    let utf16 = |le: bool, body: &[u8]| {
        if !body.len().is_multiple_of(2) {
            return None;
        }
        let units = body.chunks(2).map(|c| {
            if le {
                u16::from_le_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        });
        char::decode_utf16(units)
            .collect::<Result<String, _>>()
            .ok()
    };
    let mut s = match b {
        [0xff, 0xfe, rest @ ..] => utf16(true, rest)?,
        [0xfe, 0xff, rest @ ..] => utf16(false, rest)?,
        [0xef, 0xbb, 0xbf, rest @ ..] => String::from_utf8(rest.to_vec()).ok()?,
        // UTF-16LE without a mark starts with '<' 0.
        [b'<', 0, ..] => utf16(true, b)?,
        _ => String::from_utf8(b.to_vec()).ok()?,
    };
    // roxmltree takes the text as it is: the declaration's encoding name
    // (UTF-16) no longer matches, so drop the declaration.
    if s.starts_with("<?xml") {
        if let Some(end) = s.find("?>") {
            s.replace_range(..end + 2, "");
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        let x = "<?xml version=\"1.0\" encoding=\"UTF-16\"?><configuration><properties>\
            <name type=\"string\">a &amp; b</name><n type=\"integer\">-3</n>\
            <b type=\"bool\">True</b><d type=\"bytes\">AAEC</d><e type=\"string\"></e>\
            </properties></configuration>";
        let mut b = vec![0xff, 0xfe];
        for u in x.encode_utf16() {
            b.extend(u.to_le_bytes());
        }
        let t = parse(Path::new("x.xml"), &b).unwrap();
        assert_eq!(
            t.get("/configuration/properties/name"),
            Some(&Value::String("a & b".into()))
        );
        assert_eq!(t.get("/configuration/properties/n"), Some(&Value::Int(-3)));
        assert_eq!(
            t.get("/configuration/properties/b"),
            Some(&Value::Bool(true))
        );
        assert_eq!(
            t.get("/configuration/properties/d"),
            Some(&Value::Array(vec![0, 1, 2]))
        );
        assert_eq!(
            t.get("/configuration/properties/e"),
            Some(&Value::String(String::new()))
        );
        for bad in [
            "<configuration><n type=\"integer\">x</n></configuration>",
            "<configuration><n type=\"blob\">x</n></configuration>",
            "<configuration><n type=\"bool\">yes</n></configuration>",
            "<configuration>",
            "\u{0}\u{1}",
        ] {
            assert!(matches!(
                parse(Path::new("x.xml"), bad.as_bytes()),
                Err(Error::Corrupt { .. })
            ));
        }
    }
}
