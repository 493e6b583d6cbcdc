"""Every random number generator a training step can touch: capture, restore, seed.

A checkpoint that leaves out one of these resumes into a different run: dropout masks, shuffles and
augmentations all draw from them. CUDA generators are saved per device when CUDA is in use.
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from typing import Any

import numpy as np
import torch


def _cuda_in_use() -> bool:
    # A process that never touched CUDA has nothing to save (and must not create contexts on every GPU).
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def capture() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's global generators (and CUDA's, per device)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if _cuda_in_use():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore(state: dict[str, Any]) -> None:
    """Put back what :func:`capture` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            warnings.warn(f"the checkpoint holds RNG states for {len(cuda)} CUDA device(s) but CUDA is not "
                          f"available here; CUDA random numbers will differ from the original run",
                          RuntimeWarning, stacklevel=2)
            return
        n = torch.cuda.device_count()
        if n != len(cuda):
            warnings.warn(f"the checkpoint holds RNG states for {len(cuda)} CUDA device(s), this machine has "
                          f"{n}; restoring the first {min(n, len(cuda))}", RuntimeWarning, stacklevel=2)
        for i, s in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(s.cpu(), device=i)


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed every global generator; with ``deterministic``, also ask torch for deterministic kernels.

    Determinism is what makes "resumed == uninterrupted" checkable: on CPU it is bit-exact; on GPU it is
    as exact as the kernels allow (cuDNN autotuning off, deterministic algorithms where they exist).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def deterministic_algorithms(mode: bool) -> None:
    """``torch.use_deterministic_algorithms(mode)``, which also sets the compiler's flag by importing
    torch._inductor (about 2 s per process). When the compiler is not loaded yet, set the same switch
    directly and leave the compiler's flag to its environment variable, read when it loads."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if "torch._inductor.config" in sys.modules or setter is None:
        torch.use_deterministic_algorithms(mode)
        return
    os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1" if mode else "0"
    setter(mode, warn_only=False)
