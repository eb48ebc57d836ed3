"""When a periodic task runs: the one interval rule of every loop in metta.

The epoch counter advances by ``update_epochs`` per batch (fewer when ``target_kl`` stops an update early), so
"``epoch % interval == 0``" would fire at half rate, or never, whenever the step does not land on a multiple.
Instead a task fires when the counter *crosses* a multiple of its interval:

    before = epoch
    epoch = train_ppo(...)
    if crossed(checkpoint_interval, before, epoch):
        save_checkpoint(...)

run.py, ``functional_training_loop`` and the components' loop use it for checkpoints, evaluations, replays,
wandb uploads, gradient statistics, weight analysis, L2-init refreshes and profiler traces.
"""

from __future__ import annotations


def crossed(interval: int | None, epoch_before: int, epoch_after: int) -> bool:
    """True when a multiple of ``interval`` lies in ``(epoch_before, epoch_after]``; never for an interval of 0
    or None (the task is off)."""
    if not interval:
        return False
    if interval < 0:
        raise ValueError(f"interval={interval} must be >= 0 (epochs; 0 turns the task off)")
    return epoch_after // interval > epoch_before // interval
