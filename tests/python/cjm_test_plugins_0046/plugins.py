"""A plugin of the 0.0.46 era: typed errors, a stream ending in an error, a RELOAD_TRIGGER field
whose release hook must fire on reconfigure, prefetch with progress, enable hooks, live config
options and a `__wire__` result. Used by tests/tests/python_0046.rs."""

import os
import threading
from dataclasses import asdict, dataclass, field

try:  # cjm-plugin-system 0.0.46
    from cjm_plugin_system.core.errors import (
        PluginInputError as InputError,
        PluginResourceError as ResourceError,
        PluginTransientError as TransientError,
        ResourceShortfall,
    )
    from cjm_plugin_system.core.interface import RELOAD_TRIGGER
    from cjm_plugin_system.core.interface import PluginInterface as Base
except ImportError:  # cjm-substrate: the same surface under capability names
    from cjm_substrate.core.capability import RELOAD_TRIGGER
    from cjm_substrate.core.capability import ToolCapability as Base
    from cjm_substrate.core.errors import (
        CapabilityInputError as InputError,
        CapabilityResourceError as ResourceError,
        CapabilityTransientError as TransientError,
        ResourceShortfall,
    )


@dataclass
class Gen46Config:
    """`lang` reloads the tokenizer; `suffix` is applied without any release."""

    lang: str = field(default="en", metadata={RELOAD_TRIGGER: "tokenizer"})
    suffix: str = ""
    prefetch_mode: str = "progress"
    prefetch_steps: int = 20


def _accepted_nodelay():
    """TCP_NODELAY of each connected (not listening) IPv4 TCP socket of this process."""
    import socket

    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with s:
            try:
                if s.family != socket.AF_INET or s.type != socket.SOCK_STREAM:
                    continue
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                out.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)
            except OSError:
                continue
    return out


class Gen46Plugin(Base):
    """Everything the host must handle on a 0.0.46 worker."""

    config_class = Gen46Config

    def __init__(self):
        self.cfg = Gen46Config()
        self.tokenizer = None
        self.releases = 0
        self.hooks = []

    @property
    def name(self):
        return "gen46"

    @property
    def version(self):
        return "0.0.46-test"

    def initialize(self, config=None):
        self._apply_config(config or {})

    def _apply_config(self, config):
        self.cfg = Gen46Config(**{k: v for k, v in config.items() if k in Gen46Config.__dataclass_fields__})
        if self.tokenizer is None:
            self.tokenizer = f"tokenizer-{self.cfg.lang}"

    def _release_tokenizer(self):
        self.releases += 1
        self.tokenizer = None

    def get_config_schema(self):
        return {
            "type": "object",
            "properties": {
                "lang": {"type": "string", "default": "en"},
                "suffix": {"type": "string", "default": ""},
                "prefetch_mode": {"type": "string", "default": "progress"},
                "prefetch_steps": {"type": "integer", "default": 20},
            },
        }

    def get_current_config(self):
        return asdict(self.cfg)

    def get_config_options(self):
        # As the original's FieldOptions / ConfigOption dataclasses serialise.
        names = {"en": "English", "de": "German", "fr": "French"}
        return {
            "lang": {
                "options": [
                    {"value": v, "label": l, "metadata": {}} for v, l in names.items()
                ],
                "constraints": {},
            }
        }

    def execute(self, action="state", **kwargs):
        if action == "state":
            return {
                "lang": self.cfg.lang,
                "suffix": self.cfg.suffix,
                "tokenizer": self.tokenizer,
                "releases": self.releases,
                "hooks": list(self.hooks),
            }
        if action == "bad_input":
            raise InputError("no such language: xx", fields_invalid=["lang"])
        if action == "oom":
            raise ResourceError(
                "CUDA out of memory",
                resource_shortfall=ResourceShortfall("gpu_vram_mb", 4096.0, 512.0),
            )
        if action == "busy":
            raise TransientError("model server busy", retry_after_seconds=1.5)
        if action == "crash":
            raise RuntimeError("plugin bug")
        if action == "env":  # the worker's environment, for the respawn tests
            return {k: os.environ.get(k) for k in kwargs.get("names", [])}
        if action == "nodelay":  # TCP_NODELAY of the worker's accepted TCP connections
            return _accepted_nodelay()
        if action == "wire":
            return {"__wire__": "test.tokens", "data": {"tokens": ["a", "b"]}}
        raise InputError(f"unknown action {action!r}", fields_invalid=["action"])

    def execute_stream(self, count=2, fail=True, **kwargs):
        for i in range(count):
            yield {"i": i}
        if fail:
            raise InputError("stream input ran out", fields_invalid=["count"])

    def prefetch(self):
        steps = self.cfg.prefetch_steps
        done = threading.Event()
        for i in range(steps):
            if self._cancel_requested:
                return
            if self.cfg.prefetch_mode == "progress":
                self.report_progress((i + 1) / steps, f"step {i + 1}")
            # Pace the simulated download; in "stall" mode progress never changes.
            done.wait(0.05)
        if self.cfg.prefetch_mode == "stall":
            while not self._cancel_requested:
                done.wait(0.05)

    def on_disable(self):
        self.hooks.append("disable")

    def on_enable(self):
        self.hooks.append("enable")

    def cleanup(self):
        self.tokenizer = None


class TokenizeAdapter:
    """A task adapter bound to Gen46Plugin (`--adapters
    cjm_test_plugins_0046.plugins:TokenizeAdapter`), served over `POST /task`."""

    task_name = "text.tokenize"

    def __init__(self, tool):
        self.tool = tool

    def tokenize(self, text=""):
        return {"tokens": text.split(), "tokenizer": self.tool.tokenizer}

    def refuse(self):
        raise InputError("the tokenizer refuses", fields_invalid=["text"])
