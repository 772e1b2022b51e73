"""Finds the services: each `services/<name>/service.py` defines `SERVICE = ServiceSpec(...)`.

A new service plugs into `orderflow up`, `orderflow worker` and the tests by adding that one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orderflow.runtime.app import Runtime
    from orderflow.settings import Settings


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port_env: str
    default_port: int
    build: Callable[[Settings], Runtime]
    """Builds the service's runtime (faust app, handlers, routes); imports stay lazy so discovery is cheap."""
    description: str = ""


def discover() -> list[ServiceSpec]:
    import services

    found = []
    for info in sorted(pkgutil.iter_modules(services.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"services.{info.name}.service")
        except ModuleNotFoundError as exc:
            if exc.name == f"services.{info.name}.service":
                continue
            raise
        spec = getattr(module, "SERVICE", None)
        if isinstance(spec, ServiceSpec):
            found.append(spec)
    return found


def names() -> list[str]:
    """The services' names from the folders that have a service.py, without importing them (for --help choices)."""
    import services

    return sorted(p.parent.name for folder in services.__path__ for p in Path(folder).glob("*/service.py"))


def get(name: str) -> ServiceSpec:
    for spec in discover():
        if spec.name == name:
            return spec
    names = ", ".join(s.name for s in discover()) or "none"
    raise KeyError(f"unknown service {name!r} (known: {names})")
