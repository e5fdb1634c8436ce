//! The HTML of every component, parsed back with a real HTML parser: structure, ids, classes,
//! htmx attributes, labels, and escaping of hostile plugin strings.

use cjm_core::{
    CloudProviderType, FieldError, PluginExecutionMode, PluginMetadata, RemoteResourceInfo,
    Resources,
};
use cjm_ui::{
    config_differences, execution_mode_badge_html, ids, parse_config_form, render_comparison_table,
    render_config_form, render_config_form_with_reset, render_dropdown_selector,
    render_inline_markdown, render_live_status, render_overview, render_plugin_details,
    render_plugin_details_oob, render_plugin_details_with, render_plugin_selector,
    render_status_panel, resources_text, DropdownSelector, FormState, LiveStatus, Notice,
    OverviewRow, PluginFacts, SelectorStrategy, StatusUrls,
};
use scraper::{ElementRef, Html, Selector};
use serde_json::{json, Map, Value};

const HOSTILE: &str = r#"<script>alert("x")</script><img src=x onerror=alert(1)>&amp;"'"#;

fn doc(markup: maud::Markup) -> Html {
    Html::parse_fragment(&markup.into_string())
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap_or_else(|e| panic!("bad selector {s}: {e}"))
}

fn one<'a>(d: &'a Html, s: &str) -> ElementRef<'a> {
    let found: Vec<_> = d.select(&sel(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one `{s}`, found {}",
        found.len()
    );
    found[0]
}

fn count(d: &Html, s: &str) -> usize {
    d.select(&sel(s)).count()
}

fn text(e: ElementRef<'_>) -> String {
    e.text().collect::<String>().trim().to_owned()
}

fn attr<'a>(e: ElementRef<'a>, name: &str) -> &'a str {
    e.value()
        .attr(name)
        .unwrap_or_else(|| panic!("<{}> has no {name}", e.value().name()))
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn plugin(name: &str, title: &str) -> PluginMetadata {
    let mut p = PluginMetadata::new(
        name,
        "transcription",
        title,
        json!({"type": "object", "properties": {
            "supports_streaming": {"type": "boolean"},
            "device": {"type": "string"}
        }}),
    );
    p.description = Some(format!("{title} plugin"));
    p.version = Some("1.0.0".into());
    p.execution_mode = PluginExecutionMode::Subprocess;
    p
}

fn plugins() -> Vec<PluginMetadata> {
    let mut cloud = plugin("cloudy", "Cloudy");
    cloud.execution_mode = PluginExecutionMode::CloudGpu;
    let mut r = RemoteResourceInfo::new(CloudProviderType::Runpod);
    r.estimated_cost_per_hour = Some(2.0);
    r.gpu_type = Some("A100".into());
    r.gpu_count = 2;
    cloud.remote_resource = Some(r);
    vec![
        plugin("whisper", "Whisper"),
        plugin("voxtral", "Voxtral"),
        cloud,
    ]
}

#[test]
fn execution_mode_badge() {
    let d = doc(execution_mode_badge_html(PluginExecutionMode::CondaEnv));
    let b = one(&d, "span.badge.badge-success.badge-sm");
    assert_eq!(text(b), "Local (Conda)");
    let d = doc(execution_mode_badge_html(PluginExecutionMode::CloudCpu));
    assert_eq!(text(one(&d, "span.badge.badge-info")), "Cloud CPU");
    let d = doc(execution_mode_badge_html(PluginExecutionMode::Kubernetes));
    assert_eq!(text(one(&d, "span.badge.badge-neutral")), "Kubernetes");
}

#[test]
fn details_card_structure() {
    let p = plugin("whisper", "Whisper");
    let cfg = obj(json!({"supports_streaming": true, "device": "cuda"}));
    let d = doc(render_plugin_details(&p, Some(&cfg)));
    let card = one(&d, "div#plugin-details.card.bg-base-200.mt-4");
    assert_eq!(card.value().attr("id"), Some(ids::PLUGIN_DETAILS));
    one(&d, "#plugin-details > div.card-body");
    assert_eq!(text(one(&d, "div.card-body > h3.card-title")), "Whisper");
    let desc = one(&d, "div.card-body > p.text-sm.mb-4");
    assert!(attr(desc, "class").contains("text-base-content/80"));
    assert_eq!(text(desc), "Whisper plugin");
    let rows: Vec<_> = d
        .select(&sel("div.mb-4 > div.flex.items-center.mb-2"))
        .collect();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            let label = r
                .select(&sel("span.font-medium.text-sm"))
                .next()
                .map(text)
                .unwrap_or_default();
            let badge = r
                .select(&sel("span.badge.badge-sm.ml-2"))
                .next()
                .expect("badge");
            (label, text(badge), attr(badge, "class").to_owned())
        })
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].0, "Execution:");
    assert_eq!(got[0].1, "Local (Subprocess)");
    assert!(got[0].2.contains("badge-success"));
    assert_eq!(
        (got[1].0.as_str(), got[1].1.as_str()),
        ("Streaming:", "Supported")
    );
    assert!(got[1].2.contains("badge-info"));
    assert_eq!((got[2].0.as_str(), got[2].1.as_str()), ("Device:", "CUDA"));
    assert!(got[2].2.contains("badge-primary"));
    assert_eq!(text(one(&d, "p.text-xs")), "Version: 1.0.0");
}

#[test]
fn details_card_defaults() {
    let p = PluginMetadata::new("x", "c", "X", json!({}));
    let d = doc(render_plugin_details(&p, None));
    assert_eq!(text(one(&d, "p.text-sm.mb-4")), "No description available.");
    assert_eq!(text(one(&d, "p.text-xs")), "Version: Unknown");
    assert_eq!(count(&d, "div.flex.items-center.mb-2"), 1, "only Execution");
}

#[test]
fn hostile_strings_are_escaped_everywhere() {
    let mut p = plugin("evil", HOSTILE);
    p.description = Some(HOSTILE.into());
    p.version = Some(HOSTILE.into());
    let cfg = obj(json!({"device": HOSTILE, "memory_gb": HOSTILE}));
    let list = vec![p.clone()];
    let getter = |_: &PluginMetadata| Some(cfg.clone());
    let outputs = [
        render_plugin_details(&p, Some(&cfg)).into_string(),
        DropdownSelector {
            details_endpoint: Some("/d"),
            get_plugin_config: Some(&getter),
            ..DropdownSelector::new(&list)
        }
        .render()
        .into_string(),
        render_comparison_table(&list, None, Some(&getter), None).into_string(),
    ];
    for html in &outputs {
        assert!(!html.contains("<script"), "raw script tag in {html}");
        assert!(!html.contains("<img"), "raw img tag in {html}");
        assert!(
            html.contains("&lt;script&gt;"),
            "escaped text missing in {html}"
        );
        let d = Html::parse_fragment(html);
        assert_eq!(count(&d, "script"), 0);
        assert_eq!(count(&d, "img"), 0);
        assert!(d
            .root_element()
            .text()
            .collect::<String>()
            .contains(HOSTILE));
    }
    // In an attribute value too (the form's action and field values).
    let schema =
        json!({"properties": {"s": {"type": "string", "title": HOSTILE, "description": HOSTILE}}});
    let state = FormState::new(obj(json!({"s": HOSTILE})));
    let html = render_config_form(
        &schema,
        "/plugins/a\"b/config",
        &state,
        Some(&Notice::Error(HOSTILE.into())),
    )
    .into_string();
    assert!(!html.contains("<script"));
    let d = Html::parse_fragment(&html);
    assert_eq!(count(&d, "script, img"), 0);
    assert_eq!(attr(one(&d, "input#cfg-s"), "value"), HOSTILE);
    assert_eq!(attr(one(&d, "form"), "hx-post"), "/plugins/a\"b/config");
}

#[test]
fn dropdown_selector_structure_and_htmx() {
    let list = plugins();
    let facts_getter = |_: &PluginMetadata| busy_facts();
    let getter_calls = std::cell::RefCell::new(Vec::new());
    let getter = |p: &PluginMetadata| {
        getter_calls.borrow_mut().push(p.name.clone());
        Some(obj(json!({"device": "cpu"})))
    };
    let s = DropdownSelector {
        selected_plugin_id: Some("transcription.voxtral"),
        selection_endpoint: Some("/selector/select"),
        details_endpoint: Some("/plugins/details"),
        compare_endpoint: Some("/selector/compare?category=transcription"),
        target_id: Some("plugin-config"),
        get_plugin_config: Some(&getter),
        get_plugin_facts: Some(&facts_getter),
        ..DropdownSelector::new(&list)
    };
    let d = doc(render_dropdown_selector(&s));
    assert_eq!(
        *getter_calls.borrow(),
        ["voxtral"],
        "the getter runs for the selection only"
    );
    // Details carry resources and live state of the selection.
    assert_eq!(
        text(one(&d, "#plugin-details [data-fact=resources]")),
        "GPU, ≥ 8 GB VRAM; ≥ 2 GB RAM"
    );
    assert_eq!(text(one(&d, "#plugin-details [data-fact=state]")), "busy");
    assert_eq!(
        text(one(&d, "#plugin-details [data-fact=live]")),
        "pid 42 · 1 restarts · 12.5 MB RSS · 3.0 % CPU · 7 calls"
    );
    assert_eq!(
        text(one(&d, "#plugin-details [data-fact=operations]")),
        "transcribe, stream"
    );
    one(&d, "div#plugin-selector");
    let label = one(&d, "#plugin-selector > div.mb-4 > label.font-semibold.mb-2");
    assert_eq!(text(label), "Select Plugin");
    assert_eq!(
        attr(label, "for"),
        "plugin-select",
        "the label is linked to the select"
    );
    // Choosing shows the settings at once: the select itself posts the selection.
    let select = one(&d, "select#plugin-select.select.w-full[name=plugin_id]");
    assert_eq!(attr(select, "hx-post"), "/selector/select");
    assert_eq!(attr(select, "hx-target"), "#plugin-config");
    assert_eq!(attr(select, "hx-swap"), "innerHTML");
    assert_eq!(attr(select, "hx-trigger"), "change");
    assert_eq!(attr(select, "hx-include"), "#plugin-select");
    let options: Vec<(String, String, bool)> = select
        .select(&sel("option"))
        .map(|o| {
            (
                attr(o, "value").to_owned(),
                text(o),
                o.value().attr("selected").is_some(),
            )
        })
        .collect();
    assert_eq!(
        options,
        [
            ("transcription.whisper".into(), "Whisper".into(), false),
            ("transcription.voxtral".into(), "Voxtral".into(), true),
            ("transcription.cloudy".into(), "Cloudy".into(), false),
        ]
    );
    assert_eq!(text(one(&d, "#plugin-details h3.card-title")), "Voxtral");
    assert_eq!(count(&d, "button.btn-primary"), 0, "no extra click");
    assert!(!d.html().contains("Continue with Selected Plugin"));
    let compare = one(
        &d,
        "div.mt-2 > button#comparison-toggle.btn.btn-outline.btn-sm.mt-2",
    );
    assert_eq!(text(compare), "Compare All Plugins");
    // The original derived `/compareor/compare` from `/selector/select`; here it is as given.
    assert_eq!(
        attr(compare, "hx-get"),
        "/selector/compare?category=transcription"
    );
    assert!(!d.html().contains("compareor"));
    assert_eq!(attr(compare, "hx-target"), "#plugin-comparison");
    assert_eq!(attr(compare, "hx-swap"), "innerHTML");
    let cmp = one(&d, "div#plugin-comparison.mt-4");
    assert_eq!(cmp.children().count(), 0, "the comparison starts empty");
}

#[test]
fn dropdown_selector_fallbacks_and_options() {
    let list = plugins();
    // Unknown selection: the first plugin.
    let s = DropdownSelector {
        selected_plugin_id: Some("nope"),
        ..DropdownSelector::new(&list)
    };
    let d = doc(s.render());
    assert_eq!(text(one(&d, "option[selected]")), "Whisper");
    let select = one(&d, "select#plugin-select");
    assert!(
        select.value().attr("hx-get").is_none(),
        "no details endpoint, no swap"
    );
    // Details endpoint only: the select swaps the details.
    let s = DropdownSelector {
        details_endpoint: Some("/plugins/details"),
        ..DropdownSelector::new(&list)
    };
    let d = doc(s.render());
    let select = one(&d, "select#plugin-select");
    assert_eq!(attr(select, "hx-get"), "/plugins/details");
    assert_eq!(attr(select, "hx-target"), "#plugin-details");
    assert_eq!(attr(select, "hx-swap"), "outerHTML");
    assert_eq!(count(&d, "[data-fact]"), 0, "no facts getter, no facts");
    let d = doc(DropdownSelector::new(&list).render());
    assert_eq!(
        count(&d, "#comparison-toggle"),
        0,
        "no compare endpoint, no button"
    );
    one(&d, "#plugin-comparison");
    // Custom label and button; comparison off.
    let s = DropdownSelector {
        selection_endpoint: Some("/s"),
        target_id: Some("t"),
        compare_endpoint: Some("/c"),
        label: "Pick one",
        show_comparison_toggle: false,
        ..DropdownSelector::new(&list)
    };
    let d = doc(s.render());
    assert_eq!(text(one(&d, "label")), "Pick one");
    assert_eq!(attr(one(&d, "select#plugin-select"), "hx-post"), "/s");
    assert_eq!(attr(one(&d, "select#plugin-select"), "hx-target"), "#t");
    assert_eq!(count(&d, "#comparison-toggle, #plugin-comparison"), 0);
    // The page may place the comparison container itself: only the button here.
    let s = DropdownSelector {
        compare_endpoint: Some("/c"),
        comparison_outside: true,
        ..DropdownSelector::new(&list)
    };
    let d = doc(s.render());
    assert_eq!(
        attr(one(&d, "#comparison-toggle"), "hx-target"),
        "#plugin-comparison"
    );
    assert_eq!(count(&d, "#plugin-comparison"), 0);
    // Empty.
    let d = doc(DropdownSelector::new(&[]).render());
    assert_eq!(text(one(&d, "p")), "No plugins available.");
    assert_eq!(count(&d, "select"), 0);
}

fn busy_facts() -> PluginFacts {
    let resources = Resources {
        requires_gpu: true,
        min_gpu_vram_mb: Some(8192),
        min_system_ram_mb: Some(2048),
        ..Resources::default()
    };
    PluginFacts {
        resources: Some(resources),
        live: Some(LiveStatus {
            state: "busy".into(),
            restarts: 1,
            memory_rss_mb: Some(12.5),
            cpu_percent: Some(3.0),
            calls: 7,
            errors: 0,
            pid: Some(42),
            drift: None,
        }),
        operations: Some(vec!["transcribe".into(), "stream".into()]),
    }
}

#[test]
fn comparison_table() {
    let list = plugins();
    let calls = std::cell::Cell::new(0);
    let getter = |p: &PluginMetadata| {
        calls.set(calls.get() + 1);
        match p.name.as_str() {
            "whisper" => Some(obj(json!({"device": "cuda", "beam": 5, "lang": "en"}))),
            "voxtral" => Some(obj(json!({"device": "cpu", "beam": 5, "lang": "en"}))),
            _ => None,
        }
    };
    let facts = |p: &PluginMetadata| {
        if p.name == "whisper" {
            busy_facts()
        } else {
            PluginFacts::default()
        }
    };
    let d = doc(render_comparison_table(
        &list,
        Some("transcription.voxtral"),
        Some(&getter),
        Some(&facts),
    ));
    assert_eq!(calls.get(), 3, "the getter runs for every plugin");
    one(&d, "div > div.card.card-body.bg-base-100.mt-4");
    assert_eq!(
        text(one(&d, "h3.font-bold.text-lg.mb-4")),
        "Plugin Comparison"
    );
    one(&d, "div.overflow-x-auto > table.table.table-zebra.w-full");
    let heads: Vec<String> = d.select(&sel("thead th")).map(text).collect();
    // One category: no Category column (the same for all by construction).
    assert_eq!(
        heads,
        [
            "Plugin",
            "Version",
            "Mode",
            "Resources",
            "State",
            "Operations",
            "Config differences"
        ]
    );
    let rows: Vec<Vec<String>> = d
        .select(&sel("tbody tr"))
        .map(|r| r.select(&sel("th, td")).map(text).collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "Whisper",
            "1.0.0",
            "Local (Subprocess)",
            "GPU, ≥ 8 GB VRAM; ≥ 2 GB RAM",
            "busy",
            "transcribe, stream",
            "device = cuda"
        ]
    );
    assert_eq!(
        rows[1],
        [
            "Voxtral",
            "1.0.0",
            "Local (Subprocess)",
            "not declared",
            "not loaded",
            "unknown",
            "device = cpu"
        ],
        "beam and lang are equal, so not shown; unknown operations are labelled"
    );
    assert_eq!(rows[2][2], "Cloud GPU");
    assert_eq!(rows[2][6], "unknown", "no configuration known");
    let selected = one(&d, "tbody tr.bg-primary\\/10");
    assert_eq!(
        text(one(
            &Html::parse_fragment(&selected.html()),
            "span.font-bold"
        )),
        "Voxtral"
    );
    assert_eq!(count(&d, "tbody tr.bg-primary\\/10"), 1);
    assert_eq!(count(&d, "[hx-get], [hx-post]"), 0, "rows have no htmx");
    assert_eq!(count(&d, "table[id]"), 0);

    // Across categories the Category column appears.
    let mut other = plugin("x", "X");
    other.category = "llm".into();
    let two = vec![plugin("whisper", "Whisper"), other];
    let d = doc(render_comparison_table(&two, None, None, None));
    let heads: Vec<String> = d.select(&sel("thead th")).map(text).collect();
    assert!(heads.contains(&"Category".to_owned()), "{heads:?}");
    assert_eq!(
        text(one(&d, "tr[data-plugin='llm.x'] td[data-col=category]")),
        "llm"
    );

    let d = doc(render_comparison_table(&[], None, None, None));
    assert_eq!(text(one(&d, "p")), "No plugins to compare.");
}

#[test]
fn config_differences_counts_missing_keys() {
    let d = config_differences(&[
        Some(obj(json!({"a": 1, "b": 2}))),
        Some(obj(json!({"a": 1}))),
        None,
    ]);
    assert_eq!(d[0], Some(vec![("b".to_owned(), json!(2))]));
    assert_eq!(d[1], Some(vec![]));
    assert_eq!(d[2], None);
}

#[test]
fn details_without_live_state_and_resource_text() {
    let p = plugin("whisper", "Whisper");
    let d = doc(render_plugin_details_with(
        &p,
        None,
        Some(&PluginFacts::default()),
    ));
    assert_eq!(text(one(&d, "[data-fact=resources]")), "not declared");
    assert_eq!(text(one(&d, "[data-fact=state]")), "not loaded");
    assert_eq!(
        text(one(&d, "[data-fact=operations]")),
        "unknown (not declared)"
    );
    assert_eq!(count(&d, "[data-fact=live]"), 0);
    assert_eq!(count(&d, "[hx-swap-oob]"), 0);
    let d = doc(render_plugin_details_oob(&p, None, None));
    assert_eq!(attr(one(&d, "#plugin-details"), "hx-swap-oob"), "true");
    let mut r = Resources::default();
    assert_eq!(resources_text(&r), "no GPU; no stated RAM");
    r.min_gpu_vram_mb = Some(1536);
    r.recommended_gpu_vram_mb = Some(4096);
    r.min_system_ram_mb = Some(512);
    assert_eq!(
        resources_text(&r),
        "no GPU, ≥ 1.5 GB VRAM (4 GB recommended); ≥ 512 MB RAM"
    );
}

#[test]
fn overview_table_polls_and_shows_live_facts() {
    let rows = vec![
        OverviewRow {
            id: "speech.a".into(),
            title: "A <b>".into(),
            category: "speech".into(),
            live: busy_facts().live,
        },
        OverviewRow {
            id: "speech.b".into(),
            title: "B".into(),
            category: "speech".into(),
            live: None,
        },
    ];
    let d = doc(render_overview(&rows, "/plugins/overview"));
    let o = one(&d, "section#plugin-overview");
    assert_eq!(attr(o, "hx-get"), "/plugins/overview");
    assert_eq!(attr(o, "hx-trigger"), "every 2s");
    assert_eq!(attr(o, "hx-swap"), "outerHTML");
    let heads: Vec<String> = d.select(&sel("thead th")).map(text).collect();
    assert_eq!(
        heads,
        ["Plugin", "Category", "State", "Restarts", "RSS", "CPU", "Calls"]
    );
    let row = |id: &str| -> Vec<String> {
        d.select(&sel(&format!("tr[data-plugin='{id}'] > *")))
            .map(text)
            .collect()
    };
    assert_eq!(
        row("speech.a"),
        ["A <b>", "speech", "busy", "1", "12.5 MB", "3.0 %", "7"]
    );
    assert_eq!(
        row("speech.b"),
        ["B", "speech", "not loaded", "—", "—", "—", "—"]
    );
    assert_eq!(
        attr(one(&d, "tr[data-plugin='speech.a'] a"), "href"),
        "/?category=speech&plugin=speech.a"
    );
    let d = doc(render_overview(&[], "/o"));
    assert_eq!(
        text(one(&d, "#plugin-overview p")),
        "No plugins were discovered."
    );
}

#[test]
fn strategy_switch() {
    let list = plugins();
    let s = DropdownSelector {
        selection_endpoint: Some("/s"),
        target_id: Some("t"),
        ..DropdownSelector::new(&list)
    };
    let d = doc(render_plugin_selector(SelectorStrategy::Comparison, &s));
    one(&d, "table.table");
    assert_eq!(
        count(&d, "select, button"),
        0,
        "the table ignores endpoints"
    );
    let d = doc(render_plugin_selector(SelectorStrategy::Dropdown, &s));
    one(&d, "select#plugin-select");
    assert_eq!("comparison".parse(), Ok(SelectorStrategy::Comparison));
    assert_eq!("anything".parse(), Ok(SelectorStrategy::Dropdown));
}

fn rich_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["model"],
        "properties": {
            "model": {"type": "string", "enum": ["small", "large"], "title": "Model size", "description": "Which model."},
            "beam": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
            "temperature": {"type": ["number", "null"], "default": null},
            "greeting": {"type": "string", "minLength": 1, "maxLength": 20, "pattern": "^[a-z ]+$"},
            "fast": {"type": "boolean", "default": true},
            "maybe": {"type": ["boolean", "null"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "sizes": {"type": "array", "items": {"type": "integer"}},
            "modes": {"type": "array", "items": {"enum": ["a", "b", "c"]}},
            "extra": {"type": "object"}
        }
    })
}

#[test]
fn config_form_inputs_labels_and_help() {
    let schema = rich_schema();
    let values = obj(
        json!({"model": "large", "beam": 5, "temperature": null, "greeting": "hi",
        "fast": true, "maybe": false, "tags": ["x", "y"], "sizes": [1, 2], "modes": ["b"], "extra": {"k": 1}}),
    );
    let d = doc(render_config_form(
        &schema,
        "/plugins/t.a/config",
        &FormState::new(values),
        None,
    ));
    let form = one(&d, "form#plugin-config-form");
    assert_eq!(attr(form, "hx-post"), "/plugins/t.a/config");
    assert_eq!(attr(form, "hx-target"), "this");
    assert_eq!(attr(form, "hx-swap"), "outerHTML");
    assert!(form.value().attr("novalidate").is_some());
    // Every input has a label pointing at it.
    let inputs: Vec<_> = d
        .select(&sel("form input, form select, form textarea"))
        .collect();
    assert_eq!(inputs.len(), 10);
    for i in &inputs {
        let id = attr(*i, "id");
        assert_eq!(
            count(&d, &format!("label[for=\"{id}\"]")),
            1,
            "label for {id}"
        );
        assert!(id.starts_with("cfg-"));
    }
    let model = one(&d, "select#cfg-model[name=model]");
    assert_eq!(
        text(one(&d, "label[for=cfg-model] .label-text")),
        "Model size"
    );
    assert_eq!(text(one(&d, "#cfg-model option[selected]")), "large");
    assert_eq!(
        model.select(&sel("option")).count(),
        2,
        "required enum: no blank"
    );
    assert_eq!(attr(model, "aria-describedby"), "cfg-model--help");
    assert!(text(one(&d, "#cfg-model--help")).starts_with("Which model"));
    let beam = one(&d, "input#cfg-beam[type=number]");
    assert_eq!(
        (attr(beam, "min"), attr(beam, "max"), attr(beam, "step")),
        ("1", "10", "1")
    );
    assert_eq!(attr(beam, "value"), "5");
    assert!(text(one(&d, "#cfg-beam--help")).contains("1 to 10"));
    assert!(text(one(&d, "#cfg-beam--help")).contains("default: 5"));
    let temp = one(&d, "input#cfg-temperature[type=number]");
    assert_eq!(attr(temp, "step"), "any");
    assert_eq!(attr(temp, "value"), "");
    assert!(text(one(&d, "#cfg-temperature--help")).contains("leave empty for none"));
    let greeting = one(&d, "input#cfg-greeting[type=text]");
    assert_eq!(
        (attr(greeting, "minlength"), attr(greeting, "maxlength")),
        ("1", "20")
    );
    assert_eq!(attr(greeting, "pattern"), "^[a-z ]+$");
    let fast = one(&d, "input#cfg-fast[type=checkbox][value=true]");
    assert!(fast.value().attr("checked").is_some());
    let maybe = one(&d, "select#cfg-maybe");
    assert_eq!(
        attr(
            one(&Html::parse_fragment(&maybe.html()), "option[selected]"),
            "value"
        ),
        "false"
    );
    assert_eq!(text(one(&d, "textarea#cfg-tags")), "x\ny");
    assert_eq!(text(one(&d, "textarea#cfg-sizes")), "1\n2");
    let modes = one(&d, "select#cfg-modes[multiple]");
    let chosen: Vec<_> = modes.select(&sel("option[selected]")).map(text).collect();
    assert_eq!(chosen, ["b"]);
    assert!(text(one(&d, "textarea#cfg-extra")).contains("\"k\": 1"));
    assert_eq!(
        text(one(&d, "label[for=cfg-model] .label-text-alt")),
        "required"
    );
    assert_eq!(text(one(&d, "button[type=submit]")), "Save");
    assert_eq!(count(&d, "[aria-invalid], .text-error"), 0);
}

#[test]
fn config_form_enum_labels_help_without_repetition_regex_or_raw_markdown() {
    let schema = json!({
        "type": "object",
        "properties": {
            "size": {"oneOf": [
                {"const": "tiny", "title": "Tiny (fast)"},
                {"const": "large", "title": "Large (accurate)"}
            ], "default": "tiny"},
            "beam": {"type": "integer", "enum": [1, 5], "enumNames": ["Greedy", "Wide"]},
            "level": {"type": "integer", "minimum": 0, "maximum": 2, "description": "Verbosity, from 0 to 2."},
            "code": {"type": "string", "pattern": "^[a-z]{2}$", "description": "A **two-letter** `ISO` code, *lower case* <b>x</b>"},
            "raw": {"type": "string", "pattern": "^x+$"}
        }
    });
    let values = obj(json!({"size": "large", "beam": 5, "level": 1, "code": "en", "raw": "x"}));
    let d = doc(render_config_form_with_reset(
        &schema,
        "/plugins/t.a/config",
        Some("/plugins/t.a/config/reset"),
        &FormState::new(values),
        None,
    ));
    let options: Vec<(String, String)> = d
        .select(&sel("#cfg-size option"))
        .map(|o| (attr(o, "value").to_owned(), text(o)))
        .collect();
    assert_eq!(
        options,
        [
            ("tiny".to_owned(), "Tiny (fast)".to_owned()),
            ("large".to_owned(), "Large (accurate)".to_owned())
        ],
        "labels shown, values posted"
    );
    assert_eq!(
        text(one(&d, "#cfg-size option[selected]")),
        "Large (accurate)"
    );
    assert!(text(one(&d, "#cfg-size--help")).contains("default: Tiny (fast)"));
    assert_eq!(text(one(&d, "#cfg-beam option[selected]")), "Wide");
    // The range the description states is not repeated.
    assert_eq!(text(one(&d, "#cfg-level--help")), "Verbosity, from 0 to 2");
    // Markdown rendered (escaped), the regex not shown.
    let help = one(&d, "#cfg-code--help");
    assert_eq!(text(one(&d, "#cfg-code--help strong")), "two-letter");
    assert_eq!(text(one(&d, "#cfg-code--help code")), "ISO");
    assert_eq!(text(one(&d, "#cfg-code--help em")), "lower case");
    assert_eq!(
        count(&d, "#cfg-code--help b"),
        0,
        "HTML in a description is text"
    );
    assert!(text(help).contains("<b>x</b>"));
    assert!(!text(help).contains('*') && !text(help).contains('`'));
    assert!(!d.html().contains("must match"), "no raw regex as help");
    assert_eq!(
        count(&d, "#cfg-raw--help"),
        0,
        "a bare pattern gives no help line"
    );
    // Reset asks first, then posts and replaces the form.
    let reset = one(&d, "button#config-reset[type=button]");
    assert_eq!(text(reset), "Reset to defaults");
    assert_eq!(attr(reset, "hx-post"), "/plugins/t.a/config/reset");
    assert_eq!(attr(reset, "hx-target"), "#plugin-config-form");
    assert_eq!(attr(reset, "hx-swap"), "outerHTML");
    assert!(attr(reset, "hx-confirm").contains("default"));
    let d = doc(render_config_form(
        &schema,
        "/a",
        &FormState::default(),
        None,
    ));
    assert_eq!(count(&d, "#config-reset"), 0, "no endpoint, no reset");
}

#[test]
fn inline_markdown_subset() {
    let md = |s: &str| render_inline_markdown(s).into_string();
    assert_eq!(md("a **b** c"), "a <strong>b</strong> c");
    assert_eq!(md("`x<y`"), "<code>x&lt;y</code>");
    assert_eq!(md("_e_ and *f*"), "<em>e</em> and <em>f</em>");
    assert_eq!(
        md("2 * 3 * 4"),
        "2 * 3 * 4",
        "spaced stars are not emphasis"
    );
    assert_eq!(md("snake_case_name"), "snake_case_name");
    assert_eq!(md("**unclosed"), "**unclosed");
    assert_eq!(md("<script>"), "&lt;script&gt;");
}

#[test]
fn config_form_shows_errors_next_to_fields() {
    let schema = rich_schema();
    let mut state = FormState::new(obj(json!({"model": "small", "beam": 50})));
    state.raw.insert("sizes".into(), "1\nx".into());
    state.errors = vec![
        FieldError {
            field: "beam".into(),
            reason: "50 is greater than the maximum of 10".into(),
        },
        FieldError {
            field: "sizes".into(),
            reason: "line 2: \"x\" is not a whole number".into(),
        },
        FieldError {
            field: "colour".into(),
            reason: "unknown key: the schema allows no other keys".into(),
        },
    ];
    let d = doc(render_config_form(
        &schema,
        "/a",
        &state,
        Some(&Notice::Error("Not saved".into())),
    ));
    let beam = one(&d, "input#cfg-beam");
    assert_eq!(attr(beam, "aria-invalid"), "true");
    assert_eq!(
        attr(beam, "aria-describedby"),
        "cfg-beam--help cfg-beam--error"
    );
    assert!(attr(beam, "class").contains("input-error"));
    assert_eq!(attr(beam, "value"), "50");
    let err = one(&d, "p#cfg-beam--error.text-error[role=alert]");
    assert_eq!(text(err), "50 is greater than the maximum of 10");
    // The error sits in the same field group as its input.
    let group = one(&d, "div.form-control[data-field=beam]");
    let g = Html::parse_fragment(&group.html());
    one(&g, "#cfg-beam");
    one(&g, "#cfg-beam--error");
    assert_eq!(
        text(one(&d, "textarea#cfg-sizes")),
        "1\nx",
        "unreadable text shown as typed"
    );
    assert!(text(one(&d, "#cfg-sizes--error")).contains("line 2"));
    assert_eq!(count(&d, "[aria-invalid]"), 2);
    // An error about no shown field goes in the alert above the fields.
    let general = one(&d, "div.alert.alert-error[role=alert]:not(#config-notice)");
    assert!(text(general).contains("colour"));
    assert_eq!(text(one(&d, "#config-notice")), "Not saved");
}

#[test]
fn config_form_without_settings() {
    let d = doc(render_config_form(
        &json!({}),
        "/a",
        &FormState::default(),
        None,
    ));
    assert_eq!(text(one(&d, "form p")), "This plugin has no settings.");
    assert_eq!(count(&d, "button"), 0);
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn form_submission_is_read_by_schema() {
    let schema = rich_schema();
    let st = parse_config_form(
        &schema,
        &pairs(&[
            ("model", "large"),
            ("beam", " 7 "),
            ("temperature", ""),
            ("greeting", "hello there"),
            // `fast` unchecked: absent.
            ("maybe", ""),
            ("tags", "a\r\n\r\nb c\n"),
            ("sizes", "1\n 2 "),
            ("modes", "a"),
            ("modes", "c"),
            ("modes", "zzz"),
            ("extra", "{\"k\": [1]}"),
        ]),
    );
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    assert_eq!(
        Value::Object(st.values),
        json!({"model": "large", "beam": 7, "temperature": null, "greeting": "hello there",
               "fast": false, "maybe": null, "tags": ["a", "b c"], "sizes": [1, 2],
               "modes": ["a", "c"], "extra": {"k": [1]}})
    );
}

#[test]
fn form_submission_errors_keep_the_typed_text() {
    let schema = rich_schema();
    let st = parse_config_form(
        &schema,
        &pairs(&[
            ("model", "huge"),
            ("beam", "seven"),
            ("sizes", "1\nx"),
            ("extra", "{"),
            ("fast", "true"),
        ]),
    );
    let fields: Vec<&str> = st.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["model", "beam", "sizes", "extra"]);
    assert_eq!(st.raw.get("beam").map(String::as_str), Some("seven"));
    assert!(st.errors[1].reason.contains("not a whole number"));
    assert!(st.errors[2].reason.starts_with("line 2"));
    assert_eq!(st.values.get("fast"), Some(&json!(true)));
    assert!(!st.values.contains_key("beam"));
    // Empty non-nullable number: left out, so the default applies.
    let st = parse_config_form(&schema, &pairs(&[("beam", "")]));
    assert!(!st.values.contains_key("beam") && st.errors.is_empty());
}

#[test]
fn status_panel() {
    let urls = StatusUrls {
        live: "/p/live",
        load: "/p/load",
        unload: "/p/unload",
    };
    let s = LiveStatus {
        state: "ready".into(),
        restarts: 2,
        memory_rss_mb: Some(12.345),
        cpu_percent: Some(3.21),
        calls: 9,
        errors: 1,
        pid: Some(4242),
        drift: None,
    };
    let d = doc(render_status_panel(Some(&s), urls, None));
    one(&d, "div#plugin-status.card");
    let live = one(&d, "#plugin-status-live");
    assert_eq!(attr(live, "hx-get"), "/p/live");
    assert_eq!(attr(live, "hx-trigger"), "every 2s");
    assert_eq!(attr(live, "hx-swap"), "outerHTML");
    assert_eq!(
        text(one(&d, "span#plugin-state.badge.badge-success")),
        "ready"
    );
    assert_eq!(text(one(&d, "[data-stat=restarts]")), "2");
    assert_eq!(text(one(&d, "[data-stat=rss]")), "12.3 MB");
    assert_eq!(text(one(&d, "[data-stat=cpu]")), "3.2 %");
    assert_eq!(text(one(&d, "[data-stat=calls]")), "9");
    assert!(d
        .root_element()
        .text()
        .collect::<String>()
        .contains("pid 4242"));
    assert_eq!(count(&d, "[data-stat=drift]"), 0, "no drift, no badge");
    let b = one(&d, "button");
    assert_eq!(text(b), "Unload");
    assert_eq!(attr(b, "hx-post"), "/p/unload");
    assert_eq!(attr(b, "hx-target"), "#plugin-status");
    // Not loaded: no polling, a Load button, and an error when given.
    let d = doc(render_status_panel(None, urls, Some(HOSTILE)));
    assert_eq!(count(&d, "[hx-trigger]"), 0);
    assert_eq!(text(one(&d, "#plugin-state")), "not loaded");
    assert_eq!(attr(one(&d, "button"), "hx-post"), "/p/load");
    assert_eq!(count(&d, "script, img"), 0);
    let crashed = LiveStatus {
        state: "crashed".into(),
        ..LiveStatus::default()
    };
    let d = doc(render_live_status(Some(&crashed), "/l"));
    one(&d, "#plugin-state.badge-error");
    assert_eq!(text(one(&d, "[data-stat=rss]")), "—");
    // Drift between the manifest and the live worker is shown, escaped.
    let drifted = LiveStatus {
        state: "ready".into(),
        drift: Some(format!("config schema {HOSTILE}")),
        ..LiveStatus::default()
    };
    let d = doc(render_live_status(Some(&drifted), "/l"));
    let badge = one(&d, "span.badge.badge-warning[data-stat=drift]");
    assert_eq!(text(badge), format!("drift: config schema {HOSTILE}"));
    assert_eq!(count(&d, "script, img"), 0);
}
