//! The client side of `cjm serve`: where the service is (`--host`, `$CJM_HOST`, or the local
//! socket of a service on this data directory) and the few requests `cjm call` and
//! `cjm stream` send it (API.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use cjm_core::wire::{error_from_response, StreamDecoder, WorkerFlavor};
use cjm_core::PluginError;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpStream, UnixStream};

/// How long connecting to the service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The port of `http://HOST` without one (the default of `cjm serve --addr`).
const DEFAULT_PORT: u16 = 8766;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `HOST:PORT`.
    Tcp(String),
    Unix(PathBuf),
}

/// A `cjm serve` to send commands to.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    target: Target,
    token: Option<String>,
}

impl Service {
    /// Reads `http://HOST[:PORT][/]` or `unix:PATH`; the error names the value.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("--host {url:?}: {why}");
        let target = if let Some(path) = url.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("a socket path is needed after `unix:`"));
            }
            Target::Unix(PathBuf::from(path))
        } else if let Some(rest) = url.strip_prefix("http://") {
            let authority = rest.trim_end_matches('/');
            if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
                return Err(bad("expected http://HOST:PORT"));
            }
            let has_port = match authority.rsplit_once(':') {
                // `[::1]` alone has colons but no port.
                Some((host, port)) if !port.contains(']') => {
                    if port.parse::<u16>().is_err() || host.is_empty() {
                        return Err(bad("the port is not a number from 0 to 65535"));
                    }
                    true
                }
                _ => false,
            };
            Target::Tcp(if has_port {
                authority.to_owned()
            } else {
                format!("{authority}:{DEFAULT_PORT}")
            })
        } else if url.starts_with("https://") {
            return Err(bad(
                "the service speaks plain HTTP; put TLS in front of it, or use an ssh tunnel",
            ));
        } else {
            return Err(bad("expected http://HOST:PORT or unix:PATH"));
        };
        Ok(Self {
            target,
            token: None,
        })
    }

    /// The service to use, if any: `--host`, else `$CJM_HOST`, else a service answering on the
    /// local socket of `data_dir`. The token comes from the file named by `$CJM_TOKEN_FILE`.
    pub(crate) fn find(host: Option<&str>, data_dir: &Path) -> Result<Option<Self>, String> {
        let from_env = std::env::var("CJM_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty());
        let mut service = match host.map(str::to_owned).or(from_env) {
            Some(url) => Self::parse(url.trim())?,
            None => {
                let socket = cjm_serve::local_socket_path(data_dir);
                // A socket file left by a service that died is not a service.
                if std::os::unix::net::UnixStream::connect(&socket).is_err() {
                    return Ok(None);
                }
                Self {
                    target: Target::Unix(socket),
                    token: None,
                }
            }
        };
        if let Some(file) = std::env::var_os("CJM_TOKEN_FILE") {
            let token = std::fs::read_to_string(&file).map_err(|e| {
                format!(
                    "$CJM_TOKEN_FILE: cannot read {}: {e}",
                    Path::new(&file).display()
                )
            })?;
            service.token = Some(token.trim().to_owned());
        }
        Ok(Some(service))
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Tcp(a) => format!("http://{a}"),
            Target::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> PluginError {
        PluginError::transient(format!(
            "cannot reach the cjm service at {}: {e}",
            self.describe()
        ))
    }

    /// Sends one request on a new connection and returns the answer, a non-2xx answer as its
    /// typed error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>, PluginError> {
        let (mut sender, host) = match &self.target {
            Target::Tcp(addr) => {
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| self.unreachable("no connection within 5 s"))?
                    .map_err(|e| self.unreachable(e))?;
                let _ = stream.set_nodelay(true);
                (self.handshake(stream).await?, addr.clone())
            }
            Target::Unix(path) => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                (self.handshake(stream).await?, "localhost".to_owned())
            }
        };
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| PluginError::fatal(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = self.read(resp).await?;
        Err(error_from_response(status, &body))
    }

    /// The whole body of an answer.
    async fn read(&self, resp: Response<Incoming>) -> Result<Bytes, PluginError> {
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_bytes())
    }

    async fn handshake<S>(&self, stream: S) -> Result<http1::SendRequest<Full<Bytes>>, PluginError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection to the service ended");
            }
        });
        Ok(sender)
    }

    /// One request whose answer is JSON (an empty answer is `null`).
    pub(crate) async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, PluginError> {
        let resp = self.send(method, path, body).await?;
        let bytes = self.read(resp).await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| PluginError::fatal(format!("the service answered invalid JSON: {e}")))
    }

    /// A `GET` whose answer is NDJSON: `on_line` gets each line's value until the answer ends
    /// (or it returns false). A line longer than 16 MiB is an error.
    pub(crate) async fn lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(Value) -> bool,
    ) -> Result<(), PluginError> {
        const MAX_LINE: usize = 16 << 20;
        let mut resp = self.send(Method::GET, path, None).await?;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let v: Value = serde_json::from_slice(&line).map_err(|e| {
                    PluginError::fatal(format!("the service sent an invalid event line: {e}"))
                })?;
                if !on_line(v) {
                    return Ok(());
                }
            }
            if buf.len() > MAX_LINE {
                return Err(PluginError::fatal(
                    "the service sent an event line over 16 MiB",
                ));
            }
            match resp.body_mut().frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        buf.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => return Err(self.unreachable(e)),
                None => return Ok(()),
            }
        }
    }

    /// Reloads `name` with `config` (for `--config`).
    pub(crate) async fn reload(&self, name: &str, config: &Value) -> Result<(), PluginError> {
        let path = format!("/api/v1/plugins/{}/reload", encode(name));
        self.send(
            Method::POST,
            &path,
            Some(&serde_json::json!({"config": config})),
        )
        .await
        .map(drop)
    }

    /// Asks the service to respawn `name`'s worker if its environment (secrets, env vars)
    /// changed; whether it did.
    pub(crate) async fn refresh(&self, name: &str) -> Result<bool, PluginError> {
        let path = format!("/api/v1/plugins/{}/refresh", encode(name));
        let resp = self.send(Method::POST, &path, None).await?;
        let bytes = self.read(resp).await?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(v["respawned"] == true)
    }

    /// One call: the result's value and how many binary payloads it had.
    pub(crate) async fn call(&self, name: &str, body: &Value) -> Result<(Value, u64), PluginError> {
        let path = format!("/api/v1/plugins/{}/call", encode(name));
        let resp = self.send(Method::POST, &path, Some(body)).await?;
        let bytes = self.read(resp).await?;
        let mut v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            PluginError::fatal(format!(
                "the service answered a call with invalid JSON: {e}"
            ))
        })?;
        let blobs = v.get("blobs").and_then(Value::as_u64).unwrap_or(0);
        Ok((
            v.get_mut("value").map(Value::take).unwrap_or(Value::Null),
            blobs,
        ))
    }

    /// One stream: `on_chunk` gets each chunk in order; the stream's terminal error, or one
    /// for a stream cut short, is the result.
    pub(crate) async fn stream(
        &self,
        name: &str,
        body: &Value,
        mut on_chunk: impl FnMut(Value),
    ) -> Result<(), PluginError> {
        let path = format!("/api/v1/plugins/{}/stream", encode(name));
        let mut resp = self.send(Method::POST, &path, Some(body)).await?;
        let mut decoder = StreamDecoder::new(WorkerFlavor::Cjm);
        loop {
            while let Some(item) = decoder.next_item() {
                on_chunk(item?);
            }
            match resp.body_mut().frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        decoder.push(data);
                    }
                }
                Some(Err(e)) => return Err(self.unreachable(e)),
                None => break,
            }
        }
        decoder.close();
        while let Some(item) = decoder.next_item() {
            on_chunk(item?);
        }
        Ok(())
    }
}

/// `name` as one URL path segment (or query value).
pub(crate) fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_are_named() {
        let t = |u: &str| Service::parse(u).map(|s| s.target);
        assert_eq!(
            t("http://127.0.0.1:9000/"),
            Ok(Target::Tcp("127.0.0.1:9000".into()))
        );
        assert_eq!(t("http://box"), Ok(Target::Tcp("box:8766".into())));
        assert_eq!(t("http://[::1]"), Ok(Target::Tcp("[::1]:8766".into())));
        assert_eq!(t("http://[::1]:7"), Ok(Target::Tcp("[::1]:7".into())));
        assert_eq!(t("unix:/tmp/s"), Ok(Target::Unix("/tmp/s".into())));
        for bad in [
            "box:1",
            "https://box",
            "http://",
            "http://a:99999",
            "unix:",
            "http://a/b",
        ] {
            let e = t(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(encode("a-b_c.d"), "a-b_c.d");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
