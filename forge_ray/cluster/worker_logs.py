"""What the console shows of the workers' output: progress and results, not Ray's internals.

Ray prints every worker's stdout/stderr on the driver. Ray Train adds its own chatter to a
run: the controller's and the placement-group cleaner's messages (with the dashboard off, the
cleaner cannot reach the state API and warns about it on every check), a ``TrainingReport``
dump for every ``ray.train.report``, and weight-loading progress bars. ``route_worker_logs``
sends those lines to the run's log file only; everything else prints as Ray prints it.
"""
from __future__ import annotations

import logging
import re
from typing import Any

QUIET_ACTORS = ("TrainController", "PlacementGroupCleaner")
QUIET_LINES = re.compile(r"Reporting training result \d+: TrainingReport|Loading weights:|Writing model shards:|Loading checkpoint shards:")
PRINTER = "ray_print_logs"  # the name Ray gives its console printer


def split_lines(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A batch of one worker's lines -> (lines for the console, lines for the log file only)."""
    lines = list(data.get("lines") or [])
    if any(name in (data.get("actor_name") or "") for name in QUIET_ACTORS):
        return [], lines
    return [x for x in lines if not QUIET_LINES.search(x)], [x for x in lines if QUIET_LINES.search(x)]


def route_worker_logs(sink: logging.Handler) -> bool:
    """Install the routing on this driver (after ``ray.init``); quiet lines go to ``sink``.
    Returns False, changing nothing, when Ray prints no worker output here (``log_to_driver``
    off) or keeps its printer elsewhere than this version does."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    printers = [handler for name, handler in dispatcher.handlers if name == PRINTER]
    if not printers:
        return False
    show = printers[0]
    quiet = logging.getLogger("forge_ray.ray_internals")
    quiet.propagate = False  # the log file only, never the console
    quiet.setLevel(logging.INFO)
    if sink not in quiet.handlers:
        quiet.handlers[:] = [sink]

    def route(data: dict[str, Any]) -> None:
        loud, hushed = split_lines(data)
        for line in hushed:
            quiet.info("(%s pid=%s) %s", data.get("actor_name") or data.get("task_name") or "worker", data.get("pid"), line)
        if loud:
            show({**data, "lines": loud})

    dispatcher.remove_handler(PRINTER)
    dispatcher.add_handler(PRINTER, route)
    return True
