"""Plugins: defenses, attacks, models and datasets from other installed packages (Python entry points).

A package declares, in its ``pyproject.toml``::

    [project.entry-points."midre.defenses"]
    gaussian_noise = "my_pkg.noise:GaussianNoise"      # a Defense subclass (or a factory returning one)
    [project.entry-points."midre.attacks"]
    random_search = "my_pkg.search:RandomSearch"       # an Attack subclass
    [project.entry-points."midre.models"]
    mlp = "my_pkg.nets:mlp"                            # factory(num_classes, resolution, ...) -> Classifier
    [project.entry-points."midre.datasets"]
    blobs = "my_pkg.data:blobs"                        # factory(root, resolution, seed, ...) -> MISplits
    [project.entry-points."midre.priors"]
    pca = "my_pkg.prior:PCAPrior"                      # a midre.priors.PriorKind subclass (name = "pca")

The entry-point name is the name users type.  Each registry (:class:`midre.registry.Registry` with a
``group``) loads its group once, on first use, after its built-ins are registered; a plugin then
appears in ``midre defenses`` etc., in configs, sweeps and audit like a built-in.  Optional
``midre_info = {...}`` on the loaded object adds listing facts (e.g. ``{"kind": "embedded"}`` for a
dataset that needs no root).

A broken plugin (import error, a name clash, the wrong type) costs one warning line on stderr naming
its package; midre goes on without it.  See docs/plugins.md.
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable
from typing import Any

from .registry import set_plugin_hooks

GROUPS = {"midre.defenses": "midre.defenses", "midre.attacks": "midre.attacks",
          "midre.models": "midre.models", "midre.datasets": "midre.data",
          "midre.priors": "midre.priors"}   # group -> package of built-ins
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_problems: list[str] = []
_loaded: list[tuple[str, str, str]] = []


class PluginError(Exception):
    """Why one plugin entry was refused (becomes the warning line)."""


def problems() -> list[str]:
    """The warning lines of the plugins refused so far in this process."""
    return list(_problems)


def loaded() -> list[tuple[str, str, str]]:
    """(group, name, package) of every plugin registered so far in this process."""
    return list(_loaded)


def _entry_points(group: str) -> list[Any]:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=group), key=lambda ep: ep.name)


def _package(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or ep.value.split(":")[0].split(".")[0]


def _warn(msg: str) -> None:
    line = " ".join(str(msg).split())
    _problems.append(line)
    sys.stderr.write(f"midre: warning: {line}\n")


def _builtins_ready(package: str) -> bool:
    """False while the package holding the built-ins is still being imported (load later then)."""
    mod = sys.modules.get(package)
    if mod is None:
        importlib.import_module(package)
        return True
    return not getattr(getattr(mod, "__spec__", None), "_initializing", False)


def load_into(registry: Any) -> None:
    """Register every plugin of ``registry.group`` (once; refused ones are reported, never raised)."""
    group = registry.group
    if registry._plugins_done or not _builtins_ready(GROUPS.get(group, group)):
        return
    registry._plugins_done = True           # before loading: a plugin may use the registry itself
    try:
        eps = _entry_points(group)
    except Exception as e:  # a damaged installation's metadata
        _warn(f"cannot read the '{group}' plugins ({type(e).__name__}: {e}); midre runs without them")
        return
    for ep in eps:
        pkg = _package(ep)
        try:
            _load_one(registry, group, ep, pkg)
        except PluginError as e:
            _warn(f"plugin package '{pkg}': {group} entry '{ep.name}' ({ep.value}) ignored: {e}")
            continue
        _loaded.append((group, ep.name.lower(), pkg))


def _load_one(registry: Any, group: str, ep: Any, pkg: str) -> dict:
    name = ep.name
    if not _NAME_RE.match(name) or "+" in name:
        raise PluginError(f"'{name}' is not a usable name (letters, digits, _ . - only)")
    key = name.lower()
    if key in registry._items:
        owner = registry._info[key].get("plugin")
        raise PluginError(f"name clash with the {'plugin package ' + repr(owner) if owner else 'built-in'} "
                          f"{registry.kind} '{key}'; rename the entry point")
    try:
        obj = ep.load()
    except (Exception, SystemExit) as e:
        raise PluginError(f"import failed ({type(e).__name__}: {e})") from None
    info = _CHECKS.get(group, lambda o, k: {})(obj, key)
    extra = getattr(obj, "midre_info", None)
    if isinstance(extra, dict):
        info = {**{k: v for k, v in extra.items() if k not in ("plugin", "description")}, **info}
    registry.register(key, **info, plugin=pkg)(obj)
    return info


def evicted(registry: Any, key: str, pkg: str) -> None:
    """A built-in registered after the plugins took its name: the built-in wins, the plugin goes."""
    _warn(f"plugin package '{pkg}': {registry.group} entry '{key}' replaced: name clash with the built-in "
          f"{registry.kind} '{key}'; rename the entry point")
    global _loaded
    _loaded = [t for t in _loaded if not (t[0] == registry.group and t[1] == key)]


# ------------------------------------------------------------------------------ type checks
def _accepts(fn: Callable, *names: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return True
    return all(n in params for n in names)


def _named_class(obj: Any, key: str, what: str) -> None:
    declared = getattr(obj, "name", None)
    if declared != key:
        raise PluginError(f"{obj.__name__}.name is {declared!r} but the entry point is '{key}'; "
                          f"set name = '{key}' in the {what} class")


def _check_defense(obj: Any, key: str) -> dict:
    from .defenses.base import Defense

    if inspect.isclass(obj):
        if not issubclass(obj, Defense):
            raise PluginError(f"{obj.__name__} is not a midre.defenses.Defense subclass")
        _named_class(obj, key, "Defense")
    elif not callable(obj):
        raise PluginError(f"expected a Defense subclass or a factory, got {type(obj).__name__}")
    return {}


def _check_attack(obj: Any, key: str) -> dict:
    from .attacks.base import ACCESS_LEVELS, Attack
    from .priors import PRIORS

    if not (inspect.isclass(obj) and issubclass(obj, Attack)):
        raise PluginError(f"expected a midre.attacks.Attack subclass, got {getattr(obj, '__name__', type(obj).__name__)}")
    _named_class(obj, key, "Attack")
    if obj.access not in ACCESS_LEVELS:
        raise PluginError(f"access '{obj.access}' is not one of {', '.join(ACCESS_LEVELS)}")
    bad = [k for k in obj.prior_kinds if k not in PRIORS]
    if bad:
        raise PluginError(f"prior kind '{bad[0]}' is not one of {', '.join(PRIORS)}")
    return {"access": obj.access, "prior": "+".join(obj.prior_kinds) or "none"}


def _check_prior(obj: Any, key: str) -> dict:
    from .priors import PriorKind

    if not (inspect.isclass(obj) and issubclass(obj, PriorKind)):
        raise PluginError(f"expected a midre.priors.PriorKind subclass, got "
                          f"{getattr(obj, '__name__', type(obj).__name__)}")
    _named_class(obj, key, "PriorKind")
    return {"needs_target": bool(obj.needs_target)}


def _check_model(obj: Any, key: str) -> dict:
    if not callable(obj) or not _accepts(obj, "num_classes", "resolution"):
        raise PluginError("expected a factory taking num_classes and resolution and returning a Classifier")
    return {}


def _check_dataset(obj: Any, key: str) -> dict:
    if not callable(obj) or not _accepts(obj, "root", "resolution", "seed"):
        raise PluginError("expected a factory taking root, resolution and seed and returning MISplits")
    return {}


_CHECKS: dict[str, Callable[[Any, str], dict]] = {
    "midre.defenses": _check_defense, "midre.attacks": _check_attack,
    "midre.models": _check_model, "midre.datasets": _check_dataset, "midre.priors": _check_prior,
}


set_plugin_hooks(load_into, evicted)
