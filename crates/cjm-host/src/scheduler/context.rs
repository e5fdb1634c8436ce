//! [`ResourceContext`]: what policies decide with — the monitor's readings net of other
//! plugins' reservations, eviction candidates, eviction, and the grant methods that write the
//! ledger.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cjm_core::error::ResourceShortfall;
use cjm_core::PluginError;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::monitor::{SystemMonitor, SystemSnapshot};

use super::{Admission, Grant, Ledger, Phase, Reservation};

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

/// Readings, the ledger and eviction, for [`Scheduler`](super::Scheduler)s. One per manager.
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
    pub(super) fn subscribe(&self) -> (watch::Receiver<u64>, Option<watch::Receiver<u64>>) {
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
pub(super) fn refusal(
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
