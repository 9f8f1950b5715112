"""Every kernel file compiles with NVRTC (no GPU needed) for compute_70, 75, 80 and 90."""

from __future__ import annotations

import re

import pytest

from dali_fame.fame import cuda as fcuda

ARCHS = ("compute_70", "compute_75", "compute_80", "compute_90")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("stem", sorted(fcuda.KERNEL_FILES))
def test_nvrtc_produces_ptx(nvrtc, stem, arch):
    result = nvrtc.compile(
        fcuda.kernel_source(stem), f"{stem}.cu", (f"-arch={arch}", *fcuda.NVRTC_OPTIONS)
    )
    assert result.ok, result.log
    assert f".target sm_{arch.split('_')[1]}" in result.ptx
    entries = set(re.findall(r"\.entry\s+(\w+)", result.ptx))
    assert entries == set(fcuda.KERNEL_FILES[stem])  # extern "C": unmangled, all present
    # warnings other than NVRTC's deprecation notice for compute_70 are bugs
    log = [line for line in result.log.splitlines() if line.strip() and "deprecated" not in line]
    assert not log, result.log


@pytest.mark.parametrize("stem", sorted(fcuda.KERNEL_FILES))
def test_host_emulation_is_invisible_to_nvrtc(nvrtc, stem):
    # NVRTC gets no include path: the kernels compile only because the emulation header is never
    # opened, and its marker macro (defined next to all its other definitions) is not defined
    probe = "\n#ifdef FAME_CUDA_HOST_EMULATION\n#error host emulation leaked into NVRTC\n#endif\n"
    result = nvrtc.compile(
        fcuda.kernel_source(stem) + probe, f"{stem}.cu", ("-arch=compute_80", *fcuda.NVRTC_OPTIONS)
    )
    assert result.ok, result.log


def test_emulation_header_refuses_a_cuda_compiler(nvrtc):
    source = '#include "cuda_host_emu.cuh"\n'
    result = nvrtc.compile(source, "probe.cu", ("-arch=compute_80", f"-I{fcuda.kernels_dir()}"))
    assert not result.ok
    assert "a CUDA compiler must not include it" in result.log


def _ptx(nvrtc, stem: str, fmad: str) -> str:
    result = nvrtc.compile(
        fcuda.kernel_source(stem),
        f"{stem}.cu",
        ("-arch=compute_90", f"-fmad={fmad}", *fcuda.NVRTC_OPTIONS),
    )
    assert result.ok, result.log
    return result.ptx


@pytest.mark.parametrize("stem", ["fame_mask", "merge", "color_hist"])
def test_float_arithmetic_is_not_contracted_into_fma(nvrtc, stem):
    # The blurs, min-max, likelihoods and soft mask are float32-exact only if every float op
    # rounds on its own: with explicit __f*_rn intrinsics NVRTC's default -fmad=true has
    # nothing to contract, so the PTX equals the -fmad=false PTX.
    ptx = _ptx(nvrtc, stem, "true")
    assert ptx == _ptx(nvrtc, stem, "false")
    assert "fma.rn.f32" not in ptx and "div.approx" not in ptx


def test_motion_bins_contracts_only_inside_the_trigonometry(nvrtc):
    # The bins' own float ops are explicit __f*_rn intrinsics (.rn in PTX). The only
    # instructions -fmad changes are the plain mul / add of libdevice's sincosf / sincos, whose
    # documented accuracy (2 ulp for sincosf) already holds under contraction and is all that
    # color_bin relies on (tests/kernels/test_kernel_motion_bins.py, sincosf skewed by +-2 ulp).
    fused, plain = _ptx(nvrtc, "motion_bins", "true"), _ptx(nvrtc, "motion_bins", "false")
    assert "div.rn.f32" in fused and "div.approx" not in fused
    a, b = fused.splitlines(), plain.splitlines()
    assert len(a) == len(b)
    changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    assert changed, "expected the trigonometry's contractible multiplies"
    for x, y in changed:
        op = x.split()[0]
        assert op in ("mul.f32", "mul.f64", "add.f32", "add.f64", "sub.f32", "sub.f64"), x
        assert y == x.replace(op, op[:3] + ".rn" + op[3:], 1), (x, y)
    # 2/pi argument-reduction constants: the changed multiplies are the trig's, not ours
    assert any("0f3F22F983" in x for x, _ in changed)
