//! The reservation ledger: what each loaded plugin holds (its declared minimum, on its GPU).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

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
    pub(super) entries: Mutex<BTreeMap<String, Reservation>>,
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
