"""What the ``magpie-exp`` command shows while it runs: its own log lines, one progress view per stage and a
closing summary on the console; everything else (vLLM, torch, transformers, datasets, Ray workers, Python
warnings, and what C++ code or child processes write to stdout and stderr) goes to the run's log file.
``verbose=true`` puts everything on the console again, as plain Hydra logging does.

Engines report finished requests with ``tick`` (a no-op unless a stage is showing progress), so a progress view
moves per request (vLLM in process, an OpenAI-compatible server) or per batch (the HF engine, Ray chunks), not
only when a shard is written. This module is a leaf: it imports nothing of the project.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

_console: TextIO | None = None  # the terminal, while a quiet session has stdout and stderr in the log file
_tickers: list[Callable[[int], None]] = []
_lock = threading.Lock()

# loggers shown on a quiet console below ERROR: the project's own, and Hydra's sweep lines ("Launching 2 jobs")
SHOWN = ("magpie_exp", "hydra")


def stream() -> TextIO:
    """Where progress views and the summary go: the terminal (also in a quiet session), else stderr."""
    return _console if _console is not None else sys.stderr


def is_quiet() -> bool:
    return _console is not None


class _Shown(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".")[0] in SHOWN


class _Short(logging.Formatter):
    """``12:01:02 message`` for information, ``12:01:02 WARNING message`` above it."""

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno <= logging.INFO else f"{record.levelname} "
        self._style._fmt = f"%(asctime)s {level}%(message)s"
        return super().format(record)


def _library_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers if type(h) is logging.StreamHandler]


def _console_handlers() -> list[logging.StreamHandler]:
    return [h for h in logging.getLogger().handlers
            if type(h) is logging.StreamHandler and getattr(h, "stream", None) in (sys.stderr, sys.__stderr__, sys.stdout)]


@contextlib.contextmanager
def session(log_file: Path, verbose: bool, keep_stdout: bool = False) -> Iterator[None]:
    """A quiet console for one job of the command (``verbose=False``): file descriptors 2 (and 1, unless
    ``keep_stdout``: the inspect report is data on stdout) point at ``log_file`` for the session, so whatever
    any library, C++ code or child process writes lands there; the console log handler writes to the terminal
    through a saved descriptor and shows only the project's lines (and any ERROR). Everything is put back at the
    end, also after an error (a sweep runs its members one after another in this process)."""
    global _console
    if verbose or _console is not None:
        yield
        return
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM's loggers propagate to ours (the file) then
    log_file.parent.mkdir(parents=True, exist_ok=True)
    for s in (sys.stdout, sys.stderr):
        s.flush()
    fds = (2,) if keep_stdout else (1, 2)
    saved = {fd: os.dup(fd) for fd in fds}
    console = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8", errors="replace")
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    for fd in fds:
        os.dup2(target, fd)
    os.close(target)
    handlers = _console_handlers()
    shown, short = _Shown(), _Short()
    before = [(h, h.stream, h.formatter) for h in handlers]
    for h in handlers:
        h.setStream(console)
        h.addFilter(shown)
        h.setFormatter(short)
    # Python-level writers that hold the old sys.stdout / sys.stderr objects (library handlers made at import, a
    # test's capture) write to the descriptors, and so to the log file, for the session
    old_out, old_err = sys.stdout, sys.stderr
    new = {fd: open(fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False) for fd in fds}
    moved = [(h, h.stream) for h in _library_handlers() if h not in handlers and (
        (h.stream is old_err and 2 in new) or (h.stream is old_out and 1 in new))]
    for h, stream_ in moved:
        h.setStream(new[2] if stream_ is old_err else new[1])
    sys.stderr = new[2]
    if 1 in new:
        sys.stdout = new[1]
    logging.captureWarnings(True)  # warnings.warn -> the py.warnings logger -> the log file
    _console = console
    try:
        yield
    finally:
        _console = None
        logging.captureWarnings(False)
        for h, old, formatter in before:
            h.removeFilter(shown)
            h.setFormatter(formatter)
            h.setStream(old)
        for h, stream_ in moved:
            h.setStream(stream_)
        for s in new.values():
            with contextlib.suppress(Exception):
                s.flush()
        sys.stdout, sys.stderr = old_out, old_err
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        console.close()


def tick(requests: int = 1) -> None:
    """``requests`` finished in an engine (called by engines; thread-safe; nothing happens unless a progress
    view is listening)."""
    if _tickers:
        with _lock:
            for listen in _tickers[-1:]:
                listen(requests)


class Progress:
    """One stage's progress view in records: exact when a shard is written (``done``), estimated in between
    from the engine's finished requests (``per_record`` requests make a record), so it moves per request; the
    estimate never runs past the records of the shards in hand (``expect``). Also a context manager that
    listens to ``tick``."""

    def __init__(self, desc: str, total: int | None, initial: int = 0, unit: str = "rec", enabled: bool = True,
                 per_record: float = 1.0) -> None:
        from tqdm.auto import tqdm

        out = stream()
        tty = bool(getattr(out, "isatty", lambda: False)())
        fmt = ("{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
               if total else "{desc}: {n:.0f} {unit} [{elapsed}, {rate_fmt}{postfix}]")
        self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled, file=out,
                        dynamic_ncols=tty, ncols=None if tty else 100, mininterval=0.2 if tty else 60.0,
                        delay=0.0 if tty else 60.0,  # in a log (no terminal): only views that last, once a minute
                        smoothing=0.1, bar_format=fmt)
        self.per_record = max(per_record, 1e-9)
        self.value = float(initial)  # what the view shows (tqdm keeps no count when disabled)
        self.exact = float(initial)
        self.ceiling = float(initial)
        self.requests = 0
        self.started = time.perf_counter()

    def expect(self, records: int) -> None:
        """The next ``records`` records are being made: the request estimate may move up to them."""
        self.ceiling = self.exact + records

    def _show(self, value: float) -> None:
        if value > self.value:
            self.bar.update(value - self.value)
            self.value = value

    def _on_tick(self, requests: int) -> None:
        self.requests += requests
        self._show(min(self.value + requests / self.per_record, self.ceiling))

    def done(self, records: int, **postfix: Any) -> None:
        """``records`` more records are written (the exact count)."""
        self.exact += records
        self.ceiling = max(self.ceiling, self.exact)
        if self.value > self.exact:  # the estimate ran ahead: step back to the truth
            self.value = self.bar.n = self.exact
            self.bar.refresh()
        self._show(self.exact)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)

    def __enter__(self) -> Progress:
        with _lock:
            _tickers.append(self._on_tick)
        return self

    def __exit__(self, *exc: Any) -> None:
        with _lock:
            if self._on_tick in _tickers:
                _tickers.remove(self._on_tick)
        self.bar.close()


class VllmTicks:
    """What vLLM's ``LLM.generate(use_tqdm=...)`` calls for its progress bars: each finished request is a
    ``tick``, nothing is drawn; the loop over prompts it also wraps is iterated unchanged."""

    def __init__(self, iterable: Any = None, *args: Any, total: int = 0, **kwargs: Any) -> None:
        self.n, self.total, self.postfix, self._start = 0, total, "", time.perf_counter()
        self._iterable = iterable  # vLLM also wraps its prompt rendering loop ("Rendering prompts"): passed through

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable if self._iterable is not None else ())

    @property
    def format_dict(self) -> dict[str, float]:
        return {"elapsed": max(time.perf_counter() - self._start, 1e-6)}

    def update(self, n: int = 1) -> None:
        self.n += n
        tick(n)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def listening() -> bool:
    return bool(_tickers)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
