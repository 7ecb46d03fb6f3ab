"""`python -m pipeline.dashboard`: serve the launcher page (127.0.0.1:5173 by default)."""

from __future__ import annotations

import logging

import click

from pipeline.dashboard.servers import DEFAULT_PORT, LOOPBACK, check_port
from pipeline.errors import run_cli
from pipeline.sweeps.spec import EXPERIMENTS_PATH


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. WARNING: the page starts processes on this machine and has no login; "
                   "anything but 127.0.0.1 lets everyone who can reach this address do that. Pair another host "
                   "with --allowed-hosts and a firewall.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--mlflow-url", default="http://127.0.0.1:5000", show_default=True,
              help="The MLflow UI, for the links to each run's page and to the compare view.")
@click.option("--state-dir", default=".dashboard", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the registry of started processes and their logs.")
@click.option("--experiments-file", default=str(EXPERIMENTS_PATH), show_default=True,
              type=click.Path(dir_okay=False), help="The sweeps file the sweep form lists.")
@click.option("--allowed-hosts", default="", metavar="HOST[,HOST...]",
              help="Host names the page may be reached by besides localhost, 127.0.0.1 and ::1 (a guard against "
                   "DNS rebinding); '*' allows any.")
def main(host, port, mlflow_url, state_dir, experiments_file, allowed_hosts):
    """Serve the launcher page: start training runs and sweeps, watch their loss curves and samples, stop them.

    It uses the trainer's tracking store ($MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db). Runs it starts
    are `python -m pipeline.train` processes in sessions of their own: they keep going when the page or this
    server is closed (Ctrl-C), and show up again when it is started again. Stop them with the page's Stop
    button (Ctrl-C for the run: it checkpoints and ends KILLED).

    \b
    Example:
      python -m pipeline.dashboard --port 5173
    """
    from pipeline.dashboard.app import create_app
    from pipeline.tracking import tracking_uri

    check_port(host, port)
    hosts = [h for h in allowed_hosts.split(",") if h.strip()]
    if host not in LOOPBACK:
        click.echo(f"WARNING: listening on {host}: anyone who can reach it can start and stop processes on this "
                   "machine; the page has no login.", err=True)
        hosts.append(host)
    app = create_app(tracking_uri=tracking_uri(), state_dir=state_dir, experiments_path=experiments_file,
                     mlflow_url=mlflow_url, allowed_hosts=hosts)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request (the page polls every 2 s)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    click.echo(f"launcher: http://{shown}:{port}/  (store {app.extensions['lab_dashboard'].tracking_uri})")
    try:
        app.run(host=host, port=port, threaded=True, use_reloader=False, debug=False)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    run_cli(main)
