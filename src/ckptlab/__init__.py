"""ckptlab: pre-train with kept checkpoints, continue pre-training, fine-tune, evaluate and report.

The Python API (`ckptlab.evaluate`, `load_results`, `pretrain`, `cpt`, `finetune`, `sweep`, `report`;
docs/api.md) lives in `ckptlab.api` and is loaded on first use, so `import ckptlab` loads neither
torch nor transformers (nor the API module itself).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

API = ("evaluate", "load_results", "pretrain", "cpt", "finetune", "sweep", "report", "Results")
"""Names exported from `ckptlab.api`."""

__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        import importlib

        # Looked up by name rather than imported: the modules under ckptlab import this package (for
        # `__version__`), so a static import of the API here would make the root depend on every layer.
        return getattr(importlib.import_module("ckptlab.api"), name)
    raise AttributeError(f"module 'ckptlab' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
