//! `cjm jobs …`: the jobs of a running `cjm serve`, through its API (`/api/v1/jobs`).

use std::process::ExitCode;

use cjm_core::{ErrorCategory, PluginError};
use hyper::Method;
use serde_json::{json, Value};

use super::{parse_json, Context, Failure};
use crate::cli::JobsCommand;
use crate::output::say;
use crate::remote::{encode, Service};

/// The running service `what` needs, or a `transient` error saying how to start one.
pub(super) fn service_for(ctx: &Context, what: &str) -> Result<Service, Failure> {
    Service::find(ctx.host.as_deref(), &ctx.data_dir)
        .map_err(Failure::Usage)?
        .ok_or_else(|| {
            Failure::Plugin(PluginError::transient(format!(
                "`{what}` needs a running `cjm serve` (none found for {}): start one, or give \
                 --host / $CJM_HOST",
                ctx.data_dir.display()
            )))
        })
}

pub(super) async fn run(ctx: &Context, cmd: JobsCommand) -> Result<ExitCode, Failure> {
    let service = service_for(ctx, "cjm jobs")?;
    match cmd {
        JobsCommand::Submit {
            name,
            args,
            kwargs,
            priority,
            retries,
            deadline,
            key,
            json,
        } => {
            let mut body = json!({"target": name, "priority": priority, "retries": retries});
            if let Some(a) = args {
                let a = parse_json("--args", &a)?;
                if !a.is_array() {
                    return Err(Failure::Usage("--args: must be a JSON array".into()));
                }
                body["args"] = a;
            }
            if let Some(k) = kwargs {
                let k = parse_json("--kwargs", &k)?;
                if !k.is_object() {
                    return Err(Failure::Usage("--kwargs: must be a JSON object".into()));
                }
                body["kwargs"] = k;
            }
            if let Some(d) = deadline {
                if !(d.is_finite() && d >= 0.0) {
                    return Err(Failure::Usage(format!(
                        "--deadline: must be a number of seconds ≥ 0, got {d}"
                    )));
                }
                body["deadline_s"] = json!(d);
            }
            if let Some(k) = key {
                body["idempotency_key"] = json!(k);
            }
            let v = service
                .json(Method::POST, "/api/v1/jobs", Some(&body))
                .await?;
            if json {
                print_json(&v["job"]);
            } else {
                say!("{}", v["id"].as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::List {
            state,
            plugin,
            limit,
            json,
        } => {
            let mut path = format!("/api/v1/jobs?limit={limit}");
            if let Some(s) = state {
                path.push_str(&format!("&state={}", encode(&s)));
            }
            if let Some(p) = plugin {
                path.push_str(&format!("&target={}", encode(&p)));
            }
            let v = service.json(Method::GET, &path, None).await?;
            let list = v["jobs"].as_array().cloned().unwrap_or_default();
            if json {
                print_json(&Value::Array(list));
            } else {
                say!(
                    "{:<20}  {:<11}  {:<20}  {:>8}  MESSAGE",
                    "ID",
                    "STATE",
                    "PLUGIN",
                    "ATTEMPTS"
                );
                for j in &list {
                    say!(
                        "{:<20}  {:<11}  {:<20}  {:>8}  {}",
                        j["id"].as_str().unwrap_or_default(),
                        j["state"].as_str().unwrap_or_default(),
                        j["target"].as_str().unwrap_or_default(),
                        j["attempts"],
                        summary(j)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { id, json } => {
            let v = service
                .json(Method::GET, &format!("/api/v1/jobs/{}", encode(&id)), None)
                .await?;
            if json {
                print_json(&v);
            } else {
                show(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Cancel { id, json } => {
            let v = service
                .json(
                    Method::POST,
                    &format!("/api/v1/jobs/{}/cancel", encode(&id)),
                    None,
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                say!("{}: {}", id, v["state"].as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Wait { id, json } => {
            let job = loop {
                let v = service
                    .json(
                        Method::GET,
                        &format!("/api/v1/jobs/{}/wait?timeout_s=600", encode(&id)),
                        None,
                    )
                    .await?;
                if is_terminal(&v) {
                    break v;
                }
            };
            if json {
                print_json(&job);
            } else if job["state"] == "succeeded" {
                print_json(&job["result"]);
            }
            outcome(&job)
        }
        JobsCommand::Compose { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&file)
            }
            .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
            let comp = parse_json(&file.display().to_string(), &text)?;
            let v = service
                .json(Method::POST, "/api/v1/compositions", Some(&comp))
                .await?;
            print_json(&v["nodes"]);
            // Exits as the first node that did not succeed would (`cjm jobs wait`).
            let first_bad = v["nodes"]
                .as_object()
                .and_then(|n| n.values().find(|o| o["state"] != "succeeded"));
            match first_bad {
                None => Ok(ExitCode::SUCCESS),
                Some(node) => outcome(node),
            }
        }
        JobsCommand::Logs { id, lines } => {
            let path = format!("/api/v1/jobs/{}/logs?lines={lines}", encode(&id));
            let v = service.json(Method::GET, &path, None).await?;
            for l in v["lines"].as_array().into_iter().flatten() {
                say!("{}", l.as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Watch { id } => {
            let path = match &id {
                Some(id) => format!("/api/v1/jobs/events?job={}", encode(id)),
                None => "/api/v1/jobs/events".to_owned(),
            };
            service
                .lines(&path, |v| {
                    say!("{v}");
                    true
                })
                .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn is_terminal(job: &Value) -> bool {
    matches!(
        job["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled" | "interrupted")
    )
}

/// The exit status a finished job gives `cjm jobs wait`: as `cjm call` for the same outcome.
fn outcome(job: &Value) -> Result<ExitCode, Failure> {
    match job["state"].as_str() {
        Some("succeeded") => Ok(ExitCode::SUCCESS),
        Some("failed") => {
            let e: PluginError = serde_json::from_value(job["error"].clone())
                .unwrap_or_else(|_| PluginError::fatal("the job failed"));
            Err(Failure::Plugin(e))
        }
        Some(state) => Err(Failure::Plugin(PluginError::new(
            ErrorCategory::Cancelled,
            format!("the job was {state}"),
        ))),
        None => Err(Failure::Plugin(PluginError::fatal(
            "the service answered without a job state",
        ))),
    }
}

fn summary(j: &Value) -> String {
    if let Some(m) = j["error"]["message"].as_str() {
        return m.to_owned();
    }
    let mut out = String::new();
    if let Some(p) = j["progress"].as_f64() {
        out.push_str(&format!("{:.0}% ", p * 100.0));
    }
    out.push_str(j["message"].as_str().unwrap_or_default());
    out
}

fn show(j: &Value) {
    say!(
        "{}  {}",
        j["id"].as_str().unwrap_or_default(),
        j["state"].as_str().unwrap_or_default()
    );
    say!("  plugin:    {}", j["target"].as_str().unwrap_or_default());
    say!("  attempts:  {}", j["attempts"]);
    let s = summary(j);
    if !s.is_empty() {
        say!("  status:    {s}");
    }
    if let Some(r) = j.get("result") {
        say!("  result:{}", super::indented(r, 4));
    }
}

pub(super) fn print_json(v: &Value) {
    say!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}
