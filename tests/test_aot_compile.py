"""Every Triton kernel compiles for an H100 (sm_90) through Triton's full compiler, without a GPU.

The CPU tests run the kernels in the interpreter, which accepts code that the compiler rejects (session 6's
``topk_pages`` reassigned a ``tl.constexpr`` inside ``tl.static_range``: fine interpreted, a compile error on the
H100). ``sparse_kernels.triton.aot_check`` compiles each kernel in the launch configurations the executors use.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "sparse_kernels.triton.aot_check", "--arch", "90"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "all kernels compiled" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert "FAIL" not in r.stdout
    # the kernels the executors launch are all there (a kernel dropped from the check would pass silently)
    for name in ("prefill tile", "vertical-slash index builder", "decode pages", "decode combine",
                 "quest page bounds", "quest top-k pages", "window lse", "window scores"):
        assert name in r.stdout, name
