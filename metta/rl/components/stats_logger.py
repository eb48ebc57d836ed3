"""``StatsLogger``: ``metta.common.stats_logger.StatsLogger``, the one metrics logger.

    logger = StatsLogger(run_dir, total_timesteps, wandb_run=None, console=True, tensorboard=False)
    logger.log(epoch, agent_step, {"overview/sps": 1000.0, "losses/policy_loss": 0.01})
    logger.close()

It writes ``{run_dir}/metrics.jsonl`` always, wandb when a run is given, TensorBoard when asked, and a line per
call on the console.
"""

from metta.common.stats_logger import StatsLogger

__all__ = ["StatsLogger"]
