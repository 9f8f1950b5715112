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


@pytest.mark.parametrize("stem", ["motion_bins", "fame_mask"])
def test_float_arithmetic_is_not_contracted_into_fma(nvrtc, stem):
    # The bins, blurs, min-max, likelihoods and soft mask are float32-exact only if every float
    # op rounds on its own: explicit __f*_rn intrinsics must survive NVRTC's default -fmad=true
    # (fma.rn.f64 inside cos/sin is fine).
    result = nvrtc.compile(
        fcuda.kernel_source(stem), f"{stem}.cu", ("-arch=compute_90", *fcuda.NVRTC_OPTIONS)
    )
    assert result.ok, result.log
    assert "fma.rn.f32" not in result.ptx
    assert "div.rn.f32" in result.ptx and "div.approx" not in result.ptx
