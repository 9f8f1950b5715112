"""``dali-fame selftest``: the plan, the skip reasons, the report and the parsers of the
benchmarks' outputs, all without a GPU (the GPU checks themselves run only on a GPU machine)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dali_fame import selftest
from dali_fame.gpu_check import GpuFacts

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
GPU_CHECKS = [c.name for c in selftest.CHECKS]

H100_CU130 = GpuFacts(driver="580.95.05", device_nodes=("/dev/nvidia0",),
                      devices=(("NVIDIA H100 80GB HBM3", (9, 0)),), torch_version="2.14.1+cu130",
                      torch_cuda="13.0", torch_archs=("sm_75", "sm_80", "sm_90"), torch_sees=1)
NO_GPU = GpuFacts(driver=None, device_nodes=(), devices=(), torch_version="2.14.1+cu130",
                  torch_cuda="13.0", torch_archs=("sm_75", "sm_80", "sm_90"), torch_sees=0)


def _machine(*, missing=(), facts=H100_CU130, usable=True) -> selftest.Machine:
    return selftest.Machine(
        facts=facts, gpu_usable=usable,
        gpu_reason=None if usable else "no NVIDIA GPU on this machine",
        gpu_broken=False,
        missing={r: selftest.carry_hint(r, cuda_major=13) for r in missing},
        devices=("cuda:0 NVIDIA H100 80GB HBM3, compute capability 9.0, 79.2 GiB, 132 SMs",)
        if usable else (), versions={"torch": facts.torch_version},
    )


def _fake(name: str, cost: float, needs=("gpu",), status="pass", calls=None) -> selftest.Check:
    def run(ctx: selftest.Context) -> selftest.Outcome:
        if calls is not None:
            calls.append((name, ctx.timeout_s))
        return selftest.Outcome(status, f"{name} numbers")

    return selftest.Check(name, f"fake {name}", tuple(needs), cost, cost / 2, run)


# ----------------------------------------------------------------------------- the plan

def test_plan_keeps_everything_that_fits():
    kept, dropped = selftest.plan({"a": 10, "b": 50, "c": 30}, 90)
    assert kept == ["a", "b", "c"] and dropped == {}


def test_plan_drops_the_slowest_first():
    kept, dropped = selftest.plan({"a": 10, "b": 50, "c": 30, "d": 50}, 70)
    # 140 s estimated: d and b (50 each; of equal costs the later one goes first) are dropped
    assert kept == ["a", "c"]
    assert list(dropped) == ["d", "b"]
    assert "--budget-seconds 70" in dropped["d"] and "estimated 50 s" in dropped["d"]


def test_the_default_plan_runs_the_sync_test_and_the_gpu_benchmarks():
    # every check fits the default budget, full and --quick: nothing is dropped on a GPU machine
    for quick in (False, True):
        costs = {c.name: c.cost(quick) for c in selftest.CHECKS}
        kept, dropped = selftest.plan(costs, selftest.DEFAULT_BUDGET_S)
        assert dropped == {} and {"sync-free-step", "bench-fame", "bench-train"} <= set(kept)
    checks = {c.name: c for c in selftest.CHECKS}
    assert checks["sync-free-step"].run is selftest.check_sync_free_step
    assert 'set_sync_debug_mode("error")' in selftest.SYNC_TEST.read_text()
    # the sync test runs once, in its own check, not again inside cuda-tests
    for with_av in (False, True):
        files, left_out = selftest.cuda_test_files(with_av=with_av)
        assert selftest.SYNC_TEST not in files + left_out


def _junit(path: Path, cases: list[str]) -> None:
    """A pytest --junitxml file with one testcase per entry of ``cases`` (pass / fail / skip)."""
    body = {"pass": "", "fail": '<failure message="x"/>', "skip": '<skipped message="no GPU"/>'}
    rows = "".join(f'<testcase classname="tests.train.test_sync_free_step" name="t{i}">'
                   f"{body[c]}</testcase>" for i, c in enumerate(cases))
    path.write_text(f'<testsuites><testsuite tests="{len(cases)}" failures="{cases.count("fail")}" '
                    f'errors="0" skipped="{cases.count("skip")}">{rows}</testsuite></testsuites>')


@pytest.mark.parametrize("cases, code, status", [
    (["pass", "pass"], 0, "pass"),
    (["pass", "fail"], 1, "FAIL"),
    (["pass", "skip"], 0, "FAIL"),  # a skipped backend has checked nothing
])
def test_sync_free_step_check_runs_the_sync_test_and_needs_every_case(monkeypatch, tmp_path,
                                                                      cases, code, status):
    seen = {}

    def fake_run(argv, *, log, timeout_s):
        seen["argv"] = list(argv)
        xml = next(a.split("=", 1)[1] for a in argv if a.startswith("--junitxml="))
        _junit(Path(xml), cases)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("pytest output\n")
        return selftest.ScriptRun(code, 1.0, log, " ".join(argv), timeout_s)

    monkeypatch.setattr(selftest, "run_script", fake_run)
    out = selftest.check_sync_free_step(selftest.Context(_machine(), True, tmp_path, 60, 2))
    assert out.status == status, out.summary
    assert seen["argv"][1:5] == ["-m", "pytest", "-m", "cuda"]
    assert seen["argv"][-1] == "tests/train/test_sync_free_step.py"
    assert f"{cases.count('pass')} of {len(cases)} passed" in out.summary


def test_plan_with_no_budget_drops_everything():
    kept, dropped = selftest.plan({"a": 1, "b": 2}, 0)
    assert kept == [] and set(dropped) == {"a", "b"}


def test_run_checks_skips_dropped_and_unmet_checks(tmp_path):
    calls: list = []
    checks = [_fake("small", 20, calls=calls), _fake("big", 300, calls=calls),
              _fake("needs_av", 10, needs=("gpu", "av"), calls=calls),
              _fake("medium", 60, calls=calls)]
    report = selftest.run_checks(quick=False, budget_s=100, work=tmp_path, checks=checks,
                                 machine=_machine(missing=("av",)), progress=lambda _: None)
    status = {c.name: (o.status, o.summary) for c, o in report.results}
    assert [name for name, _ in calls] == ["small", "medium"]
    assert status["big"][0] == "skipped" and "--budget-seconds 100" in status["big"][1]
    assert status["needs_av"] == (
        "skipped", "PyAV missing: carry av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl")
    # each check's own time limit: 3 x its estimate + 30 s, never past the budget
    assert dict(calls)["small"] == pytest.approx(90)
    assert not report.failed


def test_a_failing_check_fails_the_run_and_a_raising_one_too(tmp_path):
    def boom(ctx):
        raise RuntimeError("broken check")

    checks = [_fake("bad", 1, status="FAIL"), selftest.Check("raises", "x", (), 1, 1, boom),
              _fake("good", 1)]
    report = selftest.run_checks(quick=True, budget_s=100, work=tmp_path, checks=checks,
                                 machine=_machine(), progress=lambda _: None)
    status = {c.name: (o.status, o.summary) for c, o in report.results}
    assert status["bad"][0] == "FAIL" and status["good"][0] == "pass"
    assert status["raises"] == ("FAIL", "the check itself raised RuntimeError: broken check")
    assert report.failed


# --------------------------------------------------------------- missing packages, wheels

def test_missing_packages_name_the_wheels(monkeypatch):
    blocked = {"av", "nvidia.dali", "pytest"}
    monkeypatch.setattr(selftest, "probe_module",
                        lambda name: "ImportError: blocked" if name in blocked else None)
    monkeypatch.setattr("dali_fame.gpu_check.read_facts", lambda: H100_CU130)
    machine = selftest.probe_machine()
    assert set(machine.missing) == {"av", "dali", "pytest"}
    av = machine.missing["av"]
    assert "PyAV missing: carry the av wheel (cp312 manylinux x86_64" in av
    assert "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl" in av and "[ImportError: blocked]" in av
    # the results table gets one clause that still names the wheel
    assert machine.reasons(["av"]) == [
        "PyAV missing: carry av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl"]
    assert machine.reasons(["dali"]) == [
        "DALI missing: its 424 MB wheel cannot travel in one 64 MiB call"]
    dali = machine.missing["dali"]
    assert "nvidia-dali-cuda130" in dali and "424 MB" in dali and "cannot travel" in dali
    assert "64 MiB" in dali
    for wheel in ("pytest", "pluggy", "iniconfig", "pygments"):
        assert wheel in machine.missing["pytest"]
    assert machine.versions["PyAV"].startswith("not importable")
    reasons = machine.reasons(("gpu", "av", "dali"))  # a usable GPU is no reason
    assert len(reasons) == 2 and reasons[0].startswith("PyAV missing")


def test_carry_hints_follow_torchs_cuda_build():
    assert "nvidia-dali-cuda120" in selftest.carry_hint("dali", cuda_major=12)
    assert "cupy-cuda12x" in selftest.carry_hint("cupy", cuda_major=12)
    assert "cupy-cuda13x" in selftest.carry_hint("cupy", cuda_major=13)
    with pytest.raises(ValueError):
        selftest.carry_hint("nothing", cuda_major=13)


def test_report_lists_skips_and_what_to_carry(tmp_path):
    checks = [_fake("needs_av", 10, needs=("gpu", "av")), _fake("runs", 10)]
    report = selftest.run_checks(quick=True, budget_s=100, work=tmp_path, checks=checks,
                                 machine=_machine(missing=("av",)), progress=lambda _: None)
    text = selftest.to_markdown(report)
    assert "| needs_av | skipped | 0.0 (5) | PyAV missing: carry av-18.1.0-cp311-abi3" in text
    assert "| runs | pass |" in text
    assert "## Missing packages (what to carry)" in text and "av-18.1.0-cp311-abi3" in text
    assert "NVIDIA driver: 580.95.05" in text


def test_a_gpu_that_torch_cannot_use_fails(monkeypatch):
    old_driver = GpuFacts(driver="535.183.01", device_nodes=("/dev/nvidia0",),
                          devices=(("Tesla T4", (7, 5)),), torch_version="2.14.1+cu130",
                          torch_cuda="13.0", torch_archs=("sm_75",), torch_sees=0)
    monkeypatch.setattr("dali_fame.gpu_check.read_facts", lambda: old_driver)
    machine = selftest.probe_machine()
    assert machine.gpu_broken and not machine.gpu_usable
    out = selftest.check_gpu(selftest.Context(machine, True, Path("."), 1, 2))
    assert out.status == "FAIL" and "older than torch's CUDA 13.0" in out.summary
    assert "cannot use it" in machine.reasons(["gpu"])[0]


# ------------------------------------------------------------------- this CPU machine

def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_visible(), reason="a GPU is visible: the checks would really run")
def test_quick_selftest_on_a_cpu_machine_skips_every_gpu_check(tmp_path):
    out = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, "-m", "dali_fame.cli", "selftest", "--quick",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    assert text in proc.stdout  # printed as well as written
    for name in GPU_CHECKS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "skipped" and cells[3], row
    assert "no NVIDIA GPU on this machine" in text
    assert f"**OK**: 0 passed, 0 failed, {len(GPU_CHECKS)} skipped" in text


BLOCKED = ("av", "nvidia.dali", "pytest", "nvtx")


def test_imports_and_runs_without_pyav_dali_pytest_or_nvtx(tmp_path):
    """What the project's GPU machines hold: no PyAV, no DALI, no pytest, no python nvtx."""
    script = textwrap.dedent(f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None  # any import of it raises ImportError
        import dali_fame.selftest, dali_fame.cli
        heavy = [m for m in ("torch", "numpy", "av", "nvidia.dali", "cupy") if sys.modules.get(m)]
        assert not heavy, f"importing dali_fame.selftest imported {{heavy}}"
        import importlib, pkgutil, dali_fame
        # every module of the package imports, except those that decode video with PyAV
        for info in pkgutil.walk_packages(dali_fame.__path__, "dali_fame."):
            try:
                importlib.import_module(info.name)
            except ImportError as exc:
                assert "import of av halted" in str(exc), (info.name, exc)
                assert info.name.startswith("dali_fame.data."), (info.name, exc)
        from dali_fame.cli import main
        sys.exit(main(["selftest", "--quick", "--out", {str(tmp_path / "report.md")!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (tmp_path / "report.md").read_text()
    assert "PyAV missing: carry the av wheel (cp312 manylinux x86_64" in text
    assert "cannot travel in one 64 MiB call" in text
    assert "pytest missing: carry the pytest, pluggy, iniconfig and pygments wheels" in text
    assert "- PyAV: not importable" in text and "- nvtx (python):" in text


# ------------------------------------------------------------ parsing the scripts' outputs

def test_fame_summary_reads_the_gpu_rows():
    def row(size, impl, ms, name="mask + merge (step)", roofline=None):
        return {"name": name, "size": size, "impl": impl, "median_ms": ms, "min_ms": ms,
                "clips_per_s": 8 / ms * 1e3, "gb_per_s": 100.0, "roofline": roofline}

    result = {"sizes": [224, 112], "gpu_info": {"name": "NVIDIA H100", "peak_bandwidth_gbs": 3350,
                                                 "peak_source": "table"},
              "correctness": {"224": {"legacy_hue": 0.99995, "default_hue": 1.0,
                                      "merge_bit_exact": True}},
              "gpu": [row(224, "torch", 8.0), row(224, "cuda", 2.0), row(112, "torch", 2.0),
                      row(112, "cuda", 1.0), row(224, "cuda", 0.5, "merge (uint8)", 0.61)]}
    ok, summary, details = selftest.fame_summary(result)
    assert ok
    assert summary.startswith("224: cuda 2.00 ms (4000 clips/s) vs torch 8.00 ms (4.0x)")
    assert any("merge (uint8)" in d and "61% of peak" in d for d in details)

    no_kernels = {**result, "gpu": [r for r in result["gpu"] if r["impl"] == "torch"],
                  "gpu_info": {**result["gpu_info"], "cuda_backend_error": "CuPy: no NVRTC"}}
    ok, summary, _ = selftest.fame_summary(no_kernels)
    assert not ok and "CuPy: no NVRTC" in summary
    ok, summary, _ = selftest.fame_summary(json.loads((RESULTS / "fame.json").read_text()))
    assert not ok and "no GPU section" in summary  # the recorded run is a CPU one


def test_train_summary_reads_the_recorded_cpu_run():
    rows = json.loads((RESULTS / "train.json").read_text())
    ok, summary, details = selftest.train_summary(rows, settings=("demo",))
    assert ok and summary.startswith("demo: ") and "clips/s, data wait" in summary
    assert "MoCo without FAME" in summary and len(details) == len(rows)
    ok, summary, _ = selftest.train_summary(rows)  # no GPU settings in a CPU run
    assert not ok and "r2plus1d_112: missing" in summary


def test_loader_summary_needs_dali_mixed():
    """Rows as bench_loader writes them (built here, not read from the committed results,
    which change whenever the benchmark is rerun)."""
    meta = {"videos": 32, "size": 128, "frames": 64, "crop": 112, "batch_size": 8, "rounds": 3,
            "gpu": None}

    def row(method, processes, clips_per_s, **extra):
        return {"method": method, "codec": "h264", "processes": processes,
                "clips_per_s": clips_per_s, "mean_abs_diff": 0.0, "note": "", **extra}

    cpu = row("cpu_loader (PyAV, rgb=exact)", "2 workers", 242.0)
    cpu_dali = row("dali (cpu)", "2 threads", None, note="DALI cpu reads vp9/mjpeg only")
    ok, summary, _ = selftest.loader_summary({"meta": meta, "results": [cpu, cpu_dali]})
    assert not ok and "DALI mixed did not run (DALI cpu reads vp9/mjpeg only)" in summary
    gpu = row("dali (gpu)", "2 threads + GPU", 1000.0, mean_abs_diff=0.2)
    ok, summary, details = selftest.loader_summary({"meta": meta, "results": [cpu, gpu]})
    assert ok and "DALI mixed 1000 clips/s vs CPU loader 242 (2 workers), 4.1x" in summary
    assert details[0].startswith("- 32 videos 128x128x64, crop 112, batch 8")


def test_pretrain_summary_checks_loader_backend_and_steps():
    metrics = [{"step": s, "train/loss": 5.0 - s / 50, "train/clips_per_s": 800.0,
                "train/data_wait_frac": 0.1} for s in range(5, 101, 5)]
    log = "... 128 videos, 8 steps/epoch, 1 process(es), batch 16 (16/process), loader dali, " \
          "FAME backend cuda (CuPy 14.2.0: ...)"
    ok, summary, _ = selftest.pretrain_summary(metrics, log, want_loader="dali", steps=100)
    assert ok and summary.startswith("100 steps, loss 4.900 -> 3.000, 800 clips/s, data wait 10%")
    ok, summary, _ = selftest.pretrain_summary(
        metrics[:4], log.replace("backend cuda", "backend torch"), want_loader="dali", steps=100)
    assert not ok and "FAME backend torch, wanted cuda" in summary
    assert "stopped at step 20" in summary


def test_junit_summary_counts(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.a" name="t1"/>'
        '<testcase classname="tests.a" name="t2"><failure message="x"/></testcase>'
        '<testcase classname="tests.a" name="t3"><skipped message="needs NVIDIA DALI"/></testcase>'
        '<testcase classname="tests.a" name="t4"/></testsuite></testsuites>')
    s = selftest.junit_summary(xml)
    assert (s["passed"], s["failures"], s["skipped"]) == (2, 1, 1)
    assert s["failed_names"] == ["tests.a::t2"] and s["skip_reasons"] == {"needs NVIDIA DALI": 1}


def test_cuda_test_files_leave_out_pyav_importers_without_pyav():
    files, left_out = selftest.cuda_test_files(with_av=False)
    names = {f.name for f in files}
    assert "test_fame_cuda.py" in names and "test_kernel_launchers.py" in names
    assert "test_dali_pipeline.py" in {f.name for f in left_out}
    all_files, none_left = selftest.cuda_test_files(with_av=True)
    assert none_left == [] and len(all_files) == len(files) + len(left_out)


def test_run_script_kills_a_hung_script(tmp_path):
    start = time.perf_counter()
    run = selftest.run_script(
        [sys.executable, "-c", ("import subprocess, time; subprocess.Popen(['sleep', '60']); "
                                "print('started', flush=True); time.sleep(60)")],
        log=tmp_path / "hang.log", timeout_s=2)
    assert run.timed_out and time.perf_counter() - start < 20
    assert "started" in run.tail()
    out = selftest._failed_run(run, "hang")
    assert out.status == "FAIL" and "did not finish within its limit of 2 s" in out.summary


# ------------------------------------------ the real scripts, here (their GPU parts skip)

@pytest.mark.skipif(_cuda_visible(), reason="a GPU is visible: the scripts would time it")
def test_bench_fame_check_runs_the_script_and_needs_its_gpu_section(tmp_path):
    ctx = selftest.Context(_machine(), True, tmp_path, 240, 2)
    out = selftest.check_bench_fame(ctx)
    # the flags are real (the script ran its correctness check) and no GPU section is a failure
    assert (out.status, out.summary) == ("FAIL", "no GPU section (no CUDA device)")
    assert (tmp_path / "bench_fame" / "fame.json").is_file()


@pytest.mark.skipif(_cuda_visible(), reason="a GPU is visible: DALI mixed would run")
def test_check_decode_check_fails_when_dali_mixed_cannot_run(tmp_path):
    if selftest.check_decode_available():
        pytest.skip("check-decode is not in this checkout")
    ctx = selftest.Context(_machine(), True, tmp_path, 240, 2)
    out = selftest.check_decode(ctx)
    assert out.status == "FAIL" and "DALI mixed did not run" in out.summary
    assert "--require-gpu --decoders dali-mixed --codecs h264 --epochs 1" in out.command
