"""Is there an NVIDIA GPU that the installed torch cannot use? Found without asking torch.

``torch.cuda.is_available()`` answers False both on a CPU machine and on a GPU machine whose
driver is too old for torch's CUDA build, and a torch built without kernels for a GPU's
architecture fails only at the first op ("no kernel image"). So the driver and the devices are
read independently of torch (:func:`read_facts`: the driver's version file, ``/dev/nvidia*``,
``nvidia-smi`` when present) and compared with what torch needs (:func:`diagnose`, a pure
function of those facts, tested with recorded inputs). ``dali-fame doctor`` prints the result;
the training and evaluation scripts stop at start-up with its fix when a GPU is present but
unusable, unless the CPU was asked for explicitly.
"""

from __future__ import annotations

import dataclasses
import glob
import re
import shutil
import subprocess

#: The oldest Linux driver each CUDA major release runs on (CUDA's minor-version compatibility:
#: any 12.x build runs on R525.60.13+, any 13.x build on R580+; CUDA release notes, table
#: "CUDA Toolkit and Minimum Required Driver Version for CUDA Minor Version Compatibility").
MIN_DRIVER_FOR_CUDA_MAJOR: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580"}
#: The PyTorch wheel index for a CUDA 12 build (torch's CUDA 12.6 wheels: driver R525+, sm_50+,
#: Volta included); used in the printed fix.
CU12_INDEX = "https://download.pytorch.org/whl/cu126"
DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"


@dataclasses.dataclass(frozen=True)
class GpuFacts:
    """What the machine says, independently of torch.

    Attributes:
        driver: the NVIDIA kernel driver version, e.g. ``"535.183.01"``; None when no driver.
        device_nodes: ``/dev/nvidia0``, ... (per-GPU nodes only).
        devices: ``(name, (major, minor))`` per GPU from ``nvidia-smi`` (empty when absent).
        torch_version: e.g. ``"2.14.1+cu130"``.
        torch_cuda: torch's CUDA build, e.g. ``"13.0"``; None for a CPU build.
        torch_archs: ``torch.cuda.get_arch_list()``, e.g. ``("sm_75", "sm_80", "compute_120")``.
        torch_sees: the number of devices ``torch.cuda.device_count()`` reports (0 when
            ``is_available()`` is False).
    """

    driver: str | None
    device_nodes: tuple[str, ...]
    devices: tuple[tuple[str, tuple[int, int]], ...]
    torch_version: str
    torch_cuda: str | None
    torch_archs: tuple[str, ...]
    torch_sees: int

    @property
    def gpu_present(self) -> bool:
        return bool(self.driver or self.device_nodes or self.devices)


@dataclasses.dataclass(frozen=True)
class GpuDiagnosis:
    """The verdict of :func:`diagnose`.

    Attributes:
        gpu_present: an NVIDIA driver or device exists.
        usable: torch can run CUDA ops on every present GPU (False when none is present).
        problems: what is wrong, one line each (empty when usable or when no GPU exists).
        fix: the exact remedy, or None.
    """

    gpu_present: bool
    usable: bool
    problems: tuple[str, ...]
    fix: str | None

    def message(self) -> str:
        """The problems and the fix as one block of text (what the scripts stop with)."""
        lines = [f"a GPU is present but torch cannot use it: {p}" for p in self.problems]
        if self.fix:
            lines.append(f"fix: {self.fix}")
        lines.append("to run on the CPU anyway, pass --loader cpu (or --device cpu)")
        return "\n".join(lines)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def parse_driver_version(text: str) -> str | None:
    """The driver version from ``/proc/driver/nvidia/version``'s text, e.g. from
    ``NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 ...``
    (open kernel modules say ``Open Kernel Module for x86_64``)."""
    match = re.search(r"Kernel Module(?: for \w+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def parse_nvidia_smi(text: str) -> tuple[tuple[str, tuple[int, int]], ...]:
    """Devices from ``nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader``."""
    out = []
    for line in text.strip().splitlines():
        name, _, cap = line.rpartition(",")
        major, _, minor = cap.strip().partition(".")
        if name and major.isdigit() and minor.isdigit():
            out.append((name.strip(), (int(major), int(minor))))
    return tuple(out)


def arch_runs_on(archs: tuple[str, ...], capability: tuple[int, int]) -> bool:
    """Whether a build with ``archs`` (``sm_XY`` cubins, ``compute_XY`` PTX) has code for a
    device of ``capability``: a cubin runs on its own major version at an equal or higher minor
    (sm_80 on 8.6), PTX is JIT-compiled for any equal or newer device."""
    major, minor = capability
    for arch in archs:
        kind, _, num = arch.partition("_")
        if not num.isdigit():
            continue
        a_major, a_minor = int(num[:-1]), int(num[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def diagnose(facts: GpuFacts) -> GpuDiagnosis:
    """Compare the machine's driver and GPUs with what the installed torch needs."""
    if not facts.gpu_present:
        return GpuDiagnosis(False, False, (), None)
    problems: list[str] = []
    fixes: list[str] = []
    tv = facts.torch_version.split("+")[0]
    if facts.torch_cuda is None:
        problems.append(f"torch {facts.torch_version} is a CPU-only build")
        fixes.append(f"install a CUDA build of torch {tv} (the default wheels are CUDA builds)")
        return GpuDiagnosis(True, False, tuple(problems), "; ".join(fixes))
    cuda_major = _version_tuple(facts.torch_cuda)[0]
    need = MIN_DRIVER_FOR_CUDA_MAJOR.get(cuda_major)
    cu12 = (f"pip install torch=={tv} torchvision --index-url {CU12_INDEX} (a CUDA 12 build: "
            "driver R525+, Volta and newer); CuPy (cupy-cuda12x) then shares its NVRTC 12")
    if facts.driver and need and _version_tuple(facts.driver) < _version_tuple(need):
        need_text = need
        problems.append(f"NVIDIA driver {facts.driver} is older than torch's CUDA {facts.torch_cuda} "
                        f"build needs (R{need_text} or newer)")
        fixes.append(f"upgrade the driver to R{need_text}+ or {cu12}" if cuda_major >= 13
                     else f"upgrade the driver to R{need_text}+")
    for name, cap in facts.devices:
        if not arch_runs_on(facts.torch_archs, cap):
            problems.append(f"{name} (compute capability {cap[0]}.{cap[1]}) has no kernels in this "
                            f"torch build (archs {', '.join(facts.torch_archs) or 'none'})")
            if not any(cu12 in f for f in fixes):
                fixes.append(cu12)
    if not problems and facts.torch_sees == 0:
        problems.append("an NVIDIA driver/device exists but torch.cuda.is_available() is False "
                        "(driver not loaded, no permission on /dev/nvidia*, or CUDA_VISIBLE_DEVICES "
                        "hides every device)")
        fixes.append("check `nvidia-smi` and CUDA_VISIBLE_DEVICES")
    return GpuDiagnosis(True, not problems, tuple(problems), "; ".join(fixes) or None)


def read_facts() -> GpuFacts:
    """Read the facts of this machine (cheap: two small files, one ``nvidia-smi`` call)."""
    import torch

    driver = None
    try:
        with open(DRIVER_VERSION_FILE) as fh:
            driver = parse_driver_version(fh.read())
    except OSError:
        pass
    nodes = tuple(sorted(p for p in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", p)))
    devices: tuple = ()
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)
            devices = parse_nvidia_smi(out.stdout) if out.returncode == 0 else ()
        except (OSError, subprocess.SubprocessError):
            devices = ()
    try:
        sees = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver raises here rather than returning False
        sees = 0
    archs = tuple(torch.cuda.get_arch_list()) if torch.version.cuda else ()
    return GpuFacts(driver, nodes, devices, torch.__version__, torch.version.cuda, archs, sees)


def check_gpu_usable(*, loader_flag: str | None) -> None:
    """Stop a script at start-up when a GPU is present but torch cannot use it.

    The CPU counts as asked for explicitly with ``--loader cpu`` on the command line
    (``loader_flag``) or Accelerate's ``--cpu`` (``ACCELERATE_USE_CPU``); a config file's
    loader setting does not, so a shared config never hides a broken GPU stack.

    Raises:
        SystemExit: with :meth:`GpuDiagnosis.message`.
    """
    import os

    if loader_flag == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return
    verdict = diagnose(read_facts())
    if verdict.gpu_present and not verdict.usable:
        raise SystemExit(verdict.message())
