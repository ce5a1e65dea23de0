"""The allow-lists: algorithms and the RLlib config keys a request may set, with the
bounds of the values that size memory or compute.

They change when RLlib renames a key or rlq offers a new algorithm (the environments a request may
name are :mod:`shared.contracts.environments`); the request schema
(:mod:`shared.contracts.request`) validates against them.
"""

from __future__ import annotations

from typing import Literal, get_args

Algorithm = Literal["IMPALA", "APPO", "PPO", "SAC", "DQN"]
ALGORITHMS: tuple[str, ...] = get_args(
    Algorithm
)  # trainer/config_map.py mirrors it (trainer/ imports no shared/)

# RLlib config keys a request may set: today's names and the seed-era names the trainer maps.
CONFIG_KEYS = frozenset(
    {
        # seed era
        "num_workers",
        "num_envs_per_worker",
        "num_gpus",
        "sample_batch_size",
        "train_batch_size",
        "num_sgd_iter",
        "num_data_loader_buffers",
        "model.dim",
        "model",
        "rollout_fragment_length",
        "num_cpus_per_worker",
        "num_gpus_per_worker",
        "sgd_minibatch_size",
        # today
        "num_env_runners",
        "num_envs_per_env_runner",
        "num_learners",
        "num_gpus_per_learner",
        "num_cpus_per_env_runner",
        "train_batch_size_per_learner",
        "minibatch_size",
        "num_epochs",
        "lr",
        "gamma",
        "entropy_coeff",
        "vf_loss_coeff",
        "grad_clip",
        "lambda",
        "clip_param",
        "vtrace",
        "vtrace_clip_rho_threshold",
        "vtrace_clip_pg_rho_threshold",
        "circular_buffer_num_batches",
        "circular_buffer_iterations_per_batch",
        "broadcast_interval",
        "fcnet_hiddens",
        "conv_filters",
        "framestack",
        "dim",
        "use_kl_loss",
        "kl_coeff",
        "seed",
        # SAC and DQN (off-policy, from a replay buffer)
        "replay_buffer_capacity",
        "num_steps_sampled_before_learning_starts",
        "training_intensity",
        "target_network_update_freq",
        "n_step",
        "tau",
        "actor_lr",
        "critic_lr",
        "alpha_lr",
        "initial_alpha",
        "double_q",
        "dueling",
        "epsilon",
    }
)
MODEL_KEYS = frozenset(
    {
        "dim",
        "fcnet_hiddens",
        "conv_filters",
        "framestack",
        "vf_share_layers",
        "fcnet_activation",
        "conv_activation",
        "use_lstm",
        "lstm_cell_size",
    }
)

# What the config values that size memory or compute may be (docs/guarantees.md, "Field audit"):
# ``key -> (lowest, highest)``, inclusive. The highest values are what the largest allowed node
# (shared/contracts/vm_sizes.py: 96 vCPUs, 880 GiB) could still hold or run: one sample of an Atari batch is
# an 84x84x4 frame, about 113 KB as float32 on the learner, so 2**20 samples are about 118 GB.
CONFIG_BOUNDS: dict[str, tuple[float, float]] = {
    "train_batch_size": (1, 2**20),
    "train_batch_size_per_learner": (1, 2**20),
    "minibatch_size": (1, 2**16),
    "sgd_minibatch_size": (1, 2**16),
    "sample_batch_size": (1, 10_000),  # a fragment is held per env in every EnvRunner
    "rollout_fragment_length": (1, 10_000),
    "num_sgd_iter": (1, 100),  # passes over each batch: compute, not memory
    "num_epochs": (1, 100),
    "num_envs_per_worker": (1, 256),  # emulators in one process
    "num_envs_per_env_runner": (1, 256),
    "num_workers": (0, 1024),
    "num_env_runners": (0, 1024),
    "num_learners": (0, 64),
    "num_gpus": (0, 64),
    "num_gpus_per_learner": (0, 8),
    "num_gpus_per_worker": (0, 8),
    "num_cpus_per_worker": (0, 96),
    "num_cpus_per_env_runner": (0, 96),
    "num_data_loader_buffers": (1, 64),
    "circular_buffer_num_batches": (1, 1024),
    "circular_buffer_iterations_per_batch": (1, 100),
    "broadcast_interval": (1, 10_000),
    "seed": (0, 2**32 - 1),  # what numpy seeds take
    "gamma": (0, 1),
    "lambda": (0, 1),
    "dim": (16, 512),  # the frame's side in pixels: memory grows with its square
    "framestack": (1, 32),
    "lstm_cell_size": (1, 4096),
    # Episodes' steps the replay buffer holds: 2**22 Atari frames are about 475 GB.
    "replay_buffer_capacity": (1, 2**22),
    "num_steps_sampled_before_learning_starts": (0, 10**8),
    "training_intensity": (0.001, 10_000),  # updates per sampled step: compute
    "target_network_update_freq": (0, 10**7),
    "n_step": (1, 100),
    "tau": (0, 1),
    "initial_alpha": (0, 100),
}
MAX_LAYERS = 16  # fcnet_hiddens / conv_filters entries
MAX_LAYER_WIDTH = 8192  # units of one dense layer, channels of one conv layer
MAX_ENVS = 4096  # EnvRunners times envs per EnvRunner: emulators in the whole run
# A request's env runners need a CPU each (num_cpus_per_env_runner, default 1) beside one for the
# learner / driver; past the CPUs of every node it may ask for, Ray would keep them pending forever.
ENV_RUNNER_KEYS = ("num_env_runners", "num_workers")
ENVS_PER_RUNNER_KEYS = ("num_envs_per_env_runner", "num_envs_per_worker")
CPUS_PER_RUNNER_KEYS = ("num_cpus_per_env_runner", "num_cpus_per_worker")


# The config keys whose value is true / false (trainer/config_map.py: boolean()); every other key
# takes numbers, names or lists of numbers, where a JSON boolean is a mistake, not a count.
BOOL_CONFIG_KEYS = frozenset({"vtrace", "use_kl_loss", "double_q", "dueling"})
BOOL_MODEL_KEYS = frozenset({"vf_share_layers", "use_lstm", "framestack"})  # old model.framestack: bool

STOP_KEYS = ("episode_reward_mean", "time_total_s", "timesteps_total", "training_iteration")
