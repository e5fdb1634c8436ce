//! v2.0 manifests, adapter manifests, category derivation and generation detection, over
//! fixtures written exactly as `cjm-ctl install-all` (cjm-plugin-system 0.0.46) writes them.

use std::path::{Path, PathBuf};

use cjm_core::manifest_v2::FALLBACK_CATEGORY;
use cjm_core::{Manifest, ManifestFile, WorkerGeneration};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cjm-ctl-0046")
        .join(name)
}

fn plugin(name: &str) -> Manifest {
    match ManifestFile::load(&fixture(name)).unwrap() {
        ManifestFile::Plugin(m) => *m,
        other => panic!("{name}: not a plugin: {other:?}"),
    }
}

#[test]
fn a_v2_manifest_reads_natively() {
    let m = plugin("cjm-text-plugin-nltk.json");
    assert_eq!(m.name, "cjm-text-plugin-nltk");
    assert_eq!(m.version, "0.0.12");
    assert_eq!(m.module.as_deref(), Some("cjm_text_plugin_nltk.plugin"));
    assert_eq!(m.class.as_deref(), Some("NLTKPlugin"));
    assert_eq!(
        m.python_path.as_deref(),
        Some("/home/user/miniforge3/envs/cjm-text-plugin-nltk/bin/python")
    );
    assert_eq!(m.conda_env.as_deref(), Some("cjm-text-plugin-nltk"));
    assert_eq!(m.db_path, None, "an empty db_path means none");
    assert_eq!(m.env_vars["TOKENIZERS_PARALLELISM"], "false");
    assert_eq!(m.format_version(), Some("2.0"));
    assert_eq!(m.category, "text", "derived from code.taxonomy.domain");
    assert_eq!(m.taxonomy().unwrap().role, "TextProcessingPlugin");
    let env = m.worker_env();
    assert_eq!(env.len(), 2);
    assert_eq!(env[0].name, "NLTK_DATA");
    assert!(env[0].required && !env[0].secret);
    assert_eq!(
        env[0].default.as_deref(),
        Some("${PLUGIN_DATA_DIR}/nltk_data")
    );
    assert!(env[1].secret && !env[1].required);
    assert!(m.drift_tracking().unwrap().config_schema_hash.is_some());
    assert!(m.overrides().unwrap().is_empty());
    assert_eq!(
        m.structural_surface().unwrap()["methods"][1]["name"],
        "split_sentences"
    );
    // Kept as written (unknown install/code fields too).
    assert_eq!(m.extra["installer_version"], "cjm-ctl 0.0.46");
    assert_eq!(m.config_defaults()["language"], "english");
    assert_eq!(m.resources.extra["platforms"], json!([]));
    // No such environment on this machine: the manifest's shape decides.
    assert_eq!(m.generation(), WorkerGeneration::V0046);
}

#[test]
fn a_substrate_manifest_reads_natively() {
    let m = plugin("cjm-media-plugin-ffmpeg.json");
    assert_eq!(m.name, "cjm-media-plugin-ffmpeg");
    assert_eq!(m.class.as_deref(), Some("FFmpegPlugin"));
    assert_eq!(m.generation(), WorkerGeneration::Substrate);
    assert_eq!(m.category, FALLBACK_CATEGORY);
    assert_eq!(m.extra["mode"], "distribution");
    assert_eq!(m.extra["observability_class"], "batch");
    assert_eq!(
        m.worker_env()[0].default.as_deref(),
        Some("${CAPABILITY_DATA_DIR}/tmp")
    );
}

#[test]
fn a_read_v2_manifest_serializes_and_reads_back_the_same() {
    for f in [
        "cjm-text-plugin-nltk.json",
        "cjm-graph-plugin-sqlite.json",
        "cjm-media-plugin-ffmpeg.json",
    ] {
        let m = plugin(f);
        let v = serde_json::to_value(&m).unwrap();
        let back = Manifest::from_value(v, m.path.as_deref()).unwrap();
        assert_eq!(back, m, "{f}");
        assert_eq!(back.format_version(), Some("2.0"));
    }
}

#[test]
fn v2_errors_name_v2_paths_and_every_problem() {
    let e = ManifestFile::load(&fixture("broken-v2.json")).unwrap_err();
    let fields: Vec<&str> = e.problems.iter().map(|p| p.field.as_str()).collect();
    assert!(fields.contains(&"code.name"), "{fields:?}");
    assert!(fields.contains(&"install.python_path"), "{fields:?}");
    assert!(fields.contains(&"install.env_vars.BAD"), "{fields:?}");
    assert!(fields.contains(&"code.worker_env[0].name"), "{fields:?}");
    let text = e.to_string();
    assert!(text.contains("broken-v2.json: code.name:"), "{text}");

    let bad_version = Manifest::from_value(
        json!({"format_version": "3.0", "code": {"name": "x", "module": "m", "class": "C"}}),
        None,
    )
    .unwrap_err();
    assert_eq!(bad_version.problems[0].field, "format_version");
    let not_object =
        Manifest::from_value(json!({"format_version": "2.0", "code": []}), None).unwrap_err();
    assert_eq!(not_object.problems[0].field, "code");
}

#[test]
fn a_manifest_without_category_gets_one() {
    let m = plugin("legacy-no-category.json");
    assert_eq!(m.category, FALLBACK_CATEGORY);
    assert_eq!(m.format_version(), None);
    assert_eq!(m.generation(), WorkerGeneration::Seed);
    let blank = Manifest::from_value(
        json!({"name": "b", "command": "/bin/true", "category": "   "}),
        None,
    )
    .unwrap();
    assert_eq!(blank.category, FALLBACK_CATEGORY);
    let declared = Manifest::from_value(
        json!({"name": "d", "command": "/bin/true", "category": "speech",
               "taxonomy": {"domain": "text"}}),
        None,
    )
    .unwrap();
    assert_eq!(declared.category, "speech", "a declared category wins");
    let over = Manifest::from_value(
        json!({"name": "o", "command": "/bin/true", "category_override": "Mine",
               "taxonomy": {"domain": "text"}}),
        None,
    )
    .unwrap();
    assert_eq!(over.category, "Mine");
    assert_eq!(over.generation(), WorkerGeneration::Native);
}

#[test]
fn adapter_manifests_are_adapters_and_match_by_surface() {
    let file = fixture("adapter-graph-storage-SQLiteGraphStorage.json");
    let a = match ManifestFile::load(&file).unwrap() {
        ManifestFile::Adapter(a) => a,
        other => panic!("not an adapter: {other:?}"),
    };
    assert_eq!(a.task_name, "graph-storage");
    assert_eq!(
        a.spec(),
        "cjm_graph_plugin_system.adapters.sqlite:SQLiteGraphStorage"
    );
    assert_eq!(a.path.as_deref(), Some(file.as_path()));
    let graph = plugin("cjm-graph-plugin-sqlite.json");
    assert_eq!(graph.category, "graph");
    let verdict = a.matches(&graph);
    assert!(verdict.compatible, "{verdict:?}");
    let nltk = plugin("cjm-text-plugin-nltk.json");
    let verdict = a.matches(&nltk);
    assert!(!verdict.compatible);
    assert_eq!(verdict.missing_methods, ["add_nodes", "get_node"]);
    assert_eq!(verdict.missing_properties, ["db_path"]);
    let legacy = plugin("legacy-no-category.json");
    assert!(a.matches(&legacy).reason.is_some(), "no surface, no match");

    // Parameter prefix rule.
    let mut other = graph.clone();
    other.extra.insert(
        "structural_surface".into(),
        json!({"methods": [{"name": "add_nodes", "params": ["items"]},
                           {"name": "get_node", "params": ["node_id", "extra"]}],
               "properties": ["db_path"]}),
    );
    assert_eq!(a.matches(&other).param_mismatches, ["add_nodes"]);

    // Read as a plugin, an adapter is refused by name; an incomplete one names its fields.
    let as_plugin = Manifest::load(&file).unwrap_err();
    assert_eq!(as_plugin.problems[0].field, "unit");
    let e = cjm_core::AdapterManifest::from_value(json!({"unit": "adapter", "name": "x"}), None)
        .unwrap_err();
    let fields: Vec<&str> = e.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["task_name", "module", "class"]);
}

#[test]
fn the_generation_comes_from_the_installed_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let env = |name: &str, dist: &str| {
        let root = tmp.path().join(name);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("lib/python3.12/site-packages").join(dist)).unwrap();
        root.join("bin/python")
    };
    let manifest = |python: &Path, extra: serde_json::Value| {
        let mut v = json!({"name": "p", "module": "m", "class": "C", "python_path": python});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Manifest::from_value(v, None).unwrap()
    };
    let sub = env("sub", "cjm_substrate-0.0.74.dist-info");
    let p46 = env("p46", "cjm_plugin_system-0.0.46.dist-info");
    let p28 = env("p28", "cjm_plugin_system-0.0.28.dist-info");
    let p100 = env("p100", "cjm_plugin_system-0.1.0.dist-info");
    assert_eq!(
        manifest(&sub, json!({})).generation(),
        WorkerGeneration::Substrate
    );
    assert_eq!(
        manifest(&p46, json!({})).generation(),
        WorkerGeneration::V0046
    );
    assert_eq!(
        manifest(&p28, json!({})).generation(),
        WorkerGeneration::Seed
    );
    assert_eq!(
        manifest(&p100, json!({})).generation(),
        WorkerGeneration::V0046
    );
    // The environment beats the manifest's shape; an explicit field beats both.
    let v2_on_p28 = Manifest::from_value(
        json!({"format_version": "2.0", "install": {"python_path": p28},
               "code": {"name": "p", "module": "m", "class": "C"}}),
        None,
    )
    .unwrap();
    assert_eq!(v2_on_p28.generation(), WorkerGeneration::Seed);
    assert_eq!(
        manifest(&p28, json!({"worker_generation": "substrate"})).generation(),
        WorkerGeneration::Substrate
    );
    // Without the environment at hand, substrate's install.resolved record tells.
    let recorded = Manifest::from_value(
        json!({"format_version": "2.0",
               "install": {"python_path": "/gone/bin/python", "mode": "distribution",
                           "resolved": {"cjm-substrate": "0.0.74", "cjm-text-plugin-nltk": "0.1.0"}},
               "code": {"name": "p", "module": "m", "class": "C"}}),
        None,
    )
    .unwrap();
    assert_eq!(recorded.generation(), WorkerGeneration::Substrate);
    assert_eq!(
        recorded.category, FALLBACK_CATEGORY,
        "substrate writes no taxonomy"
    );
    let bad = Manifest::from_value(
        json!({"name": "p", "command": "x", "worker_generation": "v9"}),
        None,
    )
    .unwrap_err();
    assert_eq!(bad.problems[0].field, "worker_generation");
}
