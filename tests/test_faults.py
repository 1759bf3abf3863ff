"""Faults a cluster user meets, injected into a tiny study run through Snakemake (issue 23), and what a dry run
writes (nothing).

1. a prediction or score removed after a complete run (by hand, a failed --forcerun, a killed group) is rebuilt by
   the next ``snakemake``, with everything after it, instead of "Nothing to be done" and a stale summary;
2. ``kill -9`` of Snakemake at any point: ``snakemake --unlock && snakemake`` finishes the study, with results
   identical to an undisturbed run (before: only the model server ran, idled out, and the run "succeeded" empty);
3. a full disk while the study database is written (rules/database.smk): the job fails, no empty database is left
   counted complete;
4. the model server serves only its study's cells: another user's connection is refused (SO_PEERCRED), so is a
   request naming a path outside the study's results; its socket lives in an owner-only directory;
5. NaN / inf logits: the sample is marked failed (``status``), never scored, counted in the summary; a cell whose
   every sample fails fails;
7. an interpreter under a path with a space and ``$(...)`` runs every job (quoted, never executed);
and a dry run / ``--list-changes`` leaves the study's working directory as it was.
(Point 6, bad input, is the table in tests/test_config_validation.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import ROOT, RUN_COLUMNS, parse_job_stats, tree

PRED = "results/predictions/model=tiny/task=ruler_niah/length=1024/method={m}/ratio={r}/shard={s}/part.parquet"
SCORE = "results/scores/model=tiny/task=ruler_niah/length=1024/part.parquet"
DATA = "results/data/tokenizer=tiny/task=ruler_niah/length=1024/mode=direct/samples.parquet"
SUMMARY = "results/aggregate/summary.parquet"
CELLS = [("dense", 1), ("snapkv", 2)]
PREDS = [PRED.format(m=m, r=r, s=s) for m, r in CELLS for s in (0, 1)]
TIMING = RUN_COLUMNS | {"mean_prefill_ms", "mean_decode_ms_per_token", "max_peak_mem_mb"}
UNTIL = ("--until", "aggregate")      # the study up to its aggregate (the charts after it add nothing here)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process and socket checks: Linux")


def study(model) -> dict:
    return {"seed": 43, "samples": 2, "shard_size": 1, "prompt_mode": "direct", "max_new_tokens": 2,
            "models": {"tiny": {"path": str(model), "dtype": "float32", "device": "cpu"}},
            "tasks": ["ruler_niah"], "lengths": [1024], "methods": {"dense": {}, "snapkv": {"ratios": [2]}}}


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """The user's command: the default workflow profile (profiles/default: rerun-incomplete), our study file."""
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(workdir / "study.yaml"), "--workflow-profile", str(ROOT / "profiles" / "default"),
            *args]


def run(workdir: Path, *args: str, check: bool = True, env: dict | None = None, timeout: int = 600):
    proc = subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def jobs(proc) -> dict[str, int]:
    return parse_job_stats(proc.stdout + proc.stderr)


def new_study(path: Path, model) -> Path:
    path.mkdir(parents=True)
    (path / "study.yaml").write_text(yaml.safe_dump(study(model), sort_keys=False))
    return path


def table_rows(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in pq.read_table(path).to_pylist()]


def results(workdir: Path) -> dict[str, list[dict]]:
    """Every prediction, the score file and the summary, timings aside."""
    return {p: table_rows(workdir / p) for p in [*PREDS, SCORE, SUMMARY]}


def live_processes(workdir: Path) -> list[str]:
    """Snakemake, model servers and clients still running in ``workdir``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if ("snakemake" in cmd or "workflow_scripts" in cmd) and Path(os.readlink(f"/proc/{pid}/cwd")) == workdir:
                found.append(f"{pid}: {cmd[:160]}")
        except OSError:
            continue
    return found


def wait_until_gone(workdir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (left := live_processes(workdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> tuple[Path, dict]:
    """An undisturbed run of the study (up to its aggregate) and its results."""
    wd = new_study(tmp_path_factory.mktemp("reference") / "wd", tiny_model)
    assert jobs(run(wd, *UNTIL)) == {"task_data": 1, "model_server": 1, "infer": 4, "score": 1, "aggregate": 1}
    return wd, results(wd)


# ---------------------------------------------------------------------------------------------- 1
def test_missing_predictions_and_scores_are_rebuilt(reference, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(reference[0], wd, symlinks=True)
    assert jobs(run(wd, "-n", *UNTIL)) == {}
    summary_mtime = (wd / SUMMARY).stat().st_mtime_ns

    (wd / PREDS[3]).unlink()                      # a prediction removed by hand
    proc = run(wd, *UNTIL)
    assert jobs(proc) == {"model_server": 1, "infer": 1, "score": 1, "aggregate": 1}, proc.stdout[-2000:]
    assert (wd / SUMMARY).stat().st_mtime_ns > summary_mtime
    assert results(wd) == reference[1]

    (wd / SCORE).unlink()                          # a score removed
    assert jobs(run(wd, *UNTIL)) == {"score": 1, "aggregate": 1}
    assert results(wd) == reference[1]

    # a failed --forcerun of one cell (the server killed at that cell): the cell's output is gone; the next
    # plain run rebuilds it
    proc = run(wd, "--forcerun", PREDS[0], *UNTIL, check=False, env={"SFW_FAULT": "mid_write:method=dense/ratio=1/shard=0"})
    assert proc.returncode != 0
    assert not (wd / PREDS[0]).exists()
    assert jobs(run(wd, "-n", *UNTIL)) == {"model_server": 1, "infer": 1, "score": 1, "aggregate": 1}
    run(wd, *UNTIL)
    assert results(wd) == reference[1]


# ---------------------------------------------------------------------------------------------- 2
KILL_POINTS = {
    "task_data": "results/logs/data/**/*.log",                  # while the task data is generated
    "model_server": "results/logs/model_server/*.log",          # the server started, cells connecting
    "first_prediction": "results/predictions/**/part.parquet",  # a cell written, others running
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill9_of_snakemake_then_unlock_and_run_finishes(reference, tiny_model, tmp_path, point):
    wd = new_study(tmp_path / "wd", tiny_model)
    env = {**os.environ, "SFW_SERVER_IDLE_TIMEOUT": "30"}     # a server left without cells must not idle 5 min
    proc = subprocess.Popen(snakemake_cmd(wd, *UNTIL), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not list(wd.glob(KILL_POINTS[point])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before {point}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until_gone(wd)
    servers_left = sorted(str(p.relative_to(wd)) for p in wd.glob("results/model_server/**/*.json"))

    run(wd, "--unlock")
    t0 = time.monotonic()
    resumed = run(wd, *UNTIL, env=env)
    assert time.monotonic() - t0 < 240
    assert jobs(resumed).get("infer", 0) >= 1 and jobs(resumed)["aggregate"] == 1, resumed.stdout[-2000:]
    assert results(wd) == reference[1]
    assert jobs(run(wd, "-n", *UNTIL)) == {}
    wait_until_gone(wd)
    # the server removed its rendezvous file when its Snakemake went away (the next run would have taken it as
    # the server's incomplete output: forced the server, skipped everything after it)
    assert servers_left == [], servers_left


# ---------------------------------------------------------------------------------------------- 3
def test_full_disk_while_writing_the_database_fails_and_leaves_no_database(reference, tmp_path):
    """The file-size limit stands in for a full disk (the same write error): DuckDB's close-time checkpoint fails.
    Before: the error was swallowed, an empty database renamed into place with its WAL orphaned beside it."""
    wd = reference[0]
    out = tmp_path / "agg"
    out.mkdir()
    from workflow_scripts.aggregate import aggregate

    aggregate([str(wd / SCORE)], str(out / "samples.parquet"), str(out / "summary.parquet"))
    tables = {t: str(out / f"{t}.parquet") for t in ("samples", "summary")}
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "from workflow_scripts.aggregate import write_database\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))\n"
        f"write_database({tables!r}, sys.argv[1] + '/study.duckdb')\n")
    proc = subprocess.run([sys.executable, "-c", script, str(out), "60000"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0, "the database was reported written on a full disk"
    assert "checkpoint" in proc.stderr.lower() or "large" in proc.stderr.lower(), proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["samples.parquet", "summary.parquet"], \
        "nothing of a failed database may be left"
    # with room, the same call writes a complete database
    subprocess.run([sys.executable, "-c", script, str(out), str(10**9)], cwd=ROOT, check=True, timeout=120)
    import duckdb

    con = duckdb.connect(str(out / "study.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 4      # 2 cells x 2 samples
    assert con.execute("SELECT sum(n) FROM summary").fetchone()[0] == 4
    assert not list(out.glob("*.wal"))


# ---------------------------------------------------------------------------------------------- 4
def _request(out: str, data: str = DATA) -> dict:
    cell = {"model_path": "m", "tokenizer": "m", "dtype": "float32", "device": "cpu", "calibration": None}
    return {"protocol": 1, "op": "run", "cell": cell, "data": data, "out": out}


# a client with nothing but the standard library, to run as another user (it cannot import this project)
RAW_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
addr = sys.argv[1]
try:
    s.connect("\\0" + addr[1:] if addr.startswith("@") else addr)
except OSError as e:
    print(json.dumps({"connect_error": e.errno})); sys.exit(0)
try:
    s.sendall((sys.argv[2] + "\\n").encode())
except OSError:
    pass            # a server that refused the connection closed it: its reply is still there to read
print(s.makefile().readline().strip() or "{}")
"""


def _ask(address: str, req: dict, cwd: Path, user: int | None = None) -> dict:
    cmd = ["/usr/bin/python3" if user else sys.executable, "-c", RAW_CLIENT, address, json.dumps(req)]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60, cwd=cwd).stdout)


def _can_switch_user() -> bool:
    if os.getuid() != 0 or not shutil.which("setpriv") or not Path("/usr/bin/python3").exists():
        return False
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                           "import os; assert os.getuid() == 65534"], capture_output=True).returncode == 0


def test_server_refuses_other_users_and_paths_outside_the_study(tmp_path):
    study_dir = tmp_path / "study"
    (study_dir / "m").mkdir(parents=True)
    (study_dir / "results" / "predictions").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (study_dir / "results" / "predictions" / "link").symlink_to(outside)
    abstract = f"@sfw-test-{os.getpid()}-{time.monotonic_ns()}"
    sock_file = "results/model_server/sockets/t.sock"
    servers = [subprocess.Popen([sys.executable, "-m", "workflow_scripts.server", "--listen", addr, "--server",
                                 "model=m"], cwd=study_dir, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stderr=subprocess.PIPE, text=True) for addr in (abstract, sock_file)]
    try:
        deadline = time.monotonic() + 60
        while not (study_dir / sock_file).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        # the workflow's socket: a 0600 file in a 0700 directory of ours
        sockets = study_dir / "results/model_server/sockets"
        assert (sockets.stat().st_mode & 0o777, (study_dir / sock_file).stat().st_mode & 0o777) == (0o700, 0o600)

        # paths outside the study's results are refused before anything is loaded or written
        for out, data in [("/root/sfw-forged/part.parquet", DATA), ("results/predictions/../../../x/part.parquet", DATA),
                          ("results/predictions/link/part.parquet", DATA), (PRED.format(m="dense", r=1, s=0), "/etc/passwd"),
                          ("results/data/part.parquet", DATA), (PRED.format(m="dense", r=1, s=0).replace("part", "x"), DATA)]:
            for addr in (abstract, sock_file):
                reply = _ask(addr, _request(out, data), study_dir)
                assert reply.get("status") == "error" and "refused" in reply["traceback"], (out, data, reply)
        assert not Path("/root/sfw-forged").exists() and not list(outside.iterdir())

        if not _can_switch_user():
            pytest.skip("cannot run a client as another user (needs root, setpriv and /usr/bin/python3)")
        # another user: refused by the peer-credential check (abstract socket: anyone can connect) ...
        reply = _ask(abstract, _request(PRED.format(m="dense", r=1, s=0)), study_dir, user=65534)
        assert reply.get("status") == "error" and "refused" in reply["traceback"], reply
        assert f"not {65534}" in reply["traceback"]
        # ... and cannot even reach the workflow's socket file (owner-only directory)
        assert _ask(sock_file, _request(PRED.format(m="dense", r=1, s=0)), study_dir, user=65534) == {
            "connect_error": 13}
        assert not (study_dir / "results/predictions/model=tiny").exists()
    finally:
        for s in servers:
            s.terminate()
            s.wait(timeout=30)
    log = servers[0].stderr.read()
    assert "refused a connection from user id 65534" in log, log[-2000:]


def test_client_refuses_a_server_of_another_user(tmp_path):
    """The client checks the server's user in turn: a socket served by another user is not this study's server."""
    if not _can_switch_user():
        pytest.skip("cannot run a server as another user (needs root, setpriv and /usr/bin/python3)")
    addr = f"@sfw-fake-{os.getpid()}-{time.monotonic_ns()}"
    fake = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                             "import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\n"
                             f"s.bind('\\0{addr[1:]}'); s.listen(); time.sleep(60)"])
    try:
        rendezvous = tmp_path / "r.json"
        rendezvous.write_text(json.dumps({"address": addr, "pid": fake.pid, "host": socket.gethostname()}))
        time.sleep(1)
        proc = subprocess.run([sys.executable, "-m", "workflow_scripts.server_client", "--address", str(rendezvous),
                               "--cell", "{}", "--data", "d", "--out", "o"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "SFW_SERVER_CONNECT_TIMEOUT": "10"})
        assert proc.returncode == 1 and "served by user id 65534" in proc.stdout, proc.stdout + proc.stderr
    finally:
        fake.kill()
        fake.wait()


# ---------------------------------------------------------------------------------------------- 5
def _poisoned_copy(tiny_model: Path, dest: Path, token: int | None) -> Path:
    """The tiny model with a NaN in one token's input embedding (``token``: only prompts holding it; the output
    embedding, tied in the tiny model, is untied and kept clean), or in the final norm (every sample)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model, dest)
    weights = load_file(str(dest / "model.safetensors"))
    if token is None:
        weights["model.norm.weight"][0] = float("nan")
    else:
        cfg = json.loads((dest / "config.json").read_text())
        cfg["tie_word_embeddings"] = False
        (dest / "config.json").write_text(json.dumps(cfg))
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
        weights["model.embed_tokens.weight"][token] = float("nan")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(dest / "model.safetensors"),
              metadata={"format": "pt"})
    assert any(torch.isnan(w).any() for w in load_file(str(dest / "model.safetensors")).values())
    return dest


def _token_only_in_first(tiny_model: Path, prompts: list[str]) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    ids = [set(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    only = sorted(ids[0] - set().union(*ids[1:]))
    assert only, "no token of the first prompt is missing from the others"
    return only[0]


def test_nonfinite_logits_stop_the_row_in_both_decode_loops(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse_kernels.hf import register
    from sparse_kernels.hf.generate import NONFINITE, greedy_generate
    from sparse_kernels.hf.session import SparseSession

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    prompts = ["the cat sat on the mat and looked at the door", "a dog ran in the park"]
    bad = _token_only_in_first(tiny_model, prompts)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32,
                                                 attn_implementation=register()).eval()
    with torch.no_grad():               # untie the output embedding (tied in the tiny model), poison one input row
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        model.model.embed_tokens.weight[bad] = float("inf")
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for mode in ("off", "eager"):
        stops = [greedy_generate(model, [p], 4, {tok.eos_token_id}, tok.pad_token_id or 0,
                                 session=SparseSession(None, None), fast_decode=mode).stop[0] for p in ids]
        assert stops[0] == NONFINITE and stops[1] in ("eos", "length"), (mode, stops)


def test_nan_samples_are_failed_not_scored_and_an_all_nan_cell_fails(reference, tiny_model, tmp_path):
    ref = reference[0]
    prompts = [r["prompt"] for r in pq.read_table(ref / DATA).to_pylist()]
    bad = _poisoned_copy(tiny_model, tmp_path / "nan-one", _token_only_in_first(tiny_model, prompts))
    cfg = study(bad)
    cfg.update(shard_size=2, methods={"dense": {}})
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run(wd, *UNTIL)
    pred = pq.read_table(wd / PRED.format(m="dense", r=1, s=0)).to_pylist()
    assert [r["status"] for r in pred] == ["failed: non-finite logits", "ok"]
    assert pred[0]["prediction"] is None and pred[1]["prediction"] is not None
    scores = pq.read_table(wd / SCORE).to_pylist()
    assert [s["score"] is None for s in scores] == [True, False]           # never a 0 for a failed sample
    summary = pq.read_table(wd / SUMMARY).to_pylist()
    assert [(s["n"], s["failed"], s["mean"]) for s in summary] == [(1, 1, scores[1]["score"])]

    # every sample NaN: the cell fails, its log says why, nothing downstream is made
    cfg["models"]["tiny"]["path"] = str(_poisoned_copy(tiny_model, tmp_path / "nan-all", None))
    wd2 = tmp_path / "wd2"
    wd2.mkdir()
    (wd2 / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run(wd2, *UNTIL, check=False)
    assert proc.returncode != 0
    log = (wd2 / "results/logs/infer/model=tiny/task=ruler_niah/length=1024/method=dense/ratio=1/shard=0.log")
    assert "every sample of this cell (2) produced non-finite" in log.read_text()
    assert not (wd2 / PRED.format(m="dense", r=1, s=0)).exists() and not (wd2 / SUMMARY).exists()


# ---------------------------------------------------------------------------------------------- 7
def test_interpreter_under_a_path_with_a_space_and_shell_syntax(reference, tmp_path):
    """A venv whose path holds a space and `$(...)`: every job runs, nothing in the path is executed."""
    venv = tmp_path / "my venv $(touch PWNED)"
    (venv / "bin").mkdir(parents=True)
    base = Path(sys.executable).resolve()
    shutil.copy(Path(sys.prefix) / "pyvenv.cfg", venv / "pyvenv.cfg")
    (venv / "bin" / "python").symlink_to(base)
    (venv / "lib").symlink_to(Path(sys.prefix) / "lib")
    wd = new_study(tmp_path / "wd", _model_of(reference[0]))
    cmd = snakemake_cmd(wd, DATA)
    cmd[0] = str(venv / "bin" / "python")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert jobs(proc) == {"task_data": 1}
    assert (wd / DATA).read_bytes() == (reference[0] / DATA).read_bytes()
    assert not list(tmp_path.rglob("PWNED")) and not (ROOT / "PWNED").exists()


def _model_of(workdir: Path) -> str:
    return yaml.safe_load((workdir / "study.yaml").read_text())["models"]["tiny"]["path"]


# ---------------------------------------------------------------------------------------------- dry runs
def test_dry_run_and_list_changes_write_nothing(reference, tiny_model, tmp_path):
    """A dry run plans the same jobs as before (a changed cell: only its shards and their server) and writes
    nothing outside .snakemake: neither in a complete study nor in a fresh one."""
    wd = tmp_path / "wd"
    shutil.copytree(reference[0], wd, symlinks=True)
    before = tree(wd)
    assert jobs(run(wd, "-n", *UNTIL)) == {}
    for what in ("params", "input", "code"):
        run(wd, "--list-changes", what)
    changed = study(tiny_model)
    changed["methods"]["snapkv"]["params"] = {"kernel_size": 7}
    (wd / "study.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    before["study.yaml"] = tree(wd)["study.yaml"]
    assert jobs(run(wd, "-n", *UNTIL)) == {"model_server": 1, "infer": 2, "score": 1, "aggregate": 1}
    assert tree(wd) == before
    assert not list(wd.glob("results/model_server/**/*.json"))

    fresh = new_study(tmp_path / "fresh", tiny_model)
    assert jobs(run(fresh, "-n", *UNTIL))["infer"] == 4
    assert sorted(p.name for p in fresh.iterdir()) == [".snakemake", "study.yaml"]
