#!/usr/bin/env python
"""Training from a structured config (seed 001): a preset, a few overrides, a YAML round trip, then training.

    python examples/structured_config_training.py                         # the cpu_smoke preset: seconds
    python examples/structured_config_training.py --preset small_fast --total-steps 200000
    python examples/structured_config_training.py --config train_dir/structured_example/training_config.yaml

The run directory gets ``training_config.yaml`` (the complete config: edit it and pass it back with --config, or
give it to ``python run.py --config``), then what every run writes: ``config.yaml``, ``metrics.jsonl``,
``checkpoints/``, the run report. Running again with the same run directory resumes.
"""

from __future__ import annotations

import argparse
import os

from metta.agent.agent_config import AgentConfig
from metta.common.run_dirs import resolve_data_dir, resolve_run_name
from metta.rl.trainer import Trainer
from metta.train.train_config import PRESETS, TrainingConfig


def build_config(args: argparse.Namespace) -> TrainingConfig:
    """A preset with a few fields changed; every assignment is validated on the spot."""
    if args.config:
        return TrainingConfig.from_yaml(args.config)
    config = PRESETS[args.preset]()
    config.experiment_name = "structured_example"
    config.agent = AgentConfig(name="simple_cnn", hidden_size=64)  # the fast CNN with a 64-wide LSTM
    config.trainer.ppo.ent_coef = 0.02
    config.trainer.optimizer.learning_rate = 5e-4
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu_smoke")
    parser.add_argument("--config", default=None, help="a TrainingConfig YAML file (instead of --preset)")
    parser.add_argument("--total-steps", type=int, default=None, help="override trainer.total_timesteps")
    parser.add_argument("--run-dir", default=None, help="the run directory (default {data_dir}/{experiment_name})")
    args = parser.parse_args()

    config = build_config(args)
    if args.total_steps is not None:
        config.trainer.total_timesteps = args.total_steps
    if args.run_dir is not None:  # the run directory is {data_dir}/{experiment_name}
        config.data_dir, config.experiment_name = os.path.split(os.path.abspath(args.run_dir))

    # Save the complete config as YAML and train from what was read back: the file alone reproduces the run.
    config.experiment_name = resolve_run_name(config.experiment_name)  # a timestamp when the file names none
    yaml_path = os.path.join(resolve_data_dir(config.data_dir), config.experiment_name, "training_config.yaml")
    config.to_yaml(yaml_path)
    loaded = TrainingConfig.from_yaml(yaml_path)
    assert loaded == config, "the YAML round trip changed the config"
    print(f"config saved to {yaml_path}")

    # The trainer run.py uses: envs, agent, optimizer, buffer, checkpoints, metrics; resumed when it can be.
    with Trainer(loaded, console=True) as trainer:
        trainer.run()


if __name__ == "__main__":
    main()
