"""``--arch``: the callable that builds the un-trained module a state_dict belongs to, and putting the
weights into it with a clear report of what does not fit.

Forms: ``module.path:factory``, ``path/to/file.py:factory`` (a function or class returning an
``nn.Module``) and ``timm:NAME`` (only where timm imports; TOOLCHAIN.md explains why it stays optional)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from edgefm.errors import CheckpointError, ConfigError

_FORMS = "module.path:factory, path/to/file.py:factory or timm:NAME"


def check_arch(arch: str) -> None:
    """The form of ``--arch`` (and that a named .py file exists), checked without importing anything."""
    if ":" not in arch:
        raise ConfigError(f"--arch '{arch}': expected {_FORMS}")
    where, name = arch.rsplit(":", 1)
    if where == "timm":
        if not name:
            raise ConfigError(f"--arch '{arch}': expected {_FORMS}")
        return
    if not where or not name.isidentifier():
        raise ConfigError(f"--arch '{arch}': expected {_FORMS}")
    if _is_file(where) and not Path(where).is_file():
        raise CheckpointError(f"--arch '{arch}': no such file {where}")


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def build_arch(arch: str) -> Any:
    """Import and call the factory named by ``arch``; return the ``nn.Module`` it builds."""
    from torch import nn

    check_arch(arch)
    where, name = arch.rsplit(":", 1)
    if where == "timm":
        return _timm(arch, name)
    factory = getattr(_import(arch, where), name, None)
    if factory is None or not callable(factory):
        raise CheckpointError(f"--arch '{arch}': '{where}' has no callable named '{name}'")
    try:
        module = factory()
    except (Exception, SystemExit) as e:  # the user's code (sys.exit included): theirs to see, in one line
        raise CheckpointError(f"--arch '{arch}': calling {name}() failed: {_describe(e)}") from None
    if not isinstance(module, nn.Module):
        raise CheckpointError(f"--arch '{arch}': {name}() returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def _import(arch: str, where: str):
    if _is_file(where):
        path = Path(where)
        if not path.is_file():
            raise CheckpointError(f"--arch '{arch}': no such file {path}")
        mod_name = f"edgefm_arch_{path.stem}_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module  # dataclasses and pickling look classes up here
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:
            del sys.modules[mod_name]
            raise CheckpointError(f"--arch '{arch}': importing {path} failed: {_describe(e, importing=True)}") from None
        return module
    try:
        return importlib.import_module(where)
    except (Exception, SystemExit) as e:  # ImportError, or anything the module raises (or exits with) at import
        raise CheckpointError(f"--arch '{arch}': cannot import module '{where}': {_describe(e, importing=True)}") from None


def _describe(e: BaseException, importing: bool = False) -> str:
    """The user's exception in one line; ``sys.exit(n)`` said as such (it is not an error type people expect)."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})" + ("" if importing else " instead of returning an nn.Module")
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _timm(arch: str, name: str):
    try:
        import timm
    except Exception as e:  # ImportError, or torchvision's "operator torchvision::nms does not exist"
        raise CheckpointError(f"--arch '{arch}': timm is not importable here ({type(e).__name__}: {e}); install a "
                              f"timm with a torchvision that matches this torch, or pass module:factory") from None
    try:
        return timm.create_model(name, pretrained=False)
    except Exception as e:
        raise CheckpointError(f"--arch '{arch}': timm cannot build '{name}': {e}") from None


def load_weights(module: Any, state: dict[str, Any], source: Path, arch: str) -> list[str]:
    """Put ``state`` into ``module`` (strict); raise ``CheckpointError`` listing missing and unexpected keys
    and shape mismatches. Returns notes (e.g. a stripped ``module.`` prefix)."""
    notes: list[str] = []
    own = module.state_dict()
    for prefix in ("module.", "model."):  # DataParallel / Lightning wrappers
        if set(state) != set(own) and state and all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) == set(own):
                state = stripped
                notes.append(f"stripped the '{prefix}' prefix from every key of {source.name}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs arch {list(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" … and {len(items) - 8} more" if len(items) > 8 else ""
                parts.append(f"{label} ({len(items)}): {', '.join(items[:8])}{more}")
        raise CheckpointError(f"checkpoint {source}: the state_dict does not fit --arch '{arch}': " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
    return notes
