//! The registry end to end with in-memory plugin sources.

use std::sync::Arc;

use cjm_core::{CloudProviderType, Manifest, PluginError, PluginExecutionMode, RemoteResourceInfo};
use cjm_registry::{
    plugin_stats, Config, LiveFacts, PluginRegistry, PluginStats, RegistryError, StaticSource,
};
use serde_json::{json, Value};

fn manifest(name: &str, extra: Value) -> Manifest {
    let mut v = json!({"name": name, "version": "1.2.3"});
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        if !more.contains_key("python_path") {
            obj.insert("command".into(), json!("worker"));
        }
        obj.extend(more);
    }
    Manifest::from_value(v, None).expect("test manifest is valid")
}

fn whisper_schema() -> Value {
    json!({
        "type": "object",
        "title": "Whisper Transcription",
        "description": "OpenAI Whisper, locally",
        "additionalProperties": false,
        "properties": {
            "model": {"type": "string", "enum": ["small", "large"], "default": "small"},
            "beam": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
            "language": {"type": "string"}
        }
    })
}

fn obj(v: Value) -> Config {
    v.as_object().cloned().expect("test value is an object")
}

fn registry() -> (tempfile::TempDir, PluginRegistry) {
    let dir = tempfile::tempdir().expect("temp dir");
    let reg = PluginRegistry::new(dir.path().join("configs")).expect("registry");
    // Tests write files into the directory themselves; only a save would create it.
    std::fs::create_dir_all(reg.config_dir()).expect("mkdir");
    (dir, reg)
}

fn transcription() -> Arc<StaticSource> {
    Arc::new(StaticSource::new([
        manifest(
            "whisper",
            json!({
                "category": "transcription",
                "description": "Whisper from the manifest",
                "python_path": "/envs/whisper/bin/python", "module": "whisper_plugin",
                "class": "WhisperPlugin", "conda_env": "whisper",
                "config_schema": whisper_schema(),
                "resources": {"requires_gpu": true, "min_gpu_vram_mb": 4096}
            }),
        ),
        manifest(
            "voxtral",
            json!({"category": "transcription", "title": "Voxtral"}),
        ),
    ]))
}

#[tokio::test(flavor = "current_thread")]
async fn registration_reads_true_metadata_from_manifests() {
    let (_d, reg) = registry();
    let plugins = reg
        .register_plugin_manager("transcription", transcription(), None, true)
        .await
        .unwrap();
    let ids: Vec<_> = plugins.iter().map(|p| p.unique_id()).collect();
    assert_eq!(ids, ["transcription.whisper", "transcription.voxtral"]);

    let w = reg.plugin("transcription.whisper").unwrap();
    assert_eq!(w.name, "whisper");
    assert_eq!(w.category, "transcription");
    assert_eq!(w.version.as_deref(), Some("1.2.3"));
    assert_eq!(
        w.title, "Whisper Transcription",
        "schema title when the manifest has none"
    );
    assert_eq!(w.description.as_deref(), Some("Whisper from the manifest"));
    assert_eq!(w.config_schema, whisper_schema());
    assert_eq!(w.execution_mode, PluginExecutionMode::CondaEnv);
    assert_eq!(w.conda_env_name.as_deref(), Some("whisper"));
    assert!(!w.is_configured);
    let entry = reg.entry("transcription.whisper").unwrap();
    assert!(entry.resources.requires_gpu);
    assert_eq!(entry.resources.min_gpu_vram_mb, Some(4096));
    assert!(!entry.is_loaded());

    let v = reg.plugin("transcription.voxtral").unwrap();
    assert_eq!(v.title, "Voxtral");
    assert_eq!(v.execution_mode, PluginExecutionMode::Subprocess);
    assert_eq!(v.config_schema, json!({}));
}

#[tokio::test(flavor = "current_thread")]
async fn categories_lookups_and_display_names() {
    let (_d, reg) = registry();
    let llm = Arc::new(StaticSource::new([
        manifest(
            "gpt",
            json!({"category": "llm", "execution_mode": "cloud_serverless"}),
        ),
        manifest("llama", json!({"category": "llm"})),
    ]));
    reg.register_plugin_manager("transcription", transcription(), None, true)
        .await
        .unwrap();
    reg.register_plugin_manager("llm", Arc::clone(&llm), Some("Language Models"), true)
        .await
        .unwrap();
    reg.register_plugin_manager(
        "image_generation",
        Arc::new(StaticSource::default()),
        None,
        true,
    )
    .await
    .unwrap();

    assert_eq!(
        reg.categories(),
        ["image_generation", "llm", "transcription"]
    );
    assert_eq!(reg.categories_with_plugins(), ["llm", "transcription"]);
    assert_eq!(reg.category_display_name("llm"), "Language Models");
    assert_eq!(
        reg.category_display_name("image_generation"),
        "Image Generation"
    );
    assert_eq!(reg.category_display_name("transcription"), "Transcription");
    assert_eq!(
        reg.category_display_name("not_registered"),
        "Not Registered"
    );

    let names =
        |v: Vec<cjm_core::PluginMetadata>| v.into_iter().map(|p| p.name).collect::<Vec<_>>();
    assert_eq!(names(reg.plugins_by_category("llm")), ["gpt", "llama"]);
    assert!(reg.plugins_by_category("image_generation").is_empty());
    assert!(reg.plugins_by_category("nope").is_empty());
    assert_eq!(names(reg.plugins()), ["whisper", "voxtral", "gpt", "llama"]);
    assert_eq!(reg.entries().len(), 4);
    assert!(
        reg.plugin("llm_gpt").is_none(),
        "the original's id format is not an alias"
    );
    assert!(reg.plugin("llm.gpt").is_some());

    // The manager comes back as a trait object and as its concrete type.
    assert_eq!(reg.manager("llm").unwrap().discovered().len(), 2);
    let typed: Arc<StaticSource> = reg.manager_as("llm").unwrap();
    assert!(Arc::ptr_eq(&typed, &llm));
    assert!(reg.manager("nope").is_none());
    assert!(reg.manager_as::<StaticSource>("nope").is_none());

    let err = reg
        .register_plugin_manager("  ", Arc::new(StaticSource::default()), None, true)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::InvalidCategory { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn re_registering_replaces_manager_and_plugins_and_discovery_errors_change_nothing() {
    let (_d, reg) = registry();
    reg.register_plugin_manager("a", Arc::new(StaticSource::default()), None, true)
        .await
        .unwrap();
    reg.register_plugin_manager("transcription", transcription(), Some("Speech"), true)
        .await
        .unwrap();
    assert_eq!(reg.plugins_by_category("transcription").len(), 2);

    // A manager whose disk changed: auto_discover picks up the change.
    let src = Arc::new(StaticSource::new([manifest("old", json!({}))]));
    src.set_manifests_on_disk([manifest("new", json!({}))]);
    let found = reg
        .register_plugin_manager("transcription", Arc::clone(&src), None, false)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].name, "old",
        "without auto_discover nothing is scanned"
    );
    assert_eq!(reg.category_display_name("transcription"), "Transcription");
    assert_eq!(reg.categories(), ["a", "transcription"]);
    let found = reg.discover_category("transcription").await.unwrap();
    assert_eq!(found[0].name, "new");
    assert!(reg.plugin("transcription.old").is_none());
    assert!(reg.plugin("transcription.whisper").is_none());

    // Failed discovery registers nothing and keeps what was there.
    let failing = Arc::new(StaticSource::new([manifest("x", json!({}))]));
    failing.set_discover_error(Some(PluginError::transient("manifest dir unreadable")));
    let err = reg
        .register_plugin_manager("transcription", Arc::clone(&failing), None, true)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::Discovery { category, .. } if category == "transcription"),
        "{err}"
    );
    assert!(err.to_string().contains("manifest dir unreadable"));
    assert!(reg.plugin("transcription.new").is_some());
    assert!(reg
        .manager_as::<StaticSource>("transcription")
        .is_some_and(|m| Arc::ptr_eq(&m, &src)));
    let err = reg
        .register_plugin_manager("fresh", failing, None, true)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Discovery { .. }));
    assert_eq!(reg.categories(), ["a", "transcription"]);
    assert!(matches!(
        reg.discover_category("nope").await,
        Err(RegistryError::UnknownCategory(c)) if c == "nope"
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn duplicates_and_foreign_categories() {
    let (_d, reg) = registry();
    let src = Arc::new(StaticSource::new([
        manifest("p", json!({"title": "First", "category": "elsewhere"})),
        manifest("p", json!({"title": "Second"})),
    ]));
    let found = reg.add_plugin_manager("cat", src, None).unwrap();
    assert_eq!(found.len(), 1);
    let p = reg.plugin("cat.p").unwrap();
    assert_eq!(p.title, "First");
    assert_eq!(
        p.category, "cat",
        "plugins are listed under their manager's category"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn register_plugin_system_builds_and_registers_in_one_step() {
    let (_d, reg) = registry();
    let (manager, plugins) = reg
        .register_plugin_system(
            "transcription",
            || Ok::<_, std::io::Error>(StaticSource::new([manifest("w", json!({}))])),
            None,
            true,
        )
        .await
        .unwrap();
    assert_eq!(plugins.len(), 1);
    assert!(Arc::ptr_eq(
        &manager,
        &reg.manager_as("transcription").unwrap()
    ));

    let err = reg
        .register_plugin_system(
            "llm",
            || Err::<StaticSource, _>("no manifests directory"),
            None,
            true,
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, RegistryError::Factory { category, .. } if category == "llm"));
    assert!(err.to_string().contains("no manifests directory"));
    assert_eq!(reg.categories(), ["transcription"]);
}

#[tokio::test(flavor = "current_thread")]
async fn configs_round_trip_validate_and_track_is_configured() {
    let (_d, reg) = registry();
    reg.register_plugin_manager("transcription", transcription(), None, true)
        .await
        .unwrap();
    let id = "transcription.whisper";
    assert_eq!(reg.load_plugin_config(id).unwrap(), None);
    assert_eq!(
        reg.effective_plugin_config(id).unwrap(),
        obj(json!({"model": "small", "beam": 5}))
    );

    // Every invalid field is named, and nothing is written.
    let err = reg
        .save_plugin_config(
            id,
            &obj(json!({"model": "huge", "beam": 0, "colour": "red"})),
        )
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::Invalid { id: got, .. } if got == id),
        "{err}"
    );
    let mut fields: Vec<_> = err
        .field_errors()
        .iter()
        .map(|f| f.field.as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["beam", "colour", "model"]);
    let msg = err.to_string();
    for needle in [id, "beam", "colour", "model"] {
        assert!(msg.contains(needle), "{needle} not in {msg}");
    }
    assert_eq!(reg.load_plugin_config(id).unwrap(), None);
    assert!(!reg.plugin(id).unwrap().is_configured);

    let cfg = obj(json!({"model": "large", "language": "日本語"}));
    let path = reg.save_plugin_config(id, &cfg).unwrap();
    assert_eq!(path, reg.config_dir().join("transcription.whisper.json"));
    assert_eq!(reg.load_plugin_config(id).unwrap(), Some(cfg));
    assert!(reg.plugin(id).unwrap().is_configured);
    assert_eq!(
        reg.effective_plugin_config(id).unwrap(),
        obj(json!({"model": "large", "beam": 5, "language": "日本語"}))
    );

    // An invalid update writes nothing; a valid one reads what is saved.
    let err = reg
        .update_plugin_config(id, |c| {
            c.insert("beam".into(), json!(11));
        })
        .unwrap_err();
    assert_eq!(err.field_errors()[0].field, "beam");
    let saved = reg
        .update_plugin_config(id, |c| {
            c.insert("beam".into(), json!(3));
        })
        .unwrap();
    assert_eq!(
        saved,
        obj(json!({"model": "large", "language": "日本語", "beam": 3}))
    );

    assert!(reg.delete_plugin_config(id).unwrap());
    assert!(!reg.delete_plugin_config(id).unwrap());
    assert!(!reg.plugin(id).unwrap().is_configured);

    // A schema-less plugin accepts any object.
    reg.save_plugin_config(
        "transcription.voxtral",
        &obj(json!({"anything": [1, {"x": null}]})),
    )
    .unwrap();

    // Unknown plugins cannot be saved (there is no schema), hostile ids never reach the disk.
    assert!(matches!(
        reg.save_plugin_config("transcription.nope", &Config::new()),
        Err(RegistryError::UnknownPlugin(i)) if i == "transcription.nope"
    ));
    for hostile in [
        "../../etc/passwd",
        "transcription.whisper/../../x",
        "/abs.path",
        "a.b\0",
    ] {
        assert!(matches!(
            reg.save_plugin_config(hostile, &Config::new()),
            Err(RegistryError::InvalidId { .. })
        ));
        assert!(matches!(
            reg.load_plugin_config(hostile),
            Err(RegistryError::InvalidId { .. })
        ));
        assert!(matches!(
            reg.delete_plugin_config(hostile),
            Err(RegistryError::InvalidId { .. })
        ));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_corrupt_file_is_an_error_not_an_empty_config() {
    let (_d, reg) = registry();
    reg.register_plugin_manager("transcription", transcription(), None, true)
        .await
        .unwrap();
    let id = "transcription.whisper";
    let path = reg.store().path_of(id).unwrap();
    std::fs::write(&path, "{\"model\": \"lar").unwrap();
    let err = reg.load_plugin_config(id).unwrap_err();
    assert!(matches!(&err, RegistryError::Corrupt { file, .. } if file == &path));
    assert!(
        err.to_string().contains("transcription.whisper.json"),
        "{err}"
    );
    assert!(matches!(
        reg.effective_plugin_config(id),
        Err(RegistryError::Corrupt { .. })
    ));
    assert!(matches!(
        reg.update_plugin_config(id, |_| {}),
        Err(RegistryError::Corrupt { .. })
    ));
    // Saving a whole configuration is the way out.
    reg.save_plugin_config(id, &obj(json!({"model": "small"})))
        .unwrap();
    assert_eq!(
        reg.load_plugin_config(id).unwrap(),
        Some(obj(json!({"model": "small"})))
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_plugin_with_a_broken_schema_is_listed_but_cannot_be_saved() {
    let (_d, reg) = registry();
    let src = Arc::new(StaticSource::new([
        manifest(
            "broken",
            json!({"config_schema": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}),
        ),
        manifest("fine", json!({})),
    ]));
    let found = reg.add_plugin_manager("c", src, None).unwrap();
    assert_eq!(found.len(), 2, "one bad schema does not abort discovery");
    let err = reg
        .save_plugin_config("c.broken", &Config::new())
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::InvalidSchema { id, .. } if id == "c.broken"),
        "{err}"
    );
    reg.save_plugin_config("c.fine", &Config::new()).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn live_facts_from_the_host_fill_the_lifecycle_fields() {
    let (_d, reg) = registry();
    let src = transcription();
    reg.register_plugin_manager("transcription", Arc::clone(&src), None, true)
        .await
        .unwrap();
    let id = "transcription.whisper";
    let mut facts = LiveFacts::new("ready");
    facts.pids = vec![4242, 4243];
    facts.restarts = 1;
    src.set_live("whisper", Some(facts.clone()));
    // Not visible until refreshed.
    assert!(reg.plugin(id).unwrap().spawned_pids.is_empty());
    reg.refresh_live_facts().await;
    let e = reg.entry(id).unwrap();
    assert_eq!(e.live.as_ref(), Some(&facts));
    assert_eq!(e.metadata.spawned_pids, [4242, 4243]);
    assert!(e.metadata.has_active_resources());
    assert!(reg.entry("transcription.voxtral").unwrap().live.is_none());

    // Live facts survive a rediscovery of the same plugin.
    reg.discover_category("transcription").await.unwrap();
    assert_eq!(reg.plugin(id).unwrap().spawned_pids, [4242, 4243]);

    // The host knows better than the manifest.
    let mut cloud = LiveFacts::new("busy");
    cloud.execution_mode = Some(PluginExecutionMode::CloudGpu);
    let mut r = RemoteResourceInfo::new(CloudProviderType::Runpod);
    r.status = "running".into();
    cloud.remote_resource = Some(r);
    src.set_live("whisper", Some(cloud));
    let e = reg.refresh_plugin(id).await.unwrap();
    assert_eq!(e.metadata.execution_mode, PluginExecutionMode::CloudGpu);
    assert!(e.metadata.is_cloud_execution() && e.metadata.has_active_resources());
    assert!(e.metadata.spawned_pids.is_empty());

    // Unloaded: back to the manifest's facts.
    src.set_live("whisper", None);
    let e = reg.refresh_plugin(id).await.unwrap();
    assert!(!e.is_loaded());
    assert_eq!(e.metadata.execution_mode, PluginExecutionMode::CondaEnv);
    assert!(!e.metadata.has_active_resources());
    assert!(matches!(
        reg.refresh_plugin("transcription.nope").await,
        Err(RegistryError::UnknownPlugin(_))
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn saving_can_hot_apply_to_a_loaded_plugin() {
    let (_d, reg) = registry();
    let src = transcription();
    reg.register_plugin_manager("transcription", Arc::clone(&src), None, true)
        .await
        .unwrap();
    let id = "transcription.whisper";

    // Not loaded: saved, nothing applied.
    let applied = reg
        .save_and_apply_plugin_config(id, &obj(json!({"model": "large"})))
        .await
        .unwrap();
    assert!(!applied);
    assert!(src.applied("whisper").is_empty());

    // Loaded: the effective configuration (defaults + saved) reaches the plugin.
    src.set_live("whisper", Some(LiveFacts::new("ready")));
    let applied = reg
        .save_and_apply_plugin_config(id, &obj(json!({"model": "large", "beam": 2})))
        .await
        .unwrap();
    assert!(applied);
    assert_eq!(
        src.applied("whisper"),
        [json!({"model": "large", "beam": 2})]
    );
    let (saved, applied) = reg
        .update_and_apply_plugin_config(id, |c| {
            c.remove("beam");
        })
        .await
        .unwrap();
    assert!(applied);
    assert_eq!(saved, obj(json!({"model": "large"})));
    assert_eq!(
        src.applied("whisper")[1],
        json!({"model": "large", "beam": 5})
    );

    // Invalid: neither saved nor applied.
    assert!(reg
        .save_and_apply_plugin_config(id, &obj(json!({"model": 1})))
        .await
        .is_err());
    assert_eq!(src.applied("whisper").len(), 2);

    // The host refuses: saved, and the error says so.
    src.set_apply_error(
        "whisper",
        Some(PluginError::config("model not installed", vec![])),
    );
    let err = reg
        .save_and_apply_plugin_config(id, &obj(json!({"model": "small"})))
        .await
        .unwrap_err();
    assert!(matches!(&err, RegistryError::Apply { id: got, .. } if got == id));
    let msg = err.to_string();
    assert!(
        msg.contains("saved to") && msg.contains("not applied"),
        "{msg}"
    );
    assert_eq!(
        reg.load_plugin_config(id).unwrap(),
        Some(obj(json!({"model": "small"})))
    );
}

#[tokio::test(flavor = "current_thread")]
async fn stats_over_a_mixed_registry() {
    let (_d, reg) = registry();
    let src = transcription();
    reg.register_plugin_manager("transcription", Arc::clone(&src), None, true)
        .await
        .unwrap();
    reg.register_plugin_manager(
        "llm",
        Arc::new(StaticSource::new([
            manifest("gpt", json!({"execution_mode": "cloud_serverless"})),
            manifest("llama", json!({})),
            manifest("claude", json!({"execution_mode": "cloud_cpu"})),
        ])),
        None,
        true,
    )
    .await
    .unwrap();
    reg.save_plugin_config("transcription.whisper", &Config::new())
        .unwrap();
    reg.save_plugin_config("llm.gpt", &Config::new()).unwrap();
    let mut facts = LiveFacts::new("ready");
    facts.pids = vec![7];
    src.set_live("voxtral", Some(facts));
    reg.refresh_live_facts().await;

    let stats = plugin_stats(&reg.plugins());
    assert_eq!(
        stats,
        PluginStats {
            total: 5,
            configured: 2,
            unconfigured: 3,
            local: 3,
            cloud: 2,
            with_active_resources: 1,
            by_category: [("llm".to_owned(), 3), ("transcription".to_owned(), 2)]
                .into_iter()
                .collect(),
        }
    );
    let keys: Vec<String> = match serde_json::to_value(&stats).unwrap() {
        Value::Object(m) => m.keys().cloned().collect(),
        other => panic!("stats serialise to an object, got {other}"),
    };
    assert_eq!(
        keys,
        [
            "total",
            "configured",
            "unconfigured",
            "local",
            "cloud",
            "with_active_resources",
            "by_category"
        ]
    );
}

#[test]
fn the_registry_is_usable_from_sync_code_and_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PluginRegistry>();
    assert_send_sync::<StaticSource>();
    let dir = tempfile::tempdir().unwrap();
    // Any path-like type works (the original required a Path object).
    let reg = PluginRegistry::new(dir.path().join("a").join("b").to_str().unwrap()).unwrap();
    assert!(
        !reg.config_dir().exists(),
        "nothing is created before a write"
    );
    reg.add_plugin_manager(
        "c",
        Arc::new(StaticSource::new([manifest("p", json!({}))])),
        None,
    )
    .unwrap();
    reg.save_plugin_config("c.p", &obj(json!({"k": "v"})))
        .unwrap();
    assert!(reg.config_dir().is_dir(), "created with its parents");
    // Another registry over the same directory (another process, say) sees it.
    let other = PluginRegistry::new(dir.path().join("a/b")).unwrap();
    other
        .add_plugin_manager(
            "c",
            Arc::new(StaticSource::new([manifest("p", json!({}))])),
            None,
        )
        .unwrap();
    assert!(other.plugin("c.p").unwrap().is_configured);
    assert_eq!(
        other.load_plugin_config("c.p").unwrap(),
        Some(obj(json!({"k": "v"})))
    );
}
