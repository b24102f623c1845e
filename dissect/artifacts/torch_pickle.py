"""Objects another library pickled with ``torch.save(model)``, read without that library and without running its code.

Overcomplete's SAEs are saved whole (``torch.save(model)``) and ViT-Prisma's ``save_model`` pickles its config object
beside the state dict: ``torch.load(weights_only=True)`` refuses both, and a plain ``torch.load`` would import the
library and run whatever the pickle names. Here every class outside torch becomes a ``Stub`` that only keeps the
attributes it was pickled with (its ``qualname`` says what it was); torch's own tensors and ``torch.nn`` modules are
rebuilt as they are; any other callable the pickle names (a function, ``os.system``) is refused.
"""

from __future__ import annotations

import collections
import copyreg
import pickle
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, first_line


class Stub:
    """An object of a class this reader does not import: its pickled attributes (and constructor arguments)."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:            # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


class StubGlobal:
    """A function (or other non-class global) the pickle names: kept as its name, never called."""

    def __init__(self, qualname: str):
        self.qualname = qualname

    def __repr__(self):
        return f"<{self.qualname}>"


_TORCH_REBUILDERS = {"_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state", "_rebuild_tensor"}
_BUILTINS = {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex, "tuple": tuple, "list": list,
             "dict": dict}


def _allowed(module: str, name: str):
    """The real object for globals that are safe to rebuild with, else None."""
    import torch

    if module == "torch._utils" and name in _TORCH_REBUILDERS:
        return getattr(torch._utils, name)
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module in ("copyreg", "copy_reg") and name in ("_reconstructor", "__newobj__", "__newobj_ex__"):
        return getattr(copyreg, name)
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
        return _BUILTINS[name]
    if module == "builtins" and name == "object":
        return object
    if module == "torch" and (name in ("Size", "device") or isinstance(getattr(torch, name, None), torch.dtype)):
        return getattr(torch, name)
    if module.startswith("torch.nn.modules.") or module == "torch.nn.parameter":
        import importlib

        obj = getattr(importlib.import_module(module), name, None)
        if isinstance(obj, type) and (issubclass(obj, torch.nn.Module) or issubclass(obj, torch.nn.Parameter)):
            return obj
    return None


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        real = _allowed(module, name)
        if real is not None:
            return real
        if module.split(".")[0] in ("torch", "os", "sys", "subprocess", "builtins", "__builtin__", "posix", "nt",
                                    "importlib", "pickle", "shutil", "socket", "runpy", "code", "codecs"):
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        qualname = f"{module}.{name}"
        if name[:1].isupper():                          # a class, by the convention every library here follows
            return type(name, (Stub,), {"qualname": qualname, "__module__": "dissect.stub." + module})
        return StubGlobal(qualname)


class _PickleModule:
    """What ``torch.load(pickle_module=...)`` needs."""

    Unpickler = _Unpickler
    __name__ = "dissect.artifacts.torch_pickle"

    @staticmethod
    def load(f, **kwargs):
        return _Unpickler(f, **kwargs).load()


def load_foreign(path: str | Path) -> Any:
    """What ``torch.save`` wrote to ``path``, other libraries' classes as ``Stub`` objects (see the module docstring)."""
    import zipfile

    import torch

    try:    # torch.load hands a TorchScript archive to torch.jit.load, which runs its code: never here
        with zipfile.ZipFile(path) as z:
            scripted = any(n.endswith("constants.pkl") for n in z.namelist())
    except Exception:
        scripted = False
    if scripted:
        raise ArtifactError(f"{path} is a TorchScript archive (torch.jit.save), not a pickled model",
                            hint="save the SAE with torch.save (its state dict or the model)")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_PickleModule)
    except Exception as e:
        first = first_line(e)
        raise ArtifactError(f"cannot read {path}: {first}",
                            hint="give the file as the library saved it (torch.save of the model or its state_dict)") from None


def qualname(obj: Any) -> str:
    """What a loaded object was: a stub's pickled class, or a real object's class."""
    if isinstance(obj, (Stub, StubGlobal)):
        return obj.qualname
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
