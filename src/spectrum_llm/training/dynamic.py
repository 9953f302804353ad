"""Dynamic selection (``--schedule dynamic``): every ``--switch-every`` steps, draw which modules train.

The static selection sets the budget: each module type trains as many modules at a time as the selection keeps
of it (``--top-percent``), plus its extras (embeddings, head). Every K steps a new set is drawn from all of that
type's scored modules, weighted by their scores (the scan's or `spectrum score`'s) or uniformly, with a
generator seeded by ``--seed`` and the draw's number, so the sequence of draws is fixed by the seed.

Memory follows the active set: the optimizer lists every module that may train (so its groups never change),
but Adam keeps state only for parameters that get a gradient, and on each switch the state of the modules that
stop training is dropped and their ``requires_grad`` cleared; gradients exist only for the active set. The
weights of every module that may train are fp32 master copies for the whole run (when the model is in bf16/fp16),
so that an update is never rounded away when its module stops training.

The active set and the number of draws are saved with each checkpoint (``trainer_state.json``, as an exportable
callback state), so ``--resume`` continues with the same modules and the same next draws. One process only:
DDP, FSDP and DeepSpeed assume the trainable parameters never change, so they are refused before training.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .. import distributed
from ..errors import SpectrumError

if TYPE_CHECKING:
    import torch

    from ..results import ModuleScore
    from .config import TrainConfig
    from .methods import Prepared
    from .run import Job

LOG = logging.getLogger(__name__)

SCHEDULES = ("static", "dynamic")
WEIGHTS = ("score", "uniform")


def check_config(cfg: TrainConfig) -> None:
    """The schedule settings, checked with the others before anything loads."""
    if cfg.schedule not in SCHEDULES:
        raise SpectrumError(f"Unknown --schedule {cfg.schedule!r}. Use one of: {', '.join(SCHEDULES)}.")
    if cfg.schedule_weights not in WEIGHTS:
        raise SpectrumError(f"Unknown --schedule-weights {cfg.schedule_weights!r}. Use one of: {', '.join(WEIGHTS)}.")
    if cfg.switch_every < 1:
        raise SpectrumError(f"--switch-every must be at least 1 step, got {cfg.switch_every}.")
    if cfg.schedule == "static":
        return
    if cfg.method != "spectrum":
        raise SpectrumError(
            f"--schedule dynamic switches the modules a Spectrum selection trains; --method {cfg.method} has no "
            "selection to switch. Use --method spectrum or drop --schedule dynamic."
        )
    if cfg.selection:
        raise SpectrumError(
            "--schedule dynamic draws modules from a scan's scores, which a selection file does not list: pass "
            "--top-percent (and --scan FILE, a scan or `spectrum score` file) instead of --selection."
        )
    if cfg.fsdp or cfg.deepspeed:
        raise SpectrumError(
            "--schedule dynamic changes which parameters train during the run, which FSDP and DeepSpeed do not "
            "allow: run it without --fsdp/--deepspeed, in one process."
        )
    _one_process(int(os.environ.get("WORLD_SIZE", "1")))


def _one_process(world_size: int) -> None:
    if world_size > 1:
        raise SpectrumError(
            f"--schedule dynamic runs in one process; this run has {world_size} (torchrun/accelerate), where DDP "
            "assumes the trainable parameters never change. Run it in one process or use --schedule static."
        )


class DynamicSchedule(TrainerCallback, ExportableState):
    """Draws and switches the active modules every ``every`` steps; see the module's docstring."""

    def __init__(
        self,
        model: Any,
        types: dict[str, list[ModuleScore]],
        counts: dict[str, int],
        extras: list[str],
        every: int,
        weights: str = "score",
        seed: int = 42,
    ) -> None:
        self.model, self.types, self.counts, self.extras = model, types, counts, extras
        self.every, self.weights, self.seed = every, weights, seed
        self.active: list[str] = []
        self.draws = 0  # draws made so far; the next one uses generator seed (seed, draws)
        self.drawn_at = -1  # the global step of the last draw
        self.pool = self._pool_params()

    def _pool_params(self) -> list[torch.nn.Parameter]:
        """Every parameter that may train (the extras and every candidate module), in the model's order."""
        from ..freezing import freeze

        freeze(self.model, self._selection(m.name for ms in self.types.values() for m in ms), input_require_grads=False)
        return [p for p in self.model.parameters() if p.requires_grad]

    def _selection(self, names: Any) -> Any:
        from ..axolotl import module_pattern
        from ..selection_file import Selection

        by_name = {m.name: m for ms in self.types.values() for m in ms}
        return Selection.from_patterns(
            [*self.extras, *(module_pattern(by_name[n]) for n in names)], "the dynamic schedule's draw"
        )

    def draw(self) -> list[str]:
        """The next active set: per type, ``counts[type]`` modules drawn without replacement."""
        import torch

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.draws)
        chosen: list[str] = []
        for t, ms in self.types.items():
            k = self.counts.get(t, 0)
            if k <= 0:
                continue
            w = torch.ones(len(ms), dtype=torch.float64)
            if self.weights == "score":
                s = torch.tensor([float(m.snr) if m.snr is not None else 0.0 for m in ms], dtype=torch.float64)
                s = torch.nan_to_num(s, nan=0.0, posinf=0.0).clamp_min(0.0)
                if float(s.max()) > 0:
                    w = s.clamp_min(float(s.max()) * 1e-6)  # every module stays drawable
            idx = torch.multinomial(w, k, replacement=False, generator=gen).tolist()
            chosen += [ms[i].name for i in sorted(idx)]
        self.draws += 1
        return chosen

    def apply(self, names: list[str], optimizer: Any = None) -> int:
        """Make exactly ``names`` (and the extras) trainable; drop the optimizer state and gradients of the
        parameters that stop training. Returns the parameters now trainable."""
        from ..freezing import freeze

        before = {id(p) for p in self.pool if p.requires_grad}
        summary = freeze(self.model, self._selection(names), input_require_grads=False)
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        for p in self.pool:
            if id(p) in before and not p.requires_grad:
                p.grad = None
                if inner is not None:
                    inner.state.pop(p, None)
        self.active = list(names)
        return summary.trainable_params

    def on_step_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every or state.global_step == self.drawn_at:
            return
        trainable = self.apply(self.draw(), optimizer)
        self.drawn_at = state.global_step
        LOG.debug("step %d: draw %d, %s trainable parameters", state.global_step, self.draws, f"{trainable:,}")

    def state(self) -> dict[str, Any]:
        return {
            "args": {"every": self.every, "weights": self.weights, "seed": self.seed},
            "attributes": {"active": self.active, "draws": self.draws, "drawn_at": self.drawn_at},
        }

    def restore(self, checkpoint: str | Path) -> bool:
        """Take the active set and draw count saved in ``checkpoint``; False if it holds none (a static run)."""
        path = Path(checkpoint) / "trainer_state.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8")).get("stateful_callbacks", {}).get(type(self).__name__)
        except (OSError, json.JSONDecodeError):
            return False
        if isinstance(saved, list):
            saved = saved[-1] if saved else None
        if not saved:
            return False
        attrs = saved["attributes"]
        known = {m.name for ms in self.types.values() for m in ms}
        if not set(attrs["active"]) <= known:
            raise SpectrumError(
                f"{checkpoint} trained modules this run's scores do not list: resume with the same --scan and "
                "--top-percent as the interrupted run."
            )
        self.apply(list(attrs["active"]))
        self.draws, self.drawn_at = int(attrs["draws"]), int(attrs["drawn_at"])
        return True


def attach(trainer: Any, job: Job, prepared: Prepared) -> DynamicSchedule:
    """Set up the dynamic schedule on a Trainer before it trains: the pool and budget from the run's scores and
    selection, fp32 master copies of the pool, the first (or the resumed) active set, and an optimizer that can
    hold every module of the pool (state appears only for the active ones)."""
    from ..rules import candidates
    from .methods import resolve_scan

    _one_process(trainer.args.world_size)
    sel = prepared.selection
    assert sel is not None  # spectrum always trains from a selection
    scan = resolve_scan(job.cfg, job.source)
    types: dict[str, list[ModuleScore]] = {}
    for m in candidates(scan):
        if m.type in sel.types:
            types.setdefault(m.type, []).append(m)
    counts = {t: ts.kept for t, ts in sel.types.items()}
    schedule = DynamicSchedule(
        prepared.model, types, counts, list(sel.extras), job.cfg.switch_every, job.cfg.schedule_weights, job.cfg.seed
    )
    if job.precision != "fp32":
        from .methods import upcast_trainable

        upcast_trainable(prepared.model)  # the whole pool: updates must survive a module's pause
    if not (job.resumed and schedule.restore(job.resume_from or "")):
        schedule.apply(schedule.draw())
        schedule.drawn_at = 0
    _optimizer_holds_pool(trainer, schedule.pool)
    trainer.add_callback(schedule)
    if distributed.is_main():
        LOG.info(
            "dynamic schedule: every %d steps, %d of %d modules drawn (%s), optimizer state for the active ones only",
            job.cfg.switch_every,
            sum(counts.values()),
            sum(len(ms) for ms in types.values()),
            "weighted by " + scan.estimator + " scores" if job.cfg.schedule_weights == "score" else "uniformly",
        )
    return schedule


def _optimizer_holds_pool(trainer: Any, pool: list[torch.nn.Parameter]) -> None:
    """The Trainer's optimizer lists every parameter of the pool (marked trainable while it is built), so a switch
    never changes its groups and a resumed run's saved state lines up with them."""
    build = trainer.create_optimizer

    def create_optimizer(model: Any = None) -> Any:
        was = [p.requires_grad for p in pool]
        for p in pool:
            p.requires_grad_(True)
        try:
            return build(model)
        finally:
            for p, on in zip(pool, was):
                p.requires_grad_(on)

    trainer.create_optimizer = create_optimizer
