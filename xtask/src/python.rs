//! The Python venv for the compatibility suite: cjm-plugin-system 0.0.28 from PyPI, cached
//! under `target/py-venv`.

use std::path::PathBuf;
use std::process::Command;

use crate::{root, run};

/// The pinned original.
const ORIGINAL: &str = "cjm-plugin-system==0.0.28";

/// The venv's interpreter, creating the venv first when it is missing or incomplete.
pub(crate) fn ensure_venv() -> Result<PathBuf, String> {
    let venv = root().join("target/py-venv");
    let python = venv.join("bin/python");
    let ready = || {
        Command::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m, cjm_plugin_system; \
                 assert m.version('cjm-plugin-system') == '0.0.28'",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready() {
        eprintln!("\n==> Python venv ready: {}", venv.display());
        return Ok(python);
    }
    let system = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
        .ok_or("no python3 on PATH: the compatibility suite needs Python 3.9+ (apt-get install python3 python3-venv)")?;
    if run(Command::new(system)
        .args(["-m", "venv", "--clear"])
        .arg(&venv))
    .is_err()
    {
        // Debian splits venv support into its own package.
        eprintln!("==> venv failed; installing python3-venv");
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get").args(["install", "-y", "python3-venv"]))?;
        run(Command::new(system)
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
    }
    run(Command::new(&python).args(["-m", "pip", "install", "--quiet", ORIGINAL])).map_err(
        |e| {
            format!(
                "{e}\ncannot install {ORIGINAL} from PyPI: the Python compatibility suite needs it"
            )
        },
    )?;
    if !ready() {
        return Err(format!(
            "{ORIGINAL} was installed but cannot be imported by {}",
            python.display()
        ));
    }
    Ok(python)
}
