//! A client of the Ray Jobs REST API (the job server on the head node, `http://HEAD:8265`):
//! submit, status, logs, stop and delete. Every request has a deadline, and bodies read back
//! are capped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cjm_core::PluginError;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::Value;

use crate::transport::{Endpoint, ReqBody, Transport};

/// How long one request to the job server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest answer read from the job server (job logs included).
const MAX_ANSWER: usize = 8 << 20;

/// A Ray job's state, as the job server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum JobStatus {
    /// Waiting for resources or its runtime environment.
    Pending,
    /// The entrypoint runs.
    Running,
    /// Stopped on request.
    Stopped,
    /// The entrypoint exited 0.
    Succeeded,
    /// The entrypoint failed, or the job could not start.
    Failed,
}

impl JobStatus {
    /// True once the job has ended.
    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Succeeded | Self::Failed)
    }
}

/// A job's status with Ray's message.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct JobInfo {
    /// Its state.
    pub status: JobStatus,
    /// Ray's explanation, if any.
    #[serde(default)]
    pub message: Option<String>,
}

/// The job server of one Ray cluster.
#[derive(Debug)]
pub(crate) struct JobsApi {
    transport: Transport,
    address: String,
}

impl JobsApi {
    /// A client of the job server at `address` (`http://HOST:PORT`).
    pub(crate) async fn connect(address: &str) -> Result<Self, PluginError> {
        let authority = address
            .strip_prefix("http://")
            .map(|a| a.trim_end_matches('/'))
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| {
                PluginError::new(
                    cjm_core::ErrorCategory::Config,
                    format!("the Ray address {address:?} is not http://HOST:PORT (its job server)"),
                )
            })?;
        let addr: SocketAddr = tokio::net::lookup_host(authority)
            .await
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| {
                PluginError::transient(format!("the Ray address {address:?} does not resolve"))
            })?;
        Ok(Self {
            transport: Transport::new(Endpoint::Tcp(addr), None),
            address: address.trim_end_matches('/').to_owned(),
        })
    }

    /// The job server's address, for messages.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), PluginError> {
        let mut b = self.transport.request(method.clone(), path);
        let body = match body {
            Some(v) => {
                b = b.header(http::header::CONTENT_TYPE, "application/json");
                ReqBody::full(serde_json::to_vec(v).map_err(|e| PluginError::fatal(e.to_string()))?)
            }
            None => ReqBody::Empty,
        };
        let req = b
            .body(body)
            .map_err(|e| PluginError::fatal(e.to_string()))?;
        let work = async {
            let (resp, mut conn) = self.transport.send(req).await?;
            let status = resp.status();
            let bytes = conn
                .run(Limited::new(resp.into_body(), MAX_ANSWER).collect())
                .await?
                .map_err(|e| PluginError::transient(format!("reading the answer: {e}")))?
                .to_bytes();
            self.transport.give_back(conn);
            Ok((status, bytes))
        };
        tokio::time::timeout_at((Instant::now() + REQUEST_TIMEOUT).into(), work)
            .await
            .unwrap_or_else(|_| {
                Err(PluginError::timeout(format!(
                    "the Ray job server at {} did not answer {method} {path} within {}s",
                    self.address,
                    REQUEST_TIMEOUT.as_secs()
                )))
            })
            .map_err(|e| {
                if crate::transport::is_connection_failure(&e) {
                    PluginError::transient(format!(
                        "the Ray job server at {} is unreachable: {}",
                        self.address, e.message
                    ))
                } else {
                    e
                }
            })
    }

    fn refused(&self, what: &str, status: StatusCode, body: &[u8]) -> PluginError {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let text = text.get(..text.len().min(2000)).unwrap_or(text);
        let category = if status.is_server_error() {
            cjm_core::ErrorCategory::Transient
        } else {
            cjm_core::ErrorCategory::Config
        };
        PluginError::new(
            category,
            format!(
                "the Ray job server at {} refused to {what}: {status}: {text}",
                self.address
            ),
        )
    }

    /// Submits a job (`POST /api/jobs/`); `body` is the request as the API defines it.
    pub(crate) async fn submit(&self, body: &Value) -> Result<(), PluginError> {
        let (status, bytes) = self.request(Method::POST, "/api/jobs/", Some(body)).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.refused("submit the job", status, &bytes))
        }
    }

    /// The total resources of each live node (`GET /api/v0/nodes`, Ray's state API), as
    /// `{"CPU": 4, "GPU": 1, "memory": …}` maps; `None` when the cluster does not say (an
    /// older Ray, the state API off), and then nothing is checked.
    pub(crate) async fn node_resources(&self) -> Option<Vec<serde_json::Map<String, Value>>> {
        let (status, bytes) = self
            .request(Method::GET, "/api/v0/nodes?detail=true&limit=10000", None)
            .await
            .ok()?;
        if !status.is_success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        Some(parse_nodes(&v))
    }

    /// A job's status (`GET /api/jobs/{id}`); `None` when the server does not know it.
    pub(crate) async fn info(&self, id: &str) -> Result<Option<JobInfo>, PluginError> {
        let (status, bytes) = self
            .request(Method::GET, &format!("/api/jobs/{id}"), None)
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                PluginError::transient(format!("the job server's answer about {id}: {e}"))
            }),
            s => Err(self.refused("report the job", s, &bytes)),
        }
    }

    /// The job's whole log (`GET /api/jobs/{id}/logs`).
    pub(crate) async fn logs(&self, id: &str) -> Result<String, PluginError> {
        #[derive(Deserialize)]
        struct Logs {
            logs: String,
        }
        let (status, bytes) = self
            .request(Method::GET, &format!("/api/jobs/{id}/logs"), None)
            .await?;
        if !status.is_success() {
            return Err(self.refused("give the job's logs", status, &bytes));
        }
        serde_json::from_slice::<Logs>(&bytes)
            .map(|l| l.logs)
            .map_err(|e| PluginError::transient(format!("the job server's logs of {id}: {e}")))
    }

    /// Asks Ray to stop the job (`POST /api/jobs/{id}/stop`).
    pub(crate) async fn stop(&self, id: &str) -> Result<(), PluginError> {
        let (status, bytes) = self
            .request(Method::POST, &format!("/api/jobs/{id}/stop"), None)
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.refused("stop the job", status, &bytes))
        }
    }

    /// Forgets an ended job (`DELETE /api/jobs/{id}`), so nothing of it is left on the cluster.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), PluginError> {
        let (status, bytes) = self
            .request(Method::DELETE, &format!("/api/jobs/{id}"), None)
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.refused("delete the job", status, &bytes))
        }
    }
}

/// The live nodes' `resources_total` in a state-API answer
/// (`{"data": {"result": {"result": [NODE, …]}}}`; the list is found wherever it is nested).
pub(crate) fn parse_nodes(v: &Value) -> Vec<serde_json::Map<String, Value>> {
    fn find(v: &Value, depth: usize) -> Option<&Vec<Value>> {
        match v {
            Value::Array(a) if a.iter().any(|n| n.get("resources_total").is_some()) => Some(a),
            Value::Object(o) if depth < 4 => o.values().find_map(|x| find(x, depth + 1)),
            _ => None,
        }
    }
    find(v, 0)
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| {
                    n.get("state")
                        .and_then(Value::as_str)
                        .is_none_or(|s| s == "ALIVE")
                })
                .filter_map(|n| n.get("resources_total")?.as_object().cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// Why no node in `nodes` can hold a job that asks for `body`'s entrypoint resources
/// (CPUs, GPUs, memory), or `None` when one can.
pub(crate) fn unplaceable(
    body: &Value,
    nodes: &[serde_json::Map<String, Value>],
) -> Option<String> {
    let asks: Vec<(&str, &str, f64)> = [
        ("entrypoint_num_cpus", "CPU"),
        ("entrypoint_num_gpus", "GPU"),
        ("entrypoint_memory", "memory"),
    ]
    .into_iter()
    .filter_map(|(field, resource)| {
        let n = body.get(field)?.as_f64()?;
        (n > 0.0).then_some((field, resource, n))
    })
    .collect();
    if asks.is_empty() || nodes.is_empty() {
        return None;
    }
    let has = |node: &serde_json::Map<String, Value>, resource: &str| {
        node.get(resource).and_then(Value::as_f64).unwrap_or(0.0)
    };
    if nodes
        .iter()
        .any(|node| asks.iter().all(|(_, r, n)| has(node, r) >= *n))
    {
        return None;
    }
    let wanted: Vec<String> = asks
        .iter()
        .map(|(_, r, n)| {
            let most = nodes.iter().map(|node| has(node, r)).fold(0.0, f64::max);
            format!("{r} {n} (the most on one node: {most})")
        })
        .collect();
    Some(format!(
        "no node of the cluster has all of {} at once",
        wanted.join(", ")
    ))
}
