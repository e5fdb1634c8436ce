//! The configuration form generated from a plugin's JSON Schema ([`render_config_form`]) and
//! the reading of its submission ([`parse_config_form`]).
//!
//! Each field has a `label for=` its input, its description and constraints as help text
//! (`aria-describedby`), and, after a rejected save, its error right under it
//! (`aria-invalid`, `#cfg-<key>--error`). The form carries `novalidate`: the server's schema
//! validation is the one source of truth, so every error reads the same and sits next to its
//! field. Errors that belong to no field (the whole object, unknown keys) go in an alert above
//! the fields.

use std::collections::BTreeMap;

use cjm_core::FieldError;
use maud::{html, Markup};
use serde_json::{Map, Number, Value};

use crate::features::plain;
use crate::ids;
use crate::schema_fields::{schema_fields, FieldKind, FieldSpec};

/// What the form shows: values, text the user typed that could not be read, and errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FormState {
    /// The configuration shown (and, after a submission, the one read from it).
    pub values: Map<String, Value>,
    /// The submitted text of fields whose text could not be read (shown back as typed).
    pub raw: BTreeMap<String, String>,
    /// Problems, each with the field it concerns (`""` for the whole configuration).
    pub errors: Vec<FieldError>,
}

impl FormState {
    /// A form showing `values` with no errors.
    pub fn new(values: Map<String, Value>) -> Self {
        Self {
            values,
            ..Self::default()
        }
    }

    /// Adds `errors` not already present (same field and reason).
    pub fn add_errors(&mut self, errors: impl IntoIterator<Item = FieldError>) {
        for e in errors {
            if !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
    }
}

/// A message above the form after a save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Saved (and perhaps applied): a success alert.
    Success(String),
    /// Saved, but something is off (e.g. the running worker refused it): a warning alert.
    Warning(String),
    /// Not saved: an error alert.
    Error(String),
}

/// The top-level key an error's field path (`tags/1`) concerns.
fn top_key(field: &str) -> &str {
    field.split('/').next().unwrap_or_default()
}

/// Reads a submitted form (`key=value` pairs, a key repeated for multiple selects) against
/// `schema`. Returns the configuration read, with the text of unreadable fields in
/// [`FormState::raw`] and a [`FieldError`] for each.
///
/// Per field: an empty input is `null` for a nullable field and left out otherwise (so the
/// schema's default applies, or `required` reports it), except text, which stays `""`; an
/// unchecked checkbox is `false`; a list has one item per line.
pub fn parse_config_form(schema: &Value, pairs: &[(String, String)]) -> FormState {
    let mut state = FormState::default();
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    for f in schema_fields(schema) {
        if f.read_only {
            continue;
        }
        let text = get(&f.key);
        let parsed = match &f.kind {
            FieldKind::Boolean if !f.nullable => Ok(Some(Value::Bool(text == Some("true")))),
            FieldKind::Array(item) => {
                if let FieldKind::Enum(values) = item.as_ref() {
                    let chosen: Vec<Value> = pairs
                        .iter()
                        .filter(|(k, _)| *k == f.key)
                        .filter_map(|(_, v)| find_enum(values, v).cloned())
                        .collect();
                    Ok(Some(Value::Array(chosen)))
                } else {
                    parse_lines(item, text.unwrap_or_default(), f.nullable)
                }
            }
            kind => parse_scalar(kind, text.unwrap_or_default(), f.nullable),
        };
        match parsed {
            Ok(Some(v)) => {
                state.values.insert(f.key.clone(), v);
            }
            Ok(None) => {}
            Err(reason) => {
                state
                    .raw
                    .insert(f.key.clone(), text.unwrap_or_default().to_owned());
                state.errors.push(FieldError {
                    field: f.key.clone(),
                    reason,
                });
            }
        }
    }
    state
}

fn find_enum<'a>(values: &'a [Value], text: &str) -> Option<&'a Value> {
    values.iter().find(|v| plain(v) == text)
}

/// One scalar: `Ok(None)` leaves the key out.
fn parse_scalar(kind: &FieldKind, text: &str, nullable: bool) -> Result<Option<Value>, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() && !matches!(kind, FieldKind::Text) {
        return Ok(nullable.then_some(Value::Null));
    }
    match kind {
        FieldKind::Text => Ok(Some(if text.is_empty() && nullable {
            Value::Null
        } else {
            Value::String(text.to_owned())
        })),
        FieldKind::Integer => trimmed
            .parse::<i64>()
            .map(|n| Some(Value::from(n)))
            .map_err(|_| format!("{trimmed:?} is not a whole number")),
        FieldKind::Number => trimmed
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(|n| Some(Value::Number(n)))
            .ok_or_else(|| format!("{trimmed:?} is not a number")),
        FieldKind::Boolean => match trimmed {
            "true" => Ok(Some(Value::Bool(true))),
            "false" => Ok(Some(Value::Bool(false))),
            other => Err(format!("{other:?} is not true or false")),
        },
        FieldKind::Enum(values) => find_enum(values, text)
            .map(|v| Some(v.clone()))
            .ok_or_else(|| format!("{text:?} is not one of the choices")),
        FieldKind::Json => serde_json::from_str(trimmed)
            .map(Some)
            .map_err(|e| format!("not valid JSON: {e}")),
        FieldKind::Array(_) => Err("nested lists are not supported".to_owned()),
    }
}

/// A list, one item per line (blank lines skipped).
fn parse_lines(item: &FieldKind, text: &str, nullable: bool) -> Result<Option<Value>, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() && nullable {
        return Ok(Some(Value::Null));
    }
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let text = if matches!(item, FieldKind::Text) {
            *line
        } else {
            line.trim()
        };
        match parse_scalar(item, text, false) {
            Ok(Some(v)) => out.push(v),
            Ok(None) => {}
            Err(reason) => return Err(format!("line {}: {reason}", i + 1)),
        }
    }
    Ok(Some(Value::Array(out)))
}

/// The text an input shows for `v`.
fn input_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::Array(items)) => items.iter().map(plain).collect::<Vec<_>>().join("\n"),
        Some(v) => plain(v),
    }
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// The small Markdown subset descriptions use, rendered safely: `**bold**`, `*em*` / `_em_`
/// and `` `code` `` become `strong`, `em` and `code`; everything else (including unmatched
/// markers) is shown as escaped text.
pub fn render_inline_markdown(text: &str) -> Markup {
    #[derive(Clone, Copy)]
    enum Span {
        Strong,
        Em,
        Code,
    }
    let mut parts: Vec<(Option<Span>, &str)> = Vec::new();
    let rest = text;
    let mut plain_start = 0usize;
    let mut i = 0usize;
    // Scans for the next marker whose closing partner exists; plain text runs in between.
    while i < rest.len() {
        let tail = &rest[i..];
        let found = if let Some(inner) = tail.strip_prefix("**") {
            inner
                .find("**")
                .filter(|n| *n > 0)
                .map(|n| (Span::Strong, 2, n, 2))
        } else if let Some(inner) = tail.strip_prefix('`') {
            inner
                .find('`')
                .filter(|n| *n > 0)
                .map(|n| (Span::Code, 1, n, 1))
        } else if let Some(inner) = tail.strip_prefix('*').or_else(|| tail.strip_prefix('_')) {
            let marker = if tail.starts_with('*') { '*' } else { '_' };
            let word_start = i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric());
            inner
                .find(marker)
                .filter(|n| *n > 0 && word_start && !inner.starts_with(' '))
                .map(|n| (Span::Em, 1, n, 1))
        } else {
            None
        };
        match found {
            Some((span, open, len, close)) => {
                if plain_start < i {
                    parts.push((None, &rest[plain_start..i]));
                }
                parts.push((Some(span), &rest[i + open..i + open + len]));
                i += open + len + close;
                plain_start = i;
            }
            None => {
                i += tail.chars().next().map_or(1, char::len_utf8);
            }
        }
    }
    if plain_start < rest.len() {
        parts.push((None, &rest[plain_start..]));
    }
    html! {
        @for (span, t) in &parts {
            @match span {
                None => (t),
                Some(Span::Strong) => strong { (t) },
                Some(Span::Em) => em { (t) },
                Some(Span::Code) => code { (t) },
            }
        }
    }
}

/// The constraint and default part of the help line (the description is shown before it).
/// A range the description already states (`from 0 to 2`) is not repeated, and a `pattern` is
/// never shown raw: it is the description's job to say what the value looks like.
fn help_text(f: &FieldSpec) -> String {
    let mut parts: Vec<String> = Vec::new();
    let description = f.description.as_deref().unwrap_or_default();
    let stated = |lo: f64, hi: f64| {
        let (lo, hi) = (fmt_num(lo), fmt_num(hi));
        let words: Vec<&str> = description
            .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .map(|w| w.trim_end_matches('.'))
            .collect();
        words.contains(&lo.as_str()) && words.contains(&hi.as_str())
    };
    let range = match (f.minimum, f.maximum) {
        (Some((lo, false)), Some((hi, false))) if stated(lo, hi) => None,
        (Some((lo, false)), Some((hi, false))) => {
            Some(format!("{} to {}", fmt_num(lo), fmt_num(hi)))
        }
        (lo, hi) => {
            let mut r = Vec::new();
            if let Some((v, ex)) = lo {
                r.push(format!("{} {}", if ex { ">" } else { "≥" }, fmt_num(v)));
            }
            if let Some((v, ex)) = hi {
                r.push(format!("{} {}", if ex { "<" } else { "≤" }, fmt_num(v)));
            }
            (!r.is_empty()).then(|| r.join(", "))
        }
    };
    parts.extend(range);
    match (f.min_length, f.max_length) {
        (Some(lo), Some(hi)) => parts.push(format!("{lo} to {hi} characters")),
        (Some(lo), None) => parts.push(format!("at least {lo} characters")),
        (None, Some(hi)) => parts.push(format!("at most {hi} characters")),
        (None, None) => {}
    }
    match (f.min_items, f.max_items) {
        (Some(lo), Some(hi)) => parts.push(format!("{lo} to {hi} items")),
        (Some(lo), None) => parts.push(format!("at least {lo} items")),
        (None, Some(hi)) => parts.push(format!("at most {hi} items")),
        (None, None) => {}
    }
    if matches!(f.kind, FieldKind::Array(ref k) if !matches!(**k, FieldKind::Enum(_))) {
        parts.push("one per line".to_owned());
    }
    if matches!(f.kind, FieldKind::Json) {
        parts.push("JSON".to_owned());
    }
    if f.nullable {
        parts.push("leave empty for none".to_owned());
    }
    if let Some(d) = &f.default {
        let shown = match d {
            Value::Array(_) | Value::Null => input_text(Some(d)).replace('\n', ", "),
            v => f
                .enum_label(v)
                .map_or_else(|| input_text(Some(v)), str::to_owned),
        };
        if !shown.is_empty() {
            parts.push(format!("default: {shown}"));
        }
    }
    parts.join(" · ")
}

/// The help line: the description (its Markdown rendered), then [`help_text`].
fn render_help(f: &FieldSpec, rest: &str) -> Markup {
    let description = f
        .description
        .as_deref()
        .map(|d| d.trim().trim_end_matches('.'))
        .filter(|d| !d.is_empty());
    html! {
        @if let Some(d) = description { (render_inline_markdown(d)) }
        @if description.is_some() && !rest.is_empty() { " · " }
        (rest)
    }
}

/// Renders the configuration form of `schema` posting to `action` (htmx, replacing itself),
/// without a reset button; see [`render_config_form_with_reset`].
pub fn render_config_form(
    schema: &Value,
    action: &str,
    state: &FormState,
    notice: Option<&Notice>,
) -> Markup {
    render_config_form_with_reset(schema, action, None, state, notice)
}

/// [`render_config_form`] plus, when `reset` is given, a "Reset to defaults" button
/// (`button#config-reset`) that asks for confirmation and then `POST`s to `reset`, whose answer
/// replaces the form.
pub fn render_config_form_with_reset(
    schema: &Value,
    action: &str,
    reset: Option<&str>,
    state: &FormState,
    notice: Option<&Notice>,
) -> Markup {
    let fields = schema_fields(schema);
    let general: Vec<&FieldError> = state
        .errors
        .iter()
        .filter(|e| !fields.iter().any(|f| f.key == top_key(&e.field)))
        .collect();
    html! {
        form id=(ids::CONFIG_FORM) class="card bg-base-100 mt-4" novalidate
            hx-post=(action) hx-target="this" hx-swap="outerHTML" {
            div class="card-body" {
                h3 class="card-title" { "Configuration" }
                @if let Some(n) = notice {
                    @let (class, text) = match n {
                        Notice::Success(t) => ("alert alert-success", t),
                        Notice::Warning(t) => ("alert alert-warning", t),
                        Notice::Error(t) => ("alert alert-error", t),
                    };
                    div id=(ids::CONFIG_NOTICE) class=(class) role=(if matches!(n, Notice::Success(_)) { "status" } else { "alert" }) {
                        span { (text) }
                    }
                }
                @if !general.is_empty() {
                    div class="alert alert-error" role="alert" {
                        ul {
                            @for e in &general {
                                li {
                                    @if !e.field.is_empty() { code { (e.field) } ": " }
                                    (e.reason)
                                }
                            }
                        }
                    }
                }
                @if fields.is_empty() {
                    p class="text-base-content/60" { "This plugin has no settings." }
                }
                @for f in &fields {
                    (render_field(f, state))
                }
                @if !fields.is_empty() {
                    div class="card-actions justify-end mt-2" {
                        @if let Some(reset) = reset {
                            button type="button" id=(ids::CONFIG_RESET) class="btn btn-outline btn-error"
                                hx-post=(reset) hx-target=(ids::as_selector(ids::CONFIG_FORM)) hx-swap="outerHTML"
                                hx-confirm="Reset every setting of this plugin to its default? The saved file is removed." {
                                "Reset to defaults"
                            }
                        }
                        button type="submit" class="btn btn-primary" { "Save" }
                    }
                }
            }
        }
    }
}

fn render_field(f: &FieldSpec, state: &FormState) -> Markup {
    let id = ids::field_id(&f.key);
    let help_id = ids::field_help_id(&f.key);
    let error_id = ids::field_error_id(&f.key);
    let errors: Vec<&FieldError> = state
        .errors
        .iter()
        .filter(|e| top_key(&e.field) == f.key)
        .collect();
    let invalid = !errors.is_empty();
    let help = help_text(f);
    let has_help = !help.is_empty() || f.description.is_some();
    let mut described = Vec::new();
    if has_help {
        described.push(help_id.clone());
    }
    if invalid {
        described.push(error_id.clone());
    }
    let described = (!described.is_empty()).then(|| described.join(" "));
    let value = state.values.get(&f.key);
    let text = state
        .raw
        .get(&f.key)
        .cloned()
        .unwrap_or_else(|| input_text(value));
    let a = Attrs {
        id: &id,
        name: &f.key,
        described: described.as_deref(),
        invalid,
        required: f.required,
        disabled: f.read_only,
    };
    html! {
        div class="form-control w-full mb-4" data-field=(f.key) {
            @if matches!(f.kind, FieldKind::Boolean) && !f.nullable {
                label class="label cursor-pointer justify-start gap-3" for=(id) {
                    input type="checkbox" class={ "checkbox" @if invalid { " checkbox-error" } } value="true"
                        id=(a.id) name=(a.name) aria-describedby=[a.described] aria-invalid=[a.invalid.then_some("true")]
                        disabled[a.disabled] checked[value == Some(&Value::Bool(true))];
                    span class="label-text font-medium" { (f.title) }
                }
            } @else {
                label class="label" for=(id) {
                    span class="label-text font-medium" { (f.title) }
                    @if f.required { span class="label-text-alt" { "required" } }
                }
                (render_input(f, &a, value, &text))
            }
            @if has_help {
                p id=(help_id) class="text-xs text-base-content/70 mt-1" { (render_help(f, &help)) }
            }
            @if invalid {
                p id=(error_id) class="text-error text-sm mt-1" role="alert" {
                    @for (i, e) in errors.iter().enumerate() {
                        @if i > 0 { br; }
                        @if e.field != f.key { code { (e.field) } ": " }
                        (e.reason)
                    }
                }
            }
        }
    }
}

struct Attrs<'a> {
    id: &'a str,
    name: &'a str,
    described: Option<&'a str>,
    invalid: bool,
    required: bool,
    disabled: bool,
}

fn render_input(f: &FieldSpec, a: &Attrs<'_>, value: Option<&Value>, text: &str) -> Markup {
    // `input input-bordered w-full` plus `input-error` when invalid. The classes this makes are
    // spelled out for the stylesheet build (assets/build-css.sh scans the sources):
    // input-error select-error textarea-error
    let err = |classes: &str| {
        let kind = classes.split(' ').next().unwrap_or_default();
        if a.invalid {
            format!("{classes} {kind}-error")
        } else {
            classes.to_owned()
        }
    };
    let inv = a.invalid.then_some("true");
    let num = |b: Option<(f64, bool)>| b.filter(|(_, ex)| !ex).map(|(v, _)| fmt_num(v));
    match &f.kind {
        FieldKind::Text => html! {
            input type="text" class=(err("input input-bordered w-full")) id=(a.id) name=(a.name) value=(text)
                minlength=[f.min_length] maxlength=[f.max_length] pattern=[f.pattern.as_deref()]
                aria-describedby=[a.described] aria-invalid=[inv] aria-required=[a.required.then_some("true")]
                disabled[a.disabled];
        },
        FieldKind::Integer | FieldKind::Number => html! {
            input type="number" class=(err("input input-bordered w-full")) id=(a.id) name=(a.name) value=(text)
                step=(if matches!(f.kind, FieldKind::Integer) { "1" } else { "any" })
                min=[num(f.minimum)] max=[num(f.maximum)]
                aria-describedby=[a.described] aria-invalid=[inv] aria-required=[a.required.then_some("true")]
                disabled[a.disabled];
        },
        FieldKind::Boolean => {
            // Nullable: a three-way choice.
            let current = match value {
                Some(Value::Bool(true)) => "true",
                Some(Value::Bool(false)) => "false",
                _ => "",
            };
            html! {
                select class=(err("select select-bordered w-full")) id=(a.id) name=(a.name)
                    aria-describedby=[a.described] aria-invalid=[inv] disabled[a.disabled] {
                    option value="" selected[current.is_empty()] { "— none —" }
                    option value="true" selected[current == "true"] { "Yes" }
                    option value="false" selected[current == "false"] { "No" }
                }
            }
        }
        FieldKind::Enum(values) => {
            let known = values.iter().any(|v| plain(v) == text);
            let blank = f.nullable || !known;
            html! {
                select class=(err("select select-bordered w-full")) id=(a.id) name=(a.name)
                    aria-describedby=[a.described] aria-invalid=[inv] aria-required=[a.required.then_some("true")]
                    disabled[a.disabled] {
                    @if blank {
                        option value="" selected[!known] { (if f.nullable { "— none —" } else { "— not set —" }) }
                    }
                    @for v in values {
                        @let t = plain(v);
                        option value=(t) selected[known && t == text] { (f.enum_label(v).unwrap_or(&t)) }
                    }
                }
            }
        }
        FieldKind::Array(item) => match item.as_ref() {
            FieldKind::Enum(values) => {
                let chosen: Vec<String> = match value {
                    Some(Value::Array(items)) => items.iter().map(plain).collect(),
                    _ => Vec::new(),
                };
                html! {
                    select multiple class=(err("select select-bordered w-full")) id=(a.id) name=(a.name)
                        size=(values.len().clamp(2, 8))
                        aria-describedby=[a.described] aria-invalid=[inv] disabled[a.disabled] {
                        @for v in values {
                            @let t = plain(v);
                            option value=(t) selected[chosen.contains(&t)] { (f.enum_label(v).unwrap_or(&t)) }
                        }
                    }
                }
            }
            _ => html! {
                textarea class=(err("textarea textarea-bordered w-full")) id=(a.id) name=(a.name) rows="3"
                    aria-describedby=[a.described] aria-invalid=[inv] disabled[a.disabled] { (text) }
            },
        },
        FieldKind::Json => {
            // A value read from the form or the file is shown pretty; unreadable text as typed.
            let shown = match value {
                Some(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
                None => text.to_owned(),
            };
            html! {
                textarea class=(err("textarea textarea-bordered w-full font-mono")) id=(a.id) name=(a.name) rows="4"
                    aria-describedby=[a.described] aria-invalid=[inv] disabled[a.disabled] { (shown) }
            }
        }
    }
}
