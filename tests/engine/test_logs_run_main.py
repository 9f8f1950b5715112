"""run_main: a script's error message reaches a shared pipe as one line, whatever other ranks do."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

_CHILD = textwrap.dedent("""
    import sys, time
    from dali_fame.engine.logs import run_main

    def main():
        time.sleep(float(sys.argv[1]))  # both processes stop at about the same moment
        raise SystemExit("error: rank " + sys.argv[2] + " " + "x" * 1500)

    run_main(main)
""")


def test_two_processes_failing_together_never_splice_their_lines(tmp_path):
    # Python's own SystemExit handler writes the message and its newline separately: under
    # PYTHONUNBUFFERED two ranks failing together spliced their lines in about 1 run of 3 here
    # (CI saw it as a flaky 2-process test). run_main writes each line in one write.
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    expected = sorted(f"error: rank {r} " + "x" * 1500 for r in (0, 1))
    for _ in range(20):
        read_fd, write_fd = os.pipe()  # one pipe for both stderrs, as under accelerate launch
        procs = [subprocess.Popen([sys.executable, str(script), "0.3", str(r)], env=env,
                                  stderr=write_fd, stdout=subprocess.DEVNULL) for r in (0, 1)]
        os.close(write_fd)
        with os.fdopen(read_fd) as shared:
            text = shared.read()
        assert [p.wait() for p in procs] == [1, 1]
        assert sorted(text.splitlines()) == expected, text[:300]
