"""Tuned starting configurations per workload; ``--config`` overrides any of them.

All names are today's RLlib (Ray 2.60, new API stack) names as accepted by
``trainer.config_map.SETTINGS``. ``num_env_runners`` is left out where the seed rule
(all CPUs Ray sees minus one) should decide it at run time.
"""

from __future__ import annotations

from typing import Any

# --- CartPole (classic control): aim = mean return 450 as fast as possible on 2 cores. ---
# PPO: close to the rl-zoo CartPole hyper-parameters (gamma 0.98, GAE lambda 0.8, lr decaying),
# but 1024 steps per iteration in minibatches of 512, 10 epochs: 20 gradient updates per 1024
# sampled steps, a quarter of rl-zoo's rate (20 per 256), at twice its lr. RLlib's cost is per
# minibatch update and per vectorised step, not per row: in py-spy the Learner's updates were
# three fifths of an iteration and the sampling loop two fifths, so fewer, larger updates and 64
# envs x 16 steps (rl-zoo: 8 x 32) buy more steps per second than the extra steps to 450 cost.
# Ten seeds on 2 vCPUs: 8.0 s median to 450 (87k steps) against 11.5 s (78k) for the earlier
# 512-step preset at lr 1e-3; the same layout at lr 1e-3 took 135k steps (docs/trainer.md,
# "CartPole, PPO, 1024 steps per iteration"). Sampling happens in the driver process (no EnvRunner
# actors: the env is far cheaper than a round trip).
CARTPOLE_PPO: dict[str, Any] = {
    "num_env_runners": 0,
    "num_envs_per_env_runner": 64,
    "rollout_fragment_length": 16,
    "train_batch_size_per_learner": 1024,
    "minibatch_size": 512,
    "num_epochs": 10,
    # rl-zoo decays lr linearly to 0 over 1e5 steps; keep a floor so a slow run still learns.
    "lr": [[0, 0.002], [150000, 0.0001]],
    "gamma": 0.98,
    "lambda_": 0.8,
    "clip_param": 0.2,
    # RLlib clips the squared value error at vf_clip_param (default 10), which stalls the
    # value function for returns of up to ~50 (gamma 0.98): effectively no clipping here.
    "vf_clip_param": 10000.0,
    "entropy_coeff": 0.0,
    "vf_loss_coeff": 0.5,
    "use_kl_loss": False,
    # SB3's max_grad_norm: clipping the global gradient norm at 0.5 took the median of 3 seeds
    # from 98k to 76k steps to 450; RLlib's PPO does not clip by default.
    "grad_clip": 0.5,
    "fcnet_hiddens": [64, 64],
    "vf_share_layers": False,
    "min_time_s_per_iteration": 0,
    "min_sample_timesteps_per_iteration": 0,
}

# IMPALA: sampling (8 vectorised envs) and learning both in the driver process, small batches,
# two V-trace passes per batch. No actor at all: each EnvRunner or Learner actor is one more
# process importing torch and RLlib (4-5 s each, started one after the other) before the first
# iteration, and on CartPole a round trip costs more than the env; the same 5 seeds reached 450
# as reliably as with one EnvRunner and a remote Learner. See docs/trainer.md ("CartPole") for
# the per-seed curves behind each value.
CARTPOLE_IMPALA: dict[str, Any] = {
    "num_env_runners": 0,
    "num_learners": 0,
    "num_envs_per_env_runner": 8,
    "rollout_fragment_length": 32,
    "train_batch_size_per_learner": 256,
    # Two passes (V-trace corrects the second); four at lr 1e-3 collapsed a run to a
    # deterministic policy (entropy 0, return 9) after it had reached 340.
    "num_epochs": 2,
    "minibatch_size": 256,
    # IMPALA has no trust region: a constant 1e-3 reached ~400 and fell back again and again.
    # Decay to a tenth by 300k steps; most seeds are past 400 by then.
    "lr": [[0, 0.0005], [300000, 0.00005]],
    # A little entropy keeps the policy from collapsing to one action between improvements.
    "entropy_coeff": 0.005,
    "vf_loss_coeff": 0.5,
    "grad_clip": 40.0,
    "fcnet_hiddens": [64, 64],
    # A separate value network: V-trace targets of up to ~100 (gamma 0.99) trained through a
    # shared trunk swamped the policy's features; separate, 2-3x fewer steps to 200.
    "vf_share_layers": False,
    "min_time_s_per_iteration": 1,
    "min_sample_timesteps_per_iteration": 0,
}
# APPO (not re-tuned): the earlier shared-network IMPALA settings, with one EnvRunner and
# RLlib's remote Learner actor.
CARTPOLE_APPO: dict[str, Any] = {
    **{k: v for k, v in CARTPOLE_IMPALA.items() if k != "num_learners"},
    "num_env_runners": 1,
    "num_epochs": 4,
    "lr": 0.001,
    "entropy_coeff": 0.0,
    "vf_share_layers": True,
}

# --- Atari (Pong and any other ALE game): aim = mean reward 18 as fast as the hardware
# allows. EnvRunners = CPUs - 1 (seed rule, decided at run time), 16 vectorised envs each.
# See docs/trainer.md ("The Pong preset") for the measurements behind each value.
# The agent steps between which the Atari presets' lr and entropy bonus both decay to a tenth: the
# two schedules move together (docs/trainer.md, "The eighth change").
ATARI_DECAY = (1_300_000, 1_800_000)
ATARI_IMPALA: dict[str, Any] = {
    "num_envs_per_env_runner": 16,
    # One sample() call of an EnvRunner is exactly one train batch (16 x 32 = 512): RLlib
    # packs whole sample() results, so 8 x 50 = 400 against a batch of 500 trained 800.
    "rollout_fragment_length": 32,
    "train_batch_size_per_learner": 512,
    # Two passes over each batch (V-trace corrects the second, slightly off-policy one) in
    # minibatches of 128 rows. RLlib's Learner sees 16 x 33 rows (each fragment plus its
    # bootstrap step) and cuts them cyclically: 9 optimizer steps per 512 sampled steps (17,578
    # per 1M, counted by bench/trainer_throughput.py), about CleanRL's PPO rate, at the compute
    # of two passes. The old preset made 1,250 and stayed at -20; 3,906 (2 full-batch passes)
    # reached -13 at 2M steps; this one reached 0 at 1.2M (docs/trainer.md, "The Pong preset").
    "num_epochs": 2,
    "minibatch_size": 128,
    # The Learner in the driver process (its own thread), not a remote Learner actor: on a
    # small CPU machine that saves the batch's trip through the object store and a process;
    # the EnvRunner(s) keep sampling while it learns. With a GPU it moves to a Learner actor.
    "num_learners": 0,
    # RLlib polls the EnvRunners with a zero timeout, so the driver's main thread spun on
    # ray.wait() between samples (a third of the driver's CPU samples in py-spy); waiting up to
    # 1 s returns as soon as the sample is ready and leaves the core to the Learner thread.
    "timeout_s_sampler_manager": 1.0,
    # Four times the updates at a slightly lower step size (6e-4 with full-batch updates), held
    # to 1.3M steps, then decayed to a tenth by 1.8M: at a constant step the same preset levelled
    # off at +7 to +10 from 1.35M steps; with a decay to 2M it climbed to +17.6 at 2M. The runs
    # crossed 18 as the decay ended: ended at 1.8M, three seeds reached 18 at 1.83M-1.93M steps
    # (median 1.86M), against 2.00M-2.73M with the decay to 2M (docs/trainer.md, "The eighth change").
    "lr": [[0, 0.0005], [ATARI_DECAY[0], 0.0005], [ATARI_DECAY[1], 0.00005]],
    "gamma": 0.99,
    # The entropy bonus decays with the step size, to a tenth by 1.8M steps: with it held at 0.01
    # the policy kept 1.6 of ln 6 = 1.79 nats at +16 and climbed slowly (docs/trainer.md, "The
    # seventh change"). Decayed from 0.5M instead, it stalled the climb at -10 (docs/trainer.md,
    # "Tried and not kept").
    "entropy_coeff": [[0, 0.01], [ATARI_DECAY[0], 0.01], [ATARI_DECAY[1], 0.001]],
    "vf_loss_coeff": 0.5,
    "grad_clip": 40.0,
    "clip_rewards": True,
    # The classic RLlib Pong network (42x42 frames; used by RLlib's tuned pong-appo and
    # pong-impala-fast examples that reach 18-19): ~2.5M multiply-adds per frame, a third of
    # the 64x64 four-layer stack (~8M) and learning (forward + backward, twice) dominates on CPU.
    "dim": 42,
    "framestack": 4,
    "vf_share_layers": True,
    "conv_filters": [[16, [4, 4], 2], [32, [4, 4], 2], [256, [11, 11], 1, "valid"]],
    "head_fcnet_hiddens": [256],
    # The Learner's encoder in bfloat16 where the CPU computes it natively (AMX, AVX512-BF16),
    # float32 elsewhere (trainer/networks.py): on 2 vCPUs with AMX the preset sampled 1.22x the
    # env steps while learning, the learner no longer the bound (docs/trainer.md, "The seventh change").
    "learner_precision": "auto",
    "min_time_s_per_iteration": 10,
    "min_sample_timesteps_per_iteration": 0,
}
ATARI_APPO: dict[str, Any] = {**ATARI_IMPALA, "lr": 0.0005, "clip_param": 0.4, "use_kl_loss": False}
ATARI_PPO: dict[str, Any] = {
    **{k: v for k, v in ATARI_IMPALA.items() if k not in ("timeout_s_sampler_manager",)},
    "rollout_fragment_length": 128,
    "train_batch_size_per_learner": 4000,
    "minibatch_size": 128,
    "num_epochs": 4,
    "lr": 0.00025,
    "lambda_": 0.95,
    "clip_param": 0.1,
    "vf_clip_param": 10.0,
    "use_kl_loss": False,
    "min_time_s_per_iteration": 0,
}

CLASSIC_CONTROL = {"CartPole-v0", "CartPole-v1"}

# --- Any other environment: a preset by its observation space, not by its name. ---------------
# A vector (a Box of rank 1, or whatever the trainer flattened into one: Discrete one-hot, Dict and
# Tuple concatenated) takes an MLP of two 64-unit layers and a separate value network, the size
# of the CartPole presets and of SB3's default for vector observations.
VECTOR: dict[str, Any] = {
    "fcnet_hiddens": [64, 64],
    "vf_share_layers": False,
    "min_time_s_per_iteration": 1,
    "min_sample_timesteps_per_iteration": 0,
}
# An image (a Box of rank 3, height x width x channels) takes the Nature-DQN convolutions (8x8/4,
# 4x4/2, 3x3/1 with 32, 64, 64 channels; RLlib pads them "same" and flattens the result, so any
# frame size fits: RLlib's own default has filters for a few square sizes only) and a 256-unit head.
IMAGE: dict[str, Any] = {
    "conv_filters": [[32, [8, 8], 4], [64, [4, 4], 2], [64, [3, 3], 1]],
    "head_fcnet_hiddens": [256],
    "vf_share_layers": True,
    "min_time_s_per_iteration": 1,
    "min_sample_timesteps_per_iteration": 0,
}

# --- SAC (continuous or discrete actions) and DQN (discrete): off-policy, from a replay buffer. ---
# Both start from RLlib 2.60's own tuned examples (docs/trainer.md, "SAC and DQN"):
# rllib/tuned_examples/sac/pendulum_sac.py (Pendulum-v1 to -250 in 20k steps) and
# rllib/tuned_examples/dqn/cartpole_dqn.py (CartPole-v1 to 450). What differs: sampling in the
# driver process (no EnvRunner actor: one Pendulum or CartPole step costs less than a round trip,
# and each sampled step is followed by a gradient update anyway), and the initializers by name.
SAC_VECTOR: dict[str, Any] = {
    "num_env_runners": 0,
    "initial_alpha": 1.001,
    # A smaller step for the policy than for the Q-functions and the temperature.
    "actor_lr": 2e-4,
    "critic_lr": 8e-4,
    "alpha_lr": 9e-4,
    "target_entropy": "auto",
    "n_step": (2, 5),
    "tau": 0.005,
    "train_batch_size_per_learner": 256,
    "target_network_update_freq": 1,
    "replay_buffer_config": {
        "type": "PrioritizedEpisodeReplayBuffer",
        "capacity": 100_000,
        "alpha": 1.0,
        "beta": 0.0,
    },
    "num_steps_sampled_before_learning_starts": 256,
    "fcnet_hiddens": [256, 256],
    "fcnet_activation": "relu",
    "fcnet_kernel_initializer": "xavier_uniform_",
    "head_fcnet_hiddens": [],
    "head_fcnet_kernel_initializer": "orthogonal_",
    "head_fcnet_kernel_initializer_kwargs": {"gain": 0.01},
}
DQN_VECTOR: dict[str, Any] = {
    "num_env_runners": 0,
    "lr": 0.0005,
    "train_batch_size_per_learner": 32,
    "replay_buffer_config": {
        "type": "PrioritizedEpisodeReplayBuffer",
        "capacity": 50_000,
        "alpha": 0.6,
        "beta": 0.4,
    },
    "n_step": (2, 5),
    "double_q": True,
    "dueling": True,
    # Exploration from 1 to 0.02 over the first 10k steps.
    "epsilon": [[0, 1.0], [10_000, 0.02]],
    "fcnet_hiddens": [256],
    "fcnet_activation": "tanh",
    "fcnet_bias_initializer": "zeros_",
    "head_fcnet_hiddens": [256],
    "head_fcnet_bias_initializer": "zeros_",
}
OFF_POLICY = {"SAC": SAC_VECTOR, "DQN": DQN_VECTOR}

# --- MuJoCo (gymnasium's robots: a vector observation, a rank-1 Box of actions, 1,000-step episodes).
# Not measured here (no quiet machine): the published settings, in RLlib's names.
# PPO: the PPO paper's MuJoCo settings (Schulman et al. 2017, arXiv:1707.06347, table 3; CleanRL's
# ppo_continuous_action.py keeps them): 2,048 steps a batch, 10 passes in minibatches of 64, Adam at
# 3e-4, gamma 0.99, GAE lambda 0.95, clip 0.2, two 64-unit tanh layers for the policy and another
# two for the value function; CleanRL's gradient norm clip of 0.5. Returns reach the thousands, so
# RLlib's clip of the value error at 10 is lifted (as in CARTPOLE_PPO).
MUJOCO_PPO: dict[str, Any] = {
    "train_batch_size_per_learner": 2048,
    "minibatch_size": 64,
    "num_epochs": 10,
    "lr": 0.0003,
    "gamma": 0.99,
    "lambda_": 0.95,
    "clip_param": 0.2,
    "vf_clip_param": 100000.0,
    "entropy_coeff": 0.0,
    "vf_loss_coeff": 0.5,
    "use_kl_loss": False,
    "grad_clip": 0.5,
    "fcnet_hiddens": [64, 64],
    "fcnet_activation": "tanh",
    "vf_share_layers": False,
    "min_time_s_per_iteration": 0,
    "min_sample_timesteps_per_iteration": 0,
}
# SAC: the SAC paper's settings (Haarnoja et al. 2018, arXiv:1812.05905, table 1) over SAC_VECTOR's
# network (two 256-unit relu layers): Adam at 3e-4 for the policy, the Q-functions and the
# temperature, one-step returns, a uniform buffer of 1M steps, batches of 256, tau 0.005; the first
# 10,000 steps before learning (rl-baselines3-zoo's MuJoCo setting).
MUJOCO_SAC: dict[str, Any] = {
    **SAC_VECTOR,
    "actor_lr": 3e-4,
    "critic_lr": 3e-4,
    "alpha_lr": 3e-4,
    "initial_alpha": 1.0,
    "n_step": 1,
    "replay_buffer_config": {"type": "EpisodeReplayBuffer", "capacity": 1_000_000},
    "num_steps_sampled_before_learning_starts": 10_000,
}
MUJOCO = {"PPO": MUJOCO_PPO, "SAC": MUJOCO_SAC}
# Images (Atari or any rank-3 Box) for SAC / DQN: the vector preset's learning settings on the
# image preset's network (not measured here).
OFF_POLICY_IMAGE_MODEL = (
    "fcnet_hiddens",
    "fcnet_activation",
    "head_fcnet_hiddens",
    "fcnet_kernel_initializer",
)

DEFAULT_STOP = {
    "atari": {"episode_reward_mean": 18, "time_total_s": 3600},
    "CartPole": {"episode_reward_mean": 450, "time_total_s": 600},
    "other": {"training_iteration": 100, "time_total_s": 3600},
}


def preset(
    algorithm: str, env_id: str, atari: bool, num_gpus: float = 0.0, image: bool = False
) -> dict[str, Any]:
    """Return the preset settings (today's names) for this algorithm and environment."""
    if algorithm in MUJOCO and not atari and not image:
        from trainer.envs import is_mujoco  # gymnasium's registry: imported only where it is asked

        if is_mujoco(env_id):
            out = dict(MUJOCO[algorithm])
            if num_gpus >= 1:
                out["num_gpus_per_learner"] = 1.0
            return out
    if algorithm in OFF_POLICY:
        out = dict(OFF_POLICY[algorithm])
        if atari or image:
            out = {k: v for k, v in out.items() if k not in OFF_POLICY_IMAGE_MODEL}
            out.update({k: IMAGE[k] for k in ("conv_filters", "head_fcnet_hiddens")})
            out["clip_rewards"] = atari
        if num_gpus >= 1:
            out["num_gpus_per_learner"] = 1.0
        return out
    if atari:
        out = dict({"IMPALA": ATARI_IMPALA, "APPO": ATARI_APPO, "PPO": ATARI_PPO}[algorithm])
        if num_gpus >= 1:
            out["num_gpus_per_learner"] = 1.0
            # A GPU learner eats much bigger batches at the same cost per update.
            if algorithm in ("IMPALA", "APPO"):
                out["num_learners"] = 1
                out["train_batch_size_per_learner"] = 2048
        return out
    if env_id in CLASSIC_CONTROL:
        return dict({"IMPALA": CARTPOLE_IMPALA, "APPO": CARTPOLE_APPO, "PPO": CARTPOLE_PPO}[algorithm])
    # Other envs: by the observation space the trainer's probe saw (trainer/envs.py).
    return dict(IMAGE if image else VECTOR)


def default_stop(env_id: str, atari: bool) -> dict[str, Any]:
    if atari:
        return dict(DEFAULT_STOP["atari"])
    if env_id.startswith("CartPole"):
        return dict(DEFAULT_STOP["CartPole"])
    return dict(DEFAULT_STOP["other"])


def fit_minibatch(
    algorithm: str, preset_settings: dict[str, Any], settings: dict[str, Any], overrides: dict[str, Any]
) -> str | None:
    """Keep a preset's ``minibatch_size`` valid when the request overrides the fragment or the
    batch size but not the minibatch (the seed's ``sample_batch_size: 50`` and
    ``train_batch_size: 500`` against the Pong preset's 128): the preset's number of minibatches
    per batch is kept, in whole fragments for IMPALA/APPO (RLlib refuses anything else).
    Changes ``settings`` in place; returns the line to log, or None when nothing changed."""
    mb = settings.get("minibatch_size")
    if mb is None or "minibatch_size" in overrides:
        return None
    if not {"rollout_fragment_length", "train_batch_size_per_learner"} & overrides.keys():
        return None
    batch = settings.get("train_batch_size_per_learner")
    frag = settings.get("rollout_fragment_length") if algorithm in ("IMPALA", "APPO") else 1
    if not isinstance(batch, int) or not isinstance(frag, int) or frag < 1:
        return None  # "auto" fragments: RLlib's own check speaks
    if mb % frag == 0 and mb <= batch:
        return None
    parts = max(
        1,
        preset_settings.get("train_batch_size_per_learner", batch)
        // preset_settings.get("minibatch_size", mb),
    )
    fitted = max(frag, batch // parts // frag * frag)
    if fitted >= batch:
        del settings["minibatch_size"]
        return f"minibatch_size={mb} (preset) dropped: one update per pass over the {batch}-step batch"
    settings["minibatch_size"] = fitted
    return f"minibatch_size={mb} (preset) -> {fitted}: {parts} minibatches per {batch}-step batch" + (
        f" in whole {frag}-step fragments" if frag > 1 else ""
    )


def fit_fragment(algorithm: str, settings: dict[str, Any], overrides: dict[str, Any]) -> str | None:
    """Keep PPO's sampling rounds able to fill its batch when the request changes the batch size,
    the EnvRunners or the envs but not the preset's ``rollout_fragment_length``: RLlib's PPO
    refuses a ``train_batch_size`` more than 10 % away from a whole number of rounds of
    max(EnvRunners, 1) x envs x fragment steps (``{"train_batch_size": 1000}`` on the CartPole
    preset's 64-env rounds of 1024 steps, with 2 EnvRunners), so the fragment becomes RLlib's
    ``"auto"``: the batch split over the EnvRunners' envs. Call it once the number of EnvRunners
    is settled. Changes ``settings`` in place; returns the line to log, or None when nothing
    changed."""
    frag = settings.get("rollout_fragment_length")
    batch = settings.get("train_batch_size_per_learner")
    if algorithm != "PPO" or "rollout_fragment_length" in overrides or not isinstance(frag, int):
        return None
    if (
        not isinstance(batch, int)
        or not {
            "train_batch_size_per_learner",
            "num_env_runners",
            "num_envs_per_env_runner",
            "num_learners",
        }
        & overrides.keys()
    ):
        return None
    total = batch * max(1, settings.get("num_learners") or 1)
    runners, envs = max(1, settings.get("num_env_runners") or 0), settings.get("num_envs_per_env_runner", 1)
    round_steps = runners * envs * frag
    # RLlib's check (AlgorithmConfig, Ray 2.60): at most 10 % over in whole rounds (its second
    # bound, one round fewer, never binds: that is short of the batch by construction)
    rounds = -(-total // round_steps)
    if rounds * round_steps - total <= 0.1 * total:
        return None
    settings["rollout_fragment_length"] = "auto"
    return (
        f"rollout_fragment_length={frag} (preset) -> auto: {runners} x {envs} envs x {frag} steps "
        f"= {round_steps} per round does not fill a {total}-step batch"
    )
