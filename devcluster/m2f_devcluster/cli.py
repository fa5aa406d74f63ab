"""`m2f dev up|down|status`: run the embedded dev cluster as a daemon with its state in a data dir.

Exit codes: 0 done; 1 the cluster failed to start or stop; 2 bad arguments; `status` exits 3 when
the cluster is not running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from m2f_devcluster.cluster import CONTROL_PLANES, DEFAULT_NODES, DevClusterConfig, DevClusterRuntime
from m2f_devcluster.kubeconfig import ApiEndpoint
from m2f_devcluster.kubelet.kubelet import POD_MARKER_ENV

PID_FILE, READY_FILE, LOG_FILE = "devcluster.pid", "devcluster.ready.json", "devcluster.log"
NOT_RUNNING = 3


def default_data_dir() -> Path:
    return Path(os.environ.get("M2F_DEV_DIR") or Path.home() / ".m2f" / "dev")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m2f dev", description="embedded dev cluster: API emulator, "
                                     "local kubelet and the operator, on this machine")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("up", "start the dev cluster in the background and print `export KUBECONFIG=...`"),
                        ("down", "stop the dev cluster and every process it runs"),
                        ("status", "show whether the dev cluster runs, its nodes and pods"),
                        ("serve", "run the dev cluster in the foreground (what `up` daemonises)")):
        sub = commands.add_parser(name, help=help_)
        sub.add_argument("--data-dir", type=Path, default=None,
                         help="state folder: kubeconfig, logs, pod folders, PVCs (default $M2F_DEV_DIR or ~/.m2f/dev)")
        if name in ("up", "serve"):
            sub.add_argument("--port", type=int, default=None, help="API server port (default: a free one)")
            sub.add_argument("--nodes", type=int, default=len(DEFAULT_NODES), help="number of local nodes")
            sub.add_argument("--no-operator", action="store_true", help="do not start the operator")
            sub.add_argument("--control-plane", choices=CONTROL_PLANES, default="emulator",
                             help="emulator (in-memory, fast; default) or real (etcd, kube-apiserver, "
                                  "controller-manager and scheduler v1.20, RBAC on)")
        if name == "up":
            sub.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    return parser


def _alive(pid: int) -> bool:
    """Running and not a zombie (the daemon is our child when `up` ran in this process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):  # reaped between open and read
        return False


def _running_pid(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / PID_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _ready_info(data_dir: Path) -> dict:
    try:
        return json.loads((data_dir / READY_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _export_line(data_dir: Path) -> str:
    return f"export KUBECONFIG={data_dir / 'kubeconfig'}"


def up(args: argparse.Namespace, data_dir: Path) -> int:
    pid = _running_pid(data_dir)
    if pid is not None:
        print(f"dev cluster already running (pid {pid}, API {_ready_info(data_dir).get('url', '?')})")
        print(_export_line(data_dir))
        return 0
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / READY_FILE).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "m2f_devcluster", "serve", "--data-dir", str(data_dir),
            "--nodes", str(args.nodes)]
    if args.port:
        argv += ["--port", str(args.port)]
    if args.no_operator:
        argv.append("--no-operator")
    argv += ["--control-plane", args.control_plane]
    with open(data_dir / LOG_FILE, "ab") as log:
        daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True, close_fds=True)
    deadline = time.monotonic() + args.timeout
    while not (data_dir / READY_FILE).exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            if daemon.poll() is None:
                daemon.kill()
            tail = (data_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()[-5:]
            print(f"error: the dev cluster did not start (see {data_dir / LOG_FILE}): "
                  f"{tail[-1] if tail else 'no output'}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    info = _ready_info(data_dir)
    print(f"dev cluster up ({info.get('control_plane', 'emulator')} control plane): API {info['url']}, nodes {', '.join(info['nodes'])}, "
          f"operator {'pid ' + str(info['operator_pid']) if info.get('operator_pid') else 'off'}")
    print(f"state in {data_dir} (pod logs in logs/, PVCs in pvc/<namespace>/<claim>/); stop with `m2f dev down`")
    print(_export_line(data_dir))
    return 0


def _kill_leftover_pods(data_dir: Path) -> int:
    """Pod process groups that outlived a killed daemon: only those started for this data dir."""
    marker = f"{POD_MARKER_ENV}={data_dir}".encode()
    killed = 0
    for pid_file in (data_dir / "pods").glob("*/*/pid-*"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                os.killpg(pid, signal.SIGKILL)
                killed += 1
    return killed


def down(args: argparse.Namespace, data_dir: Path) -> int:
    pid = _running_pid(data_dir)
    if pid is None:
        leftovers = _kill_leftover_pods(data_dir)
        print("dev cluster is not running" + (f" (killed {leftovers} leftover pod processes)" if leftovers else ""))
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        print(f"warning: the dev cluster did not stop in time; killed process group {pid}", file=sys.stderr)
    _kill_leftover_pods(data_dir)
    for name in (PID_FILE, READY_FILE):
        (data_dir / name).unlink(missing_ok=True)
    print(f"dev cluster stopped (state kept in {data_dir})")
    return 0


def status(args: argparse.Namespace, data_dir: Path) -> int:
    pid = _running_pid(data_dir)
    if pid is None:
        print(f"dev cluster is not running (data dir {data_dir})")
        return NOT_RUNNING
    info = _ready_info(data_dir)
    url = info.get("url", "")
    print(f"dev cluster running ({info.get('control_plane', 'emulator')} control plane): pid {pid}, API {url}, "
          f"data dir {data_dir}")
    operator_pids = [int(p) for p in _child_pids(pid) if _is_operator(int(p))]
    print(f"  operator: {'running (pid ' + str(operator_pids[0]) + ')' if operator_pids else 'not running'}, "
          f"log {info.get('operator_log', data_dir / 'operator.log')}")
    with contextlib.suppress(OSError, ValueError, KeyError, StopIteration):
        endpoint = ApiEndpoint.from_kubeconfig(Path(info.get("kubeconfig") or data_dir / "kubeconfig"))

        def get(path: str) -> list[dict]:
            request = urllib.request.Request(endpoint.url + path, headers=endpoint.headers)
            return json.load(urllib.request.urlopen(request, timeout=5, context=endpoint.ssl))["items"]

        nodes, pods = get("/api/v1/nodes"), get("/api/v1/pods")
        for node in nodes:
            ready = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}.get("Ready")
            on_node = [p for p in pods if p.get("spec", {}).get("nodeName") == node["metadata"]["name"]]
            print(f"  node {node['metadata']['name']}: Ready={ready}, pods={len(on_node)}")
        phases: dict[str, int] = {}
        for pod in pods:
            phase = pod.get("status", {}).get("phase", "Unknown")
            phases[phase] = phases.get(phase, 0) + 1
        print("  pods: " + (", ".join(f"{count} {phase}" for phase, count in sorted(phases.items())) or "none"))
    print(_export_line(data_dir))
    return 0


def _child_pids(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def _is_operator(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"m2f_operator" in argv and _alive(pid)


def serve(args: argparse.Namespace, data_dir: Path) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    nodes = tuple(f"dev-node-{i}" for i in range(args.nodes))
    config = DevClusterConfig(data_dir=data_dir, port=args.port, nodes=nodes, operator=not args.no_operator,
                              supervise_operator=True, control_plane=args.control_plane)
    runtime = DevClusterRuntime(config)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / PID_FILE).write_text(str(os.getpid()))

    def ready(running: DevClusterRuntime) -> None:
        assert running.endpoint is not None
        process = running.operator.process
        info = {"url": running.endpoint.url, "control_plane": config.control_plane, "nodes": list(nodes), "kubeconfig": str(config.kubeconfig),
                "operator_pid": process.pid if process is not None else None,
                "operator_log": str(config.operator_log)}
        tmp = data_dir / (READY_FILE + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(data_dir / READY_FILE)

    async def main_loop() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, runtime.stop)
        await runtime.serve(ready)

    try:
        asyncio.run(main_loop())
    finally:
        for name in (PID_FILE, READY_FILE):
            with contextlib.suppress(FileNotFoundError):
                if name != PID_FILE or (data_dir / PID_FILE).read_text() == str(os.getpid()):
                    (data_dir / name).unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if getattr(args, "nodes", 1) < 1:
        print("error: --nodes must be at least 1", file=sys.stderr)
        return 2
    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    return {"up": up, "down": down, "status": status, "serve": serve}[args.command](args, data_dir)
