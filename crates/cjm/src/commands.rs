//! What each command does.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cjm_core::{unique_id, Manifest, PluginError};
use cjm_host::{Call, CallContext, CancellationToken, PluginManager};
use cjm_registry::{PluginRegistry, StaticSource};
use futures::StreamExt;
use serde_json::{json, Map, Value};

use crate::cli::{CallArgs, Cli, Command, SchedulerKind};
use crate::output::{self, note, report, say, tell};

mod describe;
mod instances;
mod jobs;

/// Exit code for a bad command line.
const USAGE: u8 = 2;

enum Failure {
    /// A bad command line: message, exit 2.
    Usage(String),
    /// A failed plugin operation: exit code by category.
    Plugin(PluginError),
}

impl From<PluginError> for Failure {
    fn from(e: PluginError) -> Self {
        Self::Plugin(e)
    }
}

/// Runs the command and returns the process exit code.
pub(crate) async fn run(cli: Cli) -> ExitCode {
    let own_timeout =
        matches!(&cli.command, Command::Call(a) | Command::Stream(a) if a.timeout.is_some());
    match dispatch(cli).await {
        Ok(code) => code,
        Err(Failure::Usage(msg)) => {
            tell!("cjm: {msg}");
            ExitCode::from(USAGE)
        }
        Err(Failure::Plugin(e)) => {
            report(&e, own_timeout);
            ExitCode::from(e.category.exit_code() as u8)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "cjm", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::New { name, dir } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            crate::scaffold::new_worker(name, &dir).map_err(Failure::Usage)?;
            tell!(
                "cjm: created the worker `{name}` in {}\n  cd {} && cargo build && cjm call {name} --kwargs '{{\"name\": \"Ada\"}}'",
                dir.display(),
                dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let ctx = Context::new(&cli)?;
    match cli.command {
        Command::List { json } => ctx.list(json),
        Command::Validate { paths } => Ok(ctx.validate(&paths)),
        Command::Call(a) => ctx.call(a, false).await,
        Command::Stream(a) => ctx.call(a, true).await,
        Command::Task {
            name,
            task,
            method,
            kwargs,
            config,
        } => {
            ctx.task(&name, &task, &method, kwargs.as_deref(), config.as_deref())
                .await
        }
        Command::Info {
            name,
            json,
            live: true,
        } => ctx.info(&name, json).await,
        Command::Info { name, json, .. } => ctx.info_without_starting(&name, json).await,
        Command::Manifest { binary, out } => describe::write_manifest(&binary, out.as_deref()),
        Command::Config {
            name, reset: true, ..
        } => ctx.config_reset(&name).await,
        Command::Config {
            name, set, unset, ..
        } => ctx.config(&name, set, unset).await,
        Command::Logs { name, lines } => ctx.logs(&name, lines),
        Command::Secret(cmd) => {
            let changed = cmd.plugin_changed().map(str::to_owned);
            let code = crate::secret::run(&ctx.data_dir, cmd)?;
            if let Some(name) = changed {
                refresh_in_service(&ctx, &name).await;
            }
            Ok(code)
        }
        Command::Jobs(cmd) => jobs::run(&ctx, cmd).await,
        Command::Instance(cmd) => instances::run(&ctx, cmd).await,
        Command::Completions { .. } | Command::New { .. } => Ok(ExitCode::SUCCESS),
        Command::Ui {
            addr,
            allow_hosts,
            token_file,
        } => {
            let access = crate::ui::access(addr, allow_hosts, token_file.as_deref())
                .map_err(Failure::Usage)?;
            Ok(crate::ui::run(&ctx.manager, &ctx.data_dir, addr, access).await?)
        }
        Command::Serve {
            addr,
            allow_hosts,
            token_file,
        } => {
            let access = crate::ui::access(addr, allow_hosts, token_file.as_deref())
                .map_err(Failure::Usage)?;
            Ok(crate::serve::run(&ctx.manager, &ctx.data_dir, addr, access).await?)
        }
    }
}

/// The longest `--timeout` accepted: 100 years, far below what `Instant` arithmetic overflows at.
const MAX_TIMEOUT_SECS: f64 = 100.0 * 365.25 * 86_400.0;

/// The `--timeout` seconds as a duration: positive, finite and representable, else a usage
/// error naming the flag (1e300 used to panic).
fn timeout_duration(secs: f64) -> Result<Duration, Failure> {
    let bad = |why: &str| Failure::Usage(format!("--timeout: {why}, got {secs}"));
    if !(secs.is_finite() && secs > 0.0) {
        return Err(bad("must be a positive number of seconds"));
    }
    if secs > MAX_TIMEOUT_SECS {
        return Err(bad(&format!(
            "at most {MAX_TIMEOUT_SECS} seconds (100 years) is accepted"
        )));
    }
    let d = Duration::try_from_secs_f64(secs).map_err(|_| bad("not a representable duration"))?;
    if d.is_zero() {
        return Err(bad("must be at least one nanosecond"));
    }
    Ok(d)
}

/// A saved configuration that cannot be used, as a config error that names the file, each
/// invalid field and the way out.
fn saved_config_error(name: &str, e: cjm_registry::RegistryError) -> PluginError {
    let fields = e.field_errors().to_vec();
    let file = match &e {
        cjm_registry::RegistryError::SavedInvalid { file, .. }
        | cjm_registry::RegistryError::Corrupt { file, .. } => Some(file.clone()),
        _ => None,
    };
    let Some(file) = file else {
        return PluginError::config(e.to_string(), fields);
    };
    let mut keys: Vec<&str> = fields
        .iter()
        .filter_map(|f| f.field.split('/').next())
        .filter(|k| !k.is_empty())
        .collect();
    keys.dedup();
    let unset: String = keys.iter().map(|k| format!(" --unset {k}")).collect();
    let way_out = if unset.is_empty() {
        format!(
            "run `cjm config {name} --reset` to go back to the defaults, or edit {}",
            file.display()
        )
    } else {
        format!(
            "run `cjm config {name}{unset}` to drop the invalid keys (or `cjm config {name} \
             --reset` for the defaults), or edit {}",
            file.display()
        )
    };
    PluginError::config(
        format!("{}; to fix it, {way_out}", registry_message(&e)),
        fields,
    )
}

/// A registry error's message without the field list that [`output::report`] prints below it
/// (the nested config error's text repeated each field on the same line).
fn registry_message(e: &cjm_registry::RegistryError) -> String {
    use cjm_registry::RegistryError as R;
    match e {
        R::Invalid { id, source } if !source.details.fields.is_empty() => {
            format!("configuration for `{id}` rejected")
        }
        R::SavedInvalid { id, file, source } if !source.details.fields.is_empty() => format!(
            "the saved configuration of `{id}` in {} is invalid",
            file.display()
        ),
        other => other.to_string(),
    }
}

/// The known name closest to a misspelt `name` (Jaro-Winkler similarity ≥ 0.8, or one edit
/// away), if any.
fn did_you_mean<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, k)| *score >= 0.8 || strsim::levenshtein(name, k) <= 1)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.as_str())
}

struct Context {
    manager: PluginManager,
    data_dir: PathBuf,
    /// `--host`.
    host: Option<String>,
}

/// `value` as pretty JSON on the lines after a label, each indented by `by` spaces.
/// The first lines of `cjm info`, with or without `--live`: name, version, mode, description,
/// category.
pub(crate) fn say_info_head(m: &cjm_core::Manifest) {
    say!(
        "{} {} ({})",
        m.name,
        m.version,
        m.effective_execution_mode().label()
    );
    if !m.description.is_empty() {
        say!("  {}", m.description);
    }
    say!("  category:   {}", m.category);
}

pub(crate) fn indented(value: &Value, by: usize) -> String {
    let pretty = serde_json::to_string_pretty(value).unwrap_or_default();
    let pad = " ".repeat(by);
    pretty.lines().map(|l| format!("\n{pad}{l}")).collect()
}

fn parse_json(flag: &str, text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| Failure::Usage(format!("{flag}: not valid JSON: {e}")))
}

/// The Ray cluster of `--ray-address` (or `$CJM_RAY_ADDRESS`), with where to listen for its
/// workers' registration and the address to advertise.
fn ray_cluster(cli: &Cli) -> Result<Option<cjm_host::RayCluster>, Failure> {
    let from_env = |var: &str| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    let Some(address) = cli
        .ray_address
        .clone()
        .or_else(|| from_env("CJM_RAY_ADDRESS"))
    else {
        return Ok(None);
    };
    let mut cluster = cjm_host::RayCluster::new(address);
    let register = match (cli.ray_register, from_env("CJM_RAY_REGISTER")) {
        (Some(a), _) => Some(a),
        (None, Some(text)) => Some(text.trim().parse().map_err(|e| {
            Failure::Usage(format!("CJM_RAY_REGISTER={text:?}: not HOST:PORT ({e})"))
        })?),
        (None, None) => None,
    };
    if let Some(a) = register {
        cluster = cluster.register_on(a);
    }
    if let Some(h) = cli
        .ray_advertise
        .clone()
        .or_else(|| from_env("CJM_RAY_ADVERTISE"))
    {
        cluster = cluster.advertise(h);
    }
    Ok(Some(cluster))
}

impl Context {
    fn new(cli: &Cli) -> Result<Self, Failure> {
        let data_dir = cli
            .data_dir
            .clone()
            .unwrap_or_else(cjm_host::default_data_dir);
        let mut b = PluginManager::builder()
            .data_dir(&data_dir)
            .strict_drift(cli.strict_drift);
        if !cli.search_paths.is_empty() {
            b = b.search_paths(cli.search_paths.clone());
        }
        if let Some(cluster) = ray_cluster(cli)? {
            b = b.ray(cluster);
        }
        b = match cli.scheduler {
            SchedulerKind::Permissive => b,
            SchedulerKind::Safety => b.scheduler(Arc::new(cjm_host::SafetyScheduler::new())),
            SchedulerKind::Queue => b.scheduler(Arc::new(cjm_host::QueueScheduler::default())),
        };
        Ok(Self {
            manager: b.build()?,
            data_dir,
            host: cli.host.clone(),
        })
    }

    fn manifest(&self, name: &str) -> Result<Arc<Manifest>, Failure> {
        self.manager.require_discovered(name).map_err(|mut e| {
            let names: Vec<String> = self
                .manager
                .discovered()
                .iter()
                .map(|m| m.name.clone())
                .collect();
            if let Some(near) = did_you_mean(name, &names) {
                e.message = format!("{}; did you mean `{near}`?", e.message);
            }
            Failure::Plugin(e)
        })
    }

    async fn registry(&self) -> Result<PluginRegistry, Failure> {
        let reg = PluginRegistry::new(self.data_dir.join("configs"))
            .map_err(|e| PluginError::fatal(e.to_string()))?;
        // Each with the worker's described schema where the manifest has none: every
        // configuration is validated before it is saved.
        let manifests: Vec<Manifest> = self
            .manager
            .discovered()
            .iter()
            .map(|m| self.manager.with_described_schema(m))
            .collect();
        let mut categories: Vec<String> = manifests.iter().map(|m| m.category.clone()).collect();
        categories.sort();
        categories.dedup();
        for c in categories {
            let of_c: Vec<Manifest> = manifests
                .iter()
                .filter(|m| m.category == c)
                .cloned()
                .collect();
            // One odd category must not break calls to the plugins of the others.
            let files: Vec<String> = of_c
                .iter()
                .filter_map(|m| m.path.as_ref().map(|p| p.display().to_string()))
                .collect();
            if let Err(e) = reg
                .register_plugin_manager(&c, Arc::new(StaticSource::new(of_c)), None, true)
                .await
            {
                tell!("cjm: skipping category {c:?} ({}): {e}", files.join(", "));
            }
        }
        Ok(reg)
    }

    fn list(&self, as_json: bool) -> Result<ExitCode, Failure> {
        let plugins: Vec<Value> = self
            .manager
            .discovered()
            .iter()
            .map(|m| {
                let shadowed = self
                    .manager
                    .discovered_plugin(&m.name)
                    .map(|p| p.shadowed)
                    .unwrap_or_default();
                json!({
                    "name": m.name, "version": m.version, "category": m.category,
                    // `null`: not known yet (no command started it since it was
                    // installed) or nothing to compare (no `drift_tracking`).
                    "drift": crate::drift_cache::known(&self.data_dir, m),
                    "drift_tracked": m.drift_tracking().is_some(),
                    "execution_mode": m.effective_execution_mode(),
                    "generation": m.generation(),
                    "format_version": m.format_version().unwrap_or("1.0"),
                    "manifest": m.path, "shadowed": shadowed,
                    "description": m.description,
                })
            })
            .collect();
        let invalid: Vec<Value> = self
            .manager
            .invalid_manifests()
            .iter()
            .map(|e| json!({"file": e.file, "problems": e.problems}))
            .collect();
        let discovered = self.manager.discovered();
        let adapters: Vec<Value> = self
            .manager
            .discovered_adapters()
            .iter()
            .map(|a| {
                let binds: Vec<&str> = discovered
                    .iter()
                    .filter(|m| a.matches(m).compatible)
                    .map(|m| m.name.as_str())
                    .collect();
                json!({
                    "name": a.name, "task": a.task_name, "spec": a.spec(),
                    "protocol": a.required_tool_protocol, "manifest": a.path,
                    "plugins": binds,
                })
            })
            .collect();
        if as_json {
            say!(
                "{}",
                output::json(
                    &json!({"plugins": plugins, "adapters": adapters, "invalid": invalid})
                )
            );
            return Ok(ExitCode::SUCCESS);
        }
        if plugins.is_empty() {
            say!("no plugins found in {}", self.search_paths_text());
        }
        if !plugins.is_empty() {
            say!(
                "{:<24} {:<10} {:<16} {:<12} {:<14} MANIFEST",
                "NAME",
                "VERSION",
                "CATEGORY",
                "MODE",
                "DRIFT"
            );
        }
        for p in &plugins {
            let drift = serde_json::from_value(p["drift"].clone()).ok();
            say!(
                "{:<24} {:<10} {:<16} {:<12} {:<14} {}",
                p["name"].as_str().unwrap_or_default(),
                p["version"].as_str().unwrap_or_default(),
                p["category"].as_str().unwrap_or_default(),
                p["execution_mode"].as_str().unwrap_or_default(),
                crate::drift_cache::column(p["drift_tracked"] == true, drift),
                p["manifest"].as_str().unwrap_or_default()
            );
            for s in p["shadowed"].as_array().into_iter().flatten() {
                say!("{:<24} shadows {}", "", s.as_str().unwrap_or_default());
            }
        }
        if !adapters.is_empty() {
            say!("\nadapters:");
            for a in &adapters {
                let binds: Vec<&str> = a["plugins"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                say!(
                    "{:<24} task {:<16} binds to {}",
                    a["name"].as_str().unwrap_or_default(),
                    a["task"].as_str().unwrap_or_default(),
                    if binds.is_empty() {
                        "-".to_owned()
                    } else {
                        binds.join(", ")
                    }
                );
            }
        }
        let errors = self.manager.invalid_manifests();
        if !errors.is_empty() {
            say!("\ninvalid manifests:");
            for e in errors {
                say!("{e}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn search_paths_text(&self) -> String {
        self.manager
            .search_paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn validate(&self, paths: &[PathBuf]) -> ExitCode {
        let roots: Vec<PathBuf> = if paths.is_empty() {
            self.manager.search_paths().to_vec()
        } else {
            paths.to_vec()
        };
        let mut files = Vec::new();
        let mut bad = 0usize;
        for root in &roots {
            if root.is_dir() {
                match std::fs::read_dir(root) {
                    Ok(entries) => {
                        let mut f: Vec<PathBuf> = entries
                            .filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|p| p.extension().is_some_and(|x| x == "json"))
                            .collect();
                        f.sort();
                        files.extend(f);
                    }
                    Err(e) => {
                        say!("{}: cannot read the directory: {e}", root.display());
                        bad += 1;
                    }
                }
            } else if root.exists() || !paths.is_empty() {
                files.push(root.clone());
            }
        }
        for f in &files {
            match cjm_core::ManifestFile::load(f) {
                Ok(cjm_core::ManifestFile::Adapter(_)) => {}
                Ok(cjm_core::ManifestFile::Plugin(m)) => {
                    if let Some(Err(e)) =
                        m.config_schema.as_ref().map(cjm_core::ConfigValidator::new)
                    {
                        say!("{}: config_schema: {}", f.display(), e.message);
                        bad += 1;
                    }
                }
                Err(e) => {
                    say!("{e}");
                    bad += 1;
                }
            }
        }
        if bad == 0 {
            note(&format!("{} manifest(s) valid", files.len()));
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }

    /// The configuration to load with: `--config`, else the saved one, else none.
    async fn load_config(
        &self,
        m: &Manifest,
        given: Option<&str>,
    ) -> Result<Option<Value>, Failure> {
        if let Some(text) = given {
            let v = parse_json("--config", text)?;
            if !v.is_object() {
                return Err(Failure::Usage("--config: expected a JSON object".into()));
            }
            return Ok(Some(v));
        }
        let reg = self.registry().await?;
        let id = unique_id(&m.category, &m.name);
        reg.load_valid_plugin_config(&id)
            .map(|c| c.map(Value::Object))
            .map_err(|e| Failure::Plugin(saved_config_error(&m.name, e)))
    }

    async fn load(&self, name: &str, config: Option<Value>) -> Result<(), Failure> {
        let t = Instant::now();
        note(&format!("starting {name}…"));
        self.manager.load(name, config).await?;
        // Remembered for `cjm list`, which starts nothing.
        if let (Ok(Some(d)), Some(m)) =
            (self.manager.drift(name), self.manager.loaded_manifest(name))
        {
            crate::drift_cache::record(&self.data_dir, &m, d);
        }
        note(&format!(
            "{name} ready in {:.0} ms",
            t.elapsed().as_secs_f64() * 1e3
        ));
        Ok(())
    }

    async fn call(&self, a: CallArgs, stream: bool) -> Result<ExitCode, Failure> {
        let args = match a
            .args
            .as_deref()
            .map(|t| parse_json("--args", t))
            .transpose()?
        {
            None => Vec::new(),
            Some(Value::Array(v)) => v,
            Some(_) => return Err(Failure::Usage("--args: expected a JSON array".into())),
        };
        let kwargs = match a
            .kwargs
            .as_deref()
            .map(|t| parse_json("--kwargs", t))
            .transpose()?
        {
            None => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(Failure::Usage("--kwargs: expected a JSON object".into())),
        };
        let timeout = a.timeout.map(timeout_duration).transpose()?;
        let service = crate::remote::Service::find(self.host.as_deref(), &self.data_dir)
            .map_err(Failure::Usage)?;
        if let Some(service) = service {
            let config = a
                .config
                .as_deref()
                .map(|t| parse_json("--config", t))
                .transpose()?;
            return remote_call(&service, &a.name, args, kwargs, config, timeout, stream).await;
        }
        let m = self.manifest(&a.name)?;
        if a.args.is_none() {
            if let Some(code) = self.list_operations_instead(&a.name)? {
                return Ok(code);
            }
        }
        let config = self.load_config(&m, a.config.as_deref()).await?;
        self.load(&a.name, config).await?;
        let cancel = CancellationToken::new();
        let ctx = CallContext::new()
            .with_cancel(cancel.clone())
            .with_deadline(timeout.and_then(|t| Instant::now().checked_add(t)));
        let call = Call::new(args).with_kwargs(kwargs).with_ctx(ctx);
        let bar = crate::progress::bar();
        let work = async {
            if stream {
                let mut s = self.manager.execute_stream(&a.name, call).await?;
                while let Some(chunk) = s.next().await {
                    let line = output::json_line(&chunk?);
                    bar.suspend(|| {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    });
                }
                Ok(())
            } else {
                let out = self.manager.execute(&a.name, call).await;
                bar.finish_and_clear();
                let out = out?;
                say!("{}", output::json(&out.value));
                if !out.blobs.is_empty() {
                    note(&format!(
                        "({} binary payload(s) not shown)",
                        out.blobs.len()
                    ));
                }
                Ok(())
            }
        };
        let work = async {
            tokio::select! {
                r = work => r,
                () = crate::progress::follow(&self.manager, &a.name, &bar) => Ok(()),
            }
        };
        let result: Result<(), PluginError> = tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => {
                cancel.cancel();
                Err(PluginError::cancelled("interrupted"))
            }
        };
        bar.finish_and_clear();
        self.manager.unload_all().await;
        result?;
        Ok(ExitCode::SUCCESS)
    }

    async fn task(
        &self,
        name: &str,
        task: &str,
        method: &str,
        kwargs: Option<&str>,
        config: Option<&str>,
    ) -> Result<ExitCode, Failure> {
        let kwargs = match kwargs.map(|t| parse_json("--kwargs", t)).transpose()? {
            None => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(Failure::Usage("--kwargs: expected a JSON object".into())),
        };
        let m = self.manifest(name)?;
        let config = self.load_config(&m, config).await?;
        self.load(name, config).await?;
        let result = tokio::select! {
            r = self.manager.task(name, task, method, kwargs) => r,
            _ = tokio::signal::ctrl_c() => Err(PluginError::cancelled("interrupted")),
        };
        self.manager.unload_all().await;
        say!("{}", output::json(&result?));
        Ok(ExitCode::SUCCESS)
    }

    async fn info(&self, name: &str, as_json: bool) -> Result<ExitCode, Failure> {
        let m = self.manifest(name)?;
        let saved = self.load_config(&m, None).await?;
        self.load(name, saved.clone()).await?;
        let config = self.manager.config(name);
        let schema = self.manager.config_schema(name);
        let stats = self.manager.stats(name).await;
        let generation = self.manager.generation(name).ok();
        let drift = self.manager.drift(name).ok().flatten();
        self.manager.unload_all().await;
        let info = json!({
            "generation": generation,
            "drift": drift,
            "name": m.name, "version": m.version, "category": m.category,
            "description": m.description,
            "execution_mode": m.effective_execution_mode(),
            "manifest_file": m.path,
            "manifest": &*m,
            "config_schema": schema?,
            "config": config?,
            "config_saved": saved.is_some(),
            "stats": stats?,
        });
        if as_json {
            say!("{}", output::json(&info));
        } else {
            say_info_head(&m);
            if let Some(g) = generation {
                say!("  worker:     {g}");
            }
            if let Some(d) = drift.filter(|d| d.any()) {
                say!(
                    "  drift:      the live worker's {} differs from the manifest \
                     (regenerate it)",
                    d.describe()
                );
            }
            if let Some(p) = &m.path {
                say!("  manifest:   {}", p.display());
            }
            say!(
                "  config:     {}{}",
                info["config"],
                if saved.is_some() {
                    " (saved)"
                } else {
                    " (defaults)"
                }
            );
            say!("  schema:{}", indented(&info["config_schema"], 4));
            let s = &info["stats"];
            say!(
                "  health:     started and answered; RSS {:.1} MB, state {}",
                s["worker"]["memory_rss_mb"].as_f64().unwrap_or(0.0),
                s["state"].as_str().unwrap_or("?")
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn config(
        &self,
        name: &str,
        set: Option<String>,
        unset: Vec<String>,
    ) -> Result<ExitCode, Failure> {
        let m = self.manifest(name)?;
        let reg = self.registry().await?;
        let id = unique_id(&m.category, &m.name);
        let to_plugin_error = |e: cjm_registry::RegistryError| {
            let fields = e.field_errors().to_vec();
            if fields.is_empty() {
                PluginError::fatal(e.to_string())
            } else {
                PluginError::config(registry_message(&e), fields)
            }
        };
        if set.is_none() && unset.is_empty() {
            let saved = reg.load_plugin_config(&id).map_err(to_plugin_error)?;
            match saved {
                Some(c) => say!("{}", output::json(&Value::Object(c))),
                None => self.print_defaults(name)?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        let patch = match set.as_deref().map(|t| parse_json("--set", t)).transpose()? {
            None => Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => return Err(Failure::Usage("--set: expected a JSON object".into())),
        };
        let mut current = reg
            .load_plugin_config(&id)
            .map_err(to_plugin_error)?
            .unwrap_or_default();
        current.extend(patch);
        for k in &unset {
            current.remove(k);
        }
        let path = reg
            .save_plugin_config(&id, &current)
            .map_err(to_plugin_error)?;
        note(&format!("saved {}", path.display()));
        say!("{}", output::json(&Value::Object(current)));
        Ok(ExitCode::SUCCESS)
    }

    fn logs(&self, name: &str, lines: usize) -> Result<ExitCode, Failure> {
        let log = self.manager.logs(name, lines)?;
        if log.is_empty() && self.manager.discovered_manifest(name).is_none() {
            return Err(PluginError::not_loaded(name).into());
        }
        for l in log {
            say!("{l}");
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// After a secret of `name` changed: a running service respawns the plugin's worker if its
/// environment changed. The secret is saved either way; a service that cannot be reached is
/// only mentioned.
async fn refresh_in_service(ctx: &Context, name: &str) {
    let service = match crate::remote::Service::find(ctx.host.as_deref(), &ctx.data_dir) {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => return tell!("cjm: not telling the service: {e}"),
    };
    match service.refresh(name).await {
        Ok(true) => tell!("cjm: the running service restarted {name} with it"),
        Ok(false) => {}
        Err(e) => tell!("cjm: the running service could not apply it: {e}"),
    }
}

/// `cjm call` / `cjm stream` through a running `cjm serve`: the plugin stays loaded there.
async fn remote_call(
    service: &crate::remote::Service,
    name: &str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    config: Option<Value>,
    timeout: Option<Duration>,
    stream: bool,
) -> Result<ExitCode, Failure> {
    if let Some(config) = &config {
        if !config.is_object() {
            return Err(Failure::Usage("--config: expected a JSON object".into()));
        }
        service.reload(name, config).await?;
    }
    let mut body = json!({"args": args, "kwargs": kwargs});
    if let Some(t) = timeout {
        body["timeout_s"] = json!(t.as_secs_f64());
    }
    let work = async {
        if stream {
            service
                .stream(name, &body, |chunk| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", output::json_line(&chunk));
                    let _ = out.flush();
                })
                .await
        } else {
            let (value, blobs) = service.call(name, &body).await?;
            say!("{}", output::json(&value));
            if blobs > 0 {
                note(&format!("({blobs} binary payload(s) not shown)"));
            }
            Ok(())
        }
    };
    // Ctrl-C closes the connection, which cancels the call in the service.
    let result: Result<(), PluginError> = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(PluginError::cancelled("interrupted")),
    };
    result?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_name() {
        let known = vec![
            "echo".to_string(),
            "transcriber".to_string(),
            "slow".to_string(),
        ];
        assert_eq!(did_you_mean("ecoh", &known), Some("echo"));
        assert_eq!(did_you_mean("transcriber2", &known), Some("transcriber"));
        assert_eq!(did_you_mean("zzzzzz", &known), None);
    }

    #[test]
    fn indents_pretty_json() {
        let v = json!({"a": 1});
        assert_eq!(indented(&v, 2), "\n  {\n    \"a\": 1\n  }");
    }
}
