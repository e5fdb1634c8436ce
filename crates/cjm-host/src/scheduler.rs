//! Admission of plugins and calls against resources.
//!
//! The manager asks its [`Scheduler`] twice: when a plugin loads ([`Phase::Load`], before its
//! worker spawns: the grant says which GPU it goes to, and a reservation for its declared
//! minimum is written into the [`Ledger`]), and before every call ([`Phase::Call`]) on the
//! sync, async and streaming paths alike. Policies decide with a [`ResourceContext`]: the
//! monitor's readings net of other plugins' reservations, eviction candidates, and eviction.
//!
//! Three policies come with the host: [`PermissiveScheduler`] (the default: places, never
//! refuses), [`SafetyScheduler`] (refuses what does not fit, after evicting idle plugins when
//! that can free enough) and [`QueueScheduler`] (waits until it fits: bounded, cancellable,
//! fair by priority then arrival).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cjm_core::error::ResourceShortfall;
use cjm_core::{CancellationToken, PluginError, Resources};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::monitor::{SystemMonitor, SystemSnapshot};

/// When the scheduler is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The plugin is being loaded; its worker has not started. The grant places it.
    Load,
    /// A call is about to run on the loaded plugin.
    Call,
}

/// What a load or a call asks for.
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    /// The plugin.
    pub plugin: &'a str,
    /// Its declared resources.
    pub resources: &'a Resources,
    /// Load or call.
    pub phase: Phase,
    /// At [`Phase::Call`], the GPU the plugin was placed on; at [`Phase::Load`], a GPU the
    /// manifest pins (`CUDA_VISIBLE_DEVICES` set to one index in its `env_vars`).
    pub gpu: Option<u32>,
    /// Higher goes first when calls queue (default 0).
    pub priority: i32,
    /// Cancels a wait (the call's cancellation token).
    pub cancel: Option<CancellationToken>,
    /// No wait goes past this instant (the call's deadline).
    pub deadline: Option<Instant>,
}

impl<'a> Admission<'a> {
    /// A call of `plugin` with these resources, priority 0, no GPU, no cancellation.
    pub fn new(plugin: &'a str, resources: &'a Resources, phase: Phase) -> Self {
        Self {
            plugin,
            resources,
            phase,
            gpu: None,
            priority: 0,
            cancel: None,
            deadline: None,
        }
    }

    /// VRAM needed on one GPU, MB.
    pub fn vram_mb(&self) -> u64 {
        self.resources.min_gpu_vram_mb.unwrap_or(0)
    }

    /// System RAM needed, MB.
    pub fn ram_mb(&self) -> u64 {
        self.resources.min_system_ram_mb.unwrap_or(0)
    }

    /// True if the plugin needs a GPU (declared, or a VRAM minimum).
    pub fn needs_gpu(&self) -> bool {
        self.resources.requires_gpu || self.vram_mb() > 0
    }

    /// True if anything is declared that the scheduler can check.
    pub fn has_needs(&self) -> bool {
        self.needs_gpu() || self.ram_mb() > 0
    }
}

/// A scheduler's yes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The GPU the plugin is (to be) placed on: its worker starts with
    /// `CUDA_VISIBLE_DEVICES` set to it.
    pub gpu: Option<u32>,
}

/// A resource allocation policy. Write your own with the [`ResourceContext`] helpers:
/// [`try_grant`](ResourceContext::try_grant) (check and reserve),
/// [`try_grant_evicting`](ResourceContext::try_grant_evicting),
/// [`grant_anyway`](ResourceContext::grant_anyway), [`changed`](ResourceContext::changed).
#[async_trait]
pub trait Scheduler: Send + Sync + std::fmt::Debug {
    /// Admits the load or call, or refuses it with a `resource` error saying what was needed
    /// and what was available. May wait (a queueing policy). At [`Phase::Load`] an `Ok` must
    /// come from a `ResourceContext` grant method, which records the reservation.
    async fn admit(
        &self,
        request: &Admission<'_>,
        ctx: &ResourceContext,
    ) -> Result<Grant, PluginError>;

    /// A call has started.
    fn on_start(&self, _plugin: &str) {}

    /// A call has finished.
    fn on_finish(&self, _plugin: &str) {}
}

// ---- the ledger ---------------------------------------------------------------------------

/// What one loaded plugin holds: its declared minimum, on the GPU it was placed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The plugin.
    pub plugin: String,
    /// Its GPU.
    pub gpu: Option<u32>,
    /// VRAM reserved on that GPU, MB.
    pub vram_mb: u64,
    /// System RAM reserved, MB.
    pub ram_mb: u64,
}

/// Reservations by plugin. A reservation counts against free memory for every other plugin's
/// admission, less what the plugin's own processes already use (that is in the readings), so
/// two admissions never count the same free memory.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: Mutex<BTreeMap<String, Reservation>>,
}

impl Ledger {
    /// Every reservation, by plugin name.
    pub fn reservations(&self) -> Vec<Reservation> {
        self.entries
            .lock()
            .map(|g| g.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The reservation of `plugin`.
    pub fn get(&self, plugin: &str) -> Option<Reservation> {
        self.entries.lock().ok()?.get(plugin).cloned()
    }
}

// ---- the context ---------------------------------------------------------------------------

/// One loaded plugin as the scheduler sees it.
#[derive(Debug, Clone)]
pub(crate) struct HostPlugin {
    pub name: String,
    /// The worker's pid (none in-process).
    pub pid: Option<u32>,
    /// Ready (or dead) with no call in flight.
    pub idle: bool,
    pub last_executed_ms: u64,
}

/// What the manager lets a scheduler do.
#[async_trait]
pub(crate) trait Host: Send + Sync {
    /// The loaded plugins.
    fn plugins(&self) -> Vec<HostPlugin>;
    /// Unloads `name` if it is still idle; returns the pids it had.
    async fn evict(&self, name: &str) -> Result<Vec<u32>, PluginError>;
}

/// A loaded plugin that could be unloaded to free a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictionCandidate {
    /// The plugin.
    pub plugin: String,
    /// Unix time in ms of its last call (0: never called).
    pub last_executed_ms: u64,
    /// MB it would free: the larger of its reservation and what its processes use.
    pub frees_mb: u64,
}

/// Which resource is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Vram(u32),
    Ram,
}

/// Readings net of reservations, from one requester's point of view.
#[derive(Debug, Clone)]
struct View {
    /// Effective free VRAM per GPU index (may be negative when over-committed).
    gpu_free: BTreeMap<u32, i64>,
    /// Effective available RAM; `None` when the monitor does not know.
    ram_avail: Option<i64>,
    /// VRAM the requester still needs on its GPU (its own use counts towards the minimum),
    /// per GPU index.
    vram_need: BTreeMap<u32, u64>,
    /// RAM the requester still needs.
    ram_need: u64,
    /// Other plugins and what they would free, per resource.
    holders: Vec<Holder>,
}

#[derive(Debug, Clone)]
struct Holder {
    plugin: HostPlugin,
    vram: BTreeMap<u32, u64>,
    ram: u64,
}

/// Readings, the ledger and eviction, for [`Scheduler`]s. One per manager.
pub struct ResourceContext {
    monitor: Arc<dyn SystemMonitor>,
    ledger: Ledger,
    host: Arc<dyn Host>,
    changes: watch::Sender<u64>,
    /// Pids of evicted workers whose memory may still show in the readings for a moment.
    released: Mutex<BTreeSet<u32>>,
    /// Held while a load checks and reserves.
    placing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ResourceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceContext")
            .field("monitor", &self.monitor)
            .field("ledger", &self.ledger)
            .finish()
    }
}

/// A megabyte figure as a signed one for free-memory arithmetic: values beyond `i64::MAX` (no
/// machine has them; a manifest may still say so) saturate instead of wrapping negative.
fn mb(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn short(resource: &str, needed: u64, available: i64) -> ResourceShortfall {
    ResourceShortfall {
        resource: resource.into(),
        needed: needed as f64,
        available: available.max(0) as f64,
    }
}

impl ResourceContext {
    pub(crate) fn new(monitor: Arc<dyn SystemMonitor>, host: Arc<dyn Host>) -> Self {
        Self {
            monitor,
            ledger: Ledger::default(),
            host,
            changes: watch::channel(0).0,
            released: Mutex::new(BTreeSet::new()),
            placing: tokio::sync::Mutex::new(()),
        }
    }

    /// The monitor.
    pub fn monitor(&self) -> &Arc<dyn SystemMonitor> {
        &self.monitor
    }

    /// The reservations.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The monitor's readings, taken off the async threads.
    pub async fn snapshot(&self) -> SystemSnapshot {
        let m = Arc::clone(&self.monitor);
        match tokio::task::spawn_blocking(move || m.snapshot()).await {
            Ok(s) => s,
            Err(_) => self.monitor.snapshot(),
        }
    }

    /// Resolves when a reservation is released or the monitor says its readings changed:
    /// the moment for a waiting policy to re-check (it should also poll: real monitors do not
    /// announce changes).
    pub async fn changed(&self) {
        let mut ledger = self.changes.subscribe();
        ledger.borrow_and_update();
        match self.monitor.subscribe() {
            Some(mut m) => {
                m.borrow_and_update();
                tokio::select! {
                    _ = ledger.changed() => {}
                    _ = m.changed() => {}
                }
            }
            None => {
                let _ = ledger.changed().await;
            }
        }
    }

    /// Subscribes to the same changes as [`changed`](Self::changed), so a waiter can
    /// subscribe before checking and miss nothing.
    fn subscribe(&self) -> (watch::Receiver<u64>, Option<watch::Receiver<u64>>) {
        (self.changes.subscribe(), self.monitor.subscribe())
    }

    pub(crate) fn release(&self, plugin: &str) {
        let removed = self
            .ledger
            .entries
            .lock()
            .ok()
            .and_then(|mut g| g.remove(plugin));
        if removed.is_some() {
            tracing::debug!(plugin, "reservation released");
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Builds the view for `req`: one snapshot, one `/proc` scan.
    async fn view(&self, req: &Admission<'_>) -> View {
        let snap = self.snapshot().await;
        let plugins = self.host.plugins();
        let roots: Vec<u32> = plugins.iter().filter_map(|p| p.pid).collect();
        let mon = Arc::clone(&self.monitor);
        let pids_of: HashMap<u32, Vec<u32>> = tokio::task::spawn_blocking(move || {
            let mut out = crate::platform::subtrees(&roots);
            for (root, pids) in out.iter_mut() {
                pids.push(*root);
            }
            out
        })
        .await
        .unwrap_or_default();
        let released: Vec<u32> = self
            .released
            .lock()
            .map(|mut g| {
                // Forget pids the readings no longer show.
                g.retain(|p| snap.gpus.iter().any(|gpu| gpu.used_by(&[*p]) > 0));
                g.iter().copied().collect()
            })
            .unwrap_or_default();
        let reservations: BTreeMap<String, Reservation> = self
            .ledger
            .entries
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default();

        let mut gpu_free: BTreeMap<u32, i64> = snap
            .gpus
            .iter()
            .map(|g| {
                (
                    g.index,
                    mb(g.free_mb).saturating_add(mb(g.used_by(&released))),
                )
            })
            .collect();
        let mut ram_avail = (snap.ram_total_mb > 0).then_some(mb(snap.ram_available_mb));
        let mut vram_need = BTreeMap::new();
        let mut ram_need = req.ram_mb();
        let mut holders = Vec::new();
        let empty = Vec::new();
        for p in plugins.iter() {
            let pids = p.pid.and_then(|r| pids_of.get(&r)).unwrap_or(&empty);
            let used: BTreeMap<u32, u64> = snap
                .gpus
                .iter()
                .map(|g| (g.index, g.used_by(pids)))
                .collect();
            let rss = if pids.is_empty() {
                0
            } else {
                mon.process_ram_mb(pids)
            };
            let r = reservations.get(&p.name);
            if p.name == req.plugin {
                for (&g, &u) in &used {
                    vram_need.insert(g, req.vram_mb().saturating_sub(u));
                }
                ram_need = ram_need.saturating_sub(rss);
                continue;
            }
            let mut vram = BTreeMap::new();
            for (&g, &u) in &used {
                let reserved = r.filter(|r| r.gpu == Some(g)).map_or(0, |r| r.vram_mb);
                // What is reserved but not yet in use is not free for anyone else.
                if let Some(free) = gpu_free.get_mut(&g) {
                    *free = free.saturating_sub(mb(reserved.saturating_sub(u)));
                }
                let frees = reserved.max(u);
                let placed_here = r.is_some_and(|r| r.gpu == Some(g));
                if frees > 0 || placed_here {
                    vram.insert(g, frees);
                }
            }
            let ram_reserved = r.map_or(0, |r| r.ram_mb);
            if let Some(avail) = ram_avail.as_mut() {
                *avail = avail.saturating_sub(mb(ram_reserved.saturating_sub(rss)));
            }
            holders.push(Holder {
                plugin: p.clone(),
                vram,
                ram: if ram_reserved > 0 {
                    ram_reserved.max(rss)
                } else {
                    0
                },
            });
        }
        // Reservations of plugins being loaded right now (not in the manager's map yet).
        for (name, r) in &reservations {
            if name == req.plugin || plugins.iter().any(|p| &p.name == name) {
                continue;
            }
            if let Some(free) = r.gpu.and_then(|g| gpu_free.get_mut(&g)) {
                *free = free.saturating_sub(mb(r.vram_mb));
            }
            if let Some(avail) = ram_avail.as_mut() {
                *avail = avail.saturating_sub(mb(r.ram_mb));
            }
        }
        for g in snap.gpus.iter() {
            vram_need.entry(g.index).or_insert(req.vram_mb());
        }
        View {
            gpu_free,
            ram_avail,
            vram_need,
            ram_need,
            holders,
        }
    }

    /// The GPU for `req` in `view`, or the shortfalls. `best_effort`: the GPU with the most
    /// free memory when none fits.
    fn pick(
        &self,
        req: &Admission<'_>,
        view: &View,
        best_effort: bool,
    ) -> Result<Grant, (Vec<ResourceShortfall>, Vec<Need>)> {
        let mut shortfalls = Vec::new();
        let mut needs = Vec::new();
        let mut gpu = None;
        if req.needs_gpu() && !view.gpu_free.is_empty() {
            let allowed: Vec<(u32, i64, u64)> = view
                .gpu_free
                .iter()
                .filter(|(g, _)| req.gpu.is_none_or(|p| p == **g))
                .map(|(&g, &free)| (g, free, view.vram_need.get(&g).copied().unwrap_or(0)))
                .collect();
            // Best fit: the GPU with the least free memory that still fits (ties: lowest
            // index), so large GPUs stay free for large plugins; with no minimum, the GPU
            // with the most free memory.
            let fit = if req.vram_mb() > 0 {
                allowed
                    .iter()
                    .filter(|(_, free, need)| *free >= mb(*need))
                    .min_by_key(|(g, free, _)| (*free, *g))
            } else {
                allowed
                    .iter()
                    .max_by_key(|(g, free, _)| (*free, Reverse(*g)))
            };
            match fit {
                Some(&(g, _, _)) => gpu = Some(g),
                None => {
                    let best = allowed
                        .iter()
                        .max_by_key(|(g, free, _)| (*free, Reverse(*g)));
                    match best {
                        Some(&(g, free, need)) => {
                            if best_effort {
                                gpu = Some(g);
                            } else {
                                shortfalls.push(short("gpu_vram_mb", need, free));
                                needs.extend(allowed.iter().map(|(g, _, _)| Need::Vram(*g)));
                            }
                        }
                        None => {
                            // The pinned GPU is not among the readings.
                            if !best_effort {
                                shortfalls.push(short("gpu_vram_mb", req.vram_mb(), 0));
                            }
                        }
                    }
                }
            }
        } else if req.needs_gpu() {
            tracing::warn!(
                plugin = req.plugin,
                "the plugin needs a GPU but the monitor reports none (no NVML?): not checked"
            );
            gpu = req.gpu;
        }
        if let Some(avail) = view.ram_avail {
            if view.ram_need > 0 && avail < mb(view.ram_need) && !best_effort {
                shortfalls.push(short("system_ram_mb", view.ram_need, avail));
                needs.push(Need::Ram);
            }
        }
        if shortfalls.is_empty() {
            Ok(Grant {
                gpu: gpu.or(req.gpu),
            })
        } else {
            Err((shortfalls, needs))
        }
    }

    fn record(&self, req: &Admission<'_>, grant: Grant) {
        if req.phase != Phase::Load {
            return;
        }
        let r = Reservation {
            plugin: req.plugin.to_owned(),
            gpu: grant.gpu,
            vram_mb: if grant.gpu.is_some() {
                req.vram_mb()
            } else {
                0
            },
            ram_mb: req.ram_mb(),
        };
        if r.gpu.is_none() && r.ram_mb == 0 {
            return;
        }
        tracing::debug!(plugin = req.plugin, gpu = ?r.gpu, vram_mb = r.vram_mb, ram_mb = r.ram_mb, "reserved");
        if let Ok(mut g) = self.ledger.entries.lock() {
            g.insert(req.plugin.to_owned(), r);
        }
    }

    /// Checks `req` against the readings net of reservations; at [`Phase::Load`] also picks
    /// the GPU (best fit on one GPU, never the sum across GPUs) and records the reservation.
    /// Plugins that declare nothing are granted without a reading.
    pub async fn try_grant(&self, req: &Admission<'_>) -> Result<Grant, Vec<ResourceShortfall>> {
        self.try_grant_inner(req).await.map_err(|(s, _, _)| s)
    }

    async fn try_grant_inner(
        &self,
        req: &Admission<'_>,
    ) -> Result<Grant, (Vec<ResourceShortfall>, Vec<Need>, View)> {
        // Loads check and reserve one at a time, so two never count the same free memory.
        let _placing = match req.phase {
            Phase::Load => Some(self.placing.lock().await),
            Phase::Call => None,
        };
        if !req.has_needs() {
            let grant = Grant { gpu: req.gpu };
            self.record(req, grant);
            return Ok(grant);
        }
        let view = self.view(req).await;
        match self.pick(req, &view, false) {
            Ok(grant) => {
                self.record(req, grant);
                Ok(grant)
            }
            Err((s, n)) => Err((s, n, view)),
        }
    }

    /// Grants `req` whatever the readings say (the permissive policy): at [`Phase::Load`]
    /// the plugin still goes to the GPU that fits best, or has the most free memory, and its
    /// reservation is recorded.
    pub async fn grant_anyway(&self, req: &Admission<'_>) -> Grant {
        if req.phase == Phase::Call || !req.needs_gpu() {
            let grant = Grant { gpu: req.gpu };
            if req.phase == Phase::Load {
                let _placing = self.placing.lock().await;
                self.record(req, grant);
            }
            return grant;
        }
        let _placing = self.placing.lock().await;
        let view = self.view(req).await;
        let grant = match self.pick(req, &view, false) {
            Ok(g) => g,
            Err(_) => self
                .pick(req, &view, true)
                .unwrap_or(Grant { gpu: req.gpu }),
        };
        self.record(req, grant);
        grant
    }

    /// Idle loaded plugins (never a busy one) that hold memory `req` is short of, least
    /// recently used first. Empty when nothing is short.
    pub async fn eviction_candidates(&self, req: &Admission<'_>) -> Vec<EvictionCandidate> {
        let Err((_, needs, view)) = self.assess(req).await else {
            return Vec::new();
        };
        let mut out: Vec<EvictionCandidate> = Vec::new();
        for need in needs {
            for c in candidates(&view, need) {
                if !out.iter().any(|o| o.plugin == c.plugin) {
                    out.push(c);
                }
            }
        }
        out.sort_by_key(|c| (c.last_executed_ms, c.plugin.clone()));
        out
    }

    /// Checks `req` without reserving anything.
    async fn assess(
        &self,
        req: &Admission<'_>,
    ) -> Result<Grant, (Vec<ResourceShortfall>, Vec<Need>, View)> {
        let view = self.view(req).await;
        match self.pick(req, &view, false) {
            Ok(g) => Ok(g),
            Err((s, n)) => Err((s, n, view)),
        }
    }

    /// Unloads the loaded plugin `plugin` to free what it holds (its worker's whole process
    /// subtree goes, and its reservation with it). Refuses a plugin with calls in flight.
    pub async fn evict(&self, plugin: &str) -> Result<(), PluginError> {
        let pids = self.host.evict(plugin).await?;
        tracing::info!(plugin, "evicted to free resources");
        if let Ok(mut g) = self.released.lock() {
            g.extend(pids);
        }
        self.release(plugin);
        Ok(())
    }

    /// [`try_grant`](Self::try_grant); when it fails, evicts idle plugins least recently used
    /// first — only where evicting can free enough, on one GPU — re-checking after each.
    /// Fails with a `resource` error, evicting nothing, when even evicting every idle holder
    /// would not free enough.
    pub async fn try_grant_evicting(&self, req: &Admission<'_>) -> Result<Grant, PluginError> {
        let mut evicted: Vec<String> = Vec::new();
        loop {
            let (shortfalls, needs, view) = match self.try_grant_inner(req).await {
                Ok(g) => return Ok(g),
                Err(e) => e,
            };
            let Some(victim) = plan(&view, &needs) else {
                return Err(refusal(req, &shortfalls, &evicted, true));
            };
            // A plugin evicted once and still listed means eviction is not freeing anything.
            if evicted.contains(&victim) {
                return Err(refusal(req, &shortfalls, &evicted, true));
            }
            tracing::info!(plugin = req.plugin, victim = %victim, "evicting to make room");
            match self.evict(&victim).await {
                Ok(()) => evicted.push(victim),
                Err(e) => {
                    tracing::debug!(victim = %victim, error = %e, "eviction refused");
                    return Err(refusal(req, &shortfalls, &evicted, true));
                }
            }
        }
    }
}

/// Holders of what `need` is short of, idle ones only, least recently used first.
fn candidates(view: &View, need: Need) -> Vec<EvictionCandidate> {
    let mut out: Vec<EvictionCandidate> = view
        .holders
        .iter()
        .filter(|h| h.plugin.idle)
        .filter_map(|h| {
            let frees = match need {
                Need::Vram(g) => *h.vram.get(&g)?,
                Need::Ram => h.ram,
            };
            (frees > 0).then(|| EvictionCandidate {
                plugin: h.plugin.name.clone(),
                last_executed_ms: h.plugin.last_executed_ms,
                frees_mb: frees,
            })
        })
        .collect();
    out.sort_by_key(|c| (c.last_executed_ms, c.plugin.clone()));
    out
}

/// The next plugin to evict for `needs`, or `None` when evicting every idle holder would not
/// free enough. VRAM first (on the GPU closest to fitting), then RAM.
fn plan(view: &View, needs: &[Need]) -> Option<String> {
    let mut best: Option<(i64, String)> = None;
    let gpus: Vec<u32> = needs
        .iter()
        .filter_map(|n| match n {
            Need::Vram(g) => Some(*g),
            Need::Ram => None,
        })
        .collect();
    for g in gpus {
        let free = view.gpu_free.get(&g).copied().unwrap_or(0);
        let need = mb(view.vram_need.get(&g).copied().unwrap_or(0));
        let cands = candidates(view, Need::Vram(g));
        let reclaim = cands
            .iter()
            .fold(0i64, |sum, c| sum.saturating_add(mb(c.frees_mb)));
        if free.saturating_add(reclaim) < need || cands.is_empty() {
            continue;
        }
        // The GPU needing the least reclaimed wins.
        let missing = need.saturating_sub(free);
        if best.as_ref().is_none_or(|(m, _)| missing < *m) {
            best = Some((missing, cands[0].plugin.clone()));
        }
    }
    if gpus_short(needs) {
        return best.map(|(_, p)| p);
    }
    if needs.contains(&Need::Ram) {
        let avail = view.ram_avail.unwrap_or(0);
        let cands = candidates(view, Need::Ram);
        let reclaim = cands
            .iter()
            .fold(0i64, |sum, c| sum.saturating_add(mb(c.frees_mb)));
        if avail.saturating_add(reclaim) >= mb(view.ram_need) {
            return cands.first().map(|c| c.plugin.clone());
        }
    }
    None
}

fn gpus_short(needs: &[Need]) -> bool {
    needs.iter().any(|n| matches!(n, Need::Vram(_)))
}

/// The `resource` error for `req`.
fn refusal(
    req: &Admission<'_>,
    shortfalls: &[ResourceShortfall],
    evicted: &[String],
    tried_eviction: bool,
) -> PluginError {
    let what: Vec<String> = shortfalls
        .iter()
        .map(|s| match s.resource.as_str() {
            "gpu_vram_mb" => format!(
                "{} MB of VRAM on one GPU (at most {} MB free on a GPU it may use)",
                s.needed, s.available
            ),
            "system_ram_mb" => format!(
                "{} MB of system RAM ({} MB available)",
                s.needed, s.available
            ),
            other => format!("{} {other} ({} available)", s.needed, s.available),
        })
        .collect();
    let mut msg = if what.is_empty() {
        format!(
            "plugin `{}` was not admitted: waiters of higher priority or earlier arrival were ahead of it",
            req.plugin
        )
    } else {
        format!("plugin `{}` needs {}", req.plugin, what.join(" and "))
    };
    if !evicted.is_empty() {
        msg.push_str(&format!(
            "; evicted {} and it still does not fit",
            evicted.join(", ")
        ));
    } else if tried_eviction {
        msg.push_str("; evicting idle plugins could not free enough");
    }
    PluginError::resource(msg, shortfalls.to_vec()).with_plugin(req.plugin)
}

// ---- policies ------------------------------------------------------------------------------

/// Admits everything (the default, as in the original). Loads are still placed on the GPU
/// that fits best, and reserved.
#[derive(Debug, Default, Clone, Copy)]
pub struct PermissiveScheduler;

#[async_trait]
impl Scheduler for PermissiveScheduler {
    async fn admit(
        &self,
        request: &Admission<'_>,
        ctx: &ResourceContext,
    ) -> Result<Grant, PluginError> {
        Ok(ctx.grant_anyway(request).await)
    }
}

/// Refuses a load or call whose declared minimum does not fit (VRAM on one GPU, system RAM),
/// after evicting idle plugins when that can free enough (on by default).
#[derive(Debug, Clone, Copy)]
pub struct SafetyScheduler {
    evict: bool,
}

impl Default for SafetyScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl SafetyScheduler {
    /// With eviction.
    pub fn new() -> Self {
        Self { evict: true }
    }

    /// Whether idle plugins may be evicted to make room.
    pub fn evict(mut self, on: bool) -> Self {
        self.evict = on;
        self
    }
}

#[async_trait]
impl Scheduler for SafetyScheduler {
    async fn admit(
        &self,
        request: &Admission<'_>,
        ctx: &ResourceContext,
    ) -> Result<Grant, PluginError> {
        if self.evict {
            ctx.try_grant_evicting(request).await
        } else {
            ctx.try_grant(request)
                .await
                .map_err(|s| refusal(request, &s, &[], false))
        }
    }
}

/// Waits until the declared minimum fits, up to a timeout, re-checking at every poll
/// interval and at once whenever a reservation is released, a call finishes or the monitor
/// announces new readings. Waiters go in order of priority, then arrival: only the first
/// one checks. A wait ends early when the call is cancelled or its deadline passes.
#[derive(Debug)]
pub struct QueueScheduler {
    timeout: Duration,
    poll: Duration,
    evict: bool,
    queue: Mutex<QueueState>,
    wake: Notify,
    len: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct QueueState {
    waiting: BTreeSet<(Reverse<i32>, u64)>,
    next: u64,
}

/// The original's defaults: wait up to 300 s, re-check every 2 s.
impl Default for QueueScheduler {
    fn default() -> Self {
        Self::new(Duration::from_secs(300), Duration::from_secs(2))
    }
}

impl QueueScheduler {
    /// Waits up to `timeout`, re-checking every `poll` (at least 1 ms). Eviction is on.
    pub fn new(timeout: Duration, poll: Duration) -> Self {
        Self {
            timeout,
            poll: poll.max(Duration::from_millis(1)),
            evict: true,
            queue: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            len: watch::channel(0).0,
        }
    }

    /// Whether idle plugins may be evicted to make room.
    pub fn evict(mut self, on: bool) -> Self {
        self.evict = on;
        self
    }

    /// Loads and calls waiting now.
    pub fn queued(&self) -> usize {
        *self.len.borrow()
    }

    /// The number waiting, as it changes (for a UI, or a test waiting until a call queues).
    pub fn watch_queued(&self) -> watch::Receiver<usize> {
        self.len.subscribe()
    }

    fn enqueue(&self, priority: i32) -> (Reverse<i32>, u64) {
        let mut g = match self.queue.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let ticket = (Reverse(priority), g.next);
        g.next += 1;
        g.waiting.insert(ticket);
        let n = g.waiting.len();
        drop(g);
        self.len.send_replace(n);
        ticket
    }

    fn leave(&self, ticket: (Reverse<i32>, u64)) {
        let n = match self.queue.lock() {
            Ok(mut g) => {
                g.waiting.remove(&ticket);
                g.waiting.len()
            }
            Err(p) => {
                let mut g = p.into_inner();
                g.waiting.remove(&ticket);
                g.waiting.len()
            }
        };
        self.len.send_replace(n);
        self.wake.notify_waiters();
    }

    fn is_first(&self, ticket: (Reverse<i32>, u64)) -> bool {
        self.queue
            .lock()
            .map(|g| g.waiting.first() == Some(&ticket))
            .unwrap_or(true)
    }

    async fn attempt(
        &self,
        request: &Admission<'_>,
        ctx: &ResourceContext,
    ) -> Result<Grant, Vec<ResourceShortfall>> {
        if self.evict {
            ctx.try_grant_evicting(request)
                .await
                .map_err(|e| e.details.resources.clone())
        } else {
            ctx.try_grant(request).await
        }
    }
}

/// Leaves the queue however the wait ends (the future may be dropped).
struct Ticket<'a> {
    queue: &'a QueueScheduler,
    ticket: (Reverse<i32>, u64),
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.leave(self.ticket);
    }
}

#[async_trait]
impl Scheduler for QueueScheduler {
    async fn admit(
        &self,
        request: &Admission<'_>,
        ctx: &ResourceContext,
    ) -> Result<Grant, PluginError> {
        if !request.has_needs() {
            return ctx
                .try_grant(request)
                .await
                .map_err(|s| refusal(request, &s, &[], false));
        }
        let started = Instant::now();
        let mut end = started + self.timeout;
        if let Some(d) = request.deadline {
            end = end.min(d);
        }
        let ticket = Ticket {
            queue: self,
            ticket: self.enqueue(request.priority),
        };
        let mut last = Vec::new();
        loop {
            // Subscribe before checking, so a change in between is not missed.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (mut ledger, mut monitor) = ctx.subscribe();
            ledger.borrow_and_update();
            if let Some(m) = monitor.as_mut() {
                m.borrow_and_update();
            }
            if request.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                return Err(cancelled(request, started));
            }
            if self.is_first(ticket.ticket) {
                match self.attempt(request, ctx).await {
                    // A waiter of higher priority arrived during the check: it goes first.
                    Ok(_) if !self.is_first(ticket.ticket) => {
                        if request.phase == Phase::Load {
                            ctx.release(request.plugin);
                        }
                        continue;
                    }
                    Ok(grant) => {
                        drop(ticket);
                        if started.elapsed() > self.poll {
                            tracing::info!(plugin = request.plugin, waited = ?started.elapsed(), "admitted after queueing");
                        }
                        return Ok(grant);
                    }
                    Err(s) => last = s,
                }
            }
            let monitor_changed = async {
                match monitor.as_mut() {
                    Some(m) => {
                        let _ = m.changed().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let cancel = async {
                match &request.cancel {
                    Some(c) => c.cancelled().await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = cancel => return Err(cancelled(request, started)),
                _ = tokio::time::sleep_until(end.into()) => {
                    drop(ticket);
                    let mut e = refusal(request, &last, &[], false);
                    e.message = format!(
                        "{} (waited {:.1} s in the queue)",
                        e.message,
                        started.elapsed().as_secs_f64()
                    );
                    return Err(e.retriable(true));
                }
                _ = tokio::time::sleep(self.poll) => {}
                _ = &mut woken => {}
                _ = ledger.changed() => {}
                _ = monitor_changed => {}
            }
        }
    }

    fn on_finish(&self, _plugin: &str) {
        self.wake.notify_waiters();
    }
}

fn cancelled(request: &Admission<'_>, started: Instant) -> PluginError {
    PluginError::cancelled(format!(
        "cancelled after {:.1} s waiting for resources",
        started.elapsed().as_secs_f64()
    ))
    .with_plugin(request.plugin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{FakeMonitor, GpuReading};

    /// A manager with no plugins loaded.
    struct NoPlugins;

    #[async_trait]
    impl Host for NoPlugins {
        fn plugins(&self) -> Vec<HostPlugin> {
            Vec::new()
        }
        async fn evict(&self, name: &str) -> Result<Vec<u32>, PluginError> {
            Err(PluginError::not_loaded(name))
        }
    }

    fn vram(mb: u64) -> Resources {
        Resources {
            requires_gpu: true,
            min_gpu_vram_mb: Some(mb),
            ..Resources::default()
        }
    }

    #[tokio::test]
    async fn queued_loads_go_by_priority_then_arrival() {
        let monitor = Arc::new(FakeMonitor::with(
            64_000,
            64_000,
            vec![GpuReading::new(0, 8000, 0)],
        ));
        let ctx = Arc::new(ResourceContext::new(monitor.clone(), Arc::new(NoPlugins)));
        let queue = Arc::new(QueueScheduler::new(
            Duration::from_secs(600),
            Duration::from_secs(600),
        ));
        let mut queued = queue.watch_queued();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let res = vram(6000);
        let mut tasks = Vec::new();
        // Arrival order: low, high, low2 (each waits until it is queued before the next).
        for (i, (name, priority)) in [("low", 0), ("high", 5), ("low2", 0)].iter().enumerate() {
            let (ctx, queue, tx, res) = (ctx.clone(), queue.clone(), tx.clone(), res.clone());
            let (name, priority) = (name.to_string(), *priority);
            tasks.push(tokio::spawn(async move {
                let mut req = Admission::new(&name, &res, Phase::Load);
                req.priority = priority;
                let grant = queue.admit(&req, &ctx).await;
                let _ = tx.send(name.clone());
                grant
            }));
            queued
                .wait_for(|&n| n == i + 1)
                .await
                .expect("the queue is alive");
        }
        // Room for one: the highest priority goes first although it came second.
        monitor.update(|s| s.gpus[0].free_mb = 6000);
        assert_eq!(rx.recv().await.as_deref(), Some("high"));
        ctx.release("high");
        assert_eq!(rx.recv().await.as_deref(), Some("low"));
        ctx.release("low");
        assert_eq!(rx.recv().await.as_deref(), Some("low2"));
        for t in tasks {
            let grant = t.await.expect("task").expect("admitted");
            assert_eq!(grant.gpu, Some(0));
        }
        assert_eq!(queue.queued(), 0);
    }

    #[tokio::test]
    async fn no_gpu_readings_leave_the_gpu_unchecked_and_unplaced() {
        let monitor = Arc::new(FakeMonitor::with(1000, 1000, vec![]));
        let ctx = ResourceContext::new(monitor, Arc::new(NoPlugins));
        let res = vram(6000);
        let grant = SafetyScheduler::new()
            .admit(&Admission::new("p", &res, Phase::Load), &ctx)
            .await
            .expect("admitted");
        assert_eq!(grant.gpu, None);
    }

    #[tokio::test]
    async fn needs_beyond_i64_are_refused_not_wrapped() {
        // 1e19 MB does not fit in an i64: a wrapping cast made it negative, and admitted.
        let huge = 10_000_000_000_000_000_000u64;
        let monitor = Arc::new(FakeMonitor::with(
            64_000,
            64_000,
            vec![GpuReading::new(0, 8000, 8000)],
        ));
        let ctx = ResourceContext::new(monitor, Arc::new(NoPlugins));
        let ram = Resources {
            min_system_ram_mb: Some(huge),
            ..Resources::default()
        };
        let err = SafetyScheduler::new()
            .admit(&Admission::new("p", &ram, Phase::Load), &ctx)
            .await
            .expect_err("1e19 MB of RAM is refused");
        assert_eq!(err.category, cjm_core::ErrorCategory::Resource);
        let err = SafetyScheduler::new()
            .admit(&Admission::new("p", &vram(huge), Phase::Load), &ctx)
            .await
            .expect_err("1e19 MB of VRAM is refused");
        assert_eq!(err.category, cjm_core::ErrorCategory::Resource);
        assert!(ctx.ledger().reservations().is_empty());
    }
}
