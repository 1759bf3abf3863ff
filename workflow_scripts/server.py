"""Model server: loads one model once and runs the inference cells of its load group on request.

    python -m workflow_scripts.server --listen @<name> --server <load id, e.g. model=qwen7b/length=16384>

Started by rule ``model_server`` (``rules/infer.smk``) as a Snakemake *service*: Snakemake starts it together with
the cells of its group that need to run (thin clients, ``workflow_scripts.server_client``) and sends it SIGTERM
once they have all finished. Lifecycle and guarantees:

* **Rendezvous.** The server listens on a Unix socket file in ``results/model_server/sockets`` of the study (a
  directory only its owner may enter; the socket itself 0600). The rule's shell writes that address and the
  server's pid into the rule's service output (``results/model_server/<id>.json``) before starting Python; clients
  read it and connect, retrying until the server listens (or has died).
* **Trust.** Only this study's cells are served: a connection from another user (``SO_PEERCRED``) is refused, and
  so is a request whose output, data or calibration path lies outside the study's ``results/`` (outputs: only
  ``results/predictions/.../part.parquet``; symbolic links resolved). Clients check the server's user in turn.
* **One load, lazily.** The model is loaded at the first request that has to compute (a group whose cells can
  all be restored, see salvage, loads nothing), as that cell's spec describes it (``model_path``, ``tokenizer``,
  ``dtype``, ``device``); every later cell must name the same model. The server takes no settings of its own
  (no Snakemake params or inputs): a server job that Snakemake wanted to rerun for its own sake would keep its
  cells from being checked for their own changes (see ``rules/infer.smk``). Requests are served one at a time in arrival order with
  ``workflow_scripts.infer.run``, the same function a standalone cell runs; the cell's printed output and
  progress stream back to its client, which prints them into the cell's own log.
* **Errors.** A failing cell (exception, ``SystemExit`` from a fault hook, CUDA OOM) does not stop the server:
  its traceback goes to that cell's client, which exits non-zero. The reply is held back until no other request
  is queued (and none arrives for a few seconds), so the other cells of the group finish first. A model that
  fails to load fails every cell that needs it, with the load traceback. A server that dies (killed, out of
  memory) closes its connections: clients fail at once with the tail of this server's log.
* **Salvage.** Snakemake treats a group as a unit: when one cell fails, it deletes the outputs of every cell of
  the group. Each output the server writes is therefore also hard-linked into ``results/model_server/salvage``
  under a key of everything it depends on (cell spec, output path, data / calibration / checkpoint file
  identities, code fingerprint, package versions, device). A later request with the same key (the retry)
  restores the file instead of recomputing it. When the server is stopped normally (SIGTERM with every request
  answered successfully), the entries it made or used are deleted: salvage only outlives failed groups.
* **No orphans.** The rule ``exec``s this process (Snakemake's SIGTERM/SIGKILL reach it directly), a watchdog
  exits it when its parent process (Snakemake, ``--parent``) goes away, removing its rendezvous file and socket
  first (a rendezvous file outliving its Snakemake would be taken as this job's incomplete output by the next run,
  see ``rules/infer.smk``), and it exits after ``SFW_SERVER_IDLE_TIMEOUT`` seconds
  (default 300) without any client connected or queued.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import io
import json
import os
import platform
import queue
import signal
import socket
import stat
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

from .server_plan import SALVAGE_DIR

PROTOCOL = 1
MODEL_KEYS = ("model_path", "tokenizer", "dtype", "device")
GATHER_S = 1.0           # requests arriving within this long of the last one are served together (shared prefill)
GATHER_MAX_S = 10.0
GRACE_S = 2.0            # an error reply waits until no request has been queued for this long
WATCHDOG_S = 2.0
# Safety net: exit after this long without any client (Snakemake stops the server as soon as its cells are done;
# this only ends a server whose group was abandoned, e.g. when Snakemake failed to start the cells).
IDLE_TIMEOUT_S = float(os.environ.get("SFW_SERVER_IDLE_TIMEOUT", "300"))


def log(msg: str) -> None:
    print(f"[model_server {time.strftime('%H:%M:%S')}] {msg}", file=sys.__stderr__, flush=True)


# ---------------------------------------------------------------------------------------------- socket
def listening_socket(address: str) -> socket.socket:
    """Listen on ``address``: a socket file (its directory is created owner-only, and must be ours and not a
    symbolic link; the socket is 0600), or '@name' (Linux abstract namespace, for tests)."""
    from .server_client import socket_address

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if address.startswith("@"):
        sock.bind(socket_address(address))
    else:
        parent = os.path.dirname(address) or "."
        os.makedirs(parent, mode=0o700, exist_ok=True)
        st = os.lstat(parent)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise RuntimeError(f"socket directory {parent} is not a directory owned by this user")
        os.chmod(parent, 0o700)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        old = os.umask(0o177)
        try:
            sock.bind(address)
        finally:
            os.umask(old)
    sock.listen(1024)
    return sock


class Refused(PermissionError):
    """A request this server does not serve (another user, or a path outside the study)."""


def confined(path: str, root: Path, under: str, what: str) -> Path:
    """``path`` (relative to the study's working directory ``root``) with symbolic links resolved; it must lie
    inside ``root/under``."""
    if not isinstance(path, str) or not path:
        raise Refused(f"request refused: {what} must be a path, got {path!r}")
    real = (root / path).resolve()
    base = (root / under).resolve()
    if real != base and base not in real.parents:
        raise Refused(f"request refused: {what} {path!r} is outside this study's {under}/ ({base})")
    return real


def check_request(req: dict, root: Path) -> None:
    """Every path a request names stays inside the study's results (see the module doc, *Trust*)."""
    if req.get("op") != "run" or req.get("protocol") != PROTOCOL:
        raise Refused(f"unsupported request {req.get('op')!r} (protocol {req.get('protocol')})")
    cell = req.get("cell")
    if not isinstance(cell, dict):
        raise Refused("request refused: no cell spec")
    out = confined(req.get("out"), root, "results/predictions", "output")
    if out.name != "part.parquet":
        raise Refused(f"request refused: output {req.get('out')!r} is not a cell's part.parquet")
    confined(req.get("data"), root, "results", "data")
    if cell.get("calibration") is not None:
        confined(cell["calibration"], root, "results/calibration", "calibration")
    for key in ("model_path", "tokenizer"):
        if not isinstance(cell.get(key), str) or not os.path.isdir(os.path.join(root, cell[key])):
            raise Refused(f"request refused: {key} {cell.get(key)!r} is not a directory")


class Connection:
    """One client: its request and the messages back (newline-delimited JSON)."""

    def __init__(self, sock: socket.socket, on_close=None):
        self.sock = sock
        self.closed = False
        self.on_close = on_close

    def send(self, msg: dict) -> None:
        if self.closed:
            return
        try:
            self.sock.sendall((json.dumps(msg) + "\n").encode())
        except OSError:
            self.closed = True          # the client went away; keep serving the others

    def gone(self) -> bool:
        """True if the client closed its end (it sends nothing after its request)."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
        self.closed = True


class ClientStream(io.TextIOBase):
    """stdout/stderr of a running cell: forwarded to its client (and so into the cell's log)."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            self.conn.send({"type": "log", "text": text})
        return len(text)


def read_request(conn: Connection, out: queue.Queue) -> None:
    buf = b""
    try:
        while b"\n" not in buf:
            chunk = conn.sock.recv(65536)
            if not chunk:
                conn.close()
                return
            buf += chunk
        out.put((conn, json.loads(buf.split(b"\n", 1)[0])))
    except (OSError, ValueError) as e:
        log(f"dropping a malformed request: {e!r}")
        conn.close()


def reserve_bytes(server: str, cell: dict) -> int:
    """GPU memory to leave free for KV cache and activations when spreading the weights over several GPUs: the
    estimate at the load's length (from its id, e.g. ``.../length=16384``; else the first cell's length)."""
    from .server_plan import memory_need, model_shape

    shape = model_shape(cell["model_path"])
    if shape is None:
        return 0
    lengths = [int(part.split("=", 1)[1]) for part in server.split("/") if part.startswith("length=")]
    need = memory_need(shape, cell["dtype"], max(lengths or [cell["length"]]), cell["max_new_tokens"],
                       cell["batch_size"])
    return need["kv_cache"] + need["activations"]


# ---------------------------------------------------------------------------------------------- salvage
def _file_id(path: str | None):
    if not path:
        return None
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _dir_id(path: str):
    p = Path(path)
    if not p.is_dir():
        return _file_id(path)
    return sorted([f.name, *_file_id(str(f))] for f in p.iterdir() if f.is_file())


def device_identity(device: str) -> str:
    import torch

    if device in ("cuda", "auto") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"cuda:{torch.cuda.get_device_name(0)}x{n}"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu:{model}"


def salvage_key(req: dict, device: str, threads: int) -> str:
    from .provenance import code_fingerprint, provenance

    cell = req["cell"]
    ident = {"cell": cell, "out": os.path.normpath(req["out"]), "threads": threads,
             "data": _file_id(req["data"]), "calibration": _file_id(cell.get("calibration")),
             "model": _dir_id(cell["model_path"]), "tokenizer": _dir_id(cell["tokenizer"]),
             "code": code_fingerprint(), "versions": provenance()["versions"], "device": device}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _path_tag(out: str) -> str:
    return hashlib.sha1(os.path.normpath(out).encode()).hexdigest()[:20]


def hardlink_or_copy(src: str | Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copy2(src, dst)


# ---------------------------------------------------------------------------------------------- server
class Terminate(Exception):
    pass


class Server:
    def __init__(self, server: str, address: str, threads: int, address_file: str | None = None,
                 parent: int | None = None, share: bool = True):
        self.server = server
        self.share = share            # decode-side cells of one task, length and shard share their dense prefill
        self.address_file = address_file
        self.root = Path.cwd().resolve()
        self.spec: dict | None = None          # the model, from the first request (MODEL_KEYS)
        self.address = address
        self.threads = threads
        self.requests: queue.Queue = queue.Queue()
        self.pending: list[tuple[Connection, dict, str, int]] = []   # held-back error replies
        self.salvage_dir = Path(SALVAGE_DIR)
        self.salvage_used: list[Path] = []
        self.loaded = None
        self.load_error: str | None = None
        self.load_id: str | None = None
        self.served = self.failed = 0
        self.busy = False
        self.connected = 0            # client connections open (queued, running, or waiting for an error reply)
        self._lock = threading.Lock()
        self.idle_since = time.monotonic()
        self.terminating = False
        self.ppid = parent if parent else os.getppid()
        self._device_id: str | None = None

    # -- lifecycle
    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        sock = listening_socket(self.address)
        log(f"{self.server}: pid {os.getpid()} listening on {self.address}")
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        threading.Thread(target=self._watchdog, daemon=True).start()
        try:
            while True:
                try:
                    conn, req = self.requests.get(timeout=GRACE_S if self.pending else 1.0)
                except queue.Empty:
                    self._flush_errors()
                    continue
                self._handle(self._gather((conn, req)))
        except Terminate:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            from .server_client import peer_uid

            uid = peer_uid(client)
            if uid is not None and uid != os.getuid():
                log(f"refused a connection from user id {uid} (this server serves user id {os.getuid()} only)")
                with contextlib.suppress(OSError):
                    client.sendall((json.dumps({"type": "done", "status": "error", "exit": 1, "traceback":
                                                f"refused: this model server serves user id {os.getuid()} only, "
                                                f"not {uid}\n"}) + "\n").encode())
                client.close()
                continue
            with self._lock:
                self.connected += 1
            conn = Connection(client, on_close=self._disconnected)
            threading.Thread(target=read_request, args=(conn, self.requests), daemon=True).start()

    def _disconnected(self) -> None:
        with self._lock:
            self.connected -= 1
            self.idle_since = time.monotonic()

    def _watchdog(self) -> None:
        while True:
            time.sleep(WATCHDOG_S)
            if os.getppid() != self.ppid:
                log(f"parent process {self.ppid} is gone: removing {self.address_file} and exiting")
                self._remove_rendezvous(address_file=True)
                os._exit(1)
            if self.connected > 0 or self.busy:
                self.idle_since = time.monotonic()
            elif time.monotonic() - self.idle_since > IDLE_TIMEOUT_S:
                log(f"no client for {IDLE_TIMEOUT_S:.0f}s: exiting (served {self.served}, failed {self.failed})")
                self._remove_rendezvous(address_file=False)
                os._exit(0 if self.failed == 0 else 1)

    def _remove_rendezvous(self, address_file: bool) -> None:
        """Remove the socket file and, if ``address_file`` (Snakemake is gone), the rendezvous file naming us."""
        paths = [] if self.address.startswith("@") else [self.address]
        if address_file and self.address_file:
            try:
                mine = json.loads(Path(self.address_file).read_text() or "{}").get("pid") == os.getpid()
            except (OSError, ValueError):
                mine = False
            if mine:
                paths.append(self.address_file)
        for p in paths:
            with contextlib.suppress(OSError):
                os.unlink(p)

    def _on_sigterm(self, signum, frame) -> None:
        self.terminating = True
        clean = not self.busy and not self.pending and self.failed == 0 and self.requests.empty()
        if clean:
            for p in self.salvage_used:         # every cell succeeded: their outputs stay, salvage is not needed
                with contextlib.suppress(OSError):
                    p.unlink()
        self._remove_rendezvous(address_file=False)
        log(f"SIGTERM: stopping after {self.served} cell(s) ({self.failed} failed), "
            f"{1 if self.load_id else 0} model load(s); salvage {'released' if clean else 'kept'}")
        raise Terminate()

    # -- requests
    def _gather(self, first: tuple) -> list[tuple]:
        """``first`` and every request queued behind it; while one of them can share its prefill
        (``infer.share_key``), also those arriving within ``GATHER_S`` of the last one (Snakemake starts the cells
        of a group within moments of each other), for at most ``GATHER_MAX_S``."""
        from .infer import share_key

        items = [first]
        t0 = time.monotonic()
        while True:
            try:
                while True:
                    items.append(self.requests.get_nowait())
            except queue.Empty:
                pass
            if not self.share or not any(isinstance(r.get("cell"), dict) and share_key(r["cell"], r.get("data"))
                                         for _c, r in items):
                return items
            wait = min(GATHER_S, GATHER_MAX_S - (time.monotonic() - t0))
            if wait <= 0:
                return items
            try:
                items.append(self.requests.get(timeout=wait))
            except queue.Empty:
                return items

    def _handle(self, items: list[tuple]) -> None:
        """Serve gathered requests: refuse or restore what needs no model, then run the rest with
        ``infer.run_cells`` (sample-major shared prefill among decode-side cells of one task, length and shard);
        each client gets its reply as soon as its cell ends (error replies are held back, see *Errors*)."""
        from . import infer

        self.busy = True
        try:
            jobs, conns = [], {}
            for conn, req in items:
                out = req.get("out", "?")
                if conn.gone():
                    log(f"client of {out} is gone; skipping it")
                    conn.close()
                    continue
                log(f"cell {self.served + self.failed + len(jobs) + 1}: {out}")
                try:
                    if self._admit(conn, req):
                        self.served += 1
                        conn.send({"type": "done", "status": "ok", "restored": True, "load_id": self.load_id,
                                   "seconds": 0.0})
                        conn.close()
                        continue
                except Refused as e:
                    log(f"{e} (cell {out})")
                    conn.send({"type": "done", "status": "error", "exit": 1, "traceback": f"{e}\n"})
                    conn.close()
                    continue
                except Exception as e:         # noqa: BLE001 - fails this cell only
                    self._failed(conn, req, infer._with_traceback(e))
                    continue
                meta = {"model_server": {"server": self.server, "load_id": None, "pid": os.getpid(),
                                         "host": platform.node(), "cell_index": self.served + self.failed + len(jobs)}}
                jobs.append(infer.Job(req["cell"], req["data"], out, ClientStream(conn), meta))
                conns[out] = (conn, req, time.perf_counter())
            if not jobs:
                return
            try:
                loaded = self._model(jobs[0].cell)
            except BaseException as e:         # noqa: B902 - the load fails every cell that needs it
                if self.terminating or isinstance(e, (KeyboardInterrupt, Terminate)):
                    raise
                err = infer._with_traceback(e)
                for job in jobs:
                    self._failed(*conns[job.out][:2], err)
                return
            for job in jobs:
                job.metadata["model_server"]["load_id"] = self.load_id

            def done(out: str, err: BaseException | None) -> None:
                conn, req, t0 = conns[out]
                if err is not None:
                    if self.terminating or isinstance(err, (KeyboardInterrupt, Terminate)):
                        raise err
                    self._failed(conn, req, err)
                    self._free_cuda()
                    return
                self._keep_salvage(req)
                self.served += 1
                secs = time.perf_counter() - t0
                log(f"cell done in {secs:.1f}s: {out}")
                conn.send({"type": "done", "status": "ok", "restored": False, "load_id": self.load_id,
                           "seconds": secs})
                conn.close()

            infer.run_cells(jobs, self.threads, loaded, share=self.share, on_done=done)
        finally:
            self.busy = False

    def _failed(self, conn: Connection, req: dict, err: BaseException) -> None:
        """A failed cell: its reply (traceback, exit status; a fault hook's SystemExit keeps its code) waits."""
        code = err.code if isinstance(err, SystemExit) and isinstance(err.code, int) and err.code else 1
        tb = getattr(err, "sfw_traceback", None) or f"{type(err).__name__}: {err}\n"
        self.failed += 1
        log(f"cell failed: {req.get('out')}\n{tb}")
        self.pending.append((conn, req, tb, code))

    def _flush_errors(self) -> None:
        if not self.pending or not self.requests.empty():
            return
        for conn, req, tb, code in self.pending:
            conn.send({"type": "done", "status": "error", "exit": code, "traceback": tb})
            conn.close()
        log(f"sent {len(self.pending)} error repl{'y' if len(self.pending) == 1 else 'ies'}")
        self.pending.clear()

    def _device(self) -> str:
        if self._device_id is None:
            self._device_id = device_identity(self.spec["device"] if self.spec else "auto")
        return self._device_id

    def _salvage_path(self, req: dict) -> Path:
        return self.salvage_dir / f"{_path_tag(req['out'])}.{salvage_key(req, self._device(), self.threads)}.parquet"

    def _admit(self, conn: Connection, req: dict) -> bool:
        """Check a request (trust, model); restore its output from salvage if an earlier attempt wrote it (True)."""
        check_request(req, self.root)
        cell, out = req["cell"], req["out"]
        if self.spec is None:
            self.spec = {k: cell[k] for k in MODEL_KEYS}
        mismatch = {k: (cell.get(k), self.spec[k]) for k in MODEL_KEYS if cell.get(k) != self.spec[k]}
        if mismatch:
            raise RuntimeError(f"cell {out} needs another model than server {self.server} serves "
                               f"(cell, server): {mismatch}")
        salvage = self._salvage_path(req)
        if not salvage.exists():
            return False
        out_p = Path(out)
        out_p.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_p.with_name(f".{out_p.name}.{uuid.uuid4().hex[:8]}.tmp")
        hardlink_or_copy(salvage, tmp)
        os.replace(tmp, out_p)
        self.salvage_used.append(salvage)
        conn.send({"type": "log", "text": f"restored {out} from {salvage} (written by an earlier attempt of "
                                          "this cell with identical inputs, code and device)\n"})
        log(f"restored from salvage: {out}")
        return True

    def _keep_salvage(self, req: dict) -> None:
        """Hard-link a finished output into salvage (replacing an older version of that output)."""
        salvage = self._salvage_path(req)
        self.salvage_dir.mkdir(parents=True, exist_ok=True)
        for old in glob.glob(str(self.salvage_dir / f"{_path_tag(req['out'])}.*.parquet")):
            with contextlib.suppress(OSError):
                os.unlink(old)
        with contextlib.suppress(OSError):
            hardlink_or_copy(req["out"], salvage)
            self.salvage_used.append(salvage)

    def _model(self, cell: dict):
        if self.loaded is not None:
            return self.loaded
        if self.load_error is not None:
            raise RuntimeError(f"the model failed to load earlier in this server:\n{self.load_error}")
        from . import infer

        try:
            self.loaded = infer.load({**self.spec, "reserve_bytes": reserve_bytes(self.server, cell)})
        except BaseException:
            if self.terminating:
                raise
            self.load_error = traceback.format_exc()
            raise
        self.load_id = uuid.uuid4().hex[:12]
        log(f"loaded model {self.spec['model_path']} on {self.loaded.device} "
            f"({self.loaded.gpus or 0} GPU(s) visible) in {self.loaded.load_s:.1f}s [load {self.load_id}]")
        return self.loaded

    def _free_cuda(self) -> None:
        if "torch" in sys.modules:
            torch = sys.modules["torch"]
            if torch.cuda.is_available():
                with contextlib.suppress(Exception):
                    torch.cuda.empty_cache()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", required=True, help="the load's id (for logs and output metadata)")
    ap.add_argument("--listen", required=True, help="socket address: @name (abstract namespace) or a path")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--address-file", default=None, help="the rendezvous file naming this server (removed when "
                                                          "the parent process goes away)")
    ap.add_argument("--parent", type=int, default=None, help="the Snakemake process (default: the parent process)")
    ap.add_argument("--share-prefill", default="true", choices=["true", "false"],
                    help="one dense prefill per sample for the decode-side cells of one task, length and shard")
    a = ap.parse_args(argv)
    Server(a.server, a.listen, a.threads, a.address_file, a.parent, a.share_prefill == "true").serve()


if __name__ == "__main__":
    main()
