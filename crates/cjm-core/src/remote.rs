//! The `remote` block of a manifest: a worker the host does not start, reached over TLS.
//!
//! ```json
//! "remote": {"url": "https://gpu-box:7000", "ca_file": "/etc/cjm/ca.pem", "token_secret": "GPU_BOX_TOKEN"}
//! ```
//!
//! The token is never written in the manifest: `token_secret` names a secret of the host's
//! secret store. An inline `token` is refused.

use std::path::PathBuf;

use serde_json::Value;

use crate::manifest::ManifestProblem;

/// Where a remote worker answers and how the host authenticates it and itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWorker {
    /// `https://host:port`, without path, query or user.
    pub url: String,
    /// The host part of [`url`](Self::url) (checked against the worker's certificate).
    pub host: String,
    /// The port of [`url`](Self::url).
    pub port: u16,
    /// The PEM file of the CA the worker's certificate must chain to.
    pub ca_file: PathBuf,
    /// The name of the secret that holds the bearer token.
    pub token_secret: String,
}

fn problem(field: &str, reason: impl Into<String>) -> ManifestProblem {
    ManifestProblem {
        field: format!("remote.{field}"),
        reason: reason.into(),
    }
}

fn string<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &str,
    problems: &mut Vec<ManifestProblem>,
) -> Option<&'a str> {
    match obj.get(field) {
        None => {
            problems.push(problem(field, "is required"));
            None
        }
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        Some(Value::String(_)) => {
            problems.push(problem(field, "is empty"));
            None
        }
        Some(_) => {
            problems.push(problem(field, "must be a string"));
            None
        }
    }
}

/// Splits `https://host:port` into host and port.
fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url:?} must start with https://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{url:?} must be https://host:port, without path, query or user"
        ));
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?} has no port (https://host:port)"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{url:?} has no valid port: {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

impl RemoteWorker {
    /// Reads and checks a manifest's `remote` block; every problem names its field
    /// (`remote.url`, `remote.ca_file`, `remote.token_secret`, `remote.token`).
    pub fn from_value(value: &Value) -> Result<Self, Vec<ManifestProblem>> {
        let Some(obj) = value.as_object() else {
            return Err(vec![ManifestProblem {
                field: "remote".to_owned(),
                reason: "must be an object with url, ca_file and token_secret".to_owned(),
            }]);
        };
        let mut problems = Vec::new();
        if obj.contains_key("token") {
            problems.push(problem(
                "token",
                "an inline token is refused: store it as a secret and name it in remote.token_secret",
            ));
        }
        let url = string(obj, "url", &mut problems);
        let parsed = url.and_then(|u| match parse_url(u) {
            Ok(hp) => Some(hp),
            Err(e) => {
                problems.push(problem("url", e));
                None
            }
        });
        let ca_file = string(obj, "ca_file", &mut problems);
        let token_secret = string(obj, "token_secret", &mut problems);
        match (url, parsed, ca_file, token_secret) {
            (Some(url), Some((host, port)), Some(ca), Some(secret)) if problems.is_empty() => {
                Ok(Self {
                    url: url.trim_end_matches('/').to_owned(),
                    host,
                    port,
                    ca_file: PathBuf::from(ca),
                    token_secret: secret.to_owned(),
                })
            }
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(r: Result<RemoteWorker, Vec<ManifestProblem>>) -> Vec<String> {
        match r {
            Ok(w) => panic!("accepted: {w:?}"),
            Err(p) => p.into_iter().map(|p| p.field).collect(),
        }
    }

    #[test]
    fn a_complete_block_is_read() {
        let w = RemoteWorker::from_value(&json!({
            "url": "https://gpu-box:7000/", "ca_file": "/etc/cjm/ca.pem", "token_secret": "GPU_TOKEN"
        }))
        .map_err(|p| format!("{p:?}"));
        assert_eq!(
            w,
            Ok(RemoteWorker {
                url: "https://gpu-box:7000".to_owned(),
                host: "gpu-box".to_owned(),
                port: 7000,
                ca_file: PathBuf::from("/etc/cjm/ca.pem"),
                token_secret: "GPU_TOKEN".to_owned(),
            })
        );
        let v6 = RemoteWorker::from_value(
            &json!({"url": "https://[::1]:7443", "ca_file": "c", "token_secret": "s"}),
        );
        assert_eq!(v6.map(|w| (w.host, w.port)), Ok(("::1".to_owned(), 7443)));
    }

    #[test]
    fn an_inline_token_is_refused_naming_the_field() {
        let r = RemoteWorker::from_value(&json!({
            "url": "https://h:1", "ca_file": "c", "token_secret": "s", "token": "hunter2"
        }));
        let Err(p) = r else {
            panic!("an inline token was accepted")
        };
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "remote.token");
        assert!(
            p[0].reason.contains("remote.token_secret"),
            "{}",
            p[0].reason
        );
        assert!(!p[0].reason.contains("hunter2"));
    }

    #[test]
    fn missing_and_malformed_fields_are_named() {
        assert_eq!(
            fields(RemoteWorker::from_value(&json!({}))),
            ["remote.url", "remote.ca_file", "remote.token_secret"]
        );
        for bad in [
            "http://h:1",
            "https://h",
            "https://h:0",
            "https://h:99999",
            "https://h:1/path",
            "https://u@h:1",
            "https://:1",
        ] {
            assert_eq!(
                fields(RemoteWorker::from_value(
                    &json!({"url": bad, "ca_file": "c", "token_secret": "s"})
                )),
                ["remote.url"],
                "{bad}"
            );
        }
        assert_eq!(
            fields(RemoteWorker::from_value(
                &json!({"url": "https://h:1", "ca_file": "", "token_secret": 3})
            )),
            ["remote.ca_file", "remote.token_secret"]
        );
        assert_eq!(
            fields(RemoteWorker::from_value(&json!("https://h:1"))),
            ["remote"]
        );
    }

    #[test]
    fn a_manifest_carries_its_remote_block() {
        let m: crate::Manifest = serde_json::from_value(json!({
            "name": "far",
            "remote": {"url": "https://h:7000", "ca_file": "ca.pem", "token_secret": "T"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.remote().map(|r| r.map(|w| w.port)), Some(Ok(7000)));
        let plain: crate::Manifest =
            serde_json::from_value(json!({"name": "near"})).unwrap_or_else(|e| panic!("{e}"));
        assert!(plain.remote().is_none());
    }
}
