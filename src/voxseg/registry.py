"""One registry for everything chosen by name: networks and trainers (timm's `create_model` idea).

An entry is either an object or a lazy ``"package.module:attr"`` string, so listing names never
imports the training stack (the predictor resolves the default network without importing the
trainer). Lookups also accept ``package.module:attr`` and ``path/to/file.py:attr`` directly, which is
how users plug in their own network factory or trainer class without registering it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voxseg.errors import NotFoundError, SettingsError


class Registry:
    """Name -> object (or lazy "module:attr") for one kind of thing (e.g. "network")."""

    def __init__(self, kind: str, setting: str, entries: dict[str, Any]):
        self.kind, self.setting = kind, setting
        self._entries = dict(entries)

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: make the decorated object available under `name`."""

        def decorate(obj: Any) -> Any:
            self._entries[name] = obj
            return obj

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, spec: str) -> Any:
        """A registered name, ``package.module:attr`` or ``path/to/file.py:attr``."""
        if spec in self._entries:
            entry = self._entries[spec]
            if isinstance(entry, str):
                entry = self._entries[spec] = _import_attr(entry, self)
            return entry
        if ":" not in spec:
            raise SettingsError(
                f"{self.setting}={spec!r} is not a registered {self.kind} (registered: {', '.join(self.names())})",
                fix="use a registered name, package.module:attr or path/to/file.py:attr",
            )
        return _import_attr(spec, self)


def _import_attr(spec: str, registry: Registry) -> Any:
    where, _, attr = spec.rpartition(":")
    if where.endswith(".py"):
        module = load_file_module(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise SettingsError(
                f"{registry.setting}={spec!r}: cannot import {where!r} ({err})",
                fix="make the module importable (installed, or its folder on PYTHONPATH)",
            ) from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise SettingsError(
            f"{registry.setting}={spec!r}: {where} has no {attr!r}", fix=f"define the {registry.kind} {attr} in {where}"
        )
    return obj


def load_file_module(path: Path) -> Any:
    """Execute a user's .py file once as a module registered in sys.modules (pickling and
    dataclasses look modules up by name)."""
    if not path.is_file():
        raise NotFoundError("file not found", path=path, fix="pass path/to/file.py:Name")
    # Stable across processes, so spawned workers unpickle objects of this module by the same name.
    name = f"voxseg_user_{path.stem}_{zlib.crc32(str(path.resolve()).encode()):08x}"
    if name in sys.modules:
        return sys.modules[name]
    mod_spec = importlib.util.spec_from_file_location(name, path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    mod_spec.loader.exec_module(module)
    return module


NETWORKS = Registry(
    "network",
    "model.architecture",
    {
        "plain_unet": "voxseg.model.unet:plain_unet",
        "resenc_unet": "voxseg.model.unet:resenc_unet",
    },
)
TRAINERS = Registry("trainer", "--trainer", {"default": "voxseg.training.trainer:Trainer"})


def register_network(name: str) -> Callable[[Any], Any]:
    """Decorator: a network factory ``f(network, in_channels, num_classes, *, settings, heads)``."""
    return NETWORKS.register(name)


def register_trainer(name: str) -> Callable[[Any], Any]:
    """Decorator: a Trainer subclass available as ``--trainer name``."""

    def decorate(cls: Any) -> Any:
        cls.name = name
        return TRAINERS.register(name)(cls)

    return decorate


def list_networks() -> list[str]:
    return NETWORKS.names()


def list_trainers() -> list[str]:
    return TRAINERS.names()
