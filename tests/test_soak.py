"""The soak script (``python tests/soak_resume.py --minutes 30``, out of the default suite for its
length) run for a few seconds: it must kill, resume, and report bit-identical results."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO
from processes import ENV


def test_the_soak_script_kills_resumes_and_reports_identical_weights(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "tests" / "soak_resume.py"), "--minutes", "0.25", "--out", str(tmp_path)],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "adapter/adapter_model.safetensors: bit-identical" in done.stdout and "dls_history.json: bit-identical" in done.stdout
    assert sum(int(n) for n in re.findall(r"(\d+) kills mid-", done.stdout)) >= 1, done.stdout
