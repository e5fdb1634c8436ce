//! Empirical resource profiles: what jobs of one plugin (or instance) with one configuration
//! actually used (peak and mean RAM of the worker's process tree, GPU memory, CPU, duration),
//! updated after each job. Admission uses them: a job whose configuration was never measured
//! runs alone the first time, and one whose measured peak RAM does not fit in the RAM
//! available now waits (without holding back other jobs).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What jobs of one (target, configuration) used, over `runs` jobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The plugin or instance.
    pub target: String,
    /// A digest of the configuration the jobs ran with.
    pub config_hash: String,
    /// Jobs measured.
    pub runs: u64,
    /// The highest RAM of the worker's process tree seen during a job, MB.
    pub peak_ram_mb: u64,
    /// The mean over jobs of each job's mean RAM, MB.
    pub mean_ram_mb: f64,
    /// The highest GPU memory seen, MB (0 without NVML).
    pub peak_gpu_mb: u64,
    /// The mean over jobs of the worker's CPU use, percent (of one core), where sampled.
    pub mean_cpu_percent: f64,
    /// The mean duration of a job's attempt, ms.
    pub mean_duration_ms: f64,
}

/// The samples of one running job.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    ram: Vec<u64>,
    gpu: u64,
    cpu: Vec<f64>,
}

impl Samples {
    pub(crate) fn ram(&mut self, mb: u64, gpu_mb: u64) {
        self.ram.push(mb);
        self.gpu = self.gpu.max(gpu_mb);
    }

    pub(crate) fn cpu(&mut self, percent: f64) {
        if percent.is_finite() && percent >= 0.0 {
            self.cpu.push(percent);
        }
    }
}

/// A digest of a configuration (canonical JSON: object keys sorted).
pub(crate) fn config_hash(config: &Value) -> String {
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), canonical(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(canonical(config).to_string().as_bytes());
    // 64 bits, as hex: plenty to tell one plugin's configurations apart.
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Every profile, by (target, configuration digest).
#[derive(Debug, Default)]
pub(crate) struct Profiles {
    by_key: HashMap<(String, String), Profile>,
}

impl Profiles {
    /// Profiles read back from the journal.
    pub(crate) fn from_saved(saved: Vec<Profile>) -> Self {
        Self {
            by_key: saved
                .into_iter()
                .map(|p| ((p.target.clone(), p.config_hash.clone()), p))
                .collect(),
        }
    }

    pub(crate) fn get(&self, target: &str, hash: &str) -> Option<&Profile> {
        self.by_key.get(&(target.to_owned(), hash.to_owned()))
    }

    /// Jobs measured on `target`, whatever their configuration.
    pub(crate) fn runs_of(&self, target: &str) -> u64 {
        self.by_key
            .iter()
            .filter(|((t, _), _)| t == target)
            .map(|(_, p)| p.runs)
            .sum()
    }

    pub(crate) fn all(&self) -> Vec<Profile> {
        let mut v: Vec<Profile> = self.by_key.values().cloned().collect();
        v.sort_by(|a, b| (&a.target, &a.config_hash).cmp(&(&b.target, &b.config_hash)));
        v
    }

    /// Folds one job's samples and duration into its profile; returns the profile as it now
    /// stands (to be saved).
    pub(crate) fn record(
        &mut self,
        target: &str,
        hash: &str,
        s: &Samples,
        duration_ms: f64,
    ) -> Profile {
        let p = self
            .by_key
            .entry((target.to_owned(), hash.to_owned()))
            .or_insert_with(|| Profile {
                target: target.to_owned(),
                config_hash: hash.to_owned(),
                ..Profile::default()
            });
        let n = p.runs as f64;
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        let ram: Vec<f64> = s.ram.iter().map(|&x| x as f64).collect();
        p.peak_ram_mb = p.peak_ram_mb.max(s.ram.iter().copied().max().unwrap_or(0));
        p.peak_gpu_mb = p.peak_gpu_mb.max(s.gpu);
        p.mean_ram_mb = (p.mean_ram_mb * n + mean(&ram)) / (n + 1.0);
        if !s.cpu.is_empty() {
            p.mean_cpu_percent = (p.mean_cpu_percent * n + mean(&s.cpu)) / (n + 1.0);
        }
        p.mean_duration_ms = (p.mean_duration_ms * n + duration_ms) / (n + 1.0);
        p.runs += 1;
        p.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn profiles_fold_incrementally_and_configs_hash_canonically() {
        assert_eq!(
            config_hash(&json!({"a": 1, "b": [1, {"y": 2, "x": 1}]})),
            config_hash(&json!({"b": [1, {"x": 1, "y": 2}], "a": 1}))
        );
        assert_ne!(config_hash(&json!({"a": 1})), config_hash(&json!({"a": 2})));
        let mut p = Profiles::default();
        let mut s = Samples::default();
        s.ram(10, 0);
        s.ram(30, 5);
        s.cpu(50.0);
        p.record("w", "h", &s, 100.0);
        let mut s = Samples::default();
        s.ram(40, 0);
        p.record("w", "h", &s, 300.0);
        let got = p.get("w", "h").unwrap();
        assert_eq!((got.runs, got.peak_ram_mb, got.peak_gpu_mb), (2, 40, 5));
        assert_eq!(got.mean_ram_mb, 30.0);
        assert_eq!(got.mean_duration_ms, 200.0);
        assert_eq!(got.mean_cpu_percent, 50.0);
        assert!(p.get("w", "other").is_none());
        // The digest is stable across builds (it keys saved profiles).
        assert_eq!(config_hash(&json!({})), "44136fa355b3678a");
    }
}
