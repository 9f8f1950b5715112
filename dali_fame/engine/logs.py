"""Where a run's log lines go: a readable console and the full log in ``RUN/log.txt``.

The console gets the progress bar, warnings and errors, the script's own INFO lines (what runs:
data, loader, FAME backend, weights; printed through ``tqdm.write`` so they never break a bar)
and the end-of-run summary (plain ``print``). Library INFO lines (Accelerate logs four per
checkpoint, the index, the loaders) go to ``RUN/log.txt`` only, which holds everything: INFO
from the main process and every rank's warnings, each line naming its rank, so a warning that
one rank raised is never lost.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from tqdm.auto import tqdm

LOG_NAME = "log.txt"
_FORMAT = "%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s"


class _TqdmConsole(logging.Handler):
    """Warnings, errors and the script's INFO lines on stderr, written above any progress bar."""

    def __init__(self, script_loggers: tuple[str, ...], *, clear_line: bool = False) -> None:
        super().__init__(level=logging.INFO)
        self.script_loggers = script_loggers
        # a rank other than the main one cannot move the main process's progress bar out of the
        # way (tqdm.write only clears this process's bars): on a terminal it erases the bar's
        # line first, and the bar redraws below the warning
        self.prefix = "\r\x1b[K" if clear_line else ""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name in self.script_loggers

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # tqdm.write's default is stdout; the line and its newline in one write (tqdm.write
            # writes ``end`` separately), so two ranks' warnings never splice (see run_main)
            tqdm.write(self.prefix + self.format(record) + "\n", file=sys.stderr, end="")
        except Exception:  # noqa: BLE001 - logging must never take the run down
            self.handleError(record)


def setup_logging(
    run_dir: str | Path, *, rank: int, is_main: bool, script: str | None = None
) -> Path:
    """Route this process's logging (call once per process, after the run directory is known).

    Args:
        run_dir: the run directory; ``run_dir/log.txt`` is appended to by every rank.
        rank: this process's global rank (named on every file line).
        is_main: the main process logs INFO to the file; the others WARNING and above.
        script: the script's logger name (``get_logger("pretrain")``): its INFO lines also
            reach the console.

    Returns:
        the log file's path.
    """
    path = Path(run_dir) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):  # a second call (tests, notebooks) replaces, not doubles
        if getattr(handler, "_dali_fame", False):
            root.removeHandler(handler)
            handler.close()
    file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    file_handler.setLevel(logging.INFO if is_main else logging.WARNING)
    file_handler.setFormatter(logging.Formatter(_FORMAT.format(rank=rank)))
    console = _TqdmConsole((script,) if script else (),
                           clear_line=not is_main and sys.stderr.isatty())
    # no rank here: accelerate's get_logger prefixes "[RANK r]"; log.txt names every line's rank
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for handler in (file_handler, console):
        handler._dali_fame = True
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn (e.g. the FAME backend fallback) -> both
    return path


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """``raise SystemExit(main())`` for the training scripts, except that a SystemExit carrying a
    message (``raise SystemExit("error: ...")``) is written to stderr as one line in one write,
    then the process exits with status 1.

    Python's own handler writes such a message and its newline as two writes, so with
    PYTHONUNBUFFERED (as on this project's machines) two ranks stopping together, which agreed
    errors make them do, could splice their lines in a shared terminal or pipe. One write of a
    line shorter than PIPE_BUF (4096 bytes) cannot be split.
    """
    try:
        code = main()
    except SystemExit as stop:
        if not isinstance(stop.code, str):
            raise
        sys.stderr.write(stop.code + "\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
    raise SystemExit(code)
