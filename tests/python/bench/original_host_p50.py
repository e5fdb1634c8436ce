"""p50 of one call through the original's own host (its PluginManager, 0.0.46 or substrate).

Usage: python original_host_p50.py MANIFEST_DIR PLUGIN CALLS
Prints one JSON line: {"p50_us": ..., "calls": ...}. Run by tests/examples/bench_0046.rs.
"""

import json
import sys
import time
from pathlib import Path

try:
    from cjm_plugin_system.core.manager import PluginManager
except ImportError:
    from cjm_substrate.core.manager import PluginManager


def main():
    manifests, name, calls = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    pm = PluginManager(search_paths=[manifests])
    meta = next(m for m in pm.discover_manifests() if m.name == name)
    if not pm.load_plugin(meta, {}):
        sys.exit(f"the original's host could not load {name}")
    try:
        for _ in range(50):
            pm.execute_plugin(name, action="state")
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            pm.execute_plugin(name, action="state")
            times.append(time.perf_counter() - t0)
    finally:
        pm.unload_all()
    times.sort()
    print(json.dumps({"p50_us": times[len(times) // 2] * 1e6, "calls": calls}))


if __name__ == "__main__":
    main()
