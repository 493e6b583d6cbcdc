"""map_location as torch.load takes it: a device, a string, a dict of locations, or a callable."""

from __future__ import annotations

from typing import Any

import torch

from ckpt.errors import InvalidArgumentError


def check(map_location: Any) -> None:
    if map_location is None or callable(map_location) or isinstance(map_location, (str, torch.device, dict)):
        if isinstance(map_location, dict) and not all(isinstance(k, str) and isinstance(v, (str, torch.device))
                                                      for k, v in map_location.items()):
            raise InvalidArgumentError("a map_location dict maps location strings to devices, e.g. {'cuda:0': 'cpu'}")
        return
    raise InvalidArgumentError(f"map_location must be a device, a string, a dict or a callable (as torch.load "
                               f"takes), not {type(map_location).__name__}")


def apply(tensor: torch.Tensor, saved: str, map_location: Any) -> torch.Tensor:
    """Where a tensor read from storage (on the CPU) goes; ``saved`` is the location it was saved from."""
    if map_location is None:
        return tensor
    if isinstance(map_location, dict):
        target = map_location.get(saved, saved)
    elif callable(map_location):
        out = map_location(tensor, saved)
        return tensor if out is None else out
    else:
        target = map_location
    try:
        device = torch.device(target)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"map_location {target!r} is not a device: {exc}") from None
    return tensor if device.type == "cpu" else tensor.to(device, non_blocking=True)
