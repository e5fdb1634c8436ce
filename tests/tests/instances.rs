//! Several workers of one plugin (instances), each with its own configuration, addressed by
//! instance id in the manager and as job targets.

mod common;

use std::time::Duration;

use cjm_host::{Call, ErrorCategory, PluginState};
use cjm_jobs::{JobCall, JobOptions, Jobs};
use common::Scratch;
use serde_json::json;

fn greet() -> Call {
    Call::new(vec![json!("greet")]).kwarg("name", json!("Ada"))
}

fn pid() -> Call {
    Call::new(vec![json!("pid")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_isolated_workers_of_one_plugin() {
    let s = Scratch::new();
    s.worker_manifest("t", json!({}));
    let m = s.manager();
    m.discover();
    let en = m
        .load_instance("t", Some("en"), Some(json!({"greeting": "hello"})))
        .await
        .unwrap();
    assert_eq!(en, "en");
    let fr = m
        .load_instance("t", None, Some(json!({"greeting": "bonjour"})))
        .await
        .unwrap();
    assert!(fr.starts_with("t-"), "{fr}");
    // Each answers with its own configuration, from its own process.
    assert_eq!(
        m.execute("en", greet()).await.unwrap().value,
        json!("hello Ada")
    );
    assert_eq!(
        m.execute(&fr, greet()).await.unwrap().value,
        json!("bonjour Ada")
    );
    let (pid_en, pid_fr) = (m.pid("en").unwrap(), m.pid(&fr).unwrap());
    assert_ne!(pid_en, pid_fr);
    assert_eq!(m.instance_of("en").as_deref(), Some("t"));
    assert_eq!(m.instance_of("t"), None);
    let mut all = m.instances("t");
    all.sort();
    let mut want = vec!["en".to_owned(), fr.clone()];
    want.sort();
    assert_eq!(all, want);
    assert_eq!(m.config("en").unwrap()["greeting"], "hello");

    // Bad ids are refused, naming the problem.
    for (id, why) in [("a.b", "A-Z a-z 0-9"), ("t", "name of a plugin")] {
        let e = m.load_instance("t", Some(id), None).await.unwrap_err();
        assert_eq!(e.category, ErrorCategory::UserInput, "{e}");
        assert!(e.message.contains(why), "{e}");
    }
    assert!(m.load_instance("t", Some("en"), None).await.is_err());
    let e = m.load_instance("nope", None, None).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::NotLoaded, "{e}");

    // One crashes and restarts; the other is untouched.
    cjm_sys::signal::kill(pid_en, libc::SIGKILL);
    m.wait_for_state("en", Duration::from_secs(30), |st| st != PluginState::Ready)
        .await
        .unwrap();
    m.wait_for_state("en", Duration::from_secs(60), |st| st == PluginState::Ready)
        .await
        .unwrap();
    assert_ne!(m.pid("en"), Some(pid_en));
    assert_eq!(m.pid(&fr), Some(pid_fr));
    assert_eq!(
        m.execute("en", greet()).await.unwrap().value,
        json!("hello Ada")
    );

    // Jobs address instances by id.
    let jobs = Jobs::open(m.clone()).unwrap();
    let id = jobs
        .submit(&fr, JobCall::new(vec![json!("pid")]), JobOptions::new())
        .await
        .unwrap();
    let done = jobs.wait(&id).await.unwrap();
    assert_eq!(done.result, Some(json!(pid_fr)));
    jobs.shutdown().await;

    // Unloading one leaves the other.
    m.unload("en").await.unwrap();
    assert_eq!(m.instances("t"), vec![fr.clone()]);
    assert_eq!(m.execute(&fr, pid()).await.unwrap().value, json!(pid_fr));
    m.unload_all().await;
}
