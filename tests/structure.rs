//! The module map is one-way: every `crate::X` a module of `src/` names (in code or in a doc
//! link) is on its own layer or a lower one, and no two modules name each other round a circle.
//! Bottom to top:
//!
//! ```text
//! template, receive, wasm, events, logging   (no zimhook module but each other)
//! config                                      (the validated snapshot)
//! metrics
//! verify, route
//! act                                         (running one action)
//! deliver                                     (the queue)
//! shared                                      (the state the parts share)
//! handle                                      (one callback's steps)
//! server, admin, reload, systemd
//! app                                         (the composition root)
//! daemon, cli                                 (and main.rs)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const LAYERS: &[&[&str]] = &[
    &["template", "receive", "wasm", "events", "logging"],
    &["config"],
    &["metrics"],
    &["verify", "route"],
    &["act"],
    &["deliver"],
    &["shared"],
    &["handle"],
    &["server", "admin", "reload", "systemd"],
    &["app"],
    &["daemon", "cli"],
];

/// Top-level module → the top-level modules its files name as `crate::X`.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if !rel.ends_with(".rs") || rel == "main.rs" || rel == "lib.rs" {
                continue;
            }
            let module = rel
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let named = edges.entry(module.clone()).or_default();
            for (i, _) in text.match_indices("crate::") {
                let name: String = text[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    named.insert(name);
                }
            }
        }
    }
    edges
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn every_module_names_only_its_own_layer_or_lower_ones() {
    let edges = edges();
    let mut wrong = Vec::new();
    for (module, named) in &edges {
        let Some(from) = layer_of(module) else {
            wrong.push(format!("src/{module} is on no layer: add it to LAYERS"));
            continue;
        };
        for dep in named {
            match layer_of(dep) {
                Some(to) if to <= from => {}
                Some(_) => wrong.push(format!("{module} names crate::{dep}, a higher layer")),
                None => wrong.push(format!("{module} names crate::{dep}, on no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for (module, named) in &edges {
        println!(
            "{module} -> {}",
            Vec::from_iter(named.iter().cloned()).join(" ")
        );
    }
}

#[test]
fn no_modules_name_each_other_round_a_circle() {
    let edges = edges();
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for dep in edges.get(m).into_iter().flatten() {
            if let Some(circle) = visit(dep, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        if let Some(circle) = visit(module, &edges, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
}
