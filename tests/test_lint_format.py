"""The workflow as Snakemake's own tools see it.

1. `snakemake --lint` of the default study reports only the findings that rules/common.smk justifies, and every
   rule with such a finding carries a `# lint:` comment where it stands (a new rule without `log:`, a function
   next to rules, a path built with `+`, ... fails here);
2. `snakefmt --check` (pinned in requirements.txt, configured in pyproject.toml) would change no file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Finding title (prefix) -> why it stays (the same reasons as in rules/common.smk's header).
ALLOWED = {
    "Specify a conda environment or container for each rule.": "the rules run the workflow's own environment",
    "Environment variable PYTHONPATH used but not asserted with envvars directive": "set for the jobs, not read",
    "Shell command directly uses variable PY from outside of the rule": "the interpreter string (issue 23)",
    "Shell command directly uses variable sfs from outside of the rule": "the model server's socket folder: the server "
    "rule takes no params on purpose (rules/infer.smk)",
    "Shell command directly uses variable LOADS from outside of the rule": "the load plan's share_prefill setting, "
    "for the same reason (rules/infer.smk)",
}
# Findings about one rule whose justification is a `# lint:` comment just above the rule.
RULE_COMMENT = "Specify a conda environment or container for each rule."


def lint_findings(text: str) -> list[tuple[str, str, str]]:
    """(kind, name, title) per finding of `snakemake --lint` (text output; `--lint json` prints nothing in
    Snakemake 9.27.1: the command line does not pass the format on)."""
    out, head = [], None
    for line in text.splitlines():
        m = re.match(r"^Lints for (rule|snakefile) (\S+)(?: \(line \d+, (\S+)\))?:$", line)
        if m:
            head = (m.group(1), m.group(2) if m.group(1) == "rule" else Path(m.group(2)).name, m.group(3))
            continue
        m = re.match(r"^    \* (.+?):?$", line)
        if m and head:
            out.append((head[0], head[1], m.group(1), head[2]))
    return out


def test_lint_reports_only_justified_findings():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--workflow-profile", "none"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    findings = lint_findings(text)
    assert "Lints for" in text and findings, text[-3000:]    # the parser sees the findings that are there
    unexpected = [f[:3] for f in findings if not any(f[2].startswith(a) for a in ALLOWED)]
    assert not unexpected, f"new snakemake --lint findings (fix them or justify them):\n{unexpected}"
    for kind, name, title, snakefile in findings:
        if kind == "rule" and title.startswith(RULE_COMMENT):
            lines = Path(snakefile).read_text().splitlines()
            at = next(i for i, line in enumerate(lines) if re.match(rf"^\s*rule {name}:", line))
            above = [line.strip() for line in lines[max(0, at - 12):at]]
            assert any(line.startswith("# lint:") for line in above), f"rule {name} ({snakefile}): no # lint: comment"


def test_lint_parser_sees_a_finding_of_each_level():
    text = ("Lints for snakefile /x/rules/a.smk:\n    * Mixed rules and functions in same snakefile.:\n      body\n\n"
            "Lints for rule r (line 3, /x/rules/a.smk):\n    * No log directive defined:\n      body\n")
    assert lint_findings(text) == [("snakefile", "a.smk", "Mixed rules and functions in same snakefile.", None),
                                   ("rule", "r", "No log directive defined", "/x/rules/a.smk")]


def test_snakefmt_leaves_the_rule_files_unchanged():
    files = ["Snakefile", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "rules").glob("*.smk"))]
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--diff", *files], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"snakefmt would change files (run `snakefmt Snakefile rules/`):\n{proc.stdout[-4000:]}"
    assert f"{len(files)} file(s) would be left unchanged" in proc.stderr
