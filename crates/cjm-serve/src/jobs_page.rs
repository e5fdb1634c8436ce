//! The jobs page (`/jobs`): every job with its state, progress and message, updated live from
//! server-sent events (`/jobs/stream`), a cancel button per unfinished job, and the tail of the
//! selected job's worker log.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cjm_jobs::{Job, JobFilter};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::service::Service;

/// Jobs shown when the page opens (newest first); later ones arrive as events.
const SHOWN: usize = 200;

pub(crate) fn routes() -> Router<Service> {
    Router::new()
        .route("/jobs", get(page))
        .route("/jobs/stream", get(stream))
}

fn row(j: &Job) -> Markup {
    let progress = j.progress.map(|p| (p * 100.0).round());
    html! {
        tr id={ "job-" (j.id) } data-job=(j.id) data-target=(j.target) {
            td class="font-mono" { (j.id) }
            td { (j.target) }
            td class="job-state" { (j.state) }
            td {
                progress class="progress w-32 job-progress" max="100"
                    value=(progress.unwrap_or(0.0)) {}
                span class="job-percent ml-2" {
                    @if let Some(p) = progress { (p) "%" }
                }
            }
            td class="job-message" {
                @if let Some(e) = &j.error { (e.message) } @else { (j.message.as_deref().unwrap_or("")) }
            }
            td {
                @if !j.state.is_terminal() {
                    button class="btn btn-xs btn-error job-cancel" type="button" { "Cancel" }
                }
            }
        }
    }
}

async fn page(State(s): State<Service>) -> Response {
    let jobs = match s.jobs() {
        Ok(j) => j.list(&JobFilter {
            limit: Some(SHOWN),
            ..JobFilter::default()
        }),
        Err(why) => {
            return Html(
                html! { (DOCTYPE) html { body { p { "Jobs are not available: " (why) } } } }
                    .into_string(),
            )
            .into_response()
        }
    };
    let doc = html! {
        (DOCTYPE)
        html lang="en" data-theme="light" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "cjm — jobs" }
                link rel="stylesheet" href="/static/app.css";
            }
            body class="min-h-screen bg-base-200" {
                header class="navbar bg-base-100 shadow-sm" {
                    a class="btn btn-ghost text-xl" href="/" { "cjm" }
                    span class="ml-2" { "Jobs" }
                    span id="jobs-live" class="badge badge-ghost ml-auto" { "connecting" }
                }
                main class="p-4" {
                    table id="jobs" class="table table-sm bg-base-100" {
                        thead { tr { th { "Job" } th { "Plugin" } th { "State" } th { "Progress" } th { "Message" } th {} } }
                        tbody id="jobs-body" { @for j in &jobs { (row(j)) } }
                    }
                    section class="mt-4" {
                        h2 class="font-bold" { "Worker log " span id="log-of" {} }
                        pre id="job-log" class="bg-base-100 p-2 text-xs overflow-auto max-h-64" { "Select a job to see its worker's last lines." }
                    }
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    Html(doc.into_string()).into_response()
}

/// Keeps the table live: each `job` event carries the job as it stands (JSON); text goes in
/// with `textContent`, never as HTML.
const SCRIPT: &str = r#"
(function () {
  var body = document.getElementById('jobs-body');
  var live = document.getElementById('jobs-live');
  var terminal = {succeeded: 1, failed: 1, cancelled: 1, interrupted: 1};
  function cell(tr, cls) { return tr.querySelector('.' + cls); }
  function build(j) {
    var tr = document.createElement('tr');
    tr.id = 'job-' + j.id; tr.dataset.job = j.id; tr.dataset.target = j.target;
    ['font-mono', '', 'job-state', '', 'job-message', ''].forEach(function (c, i) {
      var td = document.createElement('td'); if (c) td.className = c; tr.appendChild(td);
    });
    tr.children[0].textContent = j.id; tr.children[1].textContent = j.target;
    var p = document.createElement('progress'); p.className = 'progress w-32 job-progress'; p.max = 100;
    var s = document.createElement('span'); s.className = 'job-percent ml-2';
    tr.children[3].appendChild(p); tr.children[3].appendChild(s);
    var b = document.createElement('button'); b.type = 'button';
    b.className = 'btn btn-xs btn-error job-cancel'; b.textContent = 'Cancel';
    tr.children[5].appendChild(b);
    body.insertBefore(tr, body.firstChild);
    return tr;
  }
  function update(j) {
    var tr = document.getElementById('job-' + j.id) || build(j);
    cell(tr, 'job-state').textContent = j.state;
    if (typeof j.progress === 'number') {
      cell(tr, 'job-progress').value = Math.round(j.progress * 100);
      cell(tr, 'job-percent').textContent = Math.round(j.progress * 100) + '%';
    }
    cell(tr, 'job-message').textContent = j.error ? j.error.message : (j.message || '');
    if (terminal[j.state]) { var b = tr.querySelector('.job-cancel'); if (b) b.remove(); }
  }
  var es = new EventSource('/jobs/stream');
  es.addEventListener('open', function () { live.textContent = 'live'; });
  es.addEventListener('error', function () { live.textContent = 'reconnecting'; });
  es.addEventListener('job', function (e) { update(JSON.parse(e.data)); });
  body.addEventListener('click', function (e) {
    var tr = e.target.closest('tr'); if (!tr) return;
    if (e.target.classList.contains('job-cancel')) {
      e.target.disabled = true;
      fetch('/api/v1/jobs/' + tr.dataset.job + '/cancel',
            {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'});
      return;
    }
    document.getElementById('log-of').textContent = '(' + tr.dataset.target + ')';
    fetch('/api/v1/plugins/' + encodeURIComponent(tr.dataset.target) + '/logs?lines=20')
      .then(function (r) { return r.json(); })
      .then(function (v) { document.getElementById('job-log').textContent = (v.lines || []).join('\n'); });
  });
})();
"#;

/// Server-sent events: `event: job` with the job as it stands after each of its events.
async fn stream(State(s): State<Service>) -> Response {
    let Ok(jobs) = s.jobs().cloned() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "jobs are not available",
        )
            .into_response();
    };
    let sub = jobs.watch(None);
    let events = futures::stream::unfold((sub, jobs), |(mut sub, jobs)| async move {
        loop {
            let ev = sub.next().await?;
            if let Some(job) = jobs.get(&ev.job) {
                let data = serde_json::to_string(&job).unwrap_or_default();
                let event = Event::default().event("job").data(data);
                return Some((Ok::<_, Infallible>(event), (sub, jobs)));
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
