"""Seed 004's blocks in one rank of a torchrun job (tests/seeds/test_interface_document.py launches two).

    python -m torch.distributed.run --nproc_per_node=2 tests/seeds/interface_document_distributed.py OUT_DIR

Each block is as the seed writes it, sizes shrunk, undefined names filled in; every block has its own
function, so that each one's ``device`` is the one it sets. Each rank writes ``OUT_DIR/rank{rank}.json`` with
what the test checks: world size, steps, losses, a checksum of the weights before and after training and
after loading the checkpoint.
"""

from __future__ import annotations

import json
import os
import sys

import torch

OUT_DIR = sys.argv[1]


def quick_start():
    import torch
    from metta.interface.agent import Agent
    from metta.interface.environment import Environment
    from metta.interface.directories import setup_run_directories, setup_device_and_distributed
    from metta.interface.training import Optimizer, save_checkpoint, load_checkpoint
    from metta.rl.policy_management import wrap_agent_distributed
    from metta.agent.policy_store import PolicyStore
    from metta.rl.experience import Experience
    from metta.rl.trainer_config import TrainerConfig

    # Setup
    dirs = setup_run_directories()
    device = setup_device_and_distributed("cuda" if torch.cuda.is_available() else "cpu")[0]

    # Create environment and agent
    env = Environment(curriculum_path="/env/mettagrid/curriculum/navigation/bucketed")
    agent = Agent(env, device=str(device))

    # Training loop (see run.py for complete example)
    return dirs, device, env, agent


def distributed_training(agent):
    from metta.interface import setup_device_and_distributed, setup_distributed_vars  # filled in: the seed's imports

    # Setup
    device = setup_device_and_distributed("cuda")
    is_master, world_size, rank = setup_distributed_vars()

    # Wrap agent for distributed
    from metta.rl.policy_management import wrap_agent_distributed

    agent = wrap_agent_distributed(agent, device)

    # Run with torchrun
    # torchrun --nproc_per_node=4 run.py
    return agent, is_master, world_size, rank


def configuration():
    from metta.rl.trainer_config import TrainerConfig, PPOConfig

    trainer_config = TrainerConfig(
        total_timesteps=512,
        batch_size=256,
        minibatch_size=128,
        bptt_horizon=16,
        ppo=PPOConfig(gamma=0.99, gae_lambda=0.95),
    )
    return trainer_config


def optimizer_block(agent):
    from metta.interface.training import Optimizer

    optimizer = Optimizer(
        optimizer_type="adam",  # or "muon"
        policy=agent,
        learning_rate=3e-4,
    )
    return optimizer


def training_loop_functions(agent, env, device, optimizer, trainer_config):
    from metta.common.profiling.stopwatch import Stopwatch
    from metta.rl.experience import Experience
    from metta.rl.losses import Losses
    from metta.rl.rollout import perform_rollout_step
    from metta.stats import accumulate_rollout_stats
    from metta.rl.advantage import compute_advantage
    from metta.rl.losses import process_minibatch_update

    # Filled in: the buffer, the timer, the stats, the losses and the counters the seed's block uses.
    experience = Experience(
        total_agents=env.num_agents,
        batch_size=trainer_config.batch_size,
        bptt_horizon=trainer_config.bptt_horizon,
        minibatch_size=trainer_config.minibatch_size,
        obs_space=env.single_observation_space,
        atn_space=env.single_action_space,
        device=device,
        hidden_size=512,
        num_lstm_layers=1,
    )
    timer, stats, losses, agent_step, epoch = Stopwatch(), {}, Losses(), 0, 0
    ppo, vtrace = trainer_config.ppo, trainer_config.vtrace
    while agent_step < trainer_config.total_timesteps:
        # Rollout
        while not experience.ready_for_training:
            num_steps, info = perform_rollout_step(agent, env, experience, device, timer)
            agent_step += num_steps

        # Process stats
        accumulate_rollout_stats(info, stats)

        # Train
        advantages = compute_advantage(
            experience.values,
            experience.rewards,
            experience.dones,
            torch.ones_like(experience.values),
            torch.zeros_like(experience.values),
            ppo.gamma,
            ppo.gae_lambda,
            vtrace.vtrace_rho_clip,
            vtrace.vtrace_c_clip,
            device,
        )
        for minibatch in experience.iter_minibatches():
            loss = process_minibatch_update(
                agent, experience, minibatch, advantages, trainer_config, None, agent_step, losses, device
            )
            optimizer.step(loss, epoch)
        epoch += 1
    return agent_step, epoch, losses.stats()


def checkpointing(agent, optimizer, dirs, device, epoch, agent_step):
    from metta.agent.policy_store import PolicyStore
    from metta.common.distributed import barrier
    from metta.interface.training import load_checkpoint, save_checkpoint
    from metta.rl.policy_management import unwrap_agent

    checkpoint_dir = dirs.checkpoint_dir
    policy_store = PolicyStore(
        {"device": str(device), "trainer": {"checkpoint": {"checkpoint_dir": checkpoint_dir}}}, wandb_run=None
    )
    # Save
    saved_policy = save_checkpoint(
        epoch=epoch,
        agent_step=agent_step,
        agent=agent,
        optimizer=optimizer,
        policy_store=policy_store,
        checkpoint_path=checkpoint_dir,
        checkpoint_interval=10,
        force_save=True,  # filled in: epoch 2 is not a multiple of the seed's interval
    )
    barrier()  # filled in: rank 0 wrote it; every rank reads it next

    with torch.no_grad():  # so that the load has something to restore
        for p in unwrap_agent(agent).parameters():
            p.zero_()
    # Load
    agent_step, epoch, policy_path = load_checkpoint(
        checkpoint_dir=checkpoint_dir,
        agent=agent,
        optimizer=optimizer,
        policy_store=policy_store,
    )
    return saved_policy is not None, agent_step, epoch, policy_path


def checksum(agent) -> float:
    return float(sum(p.detach().double().sum() for p in agent.parameters()))


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(int(os.environ["RANK"]))  # each rank builds other initial weights: DDP must make them agree
    dirs, device, env, agent = quick_start()
    initial = checksum(agent)
    agent, is_master, world_size, rank = distributed_training(agent)
    synced = checksum(agent)
    trainer_config = configuration()
    optimizer = optimizer_block(agent)
    agent_step, epoch, losses = training_loop_functions(agent, env, device, optimizer, trainer_config)
    trained = checksum(agent)
    wrote, loaded_step, loaded_epoch, policy_path = checkpointing(agent, optimizer, dirs, device, epoch, agent_step)
    result = {
        "rank": rank,
        "world_size": world_size,
        "is_master": is_master,
        "device": str(device),
        "wrapped": type(agent).__name__,
        "initial": initial,
        "synced": synced,
        "trained": trained,
        "after_load": checksum(agent),
        "agent_step": agent_step,
        "epoch": epoch,
        "losses": losses,
        "wrote": wrote,
        "loaded_step": loaded_step,
        "loaded_epoch": loaded_epoch,
        "policy_path": policy_path,
        "run_dir": dirs.run_dir,
    }
    with open(os.path.join(OUT_DIR, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    env.close()
    from metta.interface.training import cleanup_distributed

    cleanup_distributed()


if __name__ == "__main__":
    main()
