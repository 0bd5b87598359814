"""The runtimes Kiln knows, and how each one's runtime process is started.

    catalog = RuntimeCatalog(settings)
    catalog.check("python3.12")            # AwsError if unknown or not installed here
    argv = catalog.command("python3.12", task_root)
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

from kiln.aws.errors import AwsError
from kiln.config import Settings

BOOTSTRAP_DIR = Path(__file__).parent / "bootstrap"
PYTHON_VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
NODE_VERSIONS = ("18", "20", "22", "24")
PROVIDED = ("provided", "provided.al2", "provided.al2023")
#: Identifiers AWS accepts that Kiln cannot run (they exist so the error says so clearly).
FOREIGN = ("java8", "java8.al2", "java11", "java17", "java21", "java25", "dotnet6", "dotnet8",
           "dotnet10", "ruby3.2", "ruby3.3", "ruby3.4", "nodejs16.x", "python3.7", "go1.x")
PYTHON_RUNTIMES = tuple(f"python{v}" for v in PYTHON_VERSIONS)
NODE_RUNTIMES = tuple(f"nodejs{v}.x" for v in NODE_VERSIONS)
KNOWN = PYTHON_RUNTIMES + NODE_RUNTIMES + PROVIDED + FOREIGN


class RuntimeCatalog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: LAMBDA_RUNTIME_DIR: where the built-in runtimes' own files live.
        self.runtime_dir = BOOTSTRAP_DIR
        self._pythons: dict[str, str | None] = {}

    def check(self, runtime: str) -> None:
        """Raise InvalidParameterValueException unless ``runtime`` can run here."""
        if runtime not in KNOWN:
            raise AwsError.invalid_parameter(
                f"Value {runtime} at 'runtime' failed to satisfy constraint: Member must satisfy "
                f"enum value set: [{', '.join(KNOWN)}] or be a valid ARN"
            )
        if runtime in PYTHON_RUNTIMES and self.python(runtime) is None:
            raise AwsError.invalid_parameter(
                f"The runtime parameter of {runtime} is not available on this Kiln host: no "
                f"python{runtime[6:]} interpreter was found (set KILN_PYTHON_RUNTIMES="
                f"{runtime}=/path/to/python{runtime[6:]})."
            )
        if runtime in NODE_RUNTIMES and self.node() is None:
            raise AwsError.invalid_parameter(
                f"The runtime parameter of {runtime} is not available on this Kiln host: "
                f"'{self.settings.node_binary}' (Node.js) was not found."
            )
        if runtime in FOREIGN:
            raise AwsError.invalid_parameter(
                f"The runtime parameter of {runtime} is not supported by Kiln; use a python3.x, "
                "nodejs, or provided runtime."
            )

    def python(self, runtime: str) -> str | None:
        """The interpreter serving ``python3.x``, discovered once."""
        if runtime not in self._pythons:
            self._pythons[runtime] = self._find_python(runtime[len("python"):])
        return self._pythons[runtime]

    def _find_python(self, version: str) -> str | None:
        configured = self.settings.python_runtimes.get(f"python{version}")
        if configured:
            return configured if os.access(configured, os.X_OK) else None
        if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
            # The base interpreter, not a virtualenv's: functions bring their own packages, and
            # the server's site-packages would only slow every cold start.
            return os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        candidates: list[str] = []
        found = shutil.which(f"python{version}")
        # pyenv shims re-resolve the version on every start (~170 ms); skip them.
        if found and "/shims/" not in found:
            candidates.append(found)
        candidates.append(f"/usr/bin/python{version}")
        pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
        candidates.extend(sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"),
                                 reverse=True))
        for candidate in candidates:
            if os.access(candidate, os.X_OK):
                return candidate
        return None

    def node(self) -> str | None:
        return shutil.which(self.settings.node_binary)

    def command(self, runtime: str, task_root: Path, layer_roots: list[Path]) -> list[str]:
        """argv of the runtime process; ``provided`` looks for ``bootstrap`` like Lambda does."""
        if runtime in PYTHON_RUNTIMES:
            python = self.python(runtime)
            assert python is not None, "checked at create time"
            return [python, "-s", "-u", str(BOOTSTRAP_DIR / "python_bootstrap.py")]
        if runtime in NODE_RUNTIMES:
            node = self.node()
            assert node is not None, "checked at create time"
            return [node, str(BOOTSTRAP_DIR / "node_bootstrap.mjs")]
        for root in [task_root, *reversed(layer_roots)]:
            bootstrap = root / "bootstrap"
            if bootstrap.is_file():
                return [str(bootstrap)]
        return [str(task_root / "bootstrap")]

    def search_paths(self, runtime: str, task_root: str, opt: str | None) -> dict[str, str]:
        """PATH, LD_LIBRARY_PATH and the language's module path with the layers' directories
        (merged at ``opt``; None when there are no layers) where Lambda puts them."""
        opt_root = opt or "/opt"
        paths = {
            "PATH": f"/usr/local/bin:/usr/bin/:/bin:{opt_root}/bin",
            "LD_LIBRARY_PATH": f"/lib64:/usr/lib64:{task_root}:{task_root}/lib:{opt_root}/lib",
        }
        if opt is None:
            return paths
        if runtime in PYTHON_RUNTIMES:
            paths["PYTHONPATH"] = f"{opt}/python/lib/{runtime}/site-packages:{opt}/python"
        elif runtime in NODE_RUNTIMES:
            major = runtime[len("nodejs"):-len(".x")]
            paths["NODE_PATH"] = (f"{opt}/nodejs/node{major}/node_modules:"
                                  f"{opt}/nodejs/node_modules")
        return paths

    def execution_env(self, runtime: str) -> str | None:
        """``AWS_EXECUTION_ENV`` (unset for provided runtimes)."""
        if runtime in PROVIDED:
            return None
        return f"AWS_Lambda_{runtime}"
