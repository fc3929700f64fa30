"""Failpoints: named places where the fault drills (tests/test_faults.py) kill the process, as a crash would.

``MAGPIE_EXP_FAILPOINT=<name>:<n>`` sends SIGKILL to this process the n-th time it reaches ``<name>`` (no
clean-up, no ``finally``, no flush: exactly what a killed node or the OOM killer does). Unset, a failpoint costs
one dictionary lookup. The names:

- ``shard.renamed``: a shard file is in place but not yet in its manifest (the narrowest window of all);
- ``shard.written``: a shard and its manifest entry are both on disk;
- ``train.checkpoint``: the trainer has just written a checkpoint;
- ``ray.worker.generate``: a Ray engine actor (``executor=ray``) is handed a chunk of requests.

``<name>:<n>:pause=<seconds>`` sleeps there instead, holding the process mid-write (the parallel-sweep drill
uses it to make other jobs arrive while a stage folder is being written).

With ``MAGPIE_EXP_FAILPOINT_ONCE=<file>`` as well, only the first process to create ``<file>`` dies: the actors
of a Ray cluster share the environment, and a restarted actor counts from zero again.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "MAGPIE_EXP_FAILPOINT"
ONCE_ENV = "MAGPIE_EXP_FAILPOINT_ONCE"
_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    count, _, action = rest.partition(":")
    _hits[name] += 1
    if _hits[name] != int(count or 1):
        return
    if action.startswith("pause="):
        import time

        time.sleep(float(action.removeprefix("pause=")))
        return
    once = os.environ.get(ONCE_ENV)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
