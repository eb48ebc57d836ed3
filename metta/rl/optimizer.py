"""``Optimizer``: Adam (torch) or Muon (heavyball) with gradient clipping and real gradient accumulation.

    optimizer = Optimizer("adam", policy, learning_rate=3e-4, max_grad_norm=0.5)
    for minibatch in experience.iter_minibatches():
        optimizer.step(process_minibatch_update(...), epoch, accumulate_steps=experience.accumulate_minibatches)

``step(loss, epoch, accumulate_steps)`` backpropagates ``loss / accumulate_steps`` into the accumulated
gradients and takes an optimizer step every ``accumulate_steps`` calls (counted by the optimizer itself), so k
calls on k equal parts of a batch give the same update as one call on the whole batch. ``epoch`` is the update
epoch the loss belongs to: an accumulation group never spans two epochs. When ``epoch`` (or
``accumulate_steps``) differs from that of the gradients still pending, the pending group is stepped first,
rescaled to the mean of the losses it holds, and the new loss starts a new group. Gradients are cleared only
after a step (upstream cleared them before every backward, so nothing accumulated). After each step it calls
``policy.clip_weights()`` when the policy has it.

``Optimizer.wrap(torch.optim.SGD(policy.parameters(), lr=0.01), policy)`` gives the same ``step`` to an
optimizer you built yourself; ``train_ppo`` does that for you when handed a plain torch optimizer.

The learning-rate schedule (``TrainerConfig.lr_scheduler``) is applied once per batch, before its updates, by
``apply_lr_schedule(optimizer, trainer_cfg, agent_step)``; ``scheduled_learning_rate`` is the formula, for
loops that measure progress some other way (e.g. by wall-clock time), with ``set_learning_rate``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

OPTIMIZER_TYPES = ("adam", "muon")


class Optimizer:
    def __init__(
        self,
        optimizer_type: str = "adam",
        policy: torch.nn.Module | None = None,
        learning_rate: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.5,
    ):
        if policy is None:
            raise ValueError("policy is required: Optimizer(optimizer_type, policy, learning_rate=...)")
        if optimizer_type not in OPTIMIZER_TYPES:
            raise ValueError(f"optimizer_type={optimizer_type!r} is not supported; use one of {list(OPTIMIZER_TYPES)}")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate={learning_rate!r} must be > 0, e.g. 3e-4")
        params = [p for p in policy.parameters() if p.requires_grad]
        if optimizer_type == "adam":
            # Fused: one kernel for every parameter's update, where torch has one for the device (CUDA, CPU).
            optimizer: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=learning_rate, betas=betas, eps=eps, weight_decay=weight_decay, fused=_fused_adam(params)
            )
        else:
            import heavyball

            # heavyball wraps its kernels in torch.compile by default: 44 s for the first step on a CPU and
            # slower steps after. Eager mode is fast here; set before the first step.
            heavyball.utils.compile_mode = None
            optimizer = heavyball.Muon(params, lr=learning_rate, betas=betas, eps=eps, weight_decay=weight_decay)
        self._bind(optimizer_type, optimizer, policy, max_grad_norm)

    @classmethod
    def from_config(cls, policy: torch.nn.Module, trainer_cfg: Any) -> Optimizer:
        """The optimizer a ``TrainerConfig`` describes: ``trainer_cfg.optimizer`` (type, learning rate, betas, eps,
        weight decay) with ``trainer_cfg.ppo.max_grad_norm`` for clipping."""
        opt = trainer_cfg.optimizer
        return cls(
            opt.type,
            policy,
            learning_rate=opt.learning_rate,
            betas=(opt.beta1, opt.beta2),
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            max_grad_norm=trainer_cfg.ppo.max_grad_norm,
        )

    @classmethod
    def wrap(
        cls, torch_optimizer: torch.optim.Optimizer, policy: torch.nn.Module, max_grad_norm: float = 0.5
    ) -> Optimizer:
        """Give an optimizer you built yourself (any ``torch.optim.Optimizer``) metta's ``step(loss, ...)``.

        Clipping covers the parameters in ``torch_optimizer``'s param groups.
        """
        if not isinstance(torch_optimizer, torch.optim.Optimizer):
            raise TypeError(f"torch_optimizer is a {type(torch_optimizer).__name__}; pass a torch.optim.Optimizer")
        self = cls.__new__(cls)
        self._bind(type(torch_optimizer).__name__.lower(), torch_optimizer, policy, max_grad_norm)
        return self

    def _bind(
        self, optimizer_type: str, optimizer: torch.optim.Optimizer, policy: torch.nn.Module, max_grad_norm: float
    ) -> None:
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={max_grad_norm!r} must be > 0, e.g. 0.5")
        self.policy = policy
        self.optimizer_type = optimizer_type
        self.max_grad_norm = float(max_grad_norm)
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]  # what gets clipped
        self.param_groups = optimizer.param_groups
        self._pending = 0  # backward passes accumulated since the last optimizer step
        self._pending_group: tuple[int, int] = (0, 1)  # (epoch, accumulate_steps) of the pending backward passes
        self.steps = 0  # optimizer steps taken by this object
        self.last_grad_norm: torch.Tensor | float = 0.0
        # When set, each step also keeps the mean, variance and norm of all gradients (before clipping) in
        # last_grad_stats, as tensors (reading them waits for the device): grad_mean_variance_interval's metrics.
        self.record_grad_stats = False
        self.last_grad_stats: dict[str, torch.Tensor] | None = None

    def step(self, loss: torch.Tensor, epoch: int = 0, accumulate_steps: int = 1) -> bool:
        """Accumulate ``loss``'s gradient; every ``accumulate_steps``-th call of one ``epoch``, clip and step.

        A group of accumulated losses belongs to one update epoch: when ``epoch`` or ``accumulate_steps``
        differs from the pending group's, that group is stepped first (its gradients rescaled from
        ``1 / accumulate_steps`` per loss to ``1 / losses held``, so it is the mean of what it holds), and
        ``loss`` starts the next group. Returns True when the call took an optimizer step.
        """
        if accumulate_steps < 1:
            raise ValueError(f"accumulate_steps={accumulate_steps} must be >= 1")
        group = (epoch, accumulate_steps)
        stepped = bool(self._pending) and group != self._pending_group
        if stepped:
            self._step_pending_group_then_start(loss, group)
        else:
            self._pending_group = group
            (loss / accumulate_steps).backward()
            self._pending += 1
        if self._pending < accumulate_steps:
            return stepped
        self._apply_step()
        return True

    def _step_pending_group_then_start(self, loss: torch.Tensor, group: tuple[int, int]) -> None:
        """Step the pending (short) group as the mean of its losses, and start ``group`` with ``loss``.

        ``loss`` is backpropagated before the step, into gradients of its own, because its graph holds the
        parameters the step changes in place."""
        pending = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        (loss / group[1]).backward()
        started = [p.grad for p in self.params]
        for p, grad in zip(self.params, pending):
            p.grad = grad
        grads = [grad for grad in pending if grad is not None]
        if grads:
            torch._foreach_mul_(grads, self._pending_group[1] / self._pending)
        self._apply_step()
        for p, grad in zip(self.params, started):
            p.grad = grad
        self._pending, self._pending_group = 1, group

    def _apply_step(self) -> None:
        """Clip the accumulated gradients, step, clear them and clip the policy's weights."""
        self._pending = 0
        if self.record_grad_stats:
            self.last_grad_stats = gradient_stats(self.params)
        # Kept as a tensor: reading it would make the GPU wait here.
        self.last_grad_norm = clip_gradients(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        module = getattr(self.policy, "module", self.policy)  # DDP wraps the agent in .module
        if hasattr(module, "clip_weights"):
            module.clip_weights()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._pending = 0

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        fused = [group.get("fused") for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state_dict)
        # A checkpoint's groups carry the fused flag of the machine that saved them; the step's implementation
        # is this machine's choice, not part of the state.
        for group, flag in zip(self.optimizer.param_groups, fused):
            if "fused" in group:
                group["fused"] = flag
                if flag:
                    group["foreach"] = None


def _fused_adam(params: list[torch.Tensor]) -> bool | None:
    """True when every parameter is a float tensor on a device with a fused Adam kernel (CUDA, CPU)."""
    if not params:
        return None
    devices = {p.device.type for p in params}
    if len(devices) == 1 and devices <= {"cuda", "cpu"} and all(p.is_floating_point() for p in params):
        return True
    return None


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients so their total L2 norm is at most ``max_norm``; returns the norm before (a tensor).

    ``torch.nn.utils.clip_grad_norm_``'s arithmetic (``coef = min(1, max_norm / (norm + 1e-6))``) in a fixed
    handful of multi-tensor ops on every device; torch's own takes its multi-tensor path only on CUDA and
    dispatches two ops per parameter on a CPU.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_(max=1.0))
    return total


def gradient_stats(params: list[torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """``grad/mean``, ``grad/variance`` and ``grad/norm`` over every element of every gradient (None if none)."""
    grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
    if not grads:
        return None
    flat = torch.cat(grads).float()
    return {"grad/mean": flat.mean(), "grad/variance": flat.var(), "grad/norm": flat.norm()}


SCHEDULE_TYPES = ("linear", "cosine", "exponential")
# The exponential schedule decays to this fraction of the base rate at the end of training.
EXPONENTIAL_FINAL_FRACTION = 0.01


def scheduled_learning_rate(base_lr: float, schedule: Any, progress: float, agent_step: int = 0) -> float:
    """The learning rate at ``progress`` (0 at the start of training, 1 at the end) under ``schedule``
    (an ``LRSchedulerConfig``): ``base_lr`` when it is not enabled; otherwise its ``schedule_type`` (linear and
    cosine fall to 0 at the end, exponential to 1% of ``base_lr``; unset means linear when ``anneal_lr`` is true
    and cosine otherwise, upstream's CosineAnnealingLR), times a linear warm-up over the first
    ``warmup_steps`` agent steps."""
    if not schedule.enabled:
        return base_lr
    kind = schedule.schedule_type or ("linear" if schedule.anneal_lr else "cosine")
    if kind not in SCHEDULE_TYPES:
        raise ValueError(f"lr_scheduler.schedule_type={kind!r} is not supported; use one of {list(SCHEDULE_TYPES)}")
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        factor = 1.0 - progress
    elif kind == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = EXPONENTIAL_FINAL_FRACTION**progress
    if schedule.warmup_steps:
        factor *= min(1.0, (agent_step + 1) / schedule.warmup_steps)
    return base_lr * factor


def apply_lr_schedule(optimizer: Any, trainer_cfg: Any, agent_step: int) -> None:
    """Set ``optimizer``'s learning rate for the next batch, whose rollout began at ``agent_step``, from
    ``trainer_cfg.lr_scheduler`` (base rate ``trainer_cfg.optimizer.learning_rate``, progress
    ``agent_step / trainer_cfg.total_timesteps``). Does nothing when the schedule is not enabled, so a rate
    the caller set stays."""
    schedule = trainer_cfg.lr_scheduler
    if not schedule.enabled:
        return
    progress = agent_step / max(trainer_cfg.total_timesteps, 1)
    set_learning_rate(
        optimizer, scheduled_learning_rate(trainer_cfg.optimizer.learning_rate, schedule, progress, agent_step)
    )


def set_learning_rate(optimizer: Any, learning_rate: float) -> None:
    """Set the rate of every param group of ``optimizer`` (metta's ``Optimizer`` or a torch optimizer)."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
