"""``dali-fame selftest``: does every GPU path of this checkout work on this machine, and how fast?

One command to run the moment a GPU is available. On one GPU, within ``--budget-seconds``
(default 480: 8 minutes), it runs, each script in its own subprocess with its own time limit so
that one hang cannot eat the budget:

==============  ==========================================================================
``gpu``         is there an NVIDIA GPU, and can the installed torch use it
                (:mod:`dali_fame.gpu_check`: driver vs torch's CUDA build, arch list)
``cuda-tests``  the ``cuda``-marked tests (pytest), except the sync test below
``sync-free-step`` tests/train/test_sync_free_step.py: two full pretraining steps (FAME with the
                torch and the cuda backend, ClipAugment, MoCo, backward, SGD) under
                ``torch.cuda.set_sync_debug_mode("error")``: no host synchronisation
``check-decode`` ``dali-fame check-decode`` with DALI mixed (NVDEC): every frame the one asked for
``bench-fame``  the GPU section of benchmarks/bench_fame.py: torch reference vs CuPy kernels
``bench-loader`` benchmarks/bench_loader.py: DALI mixed vs the CPU loader, clips/s
``bench-train`` benchmarks/bench_train.py: R(2+1)D-18 at 112 and I3D at 224, clips/s and the
                data-wait share of a step
``pretrain``    train/pretrain.py, default config, ``--max-steps 100``, DALI + the CUDA kernels
==============  ==========================================================================

and writes one markdown report (device, driver, versions, each check's result, its numbers and
seconds) to ``--out`` (default ``runs/selftest/report.md``; logs and benchmark outputs beside
it in ``report_files/``) and prints it. A check whose requirement is missing is skipped with
the reason, and a missing package's reason names the wheel(s) to carry onto a machine without
network. On a machine without a GPU every GPU check is skipped and the exit code is 0; any
failing check makes it 1.

``--budget-seconds N`` keeps the checks whose estimated costs fit N seconds, dropping the most
expensive first (:func:`plan`); ``--quick`` runs reduced sizes (about 4 minutes on one GPU).

It runs from a source checkout (``python -m dali_fame.selftest`` or ``dali-fame selftest``)
with whatever torch is installed: importing this module imports nothing beyond the standard
library (no torch, PyAV, DALI, pytest or nvtx); each is probed when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

#: the checkout this module belongs to (benchmarks/, train/ and tests/ are found from here)
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path("runs") / "selftest" / "report.md"
DEFAULT_BUDGET_S = 480.0
#: a script's own time limit: this many times its estimated cost, plus a constant margin
TIMEOUT_FACTOR, TIMEOUT_MARGIN_S = 3.0, 30.0
#: what one device call can carry onto a machine without network
CARRY_LIMIT = "64 MiB"

# ------------------------------------------------------------------ requirements and wheels

#: requirement -> the module whose import proves it
MODULES = {"av": "av", "dali": "nvidia.dali", "pytest": "pytest", "cupy": "cupy"}


def probe_module(name: str) -> str | None:
    """None when ``name`` imports in this process, else why not (one line).

    Any exception counts (a broken install raises OSError, a blocked one ImportError)."""
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - ImportError, OSError from a missing library, ...
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0][:120] if text else ''}".rstrip(": ")
    return None


def carry_hint(requirement: str, *, cuda_major: int | None, short: bool = False) -> str:
    """The reason a check needing ``requirement`` is skipped, naming the wheel(s) to carry.

    ``cuda_major`` is the installed torch's CUDA major version (13 for the default wheels),
    which decides the DALI and CuPy builds; None for a CPU build (assumed 13). ``short``: one
    clause for the results table (the full text goes to the report's list of missing packages).
    """
    cu = cuda_major or 13
    if short:
        return {
            "av": "PyAV missing: carry av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl",
            "dali": f"DALI missing: its 424 MB wheel cannot travel in one {CARRY_LIMIT} call",
            "pytest": "pytest missing: carry the pytest, pluggy, iniconfig and pygments wheels",
            "cupy": f"CuPy missing: carry the cupy-cuda{cu}x and cuda-pathfinder wheels",
        }[requirement] if requirement in MODULES else carry_hint(requirement, cuda_major=cu)
    if requirement == "av":
        return ("PyAV missing: carry the av wheel (cp312 manylinux x86_64: "
                "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl, 34 MiB, an abi3 wheel that "
                "installs on cp312; no dependencies)")
    if requirement == "dali":
        return (f"DALI missing: its wheel (nvidia_dali_cuda{cu}0-2.4.0-py3-none-"
                f"manylinux_2_28_x86_64.whl) is about 424 MB and cannot travel in one "
                f"{CARRY_LIMIT} call; install it "
                f"where a package index is reachable (pip install nvidia-dali-cuda{cu}0, which "
                f"also brings nvidia-nvimgcodec-cu{cu}, nvidia-libnvcomp-cu{cu}, nvtx, astunparse, "
                "gast, six, optree, makefun, libcst)")
    if requirement == "pytest":
        return ("pytest missing: carry the pytest, pluggy, iniconfig and pygments wheels "
                "(py3-none-any: pytest-9.2.0, pluggy-1.7.0, iniconfig-2.3.1, pygments-2.21.0, "
                "1.6 MiB together; packaging is already there with torch)")
    if requirement == "cupy":
        return (f"CuPy missing: carry the cupy-cuda{cu}x wheel (cp312 manylinux x86_64, the "
                f"build for torch's CUDA {cu}) and cuda-pathfinder, if they fit the "
                f"{CARRY_LIMIT} one call carries")
    raise ValueError(f"unknown requirement {requirement!r}")


@dataclasses.dataclass(frozen=True)
class Machine:
    """What this machine has, probed once when the command runs.

    Attributes:
        facts: :class:`dali_fame.gpu_check.GpuFacts` (driver, devices, torch build).
        gpu_usable: torch can run CUDA ops here.
        gpu_reason: why not (None when usable); ``gpu_broken`` when a GPU is present but
            unusable (a failure, not a skip).
        missing: requirement (``av``, ``dali``, ``pytest``, ``cupy``) -> why it is missing,
            wheel named (:func:`carry_hint`, with the import error); present requirements are
            absent from the dict.
        devices: one line per GPU torch sees (name, capability, memory, SMs).
        versions: package -> version or why it does not import.
    """

    facts: object
    gpu_usable: bool
    gpu_reason: str | None
    gpu_broken: bool
    missing: dict[str, str]
    devices: tuple[str, ...]
    versions: dict[str, str]

    def reasons(self, needs: Sequence[str]) -> list[str]:
        """Why a check needing ``needs`` cannot run (empty when it can)."""
        out = []
        for need in needs:
            if need == "gpu":
                if not self.gpu_usable:
                    # the full explanation is the gpu check's; here its first clause
                    out.append("the GPU is present but this torch cannot use it (see the gpu "
                               "check)" if self.gpu_broken
                               else (self.gpu_reason or "no GPU").split(" (")[0])
            elif need in self.missing:
                out.append(carry_hint(need, cuda_major=self.cuda_major, short=True))
        return out

    @property
    def cuda_major(self) -> int | None:
        cuda = getattr(self.facts, "torch_cuda", None)
        return int(cuda.split(".")[0]) if cuda else None


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cupy_dist() -> str:
    try:
        names = importlib.metadata.packages_distributions().get("cupy", [])
    except Exception:  # noqa: BLE001 - broken metadata must not stop the report
        names = []
    return names[0] if names else "cupy"


def probe_machine() -> Machine:
    """Read the GPU facts (:func:`dali_fame.gpu_check.read_facts`), probe each optional module
    with :func:`probe_module` and collect versions. Touches CUDA only through torch's device
    queries (no kernel, no allocation)."""
    import torch

    from dali_fame.gpu_check import diagnose, read_facts

    facts = read_facts()
    verdict = diagnose(facts)
    usable = facts.torch_sees > 0 and (not verdict.gpu_present or verdict.usable)
    broken = verdict.gpu_present and not verdict.usable
    if usable:
        reason = None
    elif broken:
        reason = verdict.message()
    elif facts.torch_cuda is None:
        reason = (f"no GPU: torch {facts.torch_version} is a CPU-only build and no NVIDIA driver "
                  "was found")
    else:
        reason = ("no NVIDIA GPU on this machine (no driver version file, no /dev/nvidia*, "
                  "nvidia-smi absent or silent; torch sees 0 CUDA devices)")
    cuda_major = int(facts.torch_cuda.split(".")[0]) if facts.torch_cuda else None
    missing = {}
    probed = {}
    for req, module in MODULES.items():
        why = probe_module(module)
        probed[req] = why
        if why:
            missing[req] = f"{carry_hint(req, cuda_major=cuda_major)} [{why}]"
    devices = []
    if usable:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(f"cuda:{i} {p.name}, compute capability {p.major}.{p.minor}, "
                           f"{p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")

    def probed_version(req: str) -> str:
        if probed[req]:
            return f"not importable ({probed[req]})"
        return str(getattr(sys.modules.get(MODULES[req]), "__version__", "unknown"))

    versions = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda or 'none: CPU build'})",
        "torchvision": _dist_version("torchvision") or "not installed",
        "numpy": _dist_version("numpy") or "not installed",
        "CuPy": probed_version("cupy") + ("" if probed["cupy"] else f" ({_cupy_dist()})"),
        "DALI": probed_version("dali"),
        "PyAV": probed_version("av"),
        "accelerate": _dist_version("accelerate") or "not installed",
        "timm": _dist_version("timm") or "not installed",
        "tensorboard": _dist_version("tensorboard") or "not installed",
        "pytest": probed_version("pytest"),
        "nvtx (python)": _dist_version("nvtx") or "not installed (torch's NVTX binding is used)",
    }
    return Machine(facts, usable, reason, broken, missing, tuple(devices), versions)


# ------------------------------------------------------------------------ checks and plan

@dataclasses.dataclass
class Outcome:
    """The result of one check.

    Attributes:
        status: ``"pass"``, ``"FAIL"`` or ``"skipped"``.
        summary: one line: the headline numbers, or why it failed / was skipped.
        details: markdown lines for the report's section on this check.
        seconds: wall time spent (0 when skipped).
        command: the command line it ran, if any.
        log: its log file, if any.
    """

    status: str
    summary: str
    details: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    command: str | None = None
    log: Path | None = None


@dataclasses.dataclass
class Context:
    """What a check's run function gets."""

    machine: Machine
    quick: bool
    work: Path  #: the report's folder of logs and outputs
    timeout_s: float  #: this check's time limit
    workers: int  #: loader workers / DALI threads for the benchmarks


@dataclasses.dataclass(frozen=True)
class Check:
    """One check.

    Attributes:
        name: command-line name.
        title: what it checks, for the report.
        needs: requirements (``gpu``, ``av``, ``dali``, ``pytest``, ``cupy``); unmet -> skipped.
        cost_s, quick_cost_s: estimated seconds on one GPU (full / ``--quick``), used by
            :func:`plan` and for the time limit.
        run: the check itself.
        uses: requirements used when present, worked around (and said so) when missing.
    """

    name: str
    title: str
    needs: tuple[str, ...]
    cost_s: float
    quick_cost_s: float
    run: Callable[[Context], Outcome]
    uses: tuple[str, ...] = ()

    def cost(self, quick: bool) -> float:
        return self.quick_cost_s if quick else self.cost_s


def plan(costs: dict[str, float], budget_s: float) -> tuple[list[str], dict[str, str]]:
    """Which checks fit the budget: drop the most expensive until the estimated total fits.

    Args:
        costs: check name -> estimated seconds, in run order (only checks that can run).
        budget_s: seconds available.

    Returns:
        The kept names in run order, and dropped name -> reason.
    """
    kept = dict(costs)
    dropped: dict[str, str] = {}
    while kept and sum(kept.values()) > budget_s:
        # the slowest first; of equal costs, the later one in run order
        name = max(reversed(list(kept)), key=lambda n: kept[n])
        total = sum(kept.values())
        dropped[name] = (f"dropped to fit --budget-seconds {budget_s:g}: estimated "
                         f"{kept[name]:.0f} s, the slowest of the checks left (estimated "
                         f"{total:.0f} s in all)")
        del kept[name]
    return list(kept), dropped


# ----------------------------------------------------------------------- running scripts

@dataclasses.dataclass
class ScriptRun:
    returncode: int | None  #: None when killed at its time limit
    seconds: float
    log: Path
    command: str
    timeout_s: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        # progress bars rewrite their line with \r: keep each line's last state
        rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines()]
        return "\n".join(rows[-lines:])


def _script_env() -> dict[str, str]:
    env = dict(os.environ)
    # a source checkout that is not installed: the scripts in benchmarks/ and train/ must
    # import dali_fame from here (their own folder is sys.path[0], not the repository)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_MININTERVAL", "5")  # fewer progress-bar redraws in the logs
    return env


def run_script(argv: Sequence[str], *, log: Path, timeout_s: float) -> ScriptRun:
    """Run ``argv`` from the repository root, stdout and stderr into ``log``.

    The script gets its own process group; at ``timeout_s`` the whole group (DataLoader
    workers included) is sent SIGTERM, then SIGKILL 10 s later."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(_quote(a) for a in argv)
    start = time.perf_counter()
    with open(log, "w") as fh:
        fh.write(f"$ {command}\n")
        fh.flush()
        proc = subprocess.Popen(list(argv), cwd=REPO, env=_script_env(), stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
    return ScriptRun(code, time.perf_counter() - start, log, command, timeout_s)


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w./:=@+,-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _failed_run(run: ScriptRun, what: str) -> Outcome:
    if run.timed_out:
        summary = f"{what} did not finish within its limit of {run.timeout_s:.0f} s (killed)"
    else:
        summary = f"{what} exited with {run.returncode}"
    last = [line for line in run.tail(40).splitlines() if line.strip()]
    if last:
        summary += f": {last[-1][:200]}"
    return Outcome("FAIL", summary, ["```", run.tail(40), "```"], run.seconds, run.command, run.log)


def _python() -> str:
    return sys.executable


# ------------------------------------------------------------------------------ the checks

def check_gpu(ctx: Context) -> Outcome:
    m = ctx.machine
    facts = m.facts
    if m.gpu_broken:
        return Outcome("FAIL", m.gpu_reason.splitlines()[0], ["```", m.gpu_reason, "```"])
    if not m.gpu_usable:
        return Outcome("skipped", m.gpu_reason or "no GPU")
    return Outcome("pass", f"{len(m.devices)} GPU(s) usable by torch {facts.torch_version}; "
                   f"driver {facts.driver or 'unknown'}; {m.devices[0] if m.devices else ''}",
                   [f"- {line}" for line in m.devices])


#: the sync-debug-mode test: its own check (``sync-free-step``), not part of ``cuda-tests``
SYNC_TEST = REPO / "tests" / "train" / "test_sync_free_step.py"


def cuda_test_files(*, with_av: bool) -> tuple[list[Path], list[Path]]:
    """The test files holding ``cuda``-marked tests (but :data:`SYNC_TEST`, which has a check of
    its own), and those left out because they import PyAV (directly or through
    ``dali_fame.data``) at module level when ``with_av`` is False."""
    files, left_out = [], []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        text = path.read_text(errors="replace")
        if "mark.cuda" not in text or path == SYNC_TEST:
            continue
        if not with_av and re.search(r"^(?:import av\b|from av\b|from dali_fame\.data\b|"
                                     r"import dali_fame\.data\b)", text, re.MULTILINE):
            left_out.append(path)
        else:
            files.append(path)
    return files, left_out


def junit_summary(path: Path) -> dict:
    """Counts and failing/skipped test names from pytest's ``--junitxml`` file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ("tests", "failures", "errors", "skipped")}
    failed, skipped = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        node = case.find("skipped")
        if node is not None:
            reason = (node.get("message") or "").strip()
            skipped[reason] = skipped.get(reason, 0) + 1
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed_names": failed, "skip_reasons": skipped}


def _run_cuda_pytest(ctx: Context, files: Sequence[Path], name: str) -> tuple[ScriptRun, Path]:
    """pytest -m cuda on ``files``, its log in logs/<name>.log, its results in <name>.xml."""
    xml = ctx.work / f"{name}.xml"
    xml.unlink(missing_ok=True)
    # -m cuda comes after pyproject's addopts (-m "not slow"), so it is the one that applies
    argv = [_python(), "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "-o",
            f"cache_dir={ctx.work / 'pytest_cache'}", f"--junitxml={xml}",
            *[_relative(f) for f in files]]
    return run_script(argv, log=ctx.work / "logs" / f"{name}.log", timeout_s=ctx.timeout_s), xml


def check_sync_free_step(ctx: Context) -> Outcome:
    """Passes only when every case of :data:`SYNC_TEST` ran and passed (a skip checks nothing)."""
    if not SYNC_TEST.is_file():
        return Outcome("FAIL", f"{_relative(SYNC_TEST)} is missing from this checkout")
    run, xml = _run_cuda_pytest(ctx, [SYNC_TEST], "sync-free-step")
    if run.timed_out or not xml.is_file():
        return _failed_run(run, "pytest")
    s = junit_summary(xml)
    bad = s["failures"] + s["errors"]
    summary = (f"{s['passed']} of {s['tests']} passed, {bad} failed, {s['skipped']} skipped: two "
               "pretraining steps under torch.cuda.set_sync_debug_mode('error')")
    details = [f"- FAILED {name}" for name in s["failed_names"]]
    details += [f"- skipped ({n}): {reason}" for reason, n in s["skip_reasons"].items()]
    ok = run.returncode == 0 and s["passed"] > 0 and not bad and not s["skipped"]
    if not ok:
        details += ["```", run.tail(40), "```"]
    return Outcome("pass" if ok else "FAIL", summary, details, run.seconds, run.command, run.log)


def check_cuda_tests(ctx: Context) -> Outcome:
    files, left_out = cuda_test_files(with_av="av" not in ctx.machine.missing)
    if not files:
        return Outcome("FAIL", "no test file with a cuda marker found under tests/")
    run, xml = _run_cuda_pytest(ctx, files, "cuda-tests")
    details = [f"- files: {', '.join(_relative(f) for f in files)}"]
    if left_out:
        details.append("- not run (they import PyAV at module level; "
                       f"{ctx.machine.missing['av']}): "
                       + ", ".join(_relative(f) for f in left_out))
    if run.timed_out or not xml.is_file():
        out = _failed_run(run, "pytest")
        out.details = details + out.details
        return out
    s = junit_summary(xml)
    summary = (f"{s['passed']} passed, {s['failures'] + s['errors']} failed, "
               f"{s['skipped']} skipped in {len(files)} files")
    if left_out:
        summary += f" ({len(left_out)} files not run: PyAV missing)"
    for reason, n in s["skip_reasons"].items():
        details.append(f"- skipped ({n}): {reason}")
    for name in s["failed_names"][:20]:
        details.append(f"- FAILED {name}")
    # on a GPU machine a run in which every cuda test skipped has checked nothing
    ok = run.returncode == 0 and s["passed"] > 0
    if not ok:
        details += ["```", run.tail(40), "```"]
        if s["passed"] == 0:
            summary = f"pytest exited with {run.returncode}: no cuda test passed; " + summary
    return Outcome("pass" if ok else "FAIL", summary, details, run.seconds, run.command, run.log)


def check_decode_available() -> str | None:
    """None when ``dali-fame check-decode`` exists in this checkout, else the skip reason."""
    try:
        from dali_fame.cli import SUBCOMMANDS

        present = ("check-decode" in SUBCOMMANDS
                   and importlib.util.find_spec("dali_fame.data.check_decode") is not None)
    except Exception:  # noqa: BLE001
        present = False
    return None if present else "check-decode not available"


def check_decode(ctx: Context) -> Outcome:
    missing = check_decode_available()
    if missing:
        return Outcome("skipped", missing)
    argv = [_python(), "-m", "dali_fame.cli", "check-decode", "--require-gpu"]
    if ctx.quick:
        argv += ["--decoders", "dali-mixed", "--codecs", "h264", "--epochs", "1"]
    run = run_script(argv, log=ctx.work / "logs" / "check-decode.log", timeout_s=ctx.timeout_s)
    text = run.tail(200).splitlines()
    rows = [line for line in text if line.startswith(("DALI", "CPU loader"))]
    footer = next((line for line in reversed(text) if line.startswith(("OK:", "FAILED:"))), "")
    mixed = [line for line in rows if line.startswith("DALI mixed")]
    if run.returncode != 0:
        out = _failed_run(run, "check-decode")
        if footer.startswith("FAILED"):
            out.summary = footer
        return out
    statuses = [line.split()[3] if len(line.split()) > 3 else "" for line in mixed]
    if "pass" not in statuses or any(st in ("FAIL", "unavailable") for st in statuses):
        return Outcome("FAIL", "exit 0 but DALI mixed did not pass on every codec: "
                       + " / ".join(mixed), ["```", *rows, "```"], run.seconds, run.command,
                       run.log)
    details = ["```", *rows, "", footer, "```"]
    return Outcome("pass", footer, details, run.seconds, run.command, run.log)


def fame_summary(result: dict) -> tuple[bool, str, list[str]]:
    """Headline of bench_fame's ``fame.json``: the GPU mask + merge step per size and backend.

    Returns (ok, summary, detail lines); not ok when the GPU section did not run or the CUDA
    kernels were not among the backends timed."""
    if "gpu" not in result:
        return False, f"no GPU section ({result.get('gpu_skipped', 'not run')})", []
    info = result.get("gpu_info", {})
    rows = result["gpu"]
    step = {(r["size"], r["impl"]): r for r in rows if r["name"] == "mask + merge (step)"}
    parts, details = [], []
    for size in result.get("sizes", []):
        cuda, torch_ = step.get((size, "cuda")), step.get((size, "torch"))
        if cuda and torch_:
            speedup = torch_["median_ms"] / cuda["median_ms"]
            parts.append(f"{size}: cuda {cuda['median_ms']:.2f} ms ({cuda['clips_per_s']:.0f} "
                         f"clips/s) vs torch {torch_['median_ms']:.2f} ms ({speedup:.1f}x)")
        elif torch_:
            parts.append(f"{size}: torch {torch_['median_ms']:.2f} ms (no cuda row)")
    for r in rows:
        if r["impl"] == "cuda" and r.get("roofline") is not None:
            details.append(f"- {r['size']} cuda {r['name']}: {r['median_ms']:.3f} ms, "
                           f"{r['gb_per_s']:.0f} GB/s, {100 * r['roofline']:.0f}% of peak")
    peak = info.get("peak_bandwidth_gbs")
    peak_text = f"{peak:.0f} GB/s" if peak else "unknown"
    details.insert(0, f"- device {info.get('name', '?')}, peak bandwidth {peak_text} "
                      f"({info.get('peak_source', '?')})")
    correctness = result.get("correctness", {})
    for size, entry in correctness.items():
        details.append(f"- correctness at {size}: mask agreement {100 * entry['legacy_hue']:.3f}% "
                       f"(legacy hue), merge bit-exact {entry['merge_bit_exact']}")
    ok = any(impl == "cuda" for _, impl in step)
    summary = "; ".join(parts) or "no mask + merge rows"
    if not ok:
        error = info.get("cuda_backend_error", "no cuda rows")
        summary = f"the CUDA kernels were not timed ({error}); " + summary
    return ok, summary, details


def check_bench_fame(ctx: Context) -> Outcome:
    out_dir = ctx.work / "bench_fame"
    (out_dir / "fame.json").unlink(missing_ok=True)
    argv = [_python(), "benchmarks/bench_fame.py", "--no-cpu", "--skip-paper",
            "--out", str(out_dir)]
    if ctx.quick:
        argv += ["--sizes", "112", "--repeats", "5"]
    run = run_script(argv, log=ctx.work / "logs" / "bench-fame.log", timeout_s=ctx.timeout_s)
    if run.returncode != 0 or not (out_dir / "fame.json").is_file():
        return _failed_run(run, "bench_fame")
    ok, summary, details = fame_summary(json.loads((out_dir / "fame.json").read_text()))
    details.append(f"- full table: {_relative(out_dir / 'fame.md')}")
    return Outcome("pass" if ok else "FAIL", summary, details, run.seconds, run.command, run.log)


def loader_summary(data: dict) -> tuple[bool, str, list[str]]:
    """Headline of bench_loader's ``bench_loader.json``: DALI mixed vs the CPU loader."""
    meta, results = data["meta"], data["results"]
    parts, details = [], []
    ok = True
    for codec in dict.fromkeys(r["codec"] for r in results):
        rows = {r["method"]: r for r in results if r["codec"] == codec}
        cpu = rows.get("cpu_loader (PyAV, rgb=exact)")
        gpu = rows.get("dali (gpu)")
        if gpu is None or not gpu.get("clips_per_s"):
            ok = False
            note = next((r["note"] for r in rows.values() if r["method"].startswith("dali")),
                        "not run")
            parts.append(f"{codec}: DALI mixed did not run ({note})")
        elif cpu and cpu.get("clips_per_s"):
            parts.append(f"{codec}: DALI mixed {gpu['clips_per_s']:.0f} clips/s vs CPU loader "
                         f"{cpu['clips_per_s']:.0f} ({cpu['processes']}), "
                         f"{gpu['clips_per_s'] / cpu['clips_per_s']:.1f}x; mean abs diff "
                         f"{gpu['mean_abs_diff']:.3f}")
        for r in rows.values():
            rate = f"{r['clips_per_s']:.1f} clips/s" if r.get("clips_per_s") else "skipped"
            details.append(f"- {codec} {r['method']} ({r['processes']}): {rate}"
                           + (f"; {r['note']}" if r.get("note") else ""))
    details.insert(0, f"- {meta['videos']} videos {meta['size']}x{meta['size']}x{meta['frames']}, "
                      f"crop {meta['crop']}, batch {meta['batch_size']}, {meta['rounds']} rounds, "
                      f"GPU {meta.get('gpu')}")
    return ok, "; ".join(parts) or "no results", details


def check_bench_loader(ctx: Context) -> Outcome:
    out_dir = ctx.work / "bench_loader"
    (out_dir / "bench_loader.json").unlink(missing_ok=True)
    argv = [_python(), "benchmarks/bench_loader.py", "--codecs", "h264",
            "--videos", "16" if ctx.quick else "32", "--rounds", "1" if ctx.quick else "3",
            "--workers", str(ctx.workers), "--data-dir", str(ctx.work / "loader_videos"),
            "--out", str(out_dir)]
    run = run_script(argv, log=ctx.work / "logs" / "bench-loader.log", timeout_s=ctx.timeout_s)
    if run.returncode != 0 or not (out_dir / "bench_loader.json").is_file():
        return _failed_run(run, "bench_loader")
    ok, summary, details = loader_summary(json.loads((out_dir / "bench_loader.json").read_text()))
    return Outcome("pass" if ok else "FAIL", summary, details, run.seconds, run.command, run.log)


TRAIN_SETTINGS = ("r2plus1d_112", "i3d_224")


def train_summary(rows: list[dict], settings: Sequence[str] = TRAIN_SETTINGS
                  ) -> tuple[bool, str, list[str]]:
    """Headline of bench_train's ``train.json``: clips/s and the data-wait share of a step, per
    setting, FAME on (and off for comparison)."""
    parts, details = [], []
    by_key = {(r["setting"], r["fame"]): r for r in rows}
    ok = all((s, True) in by_key for s in settings)
    for s in settings:
        on, off = by_key.get((s, True)), by_key.get((s, False))
        if on is None:
            parts.append(f"{s}: missing")
            continue
        share = on["data_wait_ms"] / on["step_ms"]
        text = (f"{s}: {on['clips_per_s']:.0f} clips/s, data wait {share:.0%} "
                f"of a {on['step_ms']:.0f} ms step, FAME {on['fame_ms']:.1f} ms")
        if off:
            text += f" (MoCo without FAME {off['clips_per_s']:.0f} clips/s)"
        parts.append(text)
    for r in rows:
        details.append(
            f"- {r['setting']} fame={'on' if r['fame'] else 'off'} loader {r['loader']} "
            f"on {r['device']}, batch {r['batch']} x {r['clip']}: step {r['step_ms']:.1f} ms = "
            f"data wait "
            f"{r['data_wait_ms']:.1f} + FAME {r['fame_ms']:.1f} + augment {r['augment_ms']:.1f} + "
            f"fwd/bwd {r['forward_backward_ms']:.1f} + optimizer {r['optimizer_ms']:.1f}; "
            f"{r['clips_per_s']:.1f} clips/s")
    return ok, "; ".join(parts), details


def check_bench_train(ctx: Context) -> Outcome:
    out_dir = ctx.work / "bench_train"
    (out_dir / "train.json").unlink(missing_ok=True)
    argv = [_python(), "benchmarks/bench_train.py", "--settings", *TRAIN_SETTINGS,
            "--steps", "3" if ctx.quick else "10", "--warmup", "1" if ctx.quick else "2",
            "--workers", str(ctx.workers), "--out", str(out_dir)]
    run = run_script(argv, log=ctx.work / "logs" / "bench-train.log", timeout_s=ctx.timeout_s)
    if run.returncode != 0 or not (out_dir / "train.json").is_file():
        return _failed_run(run, "bench_train")
    ok, summary, details = train_summary(json.loads((out_dir / "train.json").read_text()))
    notes = [ctx.machine.missing[r] for r in ("dali", "cupy") if r in ctx.machine.missing]
    if notes:
        details.append("- ran without: " + "; ".join(notes)
                       + " (loader auto -> CPU loader / FAME auto -> torch reference)")
    return Outcome("pass" if ok else "FAIL", summary, details, run.seconds, run.command, run.log)


def pretrain_summary(metrics: list[dict], log_text: str, *, want_loader: str,
                     steps: int) -> tuple[bool, str, list[str]]:
    """Headline of a pretraining run: steps, loss first -> last, clips/s, data-wait share, and
    the loader / FAME backend its start-up line names (they must be the requested ones)."""
    loader = re.search(r"loader (\S+), FAME backend (\S+)", log_text)
    used_loader, backend = (loader.group(1), loader.group(2)) if loader else ("?", "?")
    problems = []
    if used_loader != want_loader:
        problems.append(f"loader {used_loader}, wanted {want_loader}")
    if backend != "cuda":
        problems.append(f"FAME backend {backend}, wanted cuda")
    if not metrics:
        problems.append("no metrics logged")
        return False, "; ".join(problems), []
    last = metrics[-1]
    done = int(last.get("step", 0))
    if done != steps:
        problems.append(f"stopped at step {done} of {steps}")
    later = metrics[1:] or metrics  # the first window holds the start-up
    speed = sum(m["train/clips_per_s"] for m in later) / len(later)
    wait = sum(m["train/data_wait_frac"] for m in later) / len(later)
    summary = (f"{done} steps, loss {metrics[0]['train/loss']:.3f} -> {last['train/loss']:.3f}, "
               f"{speed:.0f} clips/s, data wait {wait:.0%} (loader {used_loader}, FAME {backend})")
    if problems:
        summary = "; ".join(problems) + "; " + summary
    return not problems, summary, []


def check_pretrain(ctx: Context) -> Outcome:
    steps = 20 if ctx.quick else 100
    loader = "cpu" if "dali" in ctx.machine.missing else "dali"
    run_dir = ctx.work / f"pretrain_{datetime.datetime.now():%Y%m%d-%H%M%S}"
    argv = [_python(), "train/pretrain.py", "--max-steps", str(steps), "--output-dir", str(run_dir),
            "--loader", loader, "--set", "debias.backend=cuda"]
    run = run_script(argv, log=ctx.work / "logs" / "pretrain.log", timeout_s=ctx.timeout_s)
    if run.returncode != 0:
        return _failed_run(run, "pretrain")
    metrics_path = run_dir / "metrics.jsonl"
    metrics = ([json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
               if metrics_path.is_file() else [])
    ok, summary, details = pretrain_summary(metrics, run.log.read_text(errors="replace"),
                                            want_loader=loader, steps=steps)
    replicas = run_dir / "replicas.json"
    if replicas.is_file():
        details.append(f"- replicas in sync: {json.loads(replicas.read_text()).get('in_sync')}")
    if loader == "cpu":
        details.append(f"- ran on the CPU loader: {ctx.machine.missing['dali']}")
    details.append(f"- run directory: {_relative(run_dir)}")
    return Outcome("pass" if ok else "FAIL", summary, details, run.seconds, run.command, run.log)


#: every check, in run order (costs: seconds on one H100/H200-class GPU with 16 cores, estimated)
CHECKS: tuple[Check, ...] = (
    Check("gpu", "GPU usable by the installed torch", (), 1, 1, check_gpu),
    Check("cuda-tests", "cuda-marked tests (pytest -m cuda)", ("gpu", "pytest", "cupy"), 70, 70,
          check_cuda_tests),
    Check("sync-free-step", "two pretraining steps with no host synchronisation "
          "(torch.cuda.set_sync_debug_mode('error'), FAME torch and cuda backends)",
          ("gpu", "pytest", "cupy"), 25, 25, check_sync_free_step),
    Check("check-decode", "check-decode with DALI mixed (every frame the requested one)",
          ("gpu", "av", "dali"), 45, 25, check_decode),
    Check("bench-fame", "bench_fame GPU section: torch reference vs CuPy kernels",
          ("gpu", "cupy"), 60, 30, check_bench_fame),
    Check("bench-loader", "bench_loader: DALI mixed vs the CPU loader", ("gpu", "av", "dali"),
          75, 35, check_bench_loader),
    Check("bench-train", "bench_train: R(2+1)D-18 at 112 and I3D at 224, clips/s and data wait",
          ("gpu", "av"), 120, 60, check_bench_train, uses=("dali", "cupy")),
    Check("pretrain", "100-step default-config pretraining on DALI + the CUDA kernels",
          ("gpu", "av", "cupy"), 70, 35, check_pretrain, uses=("dali",)),
)


# --------------------------------------------------------------------------------- report

@dataclasses.dataclass
class Report:
    machine: Machine
    quick: bool
    budget_s: float
    results: list[tuple[Check, Outcome]]
    seconds: float
    started: str

    @property
    def failed(self) -> bool:
        return any(o.status == "FAIL" for _, o in self.results)


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    m = report.machine
    facts = m.facts
    counts = {s: sum(o.status == s for _, o in report.results) for s in ("pass", "FAIL", "skipped")}
    verdict = "FAILED" if report.failed else "OK"
    smi = ", ".join(f"{n} ({c[0]}.{c[1]})" for n, c in facts.devices) or "absent or silent"
    lines = [
        "# dali-fame selftest",
        "",
        (f"**{verdict}**: {counts['pass']} passed, {counts['FAIL']} failed, {counts['skipped']} "
         f"skipped in {report.seconds:.0f} s ({'--quick' if report.quick else 'full sizes'}, "
         f"budget {report.budget_s:g} s); {report.started} on {platform.node()}, checkout "
         f"{_git_revision()}"),
        "",
        "## Machine",
        "",
        f"- device: {'; '.join(m.devices) if m.devices else 'none usable by torch'}",
        (f"- NVIDIA driver: {facts.driver or 'none'}; device nodes {len(facts.device_nodes)}; "
         f"nvidia-smi: {smi}"),
        (f"- torch build: CUDA {facts.torch_cuda or 'none'}, "
         f"archs {' '.join(facts.torch_archs) or 'none'}"),
        f"- platform: {platform.platform()}, {os.cpu_count()} CPUs",
    ]
    lines += [f"- {name}: {version}" for name, version in m.versions.items()]
    lines += ["", "## Results", "", "| check | result | seconds (estimated) | numbers / reason |",
              "|---|---|---|---|"]
    for check, out in report.results:
        lines.append(f"| {check.name} | {out.status} | {out.seconds:.1f} "
                     f"({check.cost(report.quick):.0f}) | {_cell(out.summary)} |")
    if m.missing:
        lines += ["", "## Missing packages (what to carry)", ""]
        for req, reason in m.missing.items():
            needed = [c.name for c in CHECKS if req in c.needs]
            used = [c.name for c in CHECKS if req in c.uses]
            lines.append(f"- {reason}; needed by: {', '.join(needed) or 'none'}"
                         + (f"; used when present by: {', '.join(used)}" if used else ""))
    ran = [(c, o) for c, o in report.results if o.status != "skipped"]
    if ran:
        lines += ["", "## Details"]
        for check, out in ran:
            lines += ["", f"### {check.name}: {out.status} ({out.seconds:.1f} s)", "",
                      check.title, ""]
            if out.command:
                lines.append(f"- command: `{out.command}`")
            if out.log:
                lines.append(f"- log: {_relative(out.log)}")
            lines += out.details
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- running

def run_checks(*, quick: bool, budget_s: float, work: Path, only: Sequence[str] | None = None,
               machine: Machine | None = None, checks: Sequence[Check] = CHECKS,
               progress: Callable[[str], None] = print) -> Report:
    """Probe the machine, plan within the budget, run each check; nothing raises."""
    start = time.perf_counter()
    started = f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}"
    machine = machine or probe_machine()
    work = work.resolve()  # the scripts run from the repository root, not from here
    work.mkdir(parents=True, exist_ok=True)
    skips: dict[str, str] = {}
    for check in checks:
        if only is not None and check.name not in only:
            skips[check.name] = "not selected (--checks)"
            continue
        reasons = machine.reasons(check.needs)
        if reasons:
            skips[check.name] = "; ".join(reasons)
    runnable = {c.name: c.cost(quick) for c in checks if c.name not in skips}
    _kept, dropped = plan(runnable, budget_s)
    skips.update(dropped)
    deadline = start + budget_s
    workers = max(2, min(8, os.cpu_count() or 2))
    results: list[tuple[Check, Outcome]] = []
    for i, check in enumerate(checks, 1):
        label = f"[{i}/{len(checks)}] {check.name}"
        if check.name in skips:
            out = Outcome("skipped", skips[check.name])
        else:
            left = deadline - time.perf_counter()
            own = TIMEOUT_FACTOR * check.cost(quick) + TIMEOUT_MARGIN_S
            if left < 0.5 * check.cost(quick):
                out = Outcome("skipped", f"the budget of {budget_s:g} s was spent by the checks "
                              f"before it ({left:.0f} s left, estimated {check.cost(quick):.0f} s)")
            else:
                progress(f"selftest {label}: running (estimated {check.cost(quick):.0f} s, "
                         f"limit {min(own, max(left, 1.0)):.0f} s)")
                ctx = Context(machine, quick, work, min(own, max(left, 1.0)), workers)
                t0 = time.perf_counter()
                try:
                    out = check.run(ctx)
                except Exception as exc:  # noqa: BLE001 - a broken check fails, the rest run
                    out = Outcome("FAIL", f"the check itself raised {type(exc).__name__}: {exc}")
                out.seconds = out.seconds or time.perf_counter() - t0
        progress(f"selftest {label}: {out.status}: {out.summary}")
        results.append((check, out))
    return Report(machine, quick, budget_s, results, time.perf_counter() - start, started)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dali-fame selftest``."""
    parser.epilog = ("Exit code 0 when no check failed (skipped checks are listed with the "
                     "reason), 1 otherwise.")
    parser.add_argument("--quick", action="store_true",
                        help="reduced sizes (fewer steps, videos, rounds and sizes)")
    parser.add_argument("--budget-seconds", type=float, default=DEFAULT_BUDGET_S,
                        help=f"time for all checks (default {DEFAULT_BUDGET_S:g}); the checks "
                             "with the largest estimated cost are dropped first to fit")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"the markdown report (default {DEFAULT_OUT}); logs and outputs go "
                             "to <report name>_files/ beside it")
    parser.add_argument("--checks", nargs="+", choices=[c.name for c in CHECKS], default=None,
                        help="run only these checks")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    work = out.parent / f"{out.stem}_files"
    report = run_checks(quick=args.quick, budget_s=args.budget_seconds, work=work,
                        only=args.checks)
    text = to_markdown(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print()
    print(text, end="")
    print(f"\nwrote {out}")
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dali_fame.selftest",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
