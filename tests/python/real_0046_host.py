"""Drives the original's own host (cjm-plugin-system 0.0.46's PluginManager) over a `.cjm/`
written by `cjm-ctl install-all`, for tests/tests/real_plugin_0046.rs.

    python real_0046_host.py MANIFESTS_DIR PLUGIN CONFIG_JSON < calls.json

calls.json is a list of `[task, method, kwargs]` (task `null`: a plain execute with kwargs).
Prints one JSON document: `{"compatible": verdict, "results": [...]}`, each result
`{"ok": value}` (typed results as their wire dicts) or `{"error": {"type", "message"}}`.
"""

import dataclasses
import json
import sys
from pathlib import Path

from cjm_plugin_system.core.manager import PluginManager


def plain(v):
    """A result as JSON: typed objects by their wire dict, containers recursively."""
    if hasattr(v, "to_dict"):
        return plain(v.to_dict())
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return plain(dataclasses.asdict(v))
    if isinstance(v, dict):
        if "__wire__" in v and "data" in v:
            return plain(v["data"])
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def main():
    # The original's host prints its progress to stdout: keep stdout for the answer.
    answer, sys.stdout = sys.stdout, sys.stderr
    manifests, plugin, config = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    calls = json.load(sys.stdin)
    pm = PluginManager(search_paths=[manifests])
    pm.discover_manifests()
    meta = next(m for m in pm.discovered if m.name == plugin)
    verdicts = {a.name: pm.check_adapter_compatibility(a, plugin)["compatible"]
                for a in getattr(pm, "adapter_manifests", [])}
    results = []
    try:
        if not pm.load_plugin(meta, config):
            raise SystemExit(f"the original's host could not load {plugin}")
        for task, method, kwargs in calls:
            try:
                if task is None:
                    r = pm.execute_plugin(plugin, **kwargs)
                else:
                    r = pm.execute_plugin_task(plugin, task, method, **kwargs)
                results.append({"ok": plain(r)})
            except Exception as e:  # the failure is the result under comparison
                results.append({"error": {"type": type(e).__name__, "message": str(e)}})
    finally:
        pm.unload_all()
    print(json.dumps({"compatible": verdicts, "results": results}), file=answer)


if __name__ == "__main__":
    main()
