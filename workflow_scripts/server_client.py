"""One inference cell through its model server (a thin client: standard library only, no torch).

    python -m workflow_scripts.server_client --address results/model_server/<id>.json \\
        --cell "<dict from Study.cell_params>" --data samples.parquet --out part.parquet

Rule ``infer`` runs this for every cell shard; the server (``workflow_scripts.server``) runs the cell with the
model it loaded once and writes ``--out`` atomically. The cell's printed output streams back here, so the cell's
log holds its progress, and on failure the server's traceback. Exit status: 0 when the server wrote the output;
the cell's exit status (1, or a fault hook's) when the cell failed; 1 when the server never started listening
(``SFW_SERVER_CONNECT_TIMEOUT`` seconds, default 600) or died before answering (then the tail of its log is
printed).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import socket
import sys
import time

from .server_plan import pid_alive

PROTOCOL = 1


def tail(path: str, n: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return f"(cannot read {path}: {e})\n"


def fail(msg: str, server_log: str | None, code: int = 1) -> None:
    print(f"model server error: {msg}", flush=True)
    if server_log:
        print(f"--- last lines of the server log {server_log} ---\n{tail(server_log)}", end="", flush=True)
    raise SystemExit(code)


def peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end of a connected Unix socket (Linux SO_PEERCRED), else None."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    import struct

    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def socket_address(address: str) -> str:
    """A socket file's path as is; '@name' -> the abstract-namespace address on Linux, a socket file in the temp
    directory elsewhere (the workflow's servers listen on socket files: workflow_scripts/server.py)."""
    if not address.startswith("@"):
        return address
    if sys.platform.startswith("linux"):
        return "\0" + address[1:]
    import tempfile

    return os.path.join(tempfile.gettempdir(), address[1:][-40:] + ".sock")


def connect(address_file: str, timeout: float, server_log: str | None) -> socket.socket:
    """Read the server's address (the rule writes it when the server job starts; an empty placeholder before)
    and connect, retrying until the server listens. Fails at once when the server's process is gone."""
    deadline = time.monotonic() + timeout
    last = "no address yet"
    while True:
        try:
            with open(address_file) as f:
                info = json.loads(f.read() or "{}")
        except (OSError, ValueError) as e:
            info, last = {}, repr(e)
        address = info.get("address")
        if address:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(socket_address(address))
                uid = peer_uid(sock)
                if uid is not None and uid != os.getuid():
                    sock.close()
                    fail(f"{address} is served by user id {uid}, not by this user's model server", server_log)
                return sock
            except OSError as e:
                sock.close()
                last = f"{address}: {e}"
            if info.get("host") == socket.gethostname() and not pid_alive(info.get("pid")):
                fail(f"the model server (pid {info.get('pid')}) exited before accepting this cell", server_log)
        if time.monotonic() > deadline:
            fail(f"no model server accepted a connection within {timeout:.0f}s ({address_file}: {last})",
                 server_log)
        time.sleep(0.2)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True, help="the server's rendezvous file")
    ap.add_argument("--server-log", default=None, help="default: the log of the server of --address")
    ap.add_argument("--cell", required=True, help="Python-literal dict (Study.cell_params)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.server_log is None:
        from .server_plan import log_of_address

        a.server_log = log_of_address(a.address)
    timeout = float(os.environ.get("SFW_SERVER_CONNECT_TIMEOUT", "600"))
    request = {"protocol": PROTOCOL, "op": "run", "cell": ast.literal_eval(a.cell), "data": a.data, "out": a.out}
    t0 = time.monotonic()
    sock = connect(a.address, timeout, a.server_log)
    print(f"connected to the model server ({a.address}) after {time.monotonic() - t0:.1f}s; cell {a.out}",
          flush=True)
    sock.sendall((json.dumps(request) + "\n").encode())
    stream = sock.makefile("r", encoding="utf-8", errors="replace")
    for line in stream:
        msg = json.loads(line)
        if msg.get("type") == "log":
            sys.stdout.write(msg["text"])
            sys.stdout.flush()
        elif msg.get("type") == "done":
            if msg["status"] == "ok":
                how = "restored from salvage" if msg.get("restored") else f"computed in {msg['seconds']:.1f}s"
                print(f"done: {a.out} {how} (model load {msg.get('load_id')})", flush=True)
                return
            print(f"cell failed in the model server:\n{msg['traceback']}", end="", flush=True)
            raise SystemExit(int(msg.get("exit") or 1))
    fail("the server closed the connection before finishing this cell (it died: killed, out of memory, "
         "or a crash)", a.server_log)


if __name__ == "__main__":
    main()
