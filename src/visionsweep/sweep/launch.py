"""Command lines that start visionsweep code in a new Python process with a lazy top-level package.

``visionsweep/__init__.py`` imports the whole training stack (torch, torchvision), which takes
several seconds. A trial process needs that only when its trainer is the real one, and the sweep
machinery (Optuna, the settings schema) needs none of it. The command built here registers the
``visionsweep`` package without running its ``__init__``; the first access to a missing attribute
(``visionsweep.train``, ``from visionsweep import ...``) runs it, exactly as a normal import would
have. Submodules (``visionsweep.sweep``, ``visionsweep.settings``, ...) import as usual.

Once ``visionsweep/__init__.py`` is lazy itself (PEP 562), this module can go.
"""
from __future__ import annotations

import sys

_LAZY_PACKAGE = """
import importlib.util, sys
spec = importlib.util.find_spec("visionsweep")
package = importlib.util.module_from_spec(spec)

def __getattr__(name):
    del package.__getattr__
    spec.loader.exec_module(package)
    return getattr(package, name)

package.__getattr__ = __getattr__
sys.modules["visionsweep"] = package
"""


def python_command(entry: str, args: list[str]) -> list[str]:
    """``python -c ...`` that calls ``entry`` (``package.module:main``) with ``args`` and exits with
    its return value, the ``visionsweep`` package being initialised lazily."""
    module, _, function = entry.partition(":")
    code = f"{_LAZY_PACKAGE}\nfrom {module} import {function}\nsys.exit({function}(sys.argv[1:]))\n"
    return [sys.executable, "-c", code, *args]


TRIAL_ENTRY = "visionsweep.sweep.trial_process:main"
WORKER_ENTRY = "visionsweep.sweep.__main__:main"
