"""GPU detection without torch (recorded inputs) and the FAME backend's reasoned fallbacks."""

from __future__ import annotations

import sys

import pytest
import torch

from dali_fame.gpu_check import (
    GpuFacts,
    arch_runs_on,
    diagnose,
    parse_driver_version,
    parse_nvidia_smi,
)

# Recorded from real machines (the driver's /proc file, nvidia-smi's CSV, torch's arch list).
PROC_R535 = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC "
             "2024\nGCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n")
PROC_R580_OPEN = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
                  "(dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 07:09:48 UTC 2025\n")
SMI_T4 = "Tesla T4, 7.5\n"
SMI_V100_X2 = "Tesla V100-SXM2-32GB, 7.0\nTesla V100-SXM2-32GB, 7.0\n"
SMI_H200 = "NVIDIA H200, 9.0\n"
ARCHS_CU130 = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
ARCHS_CU126 = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")


def _facts(proc, smi, *, archs=ARCHS_CU130, cuda="13.0", sees=1, version="2.14.1+cu130"):
    devices = parse_nvidia_smi(smi) if smi else ()
    nodes = tuple(f"/dev/nvidia{i}" for i in range(len(devices)))
    return GpuFacts(parse_driver_version(proc) if proc else None, nodes, devices, version, cuda,
                    archs, sees)


def test_parsers_read_recorded_outputs():
    assert parse_driver_version(PROC_R535) == "535.183.01"
    assert parse_driver_version(PROC_R580_OPEN) == "580.65.06"
    assert parse_driver_version("garbage") is None
    assert parse_nvidia_smi(SMI_V100_X2) == (("Tesla V100-SXM2-32GB", (7, 0)),) * 2
    assert parse_nvidia_smi("") == ()


@pytest.mark.parametrize(
    ("archs", "cap", "runs"),
    [
        (ARCHS_CU130, (7, 0), False),  # V100 on a CUDA 13 build: no sm_70, no PTX
        (ARCHS_CU130, (7, 5), True),
        (ARCHS_CU130, (8, 9), True),  # sm_86 cubin runs on 8.9 (same major, higher minor)
        (ARCHS_CU130, (12, 1), True),
        (("sm_80",), (9, 0), False),  # cubins do not cross major versions
        (("sm_80", "compute_80"), (9, 0), True),  # PTX is JIT-compiled forward
        (ARCHS_CU126, (7, 0), True),
    ],
)
def test_arch_runs_on(archs, cap, runs):
    assert arch_runs_on(archs, cap) is runs


def test_no_gpu_is_not_a_problem():
    verdict = diagnose(_facts(None, None, sees=0))
    assert not verdict.gpu_present and not verdict.problems and verdict.fix is None


def test_t4_on_r535_with_cuda13_torch_names_driver_and_cu12_build():
    verdict = diagnose(_facts(PROC_R535, SMI_T4, sees=0))
    assert verdict.gpu_present and not verdict.usable
    assert "535.183.01" in verdict.problems[0] and "R580" in verdict.problems[0]
    assert "cu126" in verdict.fix and "torch==2.14.1" in verdict.fix
    assert "--loader cpu" in verdict.message()


def test_v100_with_cuda13_torch_has_no_kernel_image():
    verdict = diagnose(_facts(PROC_R580_OPEN, SMI_V100_X2, sees=2))
    assert not verdict.usable
    assert any("compute capability 7.0" in p for p in verdict.problems)
    assert verdict.fix.count("cu126") == 1  # one fix, not one per GPU


def test_v100_with_cuda12_torch_on_r535_is_fine():
    verdict = diagnose(_facts(PROC_R535, SMI_V100_X2, archs=ARCHS_CU126, cuda="12.6", sees=2,
                              version="2.14.1+cu126"))
    assert verdict.usable and not verdict.problems


def test_h200_with_current_stack_is_fine():
    assert diagnose(_facts(PROC_R580_OPEN, SMI_H200)).usable


def test_cpu_build_of_torch_on_a_gpu_machine():
    verdict = diagnose(_facts(PROC_R580_OPEN, SMI_H200, cuda=None, archs=(), sees=0,
                              version="2.14.1+cpu"))
    assert not verdict.usable and "CPU-only" in verdict.problems[0]


def test_driver_present_but_torch_sees_nothing():
    verdict = diagnose(_facts(PROC_R580_OPEN, SMI_H200, sees=0))
    assert not verdict.usable and "CUDA_VISIBLE_DEVICES" in verdict.problems[0]


# --- the FAME backend: fallbacks that say why ---------------------------------------------


def test_probe_accepts_the_reference_and_catches_a_wrong_kernel():
    from dali_fame.fame import dispatch

    dispatch._probe(dispatch.TORCH_OPS, torch.device("cpu"))
    def ops(merge):
        return dispatch.Ops("cuda", dispatch.TORCH_OPS.motion_and_bins,
                            dispatch.TORCH_OPS.color_histograms, merge,
                            dispatch.TORCH_OPS.merge_normalize)

    inverted = ops(lambda c, m, p, background=None: dispatch.TORCH_OPS.merge(
        c, ~m.bool(), p, background=background))
    with pytest.raises(RuntimeError, match="'merge'"):
        dispatch._probe(inverted, torch.device("cpu"))
    # a merge that ignores the intra-video backgrounds
    inter_only = ops(lambda c, m, p, background=None: dispatch.TORCH_OPS.merge(c, m, p))
    with pytest.raises(RuntimeError, match=r"\['merge\[background\]'\]"):
        dispatch._probe(inter_only, torch.device("cpu"))


def test_missing_cupy_is_caught_at_selection(monkeypatch):
    from dali_fame.fame import dispatch

    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    dispatch._load_cuda_ops.cache_clear()
    try:
        ok, reason = dispatch.cuda_ops_status(0)
    finally:
        dispatch._load_cuda_ops.cache_clear()
    assert not ok and "cupy" in reason.lower()


def test_compile_failure_falls_back_with_reason_and_cuda_raises(monkeypatch):
    from dali_fame import backends
    from dali_fame.fame import cuda, dispatch

    def no_nvrtc(index):
        raise RuntimeError("NVRTC_ERROR_INVALID_OPTION: --gpu-architecture=compute_70")

    monkeypatch.setattr(cuda, "_kernels", no_nvrtc)
    monkeypatch.setattr(backends, "cuda_device_count", lambda: 1)
    dispatch._load_cuda_ops.cache_clear()
    dispatch._warn_fallback.cache_clear()
    try:
        auto = backends.select_fame_backend("auto")
        assert auto.name == "torch" and "NVRTC_ERROR_INVALID_OPTION" in auto.reason
        with pytest.raises(ValueError, match="NVRTC_ERROR_INVALID_OPTION"):
            backends.select_fame_backend("cuda")
        with pytest.warns(RuntimeWarning, match="NVRTC_ERROR_INVALID_OPTION"):
            assert dispatch.resolve_ops("auto", torch.device("cuda", 0)).name == "torch"
    finally:
        dispatch._load_cuda_ops.cache_clear()
        dispatch._warn_fallback.cache_clear()


def test_a_cpu_run_on_a_gpu_machine_gets_the_cpu_backend(monkeypatch):
    # ACCELERATE_USE_CPU on a GPU machine: the trainer passes its CPU device, so FAME must not
    # be handed the CUDA backend (which refuses CPU tensors).
    from dali_fame import backends
    from dali_fame.fame import dispatch

    monkeypatch.setattr(backends, "cuda_device_count", lambda: 1)
    native_ok, _ = dispatch.native_ops_status()
    cpu = backends.select_fame_backend("auto", torch.device("cpu"))
    assert cpu.name == ("native" if native_ok else "torch")
    with pytest.raises(ValueError, match="'cuda' was requested but the clips are on cpu"):
        backends.select_fame_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="'native' was requested but the clips are on cuda"):
        backends.select_fame_backend("native", "cuda:0")
    with pytest.raises(ValueError, match="auto, cuda, native, torch"):
        backends.select_fame_backend("cpp")


def test_native_build_failure_falls_back_with_reason_and_native_raises(monkeypatch):
    from dali_fame import backends
    from dali_fame.fame import dispatch

    monkeypatch.setattr(dispatch, "_load_native_ops", lambda: RuntimeError("compiling fame_cpu.cpp failed: boom"))
    auto = backends.select_fame_backend("auto", "cpu")
    assert auto.name == "torch" and "boom" in auto.reason and "torch reference on the CPU" in auto.reason
    with pytest.raises(ValueError, match="boom"):
        backends.select_fame_backend("native", "cpu")


def test_scripts_stop_at_start_up_on_an_unusable_gpu_unless_the_cpu_is_asked_for(monkeypatch, tmp_path):
    import importlib.util
    from pathlib import Path

    from dali_fame import gpu_check

    monkeypatch.setattr(gpu_check, "read_facts", lambda: _facts(PROC_R535, SMI_T4, sees=0))
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    repo = Path(__file__).resolve().parents[1]
    for script in ("pretrain", "finetune", "linear_probe", "retrieval"):
        spec = importlib.util.spec_from_file_location(f"{script}_script", repo / "train" / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.syspath_prepend(str(repo / "train"))
        spec.loader.exec_module(module)
        with pytest.raises(SystemExit) as stop:
            module.main(["--output-dir", str(tmp_path / script)])
        assert "535.183.01" in str(stop.value) and "fix:" in str(stop.value), script
        assert not (tmp_path / script).exists()  # stopped before writing anything
    gpu_check.check_gpu_usable(loader_flag="cpu")  # asked for: no stop
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    gpu_check.check_gpu_usable(loader_flag=None)
