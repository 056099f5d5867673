"""bce3s.eval is pure: importing any of its modules loads nothing of the engine, the data or the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bce3s

SRC = Path(bce3s.__file__).resolve().parents[1]  # the bce3s under test, not another installed copy


def test_eval_imports_no_engine_data_or_report() -> None:
    code = (
        "import json, pkgutil, importlib, sys\n"
        "import bce3s.eval\n"
        "names = [m.name for m in pkgutil.walk_packages(bce3s.eval.__path__, 'bce3s.eval.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'imported': names, 'modules': sorted(sys.modules)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"bce3s.eval.metrics", "bce3s.eval.geometry"} <= set(result["imported"])
    banned = ("bce3s.engine", "bce3s.data", "bce3s.report")
    loaded = [m for m in result["modules"] if any(m == b or m.startswith(b + ".") for b in banned)]
    assert loaded == []
    assert "matplotlib" not in result["modules"]
