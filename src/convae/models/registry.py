"""Models by name, the built-in ones and everybody else's: ``register_model``, plug-in modules and entry points.

A model is a *factory* registered under a name::

    @convae.register_model("mine", description="my decoder")
    def build(image_size, channels, likelihood, classes, **options) -> convae.VAE: ...

It is found three ways, all of which end in that decorator running:

* the built-in models register themselves when ``convae.models.builtin`` is imported (lazily: the names and
  descriptions are known without torch, so ``convae --help`` answers at once);
* an installed package declares it in the entry-point group ``convae.models`` (``mine = "my_pkg.models"``: the
  entry point's name is the model's, its module registers it when imported, or its object is the factory);
* ``--plugin MODULE`` (any command) or ``load_plugin(MODULE)`` imports a module the user names (a dotted module name
  importable from the current folder, or a path to a ``.py`` file).

A run folder records which code its model came from (``code_identity``: the name, the module, the options, the
distribution's version and the module's source hash). Opening the run again (``require_model``) imports that module
only where an installed entry point declares it or the user named it with ``--plugin``: a run folder never makes
convae import a module nobody declared, and nothing stored in a run folder is ever run.

Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError

GROUP = "convae.models"
BUILTIN_MODULE = "convae.models.builtin"


class PluginChanged(UserWarning):
    """A run's plug-in is loaded, but its code is not the code the run was trained with."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory (or, for a built-in not imported yet, None) and where it comes from."""

    name: str
    description: str
    module: str                            # the module that registered it
    factory: Callable | None = None

    @property
    def builtin(self) -> bool:
        return self.module == BUILTIN_MODULE


_REGISTRY: dict[str, ModelEntry] = {}
_NAMED_BY_USER: set[str] = set()  # modules imported by --plugin / load_plugin


def register_model(name: str, *, description: str = "") -> Callable:
    """Decorator: register ``factory(image_size, channels, likelihood, classes, **options) -> VAE`` as model
    ``name``. The factory raises ValueError for a shape, likelihood or option it cannot take (convae turns it into
    the usual one-line error naming --model). A name is one module's: registering it again from that module (a
    re-import) replaces it, from another module is a ValueError."""
    if not isinstance(name, str) or not name or any(c.isspace() or c in ",=" for c in name):
        raise ValueError(f"register_model: model name {name!r} must be a non-empty word without ',' or '='")

    def decorate(factory: Callable) -> Callable:
        if not callable(factory):
            raise TypeError(f"register_model({name!r}): decorate a function or class, not {factory!r}")
        module = getattr(factory, "__module__", None) or "__main__"
        known = _REGISTRY.get(name)
        if known is not None and known.module != module:
            raise ValueError(f"register_model: model {name!r} is registered already, by {known.module}")
        _REGISTRY[name] = ModelEntry(name, description or first_sentence(factory.__doc__), module, factory)
        return factory

    return decorate


def first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").split())
    return text.split(". ")[0].rstrip(".")


def declare_builtin(name: str, description: str) -> None:
    """A built-in model's catalog line, known before its factory is imported (``convae.models.builtin``)."""
    _REGISTRY.setdefault(name, ModelEntry(name, description, BUILTIN_MODULE))


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed packages' models by name (entry-point group ``convae.models``); nothing is imported."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}


def model_names() -> list[str]:
    """Every model convae can build now: the registered ones, then the installed plug-ins not imported yet."""
    return list(_REGISTRY) + [n for n in entry_points() if n not in _REGISTRY]


def describe_models() -> dict[str, str]:
    """name -> one line: the description, and for a plug-in where it comes from."""
    lines = {n: e.description + ("" if e.builtin else f" [plug-in {e.module}]") for n, e in _REGISTRY.items()}
    for n, ep in entry_points().items():
        lines.setdefault(n, f"[installed plug-in {ep.value}]")
    return lines


def load_plugin(spec: str) -> str:
    """Import a plug-in the user names: a module (``my_models``, ``pkg.models``; the current folder is searched as
    ``python -m`` does) or a path to a ``.py`` file. Returns the module's name. A module that cannot be imported is a
    ConfigError naming it."""
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise ConfigError(f"--plugin {spec}: no such file")
        name = path.stem
        if name not in sys.modules or getattr(sys.modules[name], "__file__", None) != str(path.resolve()):
            module_spec = importlib.util.spec_from_file_location(name, path.resolve())
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[name]
                raise ConfigError(f"--plugin {spec}: importing it failed ({type(e).__name__}: {str(e)[:160]})") from None
    else:
        name = spec
        cwd = str(Path.cwd())
        if cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)  # as `python -m` would find it; after the installed packages, never before them
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                raise ConfigError(f"--plugin {spec}: no module {e.name!r} (install the package that provides it, or "
                                  "run from the folder that holds it, or give the path of a .py file)") from None
            raise ConfigError(f"--plugin {spec}: importing it failed ({type(e).__name__}: {e})") from None
        except Exception as e:
            raise ConfigError(f"--plugin {spec}: importing it failed ({type(e).__name__}: {str(e)[:160]})") from None
    _NAMED_BY_USER.add(name)
    return name


def entry(name: str) -> ModelEntry:
    """The registered model ``name``, importing its module where that is allowed: the built-ins, or an installed
    plug-in whose entry point is named ``name``. An unknown name is a ConfigError listing the models."""
    known = _REGISTRY.get(name)
    if known is not None and known.factory is None:  # a built-in, declared but not imported yet
        importlib.import_module(BUILTIN_MODULE)
        known = _REGISTRY[name]
    if known is None:
        point = entry_points().get(name)
        if point is not None:
            try:
                loaded = point.load()
            except Exception as e:
                raise ConfigError(f"--model {name}: its plug-in {point.value} failed to import "
                                  f"({type(e).__name__}: {str(e)[:160]})") from None
            if name not in _REGISTRY and callable(loaded) and not inspect.ismodule(loaded):
                register_model(name)(loaded)  # the entry point names the factory itself
            known = _REGISTRY.get(name)
            if known is None:
                raise ConfigError(f"--model {name}: the plug-in {point.value} registers no model {name!r}")
    if known is None:
        raise ConfigError(f"--model: unknown model {name!r} (choose from {', '.join(model_names())}; a model of your "
                          "own: --plugin MODULE, docs/own-model.md)")
    return known


def check_name(name) -> None:
    """What ``TrainConfig.validate`` asks: ``name`` is a model convae can build now (nothing is imported)."""
    if not isinstance(name, str) or name not in model_names():
        raise ConfigError(f"--model: unknown model {name!r} (choose from {', '.join(model_names())}; a model of your "
                          "own: --plugin MODULE, docs/own-model.md)")


# -- which code a run holds ------------------------------------------------------------------------------------------


def code_identity(name: str) -> dict:
    """What config.json records of model ``name``'s code: its module, the installed distribution and version that
    provide it (None for a module of no distribution), the SHA-256 of the module's source file, and for a plug-in
    every source file its code is (``source_files``)."""
    known = entry(name)
    module = sys.modules.get(known.module)
    source = getattr(module, "__file__", None)
    digest = None
    if source and Path(source).is_file():
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    distribution, version = distribution_of(known.module)
    identity = {"name": name, "module": known.module, "builtin": known.builtin, "distribution": distribution,
                "version": version, "source_sha256": digest}
    if not known.builtin:
        identity["source_files"] = source_files(known.module, distribution)
    return identity


def outside_the_project(path: Path) -> bool:
    """Whether ``path`` is installed code (the standard library, site-packages) rather than a user's own folder."""
    text = str(path)
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    return "site-packages" in text or "dist-packages" in text or any(text.startswith(p + "/lib") for p in prefixes)


def source_files(module_name: str, distribution: str | None) -> dict[str, str]:
    """Every source file a plug-in's code is, as {path: SHA-256}: for an installed distribution, the .py files of
    its top-level package; for a local module, its file and the local modules loaded from its folder (the helpers it
    imports, which site-packages and the standard library are not). Paths are relative to that folder."""
    module = sys.modules.get(module_name)
    source = getattr(module, "__file__", None)
    if not source:
        return {}
    top = sys.modules.get(module_name.split(".")[0])
    top_file = Path(getattr(top, "__file__", None) or source).resolve()
    package = top_file.parent if top_file.name == "__init__.py" else None
    root = (package.parent if package is not None else top_file.parent)
    if distribution is not None and package is not None:
        paths = sorted(package.rglob("*.py"))
    else:
        paths = sorted({Path(f).resolve() for m in list(sys.modules.values())
                        if isinstance(f := getattr(m, "__file__", None), str) and f.endswith(".py")
                        and Path(f).resolve().is_relative_to(root) and not outside_the_project(Path(f).resolve())})
    found = {}
    for path in paths:
        if path.is_file() and "__pycache__" not in path.parts:
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def code_changes(recorded: dict, now: dict) -> list[str]:
    """What changed between two ``code_identity`` records of one plug-in: a phrase for each file changed, added or
    gone (or for the version, or the module's own source where the older record lists no files)."""
    said = []
    if recorded.get("version") != now.get("version"):
        said.append(f"version {recorded.get('version') or 'none'} -> {now.get('version') or 'none'}")
    before, after = recorded.get("source_files"), now.get("source_files")
    if before is None or after is None:
        if recorded.get("source_sha256") != now.get("source_sha256"):
            said.append(f"{now.get('module')} changed (source {(recorded.get('source_sha256') or '?')[:12]} -> "
                        f"{(now.get('source_sha256') or '?')[:12]})")
        return said
    for path in sorted(set(before) | set(after)):
        if path not in after:
            said.append(f"{printable(path)} is gone")
        elif path not in before:
            said.append(f"{printable(path)} is new")
        elif before[path] != after[path]:
            said.append(f"{printable(path)} changed (sha256 {before[path][:12]} -> {after[path][:12]})")
    return said


def distribution_of(module: str) -> tuple[str | None, str | None]:
    top = module.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def printable(text) -> str:
    """``text`` safe to print: every control character (a newline, an ANSI escape) written as its escape sequence,
    so a string read from a run folder cannot rewrite the terminal or forge a line."""
    text = str(text)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def require_model(name: str, recorded: dict | None, where: str) -> str | None:
    """Make model ``name`` of a run folder buildable, from what its config.json recorded (``code_identity``), or
    say in one line what to do; warn where its code changed since, and return that line (None where nothing
    changed) for the caller to keep in log.txt or eval.json. ``where``: the file to name.

    Security: the recorded module is imported only where an installed entry point declares it (or the model's own
    name); a module the user named with --plugin is imported already. Nothing else from the folder is imported, and
    what the folder says is printed escaped (``printable``)."""
    recorded = recorded or {}
    module = recorded.get("module")
    if module is not None and not isinstance(module, str):
        raise ConfigError(f"{where}: model_code.module is not a module name ({printable(repr(module))[:80]})")
    if name not in _REGISTRY and name not in entry_points():
        declared = {ep.module for ep in importlib.metadata.entry_points(group=GROUP)}
        if module and module in declared:
            importlib.import_module(module)
        if name not in _REGISTRY:
            shown = printable(module) if module else None
            how = (f"pass --plugin {shown} (from the folder that holds it), or install the package that provides it"
                   if module else "pass --plugin MODULE with the module that registers it")
            raise ConfigError(f"{where}: model {printable(repr(name))} comes from the plug-in module "
                              f"{shown or '?'!r} (as that folder's config.json says), which is not loaded; {how}")
    if not module or recorded.get("builtin"):
        return None
    now = code_identity(name)
    if now["module"] != module:
        line = f"{where}: model {name!r} was registered by {printable(module)}, now by {now['module']}"
    else:
        changes = code_changes(recorded, now)
        if not changes:
            return None
        line = (f"{where}: model {name!r} (plug-in {now['module']}) runs other code than it was trained with: "
                + "; ".join(changes))
    warnings.warn(line, PluginChanged, stacklevel=2)
    return line


__all__ = ["GROUP", "ModelEntry", "PluginChanged", "check_name", "code_identity", "declare_builtin", "describe_models", "entry",
           "entry_points", "load_plugin", "model_names", "printable", "register_model", "require_model"]
