//! The checkpoint tree as Hyper-V's Checkpoints pane shows it: each
//! checkpoint has at most one parent; the current state ("Now") hangs
//! below the checkpoint it derives from. Deleting a root that has several
//! children leaves several roots (a forest), as Hyper-V does. Pure logic:
//! validation and the tree changes of the operations, no files.

use std::collections::{BTreeMap, BTreeSet};

/// One node: an id and its parent's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub parent: Option<String>,
}

/// What is wrong with a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeError {
    /// The parent of `id` is not a node.
    MissingParent { id: String, parent: String },
    /// Following parents from `id` comes back to it.
    Cycle { id: String },
    /// A node is its own parent.
    SelfParent { id: String },
}

impl std::fmt::Display for TreeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TreeError::MissingParent { id, parent } => write!(
                f,
                "checkpoint {id} names the parent {parent}, which is not a checkpoint of this VM"
            ),
            TreeError::Cycle { id } => write!(
                f,
                "the checkpoint tree has a cycle through {id} (following parents comes back to it)"
            ),
            TreeError::SelfParent { id } => write!(f, "checkpoint {id} names itself as its parent"),
        }
    }
}

/// Checks that every parent exists and that there are no cycles.
pub fn validate(nodes: &[Node]) -> Result<(), TreeError> {
    let parent: BTreeMap<&str, Option<&str>> = nodes
        .iter()
        .map(|n| (n.id.as_str(), n.parent.as_deref()))
        .collect();
    for n in nodes {
        if let Some(p) = &n.parent {
            if p == &n.id {
                return Err(TreeError::SelfParent { id: n.id.clone() });
            }
            if !parent.contains_key(p.as_str()) {
                return Err(TreeError::MissingParent {
                    id: n.id.clone(),
                    parent: p.clone(),
                });
            }
        }
    }
    // Walk up from every node; more steps than nodes means a cycle.
    for n in nodes {
        let mut at = n.parent.as_deref();
        let mut steps = 0usize;
        while let Some(p) = at {
            steps += 1;
            if steps > nodes.len() {
                return Err(TreeError::Cycle { id: n.id.clone() });
            }
            at = parent.get(p).copied().flatten();
        }
    }
    Ok(())
}

/// `id` and its ancestors, nearest first (a valid tree).
pub fn ancestors(nodes: &[Node], id: &str) -> Vec<String> {
    let parent: BTreeMap<&str, Option<&str>> = nodes
        .iter()
        .map(|n| (n.id.as_str(), n.parent.as_deref()))
        .collect();
    let mut out = vec![id.to_string()];
    let mut at = parent.get(id).copied().flatten();
    while let Some(p) = at {
        if out.len() > nodes.len() {
            break;
        }
        out.push(p.to_string());
        at = parent.get(p).copied().flatten();
    }
    out
}

/// The children of `id` (`None`: the roots), in the order of `nodes`.
pub fn children<'a>(nodes: &'a [Node], id: Option<&str>) -> Vec<&'a str> {
    nodes
        .iter()
        .filter(|n| n.parent.as_deref() == id)
        .map(|n| n.id.as_str())
        .collect()
}

/// `id` and everything below it, parents before children.
pub fn subtree(nodes: &[Node], id: &str) -> Vec<String> {
    let mut out = vec![id.to_string()];
    let mut i = 0;
    while i < out.len() {
        let here = out[i].clone();
        for c in children(nodes, Some(&here)) {
            if !out.iter().any(|o| o == c) {
                out.push(c.to_string());
            }
        }
        i += 1;
    }
    out
}

/// Depth of `id` below its root (a root is 0).
pub fn depth(nodes: &[Node], id: &str) -> usize {
    ancestors(nodes, id).len() - 1
}

/// What removing `removed` does to the rest: every surviving node whose
/// parent is removed takes the nearest surviving ancestor (or none), and
/// so does the current state (`current` is the checkpoint it derives
/// from). Returns (reparented nodes with their new parents, the current
/// state's new parent).
pub fn remove_effect(
    nodes: &[Node],
    removed: &BTreeSet<String>,
    current: Option<&str>,
) -> (Vec<(String, Option<String>)>, Option<String>) {
    let surviving_ancestor = |start: Option<&str>| -> Option<String> {
        let mut at = start.map(str::to_string);
        while let Some(a) = at.clone() {
            if !removed.contains(&a) {
                return Some(a);
            }
            at = nodes
                .iter()
                .find(|n| n.id == a)
                .and_then(|n| n.parent.clone());
        }
        None
    };
    let mut reparent = Vec::new();
    for n in nodes {
        if removed.contains(&n.id) {
            continue;
        }
        if let Some(p) = &n.parent {
            if removed.contains(p) {
                reparent.push((n.id.clone(), surviving_ancestor(Some(p))));
            }
        }
    }
    (reparent, surviving_ancestor(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: &str, parent: Option<&str>) -> Node {
        Node {
            id: id.into(),
            parent: parent.map(Into::into),
        }
    }

    #[test]
    fn shapes() {
        let t = vec![
            n("a", None),
            n("b", Some("a")),
            n("c", Some("b")),
            n("d", Some("a")),
        ];
        assert_eq!(validate(&t), Ok(()));
        assert_eq!(subtree(&t, "a"), vec!["a", "b", "d", "c"]);
        assert_eq!(ancestors(&t, "c"), vec!["c", "b", "a"]);
        assert_eq!(depth(&t, "c"), 2);
        let removed: BTreeSet<String> = ["b".to_string()].into();
        assert_eq!(
            remove_effect(&t, &removed, Some("c")),
            (vec![("c".into(), Some("a".into()))], Some("c".into()))
        );
        let removed: BTreeSet<String> = ["a".to_string(), "b".into()].into();
        assert_eq!(
            remove_effect(&t, &removed, Some("b")),
            (vec![("c".into(), None), ("d".into(), None)], None)
        );
        assert_eq!(
            validate(&[n("a", Some("b")), n("b", Some("a"))]),
            Err(TreeError::Cycle { id: "a".into() })
        );
        assert_eq!(
            validate(&[n("a", Some("x"))]),
            Err(TreeError::MissingParent {
                id: "a".into(),
                parent: "x".into()
            })
        );
        assert_eq!(
            validate(&[n("a", Some("a"))]),
            Err(TreeError::SelfParent { id: "a".into() })
        );
        // A forest is a tree here.
        assert_eq!(validate(&[n("a", None), n("b", None)]), Ok(()));
    }
}
