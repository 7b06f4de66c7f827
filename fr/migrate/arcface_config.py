"""Reading an arcface_torch config file as it is: its `configs/base.py` merge, without easydict installed.

arcface_torch's `get_config("configs/NAME")` imports `configs.base`, then `configs.NAME` (the path's base name
without its extension), and updates the base's EasyDict with the job's keys; an `output` of None becomes
`work_dirs/NAME`. fr does the same with the `base.py` beside the file, executing both with a stand-in for
easydict that exists only inside their namespaces (sys.modules is never touched).
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import traceback
import types
from typing import Any, Dict, Tuple

from fr.migrate.keymap import UPSTREAM_BASE, ArcfaceConfigError, map_config

log = logging.getLogger(__name__)

# An arcface_torch config builds an EasyDict; fr's recipes never import easydict.
_EASYDICT_IMPORT = re.compile(r"^\s*(from\s+easydict\s+import|import\s+easydict)\b", re.MULTILINE)


class EasyDict(dict):
    """What arcface_torch configs use of easydict.EasyDict: a dict whose keys are also attributes."""

    def __init__(self, mapping: Any = None, **kwargs: Any) -> None:
        super().__init__()
        self.update(dict(mapping or {}, **kwargs))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


def resolve_config_path(path: str) -> str:
    """`configs/ms1mv3_r50` names `configs/ms1mv3_r50.py`, as arcface_torch's get_config resolves it."""
    if not os.path.exists(path) and os.path.isfile(path + ".py"):
        return path + ".py"
    return path


def is_arcface_config(path: str) -> bool:
    """Whether a .py config is arcface_torch's (it imports easydict) rather than an fr recipe."""
    try:
        with open(path, encoding="utf-8") as fh:
            return bool(_EASYDICT_IMPORT.search(fh.read()))
    except (OSError, UnicodeDecodeError):
        return False


def _stand_in_builtins() -> Dict[str, Any]:
    """The builtins their file runs with: `import easydict` gets the stand-in, every other import is Python's."""
    module = types.ModuleType("easydict", "fr's stand-in for easydict while reading an arcface_torch config")
    module.EasyDict = EasyDict
    module.edict = EasyDict
    real_import = builtins.__import__

    def importer(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002 (builtins' own names)
        if level == 0 and name == "easydict":
            return module
        return real_import(name, globals, locals, fromlist, level)

    return dict(vars(builtins), __import__=importer)


def execute(path: str) -> Dict[str, Any]:
    """Run one arcface_torch config file and return its `config` as a plain dict; errors name `file:line`."""
    try:
        with open(path, encoding="utf-8") as fh:
            source = fh.read()
        code = compile(source, path, "exec")
        namespace: Dict[str, Any] = {
            "__name__": "arcface_config",
            "__file__": path,
            "__builtins__": _stand_in_builtins(),
        }
        exec(code, namespace)  # noqa: S102 (a config file the user asked to run, as arcface_torch imports it)
    except SyntaxError as exc:
        raise ArcfaceConfigError(f"{exc.filename or path}:{exc.lineno}: {exc.msg}") from exc
    except ArcfaceConfigError:
        raise
    except Exception as exc:
        target = os.path.abspath(path)
        lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == target]
        where = f"{path}:{lines[-1]}" if lines else path
        raise ArcfaceConfigError(f"{where}: {type(exc).__name__}: {exc}") from exc
    config = namespace.get("config")
    if not isinstance(config, dict):
        raise ArcfaceConfigError(
            f"{path}: an arcface_torch config must define `config = edict()` (got {type(config).__name__})"
        )
    return dict(config)


def read_arcface_config(path: str) -> Tuple[Dict[str, Any], str]:
    """The merged keys of an arcface_torch config (its base.py's, updated by its own) and where the base came from.

    Without an arcface_torch `base.py` beside the file (e.g. one copied into fr's configs/), the defaults of
    arcface_torch's published configs/base.py apply (fr.migrate.keymap.UPSTREAM_BASE).
    """
    base_path = os.path.join(os.path.dirname(os.path.abspath(path)), "base.py")
    if os.path.abspath(path) == base_path:
        merged, base_source = {}, "itself"
    elif os.path.isfile(base_path) and is_arcface_config(base_path):
        merged, base_source = execute(base_path), base_path
    else:
        merged, base_source = dict(UPSTREAM_BASE), "arcface_torch's published configs/base.py defaults"
    merged.update(execute(path))
    if merged.get("output") is None:
        merged["output"] = os.path.join("work_dirs", os.path.splitext(os.path.basename(path))[0])
    return merged, base_source


def load_arcface_config(path: str) -> Dict[str, Dict[str, Any]]:
    """fr's config sections for an arcface_torch config file (for fr.config.from_dict), its key mapping logged
    once as one INFO block."""
    keys, base_source = read_arcface_config(path)
    sections, lines = map_config(keys, path)
    log.info(
        "arcface_torch config %s (base: %s) read as fr's config:\n%s",
        path,
        base_source,
        "\n".join(f"  {line}" for line in lines),
    )
    return sections
