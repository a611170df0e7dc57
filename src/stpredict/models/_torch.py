"""Training helpers shared by the torch predictors: seeding, early stopping, state (de)serialisation."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import get_logger
from .._settings import settings
from ._device import autocast, resolve_device

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import torch

__all__ = [
    "BUDGET_NAMES",
    "TrainLog",
    "check_budget",
    "fit_module",
    "load_module_state",
    "module_state",
    "resolve_budget",
    "seed_everything",
    "split_validation",
]

logger = get_logger(__name__)


BUDGET_NAMES = ("auto", "cpu", "gpu")


def check_budget(budget: str) -> str:
    """``budget`` if it names a training budget, else a :class:`ValueError` naming the choices."""
    if budget not in BUDGET_NAMES:
        msg = f"budget must be one of {BUDGET_NAMES} ('auto': the GPU budget on CUDA, the CPU budget otherwise), got {budget!r}."
        raise ValueError(msg)
    return budget


def resolve_budget(config: dict[str, Any], budgets: dict[str, dict[str, Any]], device: Any) -> dict[str, Any]:
    """The training settings of ``config["budget"]`` on ``device``, with the predictor's explicit settings winning.

    ``"auto"`` takes ``budgets["gpu"]`` on a CUDA device and ``budgets["cpu"]`` otherwise. Each key of the
    chosen budget is replaced by ``config[key]`` where that is not ``None``. The result names the budget
    (``"budget"``) and is what the predictor records in :attr:`~stpredict.models.Predictor.training`.
    """
    b = check_budget(config["budget"])
    name = ("gpu" if getattr(device, "type", str(device)) == "cuda" else "cpu") if b == "auto" else b
    out: dict[str, Any] = {"budget": name, **budgets[name]}
    out.update({k: config[k] for k in budgets[name] if config.get(k) is not None})
    return out


def seed_everything(seed: int | None) -> int:
    """Seed torch and numpy; ``None`` draws a seed (returned so it can be recorded)."""
    import torch

    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0] % (2**31))
    torch.manual_seed(seed)
    return int(seed)


def split_validation(
    n: int, fraction: float, seed: int | None, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` indices; with ``groups`` whole groups (e.g. spatial blocks or slides) go to validation."""
    rng = np.random.default_rng(seed)
    if n < 10 or fraction <= 0:
        return np.arange(n), np.arange(0)
    if groups is not None and len(np.unique(groups)) >= 4:
        ids = rng.permutation(np.unique(groups))
        k = max(1, round(fraction * len(ids)))
        val = np.flatnonzero(np.isin(groups, ids[:k]))
    else:
        val = rng.permutation(n)[: max(1, round(fraction * n))]
    train = np.setdiff1d(np.arange(n), val)
    return train, np.sort(val)


@dataclass
class TrainLog:
    """What happened during training (recorded with the predictor)."""

    epochs: int = 0
    best_epoch: int = 0
    best_val: float = math.inf
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "best_val": None if not math.isfinite(self.best_val) else round(self.best_val, 6),
            "seconds": round(self.seconds, 3),
            "stopped_early": self.stopped_early,
            "final_train_loss": round(self.train_loss[-1], 6) if self.train_loss else None,
        }


def fit_module(
    module: torch.nn.Module,
    train_batches: Callable[[np.random.Generator], Iterable[tuple[Any, ...]]],
    loss_fn: Callable[..., torch.Tensor],
    *,
    val_batches: Callable[[], Iterable[tuple[Any, ...]]] | None = None,
    max_epochs: int = 200,
    patience: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    device: Any = None,
    seed: int = 0,
    progress: bool | None = None,
    desc: str = "train",
    time_budget_s: float | None = None,
) -> TrainLog:
    """Train with AdamW, early stopping on a validation loss, and restore the best weights.

    ``train_batches(rng)`` yields tuples passed as ``loss_fn(module, *batch)``; ``val_batches()`` likewise,
    without gradients. Runs under autocast on CUDA.
    """
    import torch
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    module.to(dev)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    log = TrainLog()
    best_state = copy.deepcopy(module.state_dict())
    bad = 0
    t0 = time.perf_counter()
    show = settings.progress if progress is None else progress
    bar = tqdm(range(max_epochs), disable=not show, desc=desc, unit="epoch", leave=False)
    for epoch in bar:
        module.train()
        total, count = 0.0, 0
        for batch in train_batches(rng):
            opt.zero_grad(set_to_none=True)
            with autocast(dev):
                loss = loss_fn(module, *batch)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            count += 1
        log.train_loss.append(total / max(count, 1))
        log.epochs = epoch + 1
        if val_batches is not None:
            module.eval()
            with torch.no_grad():
                vals = []
                for batch in val_batches():
                    with autocast(dev):
                        vals.append(float(loss_fn(module, *batch)))
            v = float(np.mean(vals)) if vals else log.train_loss[-1]
        else:
            v = log.train_loss[-1]
        log.val_loss.append(v)
        if v < log.best_val - 1e-6:
            log.best_val, log.best_epoch, bad = v, epoch + 1, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            bad += 1
        bar.set_postfix(loss=f"{log.train_loss[-1]:.4f}", val=f"{v:.4f}")
        if bad >= patience:
            log.stopped_early = True
            break
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            logger.info("%s: time budget of %.0f s reached after %d epochs.", desc, time_budget_s, epoch + 1)
            break
    bar.close()
    module.load_state_dict(best_state)
    module.eval()
    log.seconds = time.perf_counter() - t0
    return log


def module_state(module: torch.nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """A module's state dict as numpy arrays under ``prefix``."""
    return {
        f"{prefix}{k}": v.detach().float().cpu().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
        for k, v in module.state_dict().items()
    }


def load_module_state(module: torch.nn.Module, state: dict[str, np.ndarray], prefix: str) -> None:
    """Load numpy arrays saved by :func:`module_state` (strictly)."""
    import torch

    sd = {k[len(prefix) :]: torch.from_numpy(np.asarray(v).copy()) for k, v in state.items() if k.startswith(prefix)}
    module.load_state_dict(sd, strict=True)
