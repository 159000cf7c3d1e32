"""Run rosa's PEFT-integration tests against several peft releases, to state the supported range.

Each release is installed on its own (``pip install --no-deps --target``) and put first on
``PYTHONPATH`` over the environment's peft, so nothing else changes between runs. Prints one line per
release: the tests' outcome, and what ``import rosa`` says about it.

    python scripts/peft_versions.py 0.17.1 0.18.1 0.19.1 0.20.0 0.21.2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_peft_integration.py", "tests/test_hf_trainers.py"]


def run(version: str, workdir: Path) -> str:
    target = workdir / f"peft-{version}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), f"peft=={version}"],
                   check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=REPO, env=env,
                           capture_output=True, text=True)
    summary = (tests.stdout.strip().splitlines() or ["(no output)"])[-1]
    return f"peft {version}: {summary}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for version in args.versions:
            print(run(version, Path(workdir)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
