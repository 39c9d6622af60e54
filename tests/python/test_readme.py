# SPDX-License-Identifier: Apache-2.0
"""The README's Python block ("## Python"), run as it stands, so that it
stays correct."""
import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def test_readme_python_block():
    text = open(README, encoding="utf-8").read()
    section = text[text.index("\n## Python\n"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ERR_PROTOCOL" in r.stdout or "-13" in r.stdout, r.stdout
