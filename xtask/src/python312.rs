//! The Python 3.12 venvs of the tests, from PyPI, cached under `target/`: cjm-plugin-system
//! 0.0.46 and cjm-substrate for the 0.0.46-line suite (tests/tests/python_0046.rs), and Ray
//! with its dashboard (job server) for tests/tests/ray_placement.rs. A cold install takes
//! about 15 s for the first two and 21 s for Ray on a warm pip cache; a cached venv costs one
//! import check.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{root, run};

/// One venv: its folder under `target/`, the pinned requirement, and the distribution and
/// module whose import proves it ready.
struct Venv {
    dir: &'static str,
    requirement: &'static str,
    dist: &'static str,
    version: &'static str,
    module: &'static str,
    env: &'static str,
}

/// The venvs, each exported to the tests under its `env` variable.
const VENVS: [Venv; 3] = [
    Venv {
        dir: "target/py312-v0046",
        requirement: "cjm-plugin-system==0.0.46",
        dist: "cjm-plugin-system",
        version: "0.0.46",
        module: "cjm_plugin_system.core.worker",
        env: "CJM_TEST_PYTHON_0046",
    },
    Venv {
        dir: "target/py312-substrate",
        requirement: "cjm-substrate==0.0.74",
        dist: "cjm-substrate",
        version: "0.0.74",
        module: "cjm_substrate.core.worker",
        env: "CJM_TEST_PYTHON_SUBSTRATE",
    },
    Venv {
        dir: "target/py312-ray",
        requirement: "ray[default]==2.60.0",
        dist: "ray",
        version: "2.60.0",
        module: "ray.dashboard.modules.job.sdk",
        env: "CJM_TEST_RAY_PYTHON",
    },
];

/// A Python 3.12: `python3.12` on PATH, else the newest `~/.pyenv/versions/3.12*/bin/python`.
pub(crate) fn find_python312() -> Result<PathBuf, String> {
    let is_312 = |p: &Path| {
        Command::new(p)
            .args(["-c", "import sys; assert sys.version_info[:2] == (3, 12)"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let on_path = PathBuf::from("python3.12");
    if is_312(&on_path) {
        return Ok(on_path);
    }
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))
        .map(|p| p.join("versions"));
    let mut found: Vec<PathBuf> = pyenv
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("3.12"))
        .map(|e| e.path().join("bin/python"))
        .filter(|p| is_312(p))
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        "no Python 3.12 found (neither `python3.12` on PATH nor ~/.pyenv/versions/3.12*): the \
         0.0.46 and cjm-substrate suite needs it (cjm-plugin-system 0.0.46 requires \
         Python >= 3.12); install one, e.g. `pyenv install 3.12`"
            .to_owned()
    })
}

fn ready(python: &Path, v: &Venv) -> bool {
    let check = format!(
        "import importlib.metadata as m, {}; assert m.version('{}') == '{}'",
        v.module, v.dist, v.version
    );
    Command::new(python)
        .args(["-c", &check])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Creates whatever venv is missing or incomplete and exports each interpreter's path to the
/// tests (`CJM_TEST_PYTHON_0046`, `CJM_TEST_PYTHON_SUBSTRATE`, `CJM_TEST_RAY_PYTHON`).
pub(crate) fn ensure_venvs() -> Result<(), String> {
    let mut base: Option<PathBuf> = None;
    for v in &VENVS {
        let venv = root().join(v.dir);
        let python = venv.join("bin/python");
        if !ready(&python, v) {
            let system = match &base {
                Some(b) => b.clone(),
                None => base.insert(find_python312()?).clone(),
            };
            let started = std::time::Instant::now();
            run(Command::new(&system)
                .args(["-m", "venv", "--clear"])
                .arg(&venv))?;
            run(Command::new(&python).args(["-m", "pip", "install", "--quiet", v.requirement]))
                .map_err(|e| {
                    format!(
                        "{e}\ncannot install {} from PyPI into {}",
                        v.requirement,
                        venv.display()
                    )
                })?;
            if !ready(&python, v) {
                return Err(format!(
                    "{} was installed but `{}` cannot be imported by {}",
                    v.requirement,
                    v.module,
                    python.display()
                ));
            }
            eprintln!(
                "==> {} installed in {:.1} s",
                v.requirement,
                started.elapsed().as_secs_f64()
            );
        }
        eprintln!("\n==> Python venv ready: {}", venv.display());
        std::env::set_var(v.env, &python);
    }
    Ok(())
}

/// Where the real published plugin is installed (tests/tests/real_plugin_0046.rs).
const REAL_DIR: &str = "target/real-0046";

/// The plugins file `cjm-ctl install-all` reads, and the shim standing in for conda.
const REAL_PLUGINS: &str = "tests/python/conda-shim/plugins.yaml";
const CONDA_SHIM: &str = "tests/python/conda-shim";

/// The most an install may take (a cold one measured 12 s with a warm pip cache).
const REAL_INSTALL_LIMIT_S: u32 = 600;

/// Installs the real published plugin and its adapter (tests/python/conda-shim/plugins.yaml)
/// with the original's own `cjm-ctl install-all` from the 0.0.46 venv, conda mapped onto venvs
/// by the test shim, into `target/real-0046` (envs under `envs/`, the `.cjm` data root under
/// `cjm/`). Cached: a stamp holds the plugins file it was made from, so a changed file
/// reinstalls. Exports the folder to the tests as `CJM_TEST_REAL_0046`. Call after
/// [`ensure_venvs`].
pub(crate) fn ensure_real_plugin() -> Result<(), String> {
    let dir = root().join(REAL_DIR);
    let plugins = root().join(REAL_PLUGINS);
    let wanted = std::fs::read_to_string(&plugins)
        .map_err(|e| format!("cannot read {}: {e}", plugins.display()))?;
    let stamp = dir.join("installed-from.yaml");
    let manifests = dir.join("cjm/manifests");
    let done = std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted)
        && manifests.join("cjm-graph-plugin-sqlite.json").is_file()
        && manifests
            .join("adapter-graph-storage-GenericGraphStorageAdapter.json")
            .is_file();
    if !done {
        let started = std::time::Instant::now();
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let shim = root().join(CONDA_SHIM);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(std::iter::once(shim).chain(std::env::split_paths(&path)))
            .map_err(|e| format!("cannot put the conda shim on PATH: {e}"))?;
        let ctl = root().join("target/py312-v0046/bin/cjm-ctl");
        run(Command::new("timeout")
            .arg(REAL_INSTALL_LIMIT_S.to_string())
            .arg(&ctl)
            .args(["install-all", "--plugins"])
            .arg(&plugins)
            .env("PATH", path)
            .env("CJM_CONDA_SHIM_ROOT", &dir)
            .env("CJM_CONDA_SHIM_PYTHON", find_python312()?)
            .env("CJM_DATA_DIR", dir.join("cjm")))
        .map_err(|e| {
            format!(
                "{e}\ncannot install the real plugin of {} (within {REAL_INSTALL_LIMIT_S} s)",
                plugins.display()
            )
        })?;
        // install-all reports a failed manifest generation but exits 0: check the result.
        for m in [
            "cjm-graph-plugin-sqlite.json",
            "adapter-graph-storage-GenericGraphStorageAdapter.json",
        ] {
            if !manifests.join(m).is_file() {
                return Err(format!(
                    "cjm-ctl install-all wrote no {} (see its output above)",
                    manifests.join(m).display()
                ));
            }
        }
        std::fs::write(&stamp, &wanted)
            .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
        eprintln!(
            "==> real plugin installed by cjm-ctl install-all in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!("\n==> real plugin ready: {}", dir.display());
    std::env::set_var("CJM_TEST_REAL_0046", &dir);
    Ok(())
}
