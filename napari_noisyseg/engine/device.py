"""Device choice and the fastest correct numeric path per device.

The policy, measured in ``benchmarks/speed.py``:

* CUDA: float16 autocast with a gradient scaler (AMP).
* CPU with native bf16 (AVX512-BF16 or AMX): bfloat16 autocast + channels_last.
* Apple MPS and older CPUs: plain float32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class NumericPath:
    """How a forward pass runs on one device.

    Attributes
    ----------
    device : torch.device
    autocast_dtype : torch.dtype or None
        Dtype used under ``torch.autocast``; None means plain float32.
    channels_last : bool
        Whether inputs and weights use the NHWC memory format.
    grad_scaler : bool
        Whether a ``torch.amp.GradScaler`` is needed (float16 on CUDA).
    """

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    grad_scaler: bool

    @property
    def precision(self) -> str:
        """``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        if self.autocast_dtype is None:
            return "fp32"
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp16"

    @property
    def name(self) -> str:
        return f"{self.device.type}-{self.precision}"

    def autocast(self):
        """Context manager for the forward pass (a no-op for float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def memory_format(self, ndim: int):
        if self.channels_last and ndim == 4:
            return torch.channels_last
        if self.channels_last and ndim == 5:
            return torch.channels_last_3d
        return torch.contiguous_format


def available_devices() -> list[str]:
    """Devices usable on this machine, best first, always ending with ``"cpu"``."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(requested: str = "auto") -> tuple[torch.device, str | None]:
    """Turn a user's device choice into a torch device.

    Parameters
    ----------
    requested : str
        ``"auto"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"cpu"``.

    Returns
    -------
    device : torch.device
    note : str or None
        A sentence for the user when the request fell back to the CPU.
    """
    requested = (requested or "auto").lower()
    available = available_devices()
    if requested == "auto":
        device = torch.device(available[0])
        note = None if device.type != "cpu" else "No GPU found: training on the CPU."
        return device, note
    kind = requested.split(":")[0]
    if kind not in ("cuda", "mps", "cpu"):
        raise ValueError(f"Unknown device {requested!r}; choose from auto, {', '.join(available)}.")
    if kind not in available:
        return torch.device("cpu"), f"Device {requested!r} is not available here: training on the CPU."
    return torch.device(requested), None


@lru_cache(maxsize=None)
def cpu_supports_bf16() -> bool:
    """True when the CPU executes bfloat16 matrix work natively (AVX512-BF16 or AMX)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        capability = ""
    if "AVX512" not in capability.upper():
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        # Not Linux: mkldnn's own check is the best we have.
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def numeric_path(device: torch.device, precision: str = "auto") -> NumericPath:
    """Pick the numeric path for ``device``.

    Parameters
    ----------
    device : torch.device
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``"auto"`` applies the policy in the module docstring.
    """
    precision = precision.lower()
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"Unknown precision {precision!r}; choose auto, fp32, bf16 or fp16.")
    if precision == "fp32":
        return NumericPath(device, None, False, False)
    if device.type == "cuda":
        if precision == "bf16":
            return NumericPath(device, torch.bfloat16, True, False)
        return NumericPath(device, torch.float16, True, True)
    if device.type == "cpu":
        if precision in ("bf16", "auto") and (precision == "bf16" or cpu_supports_bf16()):
            return NumericPath(device, torch.bfloat16, True, False)
        return NumericPath(device, None, False, False)
    # mps: autocast support is partial across torch versions; fp32 is the safe default.
    return NumericPath(device, None, False, False)
