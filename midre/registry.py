"""A tiny name -> factory registry (timm-style), shared by datasets, models, defenses and attacks."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import unknown_name

T = TypeVar("T")

# The plugin loader, (load_into(registry), evicted(registry, key, package)): installed by
# :mod:`midre.plugins` (imported by the ``midre`` package), so this module imports no plugin code.
_plugin_hooks: tuple[Callable[[Any], None], Callable[[Any, str, str], None]] | None = None


def set_plugin_hooks(load_into: Callable[[Any], None], evicted: Callable[[Any, str, str], None]) -> None:
    """Install the entry-point plugin loader every registry with a ``group`` calls lazily."""
    global _plugin_hooks
    _plugin_hooks = (load_into, evicted)


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str | None = None):
        self.kind = kind
        self.group = group              # entry-point group of plugins (midre.plugins), loaded lazily
        self._plugins_done = group is None
        self._items: dict[str, Callable[..., T]] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def _plugins(self) -> None:
        if not self._plugins_done and _plugin_hooks is not None:
            _plugin_hooks[0](self)

    def register(self, name: str, **info: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@MODELS.register("resnet18", description="...")``."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name.lower()
            if key in self._items:
                owner = self._info[key].get("plugin")
                if not owner or info.get("plugin"):
                    raise RuntimeError(f"{self.kind} '{name}' registered twice")
                if _plugin_hooks is not None:   # a built-in registered after a plugin took its name
                    _plugin_hooks[1](self, key, owner)
            self._items[key] = fn
            doc = (fn.__doc__ or "").strip().splitlines()
            self._info[key] = {"description": doc[0] if doc else "", **info}
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        self._plugins()
        key = str(name).lower()
        if key not in self._items:
            raise unknown_name(self.kind, str(name), self._items)
        return self._items[key]

    def info(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._info[str(name).lower()])

    def names(self) -> list[str]:
        self._plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._plugins()
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._plugins()
        return len(self._items)
