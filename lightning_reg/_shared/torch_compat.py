"""What differs between the supported torch releases, decided once at import (no Lightning import).

The supported range and the API that sets each floor are listed in ``docs/versions.md``; each name here
papers over one difference between the floor and the newest releases, so the rest of the package is
written once, against the newest API.
"""

from __future__ import annotations

__all__ = ["DTensor", "fully_shard"]


try:  # DTensor (FSDP2 ``fully_shard`` parameters, tensor parallel) is public from torch 2.5
    from torch.distributed.tensor import DTensor
except ImportError:
    try:  # torch 2.4
        from torch.distributed._tensor import DTensor
    except ImportError:  # torch built without distributed support: no parameter is a DTensor
        DTensor = None  # type: ignore[assignment,misc]

try:  # FSDP2 is public as ``torch.distributed.fsdp.fully_shard`` from torch 2.6
    from torch.distributed.fsdp import fully_shard
except ImportError:
    try:  # torch 2.4 / 2.5 (what Lightning's ModelParallelStrategy uses there)
        from torch.distributed._composable.fsdp import fully_shard
    except ImportError:  # torch built without distributed support
        fully_shard = None  # type: ignore[assignment]
