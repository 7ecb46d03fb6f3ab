"""The two servers of run-dashboard.sh under one supervisor: the MLflow UI and the launcher page, each under a
keeper (keeper.py) that ends it when the supervisor ends, whatever ends it, SIGKILL included.

run-dashboard.sh reads and checks the options, then becomes this process (`exec`): its PID is the supervisor's.
Ctrl-C (or SIGTERM, SIGHUP) stops both servers and exits 130; a server that stops on its own stops the other,
and its exit code is passed on. Ports are checked before anything starts: a busy one is one line, exit code 2.
"""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import sys
import time

import click

from pipeline.errors import LabError, run_cli
from pipeline.dashboard.keeper import GRACE_SECONDS

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 5173  # the launcher page's; run-dashboard.sh starts it there too


def check_port(host: str, port: int, option: str = "--port", label: str = "") -> None:
    """Refuse, in one line, a port another program already listens on."""
    named = f"port {port}" + (f" ({label})" if label else "")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise LabError(f"cannot use host '{host}': {error.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise LabError(f"{named} is already in use on {host}; choose another with {option}") from None
            raise LabError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def _kept(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.dashboard.keeper", *command])


def supervise(servers: list[subprocess.Popen]) -> int:
    """Wait for a signal or for a server to stop; then stop the others. The exit code to leave with."""
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    code = None
    while code is None and not received:
        for server in servers:
            if server.poll() is not None:
                code = server.returncode
                click.echo(f"error: a server stopped (exit code {code}); stopping the other", err=True)
                break
        time.sleep(0.2)
    if received:
        click.echo("stopping the MLflow UI and the launcher (training runs started from the page keep going)",
                   err=True)
    for server in servers:
        if server.poll() is None:
            server.terminate()  # its keeper ends the server's whole group
    for server in servers:
        try:
            server.wait(timeout=GRACE_SECONDS + 30)
        except subprocess.TimeoutExpired:
            server.kill()
    return 130 if received else (code or 1)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", required=True)
@click.option("--port", type=int, required=True)
@click.option("--mlflow-port", type=int, default=0, help="0: a tracking server's UI is used, none is started.")
@click.option("--mlflow-workers", type=int, default=1)
@click.option("--allowed-hosts", default="")
@click.option("--store", required=True)
@click.option("--artifacts-root", default="")
@click.argument("mlflow_extra", nargs=-1, type=click.UNPROCESSED)
def main(host, port, mlflow_port, mlflow_workers, allowed_hosts, store, artifacts_root, mlflow_extra):
    """Start and watch both servers (called by run-dashboard.sh, which checks the options first)."""
    if mlflow_port:
        check_port(host, mlflow_port, "--mlflow-port", "MLflow UI")
    check_port(host, port, "--port", "launcher")
    if store.startswith("sqlite:"):  # a new store is made here, once: two servers making it at once crash
        from pipeline import tracking

        tracking.check_reachable(tracking.client_for(store))
    link_host = host
    if host in ("0.0.0.0", "::"):
        link_host = "127.0.0.1"
        click.echo(f"WARNING: listening on all addresses ({host}): see --help before going on.", err=True)
    elif host not in LOOPBACK:
        click.echo(f"WARNING: listening on {host}: see --help before going on.", err=True)
    link_host = "[::1]" if link_host == "::1" else link_host
    allowed = ["--allowed-hosts", allowed_hosts] if allowed_hosts else []
    mlflow_url = f"http://{link_host}:{mlflow_port}" if mlflow_port else store
    servers = []
    if mlflow_port:
        artifacts = ["--default-artifact-root", artifacts_root] if artifacts_root else []
        servers.append(_kept([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host", host,
                              "--port", str(mlflow_port), "--workers", str(mlflow_workers), *artifacts, *allowed,
                              *mlflow_extra]))
    servers.append(_kept([sys.executable, "-m", "pipeline.dashboard", "--host", host, "--port", str(port),
                          "--mlflow-url", mlflow_url, *allowed]))
    if mlflow_port:
        click.echo(f"MLflow UI: {mlflow_url}/   launcher: http://{link_host}:{port}/   store: {store}")
        click.echo("Ctrl-C stops both.")
    else:
        click.echo(f"launcher: http://{link_host}:{port}/   store: the MLflow server at {store} (its UI is there; "
                   "not started here)")
        click.echo("Ctrl-C stops the launcher.")
    sys.stdout.flush()
    raise SystemExit(supervise(servers))


if __name__ == "__main__":
    run_cli(main)
