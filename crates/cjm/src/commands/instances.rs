//! `cjm instance …`: instances in a running `cjm serve`, through its API.

use std::process::ExitCode;

use hyper::Method;
use serde_json::{json, Value};

use super::jobs::{print_json, service_for};
use super::{parse_json, Context, Failure};
use crate::cli::InstanceCommand;
use crate::output::say;
use crate::remote::encode;

pub(super) async fn run(ctx: &Context, cmd: InstanceCommand) -> Result<ExitCode, Failure> {
    let service = service_for(ctx, "cjm instance")?;
    match cmd {
        InstanceCommand::Add {
            name,
            id,
            config,
            json,
        } => {
            let mut body = json!({});
            if let Some(id) = id {
                body["instance"] = json!(id);
            }
            if let Some(c) = config {
                let c = parse_json("--config", &c)?;
                if !c.is_object() {
                    return Err(Failure::Usage("--config: must be a JSON object".into()));
                }
                body["config"] = c;
            }
            let path = format!("/api/v1/plugins/{}/instances", encode(&name));
            let v = service.json(Method::POST, &path, Some(&body)).await?;
            if json {
                print_json(&v);
            } else {
                say!("{}", v["name"].as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        InstanceCommand::List { name, json } => {
            let v = service.json(Method::GET, "/api/v1/plugins", None).await?;
            let mut rows: Vec<Value> = Vec::new();
            for p in v["plugins"].as_array().into_iter().flatten() {
                let plugin = p["name"].as_str().unwrap_or_default();
                if name.as_deref().is_some_and(|n| n != plugin) {
                    continue;
                }
                for id in p["instances"].as_array().into_iter().flatten() {
                    let id = id.as_str().unwrap_or_default();
                    let path = format!("/api/v1/plugins/{}", encode(id));
                    rows.push(service.json(Method::GET, &path, None).await?);
                }
            }
            if json {
                print_json(&Value::Array(rows));
            } else {
                say!("{:<24}  {:<20}  {:<10}  PID", "INSTANCE", "PLUGIN", "STATE");
                for r in &rows {
                    say!(
                        "{:<24}  {:<20}  {:<10}  {}",
                        r["name"].as_str().unwrap_or_default(),
                        r["instance_of"].as_str().unwrap_or_default(),
                        r["state"].as_str().unwrap_or_default(),
                        r["pid"]
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        InstanceCommand::Remove { id } => {
            let path = format!("/api/v1/plugins/{}/unload", encode(&id));
            service.json(Method::POST, &path, None).await?;
            say!("{id}: stopped");
            Ok(ExitCode::SUCCESS)
        }
    }
}
