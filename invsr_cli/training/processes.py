"""The processes of one training run, through Hugging Face accelerate: one process by default, N under
``accelerate launch --num_processes N -m invsr_cli train ...`` (or ``torchrun``); the same code path either way.

Every process holds the whole training state (predictor, EMA, optimisers, the pair pool, the random generator) and
keeps it identical to the others': each draws the same random numbers, makes its own slice of the global batch,
and the gradients are averaged across processes (:meth:`Processes.mean_grads`, an all-reduce through accelerate's
``reduce``) before every optimiser step. Only the main process writes the run folder. So a checkpoint does not
depend on the process count, and a run resumes on a different one (when ``--batch`` still splits over it).

The device is accelerate's (``cuda:LOCAL_RANK`` when CUDA is there, else the CPU; ``device="cpu"`` forces the CPU,
with the gloo backend between CPU processes); the precision is resolved here (:func:`resolve_precision`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from invsr_cli.base.errors import ConfigError

__all__ = ["Processes", "split_batch", "resolve_precision", "DEVICES", "DTYPES"]

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "fp32", "bf16", "fp16")
_BUCKET = 1 << 24  # gradient elements per all-reduce (64 MiB of float32): bounds the extra memory of a flat copy


def split_batch(batch: int, microbatch: int, processes: int) -> tuple[int, int]:
    """``(micro-batch size, micro-batches per process)`` for the global ``batch`` over ``processes``:
    ``batch = processes * count * micro``; ``microbatch`` 0 means one micro-batch per process."""
    if batch <= 0 or microbatch < 0:
        raise ConfigError(f"--batch must be positive and --microbatch 0 or positive; got {batch} and {microbatch}")
    if batch % processes:
        raise ConfigError(f"--batch {batch} does not split over {processes} processes: give a multiple of "
                          f"{processes} (the global batch is shared out, each process takes batch / processes)")
    per = batch // processes
    micro = microbatch or per
    if per % micro:
        raise ConfigError(f"--batch {batch} over {processes} process(es) is {per} per process, which is not a "
                          f"multiple of --microbatch {micro}")
    return micro, per // micro


def resolve_precision(dtype: str, device: torch.device) -> str:
    """fp32 / bf16 / fp16 for ``dtype`` on ``device``: ``auto`` is fp16 on CUDA (autocast with a GradScaler, the
    authors' setting) and fp32 on the CPU; fp16 on the CPU is refused (torch has no GradScaler there), as is bf16
    on a GPU without it. ``accelerate launch --mixed_precision fp16|bf16`` stands for ``auto``'s choice."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if dtype == "auto":
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        if launched in ("fp16", "bf16"):
            dtype = launched
        else:
            dtype = "fp16" if device.type == "cuda" else "fp32"
    if dtype == "fp16" and device.type != "cuda":
        raise ConfigError(f"--dtype fp16 needs a CUDA device (fp16 autocast with a GradScaler); this run is on the "
                          f"{device.type.upper()}: use --dtype bf16 (autocast) or fp32")
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use --dtype fp16")
    return dtype


class Processes:
    """This process's place in the run: ``rank`` of ``world``, its ``device``, and the collectives the loop needs.
    With one process every collective is the identity (no process group)."""

    def __init__(self, device: str = "auto") -> None:
        from accelerate import PartialState

        if device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}; got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is visible (use --device cpu or auto)")
        self.state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
        self.rank = int(self.state.process_index)
        self.world = int(self.state.num_processes)
        self.is_main = bool(self.state.is_main_process)
        self.device = torch.device(self.state.device)

    # -- collectives --------------------------------------------------------------------------------------------

    def _reduce(self, t: torch.Tensor, how: str) -> torch.Tensor:
        from accelerate.utils import reduce

        return reduce(t.to(self.device), reduction=how)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the processes (on the CPU)."""
        return t if self.world == 1 else self._reduce(t, "sum").cpu()

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on one (SIGTERM reaches them at different moments)."""
        if self.world == 1:
            return flag
        return bool(self.sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's ``t`` concatenated along dim 0 in rank order (on the CPU)."""
        if self.world == 1:
            return t
        from accelerate.utils import gather

        return gather(t.to(self.device).contiguous()).cpu()

    @torch.no_grad()
    def mean_grads(self, module: nn.Module) -> None:
        """Average the gradients of ``module``'s trainable parameters over the processes, in place (flat buckets;
        a parameter without a gradient here counts as zero, so every process reduces the same layout)."""
        if self.world == 1:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        start = 0
        while start < len(params):
            end, size = start, 0
            while end < len(params) and (size == 0 or size + params[end].numel() <= _BUCKET):
                size += params[end].numel()
                end += 1
            chunk = params[start:end]
            flat = self._reduce(torch.cat([p.grad.reshape(-1) for p in chunk]), "mean")
            offset = 0
            for p in chunk:
                n = p.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n
            start = end

    def wait(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def describe(self) -> dict[str, Any]:
        return {"processes": self.world, "device": str(self.device)}
