//! Compositions: a DAG of calls, each run as a job, whose arguments can take an earlier
//! node's result (or one field of it) with `{"$ref": "NODE"}` / `{"$ref": "NODE.field.sub"}`.
//!
//! Checked at submission: node ids, known plugins, references to existing nodes, no cycles.
//! A reference to a field the earlier result does not have fails the node that needs it
//! (`user_input`, naming the field), and a node whose dependency did not succeed is not run:
//! it is reported `cancelled` with the reason. Nodes are submitted as jobs when their
//! dependencies have succeeded. The jobs themselves are journaled; the composition's
//! bookkeeping (which nodes wait) lives in the host that runs it.

use std::collections::{BTreeMap, BTreeSet};

use cjm_core::{ErrorCategory, PluginError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::{Job, JobCall, JobId, JobOptions, JobState};
use crate::jobs::{JobError, Jobs};

/// One node: a call on a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The plugin.
    pub target: String,
    /// The call; any value `{"$ref": "NODE[.field…]"}` in it is replaced by that result.
    #[serde(default)]
    pub call: JobCall,
    /// Its options.
    #[serde(default)]
    pub options: JobOptions,
}

/// A DAG of nodes by id (`[A-Za-z0-9_-]{1,64}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Composition {
    /// The nodes.
    pub nodes: BTreeMap<String, Node>,
}

/// How each node of a composition ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeOutcome {
    /// Its job, when it was submitted.
    pub job: Option<JobId>,
    /// Its final state.
    pub state: JobState,
    /// Its result when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed or was not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PluginError>,
}

/// A `$ref`: the node and the field path within its result.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ref {
    node: String,
    path: Vec<String>,
}

fn is_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Every `$ref` in `v`, or the first malformed one's description.
fn refs(v: &Value, out: &mut Vec<Ref>) -> Result<(), String> {
    match v {
        Value::Object(o) if o.contains_key("$ref") => {
            let target = o
                .get("$ref")
                .and_then(Value::as_str)
                .ok_or("`$ref` must be a string")?;
            if o.len() != 1 {
                return Err(format!("`{{\"$ref\": {target:?}}}` must have no other key"));
            }
            let mut parts = target.split('.').map(str::to_owned);
            let node = parts.next().unwrap_or_default();
            let path: Vec<String> = parts.collect();
            if path.iter().any(String::is_empty) {
                return Err(format!("`$ref` {target:?} has an empty field name"));
            }
            out.push(Ref { node, path });
            Ok(())
        }
        Value::Object(o) => o.values().try_for_each(|x| refs(x, out)),
        Value::Array(a) => a.iter().try_for_each(|x| refs(x, out)),
        _ => Ok(()),
    }
}

/// `v` with every `$ref` replaced from `results`; an error names a missing field.
fn resolve(v: &Value, results: &BTreeMap<String, Value>) -> Result<Value, String> {
    Ok(match v {
        Value::Object(o) if o.contains_key("$ref") => {
            let target = o.get("$ref").and_then(Value::as_str).unwrap_or_default();
            let mut parts = target.split('.');
            let node = parts.next().unwrap_or_default();
            let mut cur = results
                .get(node)
                .ok_or_else(|| format!("`{node}` has no result"))?;
            for field in parts {
                cur = match cur {
                    Value::Object(m) => m.get(field),
                    Value::Array(a) => field.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                }
                .ok_or_else(|| format!("the result of `{node}` has no field `{target}`"))?;
            }
            cur.clone()
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| resolve(x, results).map(|x| (k.clone(), x)))
                .collect::<Result<_, _>>()?,
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| resolve(x, results))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

impl Composition {
    /// The nodes each node depends on, after checking the composition (see the module docs);
    /// `known` says whether a plugin exists.
    fn check(
        &self,
        known: impl Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, BTreeSet<String>>, JobError> {
        let bad = |s: String| JobError::Invalid(s);
        if self.nodes.is_empty() {
            return Err(bad("a composition needs at least one node".into()));
        }
        let mut deps = BTreeMap::new();
        for (id, node) in &self.nodes {
            if !is_node_id(id) {
                return Err(bad(format!(
                    "node `{id}`: an id is 1 to 64 of A-Z a-z 0-9 - _"
                )));
            }
            if !known(&node.target) {
                return Err(JobError::UnknownTarget(node.target.clone()));
            }
            let mut found = Vec::new();
            for v in node.call.args.iter().chain(node.call.kwargs.values()) {
                refs(v, &mut found).map_err(|e| bad(format!("node `{id}`: {e}")))?;
            }
            let mut mine = BTreeSet::new();
            for r in found {
                if !self.nodes.contains_key(&r.node) {
                    return Err(bad(format!(
                        "node `{id}` refers to `{}`, which is not a node",
                        r.node
                    )));
                }
                if r.node == *id {
                    return Err(bad(format!("node `{id}` refers to itself")));
                }
                mine.insert(r.node);
            }
            deps.insert(id.clone(), mine);
        }
        // Kahn's algorithm: whatever cannot be ordered is on a cycle.
        let mut left = deps.clone();
        loop {
            let ready: Vec<String> = left
                .iter()
                .filter(|(_, d)| d.iter().all(|x| !left.contains_key(x)))
                .map(|(k, _)| k.clone())
                .collect();
            if ready.is_empty() {
                break;
            }
            for k in ready {
                left.remove(&k);
            }
        }
        if !left.is_empty() {
            let on: Vec<&str> = left.keys().map(String::as_str).collect();
            return Err(bad(format!(
                "the composition has a cycle through {}",
                on.join(", ")
            )));
        }
        Ok(deps)
    }
}

impl Jobs {
    /// Checks `composition`, then runs it: each node is submitted as a job once the nodes it
    /// refers to have succeeded. Resolves when every node has ended, with each node's outcome.
    pub async fn run_composition(
        &self,
        composition: Composition,
    ) -> Result<BTreeMap<String, NodeOutcome>, JobError> {
        let m = self.manager();
        let deps = composition.check(|t| m.discovered_manifest(t).is_some() || m.is_loaded(t))?;
        let mut outcomes: BTreeMap<String, NodeOutcome> = BTreeMap::new();
        let mut results: BTreeMap<String, Value> = BTreeMap::new();
        let mut running: BTreeMap<String, JobId> = BTreeMap::new();
        loop {
            // Submit every node whose dependencies all succeeded; settle those with a failed one.
            for (id, node) in &composition.nodes {
                if outcomes.contains_key(id) || running.contains_key(id) {
                    continue;
                }
                let d = &deps[id];
                if let Some(failed) = d.iter().find(|x| {
                    outcomes
                        .get(*x)
                        .is_some_and(|o| o.state != JobState::Succeeded)
                }) {
                    outcomes.insert(
                        id.clone(),
                        NodeOutcome {
                            job: None,
                            state: JobState::Cancelled,
                            result: None,
                            error: Some(PluginError::new(
                                ErrorCategory::Cancelled,
                                format!("not run: `{failed}`, which it needs, did not succeed"),
                            )),
                        },
                    );
                    continue;
                }
                if !d.iter().all(|x| results.contains_key(x)) {
                    continue;
                }
                let call = (|| -> Result<JobCall, String> {
                    Ok(JobCall {
                        args: node
                            .call
                            .args
                            .iter()
                            .map(|v| resolve(v, &results))
                            .collect::<Result<_, _>>()?,
                        kwargs: node
                            .call
                            .kwargs
                            .iter()
                            .map(|(k, v)| resolve(v, &results).map(|v| (k.clone(), v)))
                            .collect::<Result<_, _>>()?,
                    })
                })();
                match call {
                    Ok(call) => {
                        let job = self
                            .submit(&node.target, call, node.options.clone())
                            .await?;
                        running.insert(id.clone(), job);
                    }
                    Err(why) => {
                        outcomes.insert(
                            id.clone(),
                            NodeOutcome {
                                job: None,
                                state: JobState::Failed,
                                result: None,
                                error: Some(PluginError::user_input(format!("node `{id}`: {why}"))),
                            },
                        );
                    }
                }
            }
            if outcomes.len() == composition.nodes.len() {
                return Ok(outcomes);
            }
            // Wait for any running node to end.
            let Some((id, job)) = self.first_to_end(&running).await? else {
                // Nothing runs and nothing can start: cannot happen with a checked DAG.
                return Err(JobError::Invalid(
                    "the composition cannot make progress".into(),
                ));
            };
            running.remove(&id);
            if job.state == JobState::Succeeded {
                results.insert(id.clone(), job.result.clone().unwrap_or(Value::Null));
            }
            outcomes.insert(
                id,
                NodeOutcome {
                    job: Some(job.id.clone()),
                    state: job.state,
                    result: job.result,
                    error: job.error,
                },
            );
        }
    }

    async fn first_to_end(
        &self,
        running: &BTreeMap<String, JobId>,
    ) -> Result<Option<(String, Job)>, JobError> {
        if running.is_empty() {
            return Ok(None);
        }
        let waits = running.iter().map(|(id, job)| {
            let id = id.clone();
            Box::pin(async move { self.wait(job).await.map(|j| (id, j)) })
        });
        let (first, _, _) = futures::future::select_all(waits).await;
        first.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(target: &str, args: Value) -> Node {
        Node {
            target: target.into(),
            call: JobCall {
                args: args.as_array().cloned().unwrap_or_default(),
                kwargs: Default::default(),
            },
            options: JobOptions::new(),
        }
    }

    fn comp(nodes: &[(&str, Node)]) -> Composition {
        Composition {
            nodes: nodes
                .iter()
                .map(|(k, n)| ((*k).to_owned(), n.clone()))
                .collect(),
        }
    }

    #[test]
    fn checks_name_what_is_wrong() {
        let known = |t: &str| t != "nope";
        let ok = comp(&[
            ("a", node("p", json!([1]))),
            ("b", node("p", json!([{"$ref": "a.x"}]))),
        ]);
        let deps = ok.check(known).unwrap();
        assert_eq!(deps["b"], BTreeSet::from(["a".to_owned()]));
        let cases = [
            (comp(&[]), "at least one node"),
            (comp(&[("a b", node("p", json!([])))]), "node `a b`"),
            (
                comp(&[("a", node("p", json!([{"$ref": "z"}])))]),
                "`z`, which is not a node",
            ),
            (comp(&[("a", node("p", json!([{"$ref": "a"}])))]), "itself"),
            (
                comp(&[("a", node("p", json!([{"$ref": 3}])))]),
                "must be a string",
            ),
            (
                comp(&[
                    ("a", node("p", json!([{"$ref": "b..x"}]))),
                    ("b", node("p", json!([]))),
                ]),
                "empty field",
            ),
            (
                comp(&[
                    ("a", node("p", json!([{"$ref": "c"}]))),
                    ("b", node("p", json!([{"$ref": "a"}]))),
                    ("c", node("p", json!([{"$ref": "b"}]))),
                    ("d", node("p", json!([]))),
                ]),
                "cycle through a, b, c",
            ),
        ];
        for (c, want) in cases {
            let e = c.check(known).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let e = comp(&[("a", node("nope", json!([])))])
            .check(known)
            .unwrap_err();
        assert_eq!(e, JobError::UnknownTarget("nope".into()));
    }

    #[test]
    fn references_resolve_to_results_and_fields() {
        let results = BTreeMap::from([("a".to_owned(), json!({"x": {"y": [10, 20]}}))]);
        let v = json!({"whole": {"$ref": "a"}, "deep": [{"$ref": "a.x.y.1"}]});
        assert_eq!(
            resolve(&v, &results).unwrap(),
            json!({"whole": {"x": {"y": [10, 20]}}, "deep": [20]})
        );
        let e = resolve(&json!({"$ref": "a.x.z"}), &results).unwrap_err();
        assert!(e.contains("no field `a.x.z`"), "{e}");
    }
}
