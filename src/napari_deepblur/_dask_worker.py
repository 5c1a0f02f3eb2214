"""Set-up of the worker processes of the batch's own ``LocalCluster`` (a dask preload)."""

import signal
import threading


def dask_setup(worker) -> None:
    """Ctrl-C in a terminal reaches every process of its group. The batch (the parent)
    handles it and closes the cluster, so its worker processes ignore it instead of each
    printing a ``KeyboardInterrupt`` traceback."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
