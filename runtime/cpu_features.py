"""Whether this CPU computes bfloat16 natively, and the warning an entry point gives when it does not.

bf16 autocast on a CPU is fast only where oneDNN has bf16 kernels (AVX-512 BF16, AMX, or AVX-512 with
emulation). On an AVX2-only CPU torch falls back to reference loops: on one such machine (AMD EPYC, torch's
`AVX2` capability) a 512x512 bf16 matmul took 222 ms against 3.9 ms in fp32 and a 64-channel 3x3
convolution 183 ms against 7.7 ms (docs/benchmarks.md). A run that asks for bf16 there still computes the
right thing, only 20-60x slower; the entry points say so once, with the setting that turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def cpu_bf16_native() -> bool:
    """True when oneDNN has bf16 kernels for this CPU (torch's own check, as `torch.backends.mkldnn` uses it);
    where that probe is missing, whether the CPU has AVX-512 BF16 or AMX tiles."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:  # a torch built without oneDNN
            return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def bf16_matmul_slowdown(n: int = 256, clock: Callable[[], float] = time.perf_counter) -> float:
    """How many times slower a bf16 n x n matmul is than the fp32 one here (best of 3 each; ~0.1 s on a CPU
    without bf16 kernels, milliseconds elsewhere)."""

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(n, n).to(dtype)
        a @ a
        times = []
        for _ in range(3):
            start = clock()
            a @ a
            times.append(clock() - start)
        return min(times)

    return best(torch.bfloat16) / max(best(torch.float32), 1e-9)


def slow_bf16_warning(setting: str, fix: str, device: torch.device | str = "cpu") -> str | None:
    """The warning for `setting` (what asked for bf16, e.g. `trainer.precision=bf16-mixed`) on `device`,
    naming `fix` (the override that runs fp32); None when bf16 is native here or the device is not a CPU."""
    if torch.device(device).type != "cpu" or cpu_bf16_native():
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"{setting}: this CPU has no bfloat16 kernels (torch capability {capability}; no AVX-512 BF16 "
        f"or AMX), so bf16 runs in slow reference code: a bf16 matmul measured "
        f"{bf16_matmul_slowdown():.0f}x slower than fp32 here. The results are still valid; {fix} runs fp32"
    )
