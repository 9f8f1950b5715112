"""Console lines of several ranks sharing one terminal or pipe: each reaches it whole.

Under PYTHONUNBUFFERED (as on this project's machines) Python's SystemExit handler and
tqdm.write put a line's text and its newline in separate writes, so two ranks writing at the same
moment spliced their lines (about 1 run in 3 here; CI saw it as a flaky 2-process test).
``run_main`` and the console handler write each line in one write.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_CHILD = textwrap.dedent("""
    import logging, sys, time
    from dali_fame.engine.logs import _TqdmConsole, run_main

    def main():
        time.sleep(0.3)  # both processes write at about the same moment
        line = "rank " + sys.argv[2] + " " + "x" * 1500
        if sys.argv[1] == "exit":
            raise SystemExit("error: " + line)
        handler = _TqdmConsole(())
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        log = logging.getLogger("child")
        log.addHandler(handler)
        log.propagate = False
        for _ in range(5):
            log.warning(line)

    run_main(main)
""")


@pytest.mark.parametrize(("mode", "prefix", "repeat", "status"),
                         [("exit", "error: ", 1, 1), ("warn", "WARNING ", 5, 0)])
def test_two_ranks_writing_together_never_splice_their_lines(tmp_path, mode, prefix, repeat,
                                                             status):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    expected = sorted([f"{prefix}rank {r} " + "x" * 1500 for r in (0, 1)] * repeat)
    for _ in range(20):
        read_fd, write_fd = os.pipe()  # one pipe for both stderrs, as under accelerate launch
        procs = [subprocess.Popen([sys.executable, str(script), mode, str(r)], env=env,
                                  stderr=write_fd, stdout=subprocess.DEVNULL) for r in (0, 1)]
        os.close(write_fd)
        with os.fdopen(read_fd) as shared:
            text = shared.read()
        assert [p.wait() for p in procs] == [status, status]
        assert sorted(text.splitlines()) == expected, text[:300]


@pytest.mark.parametrize(("is_main", "tty", "prefix"),
                         [(True, True, ""), (False, True, "\r\x1b[K"), (False, False, "")])
def test_other_ranks_erase_the_main_bar_line_on_a_terminal_only(tmp_path, monkeypatch, capsys,
                                                                is_main, tty, prefix):
    # only the main process draws the progress bar; another rank's warning on a terminal first
    # erases that line (the bar redraws below it); in a pipe or file nothing but the line itself
    import logging

    from dali_fame.engine.logs import setup_logging

    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    setup_logging(tmp_path, rank=0 if is_main else 1, is_main=is_main)
    try:
        logging.getLogger("dali_fame.test").warning("bad video x.mp4")
        err = capsys.readouterr().err
        assert err == prefix + "WARNING dali_fame.test: bad video x.mp4\n"
        log = (tmp_path / "log.txt").read_text()
        assert f"rank {0 if is_main else 1} WARNING dali_fame.test: bad video x.mp4" in log
    finally:
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_dali_fame", False):
                logging.getLogger().removeHandler(handler)
                handler.close()
