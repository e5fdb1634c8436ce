"""Test plugins, one class per behaviour the suite checks."""

import os
import subprocess
import threading
import time

from cjm_plugin_system.core.interface import PluginInterface


class _Base(PluginInterface):
    """Common boilerplate: a name, a version, a stored config."""

    plugin_name = "base"

    def __init__(self):
        self.config = {}
        self.children = []

    @property
    def name(self):
        return self.plugin_name

    @property
    def version(self):
        return "0.0.28-test"

    def initialize(self, config=None):
        self.config = dict(config or {})

    def execute(self, *args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    def get_config_schema(self):
        return {}

    def get_current_config(self):
        return self.config

    def cleanup(self):
        pass


class EchoPlugin(_Base):
    """Returns its arguments."""

    plugin_name = "py-echo"


class StreamPlugin(_Base):
    """Streams the words of `text`; raises at word `fail_at`."""

    plugin_name = "py-stream"

    def execute_stream(self, text="", fail_at=None, **kwargs):
        for i, word in enumerate(text.split()):
            if fail_at is not None and i == fail_at:
                raise RuntimeError(f"CUDA out of memory at word {i}")
            yield {"index": i, "word": word}


class SlowPlugin(_Base):
    """Sleeps in steps, reporting progress; stops early when cancelled."""

    plugin_name = "py-slow"

    def __init__(self):
        super().__init__()
        self._stop = threading.Event()

    def initialize(self, config=None):
        super().initialize(config)
        # A plugin loading its model: takes as long as the config says.
        time.sleep(float(self.config.get("init_seconds", 0)))

    def _work(self, seconds):
        self._stop.clear()
        steps = 20
        for i in range(steps):
            if self._stop.is_set():
                return {"cancelled_at": i}
            self.report_progress(i / steps, f"step {i}")
            time.sleep(seconds / steps)
        self.report_progress(1.0, "done")
        return {"slept": seconds}

    def execute(self, seconds=1.0, **kwargs):
        return self._work(float(seconds))

    def execute_stream(self, seconds=1.0, **kwargs):
        yield {"started": True}
        yield self._work(float(seconds))

    def cancel(self):
        self._stop.set()


class RaisingPlugin(_Base):
    """Raises on every call."""

    plugin_name = "py-raising"

    def execute(self, *args, **kwargs):
        raise ValueError(f"bad input: {args!r}")


class CrashingPlugin(_Base):
    """Exits the worker process on `crash`."""

    plugin_name = "py-crashing"

    def execute(self, what="ok", **kwargs):
        if what == "crash":
            os._exit(3)
        return {"pid": os.getpid()}


class ChildPlugin(_Base):
    """Starts a child process that outlives the call."""

    plugin_name = "py-child"

    def execute(self, *args, **kwargs):
        p = subprocess.Popen(["sleep", "1000"])
        self.children.append(p)
        return {"child": p.pid, "worker": os.getpid()}


class FamilyPlugin(_Base):
    """Starts a plain child and a double-forked grandchild in its own session."""

    plugin_name = "py-family"

    def execute(self, *args, **kwargs):
        child = subprocess.Popen(["sleep", "1000"])
        self.children.append(child)
        out = subprocess.run(
            ["sh", "-c", "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"],
            capture_output=True, text=True, check=True,
        )
        return {"worker": os.getpid(), "child": child.pid, "daemon": int(out.stdout.strip())}


class ConfigPlugin(_Base):
    """A configuration schema, validated by the plugin too."""

    plugin_name = "py-config"

    def get_config_schema(self):
        return {
            "name": "py-config", "title": "Config test", "type": "object",
            "properties": {
                "model": {"type": "string", "enum": ["small", "large"], "default": "small"},
                "beam": {"type": "integer", "minimum": 1, "maximum": 10, "default": 2},
            },
        }

    def initialize(self, config=None):
        config = dict(config or {})
        if config.get("model") == "forbidden":
            raise ValueError("model 'forbidden' is not installed")
        self.config = {"model": "small", "beam": 2, **config}

    def execute(self, *args, **kwargs):
        return self.config
