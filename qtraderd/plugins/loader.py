"""Loading one plugin file: import it under a unique module name and validate it.

`load_plugin` either returns a ready `LoadedPlugin` (its `setup` has run) or raises
`PluginRejected` with a reason meant for the operator's log line
("plugin rejected: NAME (path): reason"). It never touches the host's registry: the
host decides what to do with the result (install it, or keep the previous version).

The exact bytes that are hashed are the bytes that are executed (the file is read once,
compiled, then run in a module made by importlib), so "same hash" really means "same
code". Each load gets a fresh module name (`qtraderd_plugin_<stem>_<n>`): a reload never
mixes the old and the new module's globals, and a failed load leaves no module behind.

Trust: a plugin is ordinary Python run in the daemon's process as the daemon's user.
Validation catches mistakes (wrong API version, missing names, hooks of the wrong shape),
not malice; only people who may run code as that user should be able to write the
plugins directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import itertools
import re
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from qtraderd.plugins.api import CHAIN_HOOKS, HOOKS, SUPPORTED_API_VERSIONS
from qtraderd.plugins.isolation import PluginAbandoned, safe_text

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_counter = itertools.count(1)


class PluginRejected(Exception):
    """The file is not a usable plugin; `name` is its NAME when it got that far."""

    def __init__(self, reason: str, name: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.name = name
        self.sha256 = ""  # of the bytes that were refused (not of the file as it is now)


@dataclass
class LoadedPlugin:
    name: str
    version: str
    api: int
    path: Path
    sha256: str
    module: ModuleType
    hooks: dict[str, Callable[..., Any]]
    async_notify: bool = False
    teardown: Callable[[], Any] | None = None
    instance: Any = field(default=None, repr=False)


def is_plugin_file(path: str | Path) -> bool:
    """`*.py` files only; names starting with '.', '#' or '_' are editor files, helpers
    or switched-off plugins. (Temp names such as `x.py~`, `x.py.swp`, `.x.py.tmp` or
    `x.py.part` do not end in `.py`, so they are never picked up half-written.)"""
    name = Path(path).name
    return name.endswith(".py") and not name.startswith((".", "#", "_"))


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_plugin(path: Path, settings_for: Callable[[str], Mapping[str, Any]]) -> LoadedPlugin:
    """Import and validate `path`; call its setup with `settings_for(NAME)`."""
    path = Path(path)
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise PluginRejected(f"cannot read the file: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(source).hexdigest()
    try:
        return _load(path, source, digest, settings_for)
    except PluginRejected as exc:
        exc.sha256 = digest
        raise


def _load(path: Path, source: bytes, digest: str,
          settings_for: Callable[[str], Mapping[str, Any]]) -> LoadedPlugin:
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise PluginRejected(f"syntax error at line {exc.lineno}: {exc.msg}") from exc
    except ValueError as exc:  # e.g. null bytes
        raise PluginRejected(f"not Python source: {exc}") from exc
    module_name = f"qtraderd_plugin_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None:
        raise PluginRejected("importlib cannot make a module spec for this file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        try:
            exec(code, module.__dict__)
        except BaseException as exc:
            if not plugin_raised(exc):
                raise
            raise PluginRejected(f"import failed: {describe(exc)}") from exc
        return _validate(module, path, digest, settings_for)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise


def plugin_raised(exc: BaseException) -> bool:
    """Is `exc` the plugin's own doing? Everything is, SystemExit included, except a
    KeyboardInterrupt on the main thread: that may be a real Ctrl-C (the host runs plugin
    code in worker threads, where signals never arrive, so there it is the plugin's)."""
    if isinstance(exc, PluginAbandoned):  # the host gave up on this thread: let it end
        return False
    return not (isinstance(exc, KeyboardInterrupt)
                and threading.current_thread() is threading.main_thread())


def describe(exc: BaseException) -> str:
    """`Type: message`, saying plainly when a plugin tried to stop the process."""
    msg = safe_text(exc)  # a plugin's exception may have a __str__ that raises
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    if isinstance(exc, SystemExit | KeyboardInterrupt):
        text += " (a plugin cannot stop the daemon)"
    return text


def forget(plugin: LoadedPlugin) -> None:
    """Drop a replaced plugin's module from sys.modules (its objects die with it)."""
    sys.modules.pop(plugin.module.__name__, None)


def _validate(module: ModuleType, path: Path, digest: str,
              settings_for: Callable[[str], Mapping[str, Any]]) -> LoadedPlugin:
    api = getattr(module, "PLUGIN_API", getattr(module, "API_VERSION", None))
    name = getattr(module, "NAME", None)
    shown = name if isinstance(name, str) else ""
    if api is None:
        raise PluginRejected("missing PLUGIN_API (the plugin API version it was written "
                             f"for; this daemon supports {_versions()})", shown)
    if isinstance(api, bool) or not isinstance(api, int) or api not in SUPPORTED_API_VERSIONS:
        raise PluginRejected(f"unsupported plugin API version {api!r} (this daemon supports "
                             f"{_versions()})", shown)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise PluginRejected(f"NAME must be a lower-case identifier (a-z, 0-9, _; at most 48 "
                             f"characters), got {name!r}", shown)
    version = getattr(module, "VERSION", None)
    if not isinstance(version, str) or not version.strip() or len(version) > 32:
        raise PluginRejected(f"VERSION must be a non-empty string of at most 32 characters, "
                             f"got {version!r}", name)
    settings = dict(settings_for(name))
    cls = getattr(module, "Plugin", None)
    instance: Any = None
    if cls is not None:
        if not inspect.isclass(cls):
            raise PluginRejected("`Plugin` must be a class", name)
        _check_signature(cls, 1, "Plugin(settings)", name)
        try:
            instance = cls(settings)
        except BaseException as exc:
            if not plugin_raised(exc):
                raise
            raise PluginRejected(f"Plugin(settings) failed: {describe(exc)}", name) from exc
        source: Any = instance
    else:
        source = module
    hooks: dict[str, Callable[..., Any]] = {}
    for hook, nargs in HOOKS.items():
        fn = getattr(source, hook, None)
        if fn is None:
            continue
        if not callable(fn):
            raise PluginRejected(f"{hook} must be a function, got {type(fn).__name__}", name)
        if hook in CHAIN_HOOKS and (inspect.iscoroutinefunction(fn)
                                    or inspect.isasyncgenfunction(fn)):
            raise PluginRejected(f"{hook} must be a plain (not async) function: it runs "
                                 "inside the bar chain", name)
        _check_signature(fn, nargs, f"{hook}({', '.join(_ARGS[hook])})", name)
        hooks[hook] = fn
    if not hooks:
        raise PluginRejected(f"defines no hooks (expected one of {', '.join(HOOKS)})", name)
    teardown = getattr(source, "teardown", None)
    if teardown is not None:
        if not callable(teardown) or inspect.iscoroutinefunction(teardown):
            raise PluginRejected("teardown must be a plain function without arguments", name)
        _check_signature(teardown, 0, "teardown()", name)
    if instance is None:
        setup = getattr(module, "setup", None)
        if setup is not None:
            if not callable(setup) or inspect.iscoroutinefunction(setup):
                raise PluginRejected("setup must be a plain function", name)
            _check_signature(setup, 1, "setup(settings)", name)
            try:
                setup(settings)
            except BaseException as exc:
                if not plugin_raised(exc):
                    raise
                raise PluginRejected(f"setup failed: {describe(exc)}", name) from exc
    notify = hooks.get("notify")
    return LoadedPlugin(
        name=name, version=version.strip(), api=api, path=path, sha256=digest, module=module,
        hooks=hooks, async_notify=notify is not None and inspect.iscoroutinefunction(notify),
        teardown=teardown, instance=instance)


_ARGS = {"filter_signal": ("signal",), "check_order": ("order", "account"),
         "notify": ("event",)}


def _check_signature(fn: Any, nargs: int, shape: str, name: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: trust them
    try:
        sig.bind(*([None] * nargs))
    except TypeError as exc:
        raise PluginRejected(f"{shape} has the wrong shape: {sig} ({exc})", name) from exc


def _versions() -> str:
    return ", ".join(str(v) for v in sorted(SUPPORTED_API_VERSIONS))
