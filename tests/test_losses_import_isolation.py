"""posttrain.losses / posttrain.weighting never import TRL or transformers, and docs/losses.md's examples run.

One subprocess (a fresh interpreter, so nothing imported by other tests counts) does both: it records which heavy
modules the imports pulled in, then executes every ```python block of docs/losses.md in order in one namespace.
"""
import json
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("trl", "transformers")

SCRIPT = textwrap.dedent("""
    import json, sys, traceback
    import posttrain.losses, posttrain.weighting
    from posttrain.losses import policy_loss, dpo_loss, kl_divergence, selective_logprobs_and_entropy
    result = {"after_import": sorted(m for m in HEAVY if m in sys.modules)}
    try:
        exec(compile(DOCS, "docs/losses.md", "exec"), {"__name__": "__docs__"})
        result["docs_error"] = None
    except Exception:
        result["docs_error"] = traceback.format_exc()[-3000:]
    result["after_docs"] = sorted(m for m in HEAVY if m in sys.modules)
    print("RESULT " + json.dumps(result))
""")


@pytest.fixture(scope="module")
def fresh_process():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "losses.md").read_text(), flags=re.S)
    assert blocks, "docs/losses.md has no python examples"
    code = f"HEAVY = {HEAVY!r}\nDOCS = {chr(10).join(blocks)!r}\n" + SCRIPT
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_losses_and_weighting_do_not_import_trl_or_transformers(fresh_process):
    assert fresh_process["after_import"] == []


def test_docs_examples_run_without_trl(fresh_process):
    assert fresh_process["docs_error"] is None, fresh_process["docs_error"]
    assert fresh_process["after_docs"] == []
