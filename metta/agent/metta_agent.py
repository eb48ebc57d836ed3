"""``MettaAgent``: the CNN-LSTM policy, built as a small graph of named components (see ``agent_config``).

One call serves both phases of PPO:

- rollout: ``obs [BT, M, 3]``, the carried ``PolicyState``; actions are sampled;
- training: ``obs [B, T, M, 3]`` and the stored ``action [B, T, 2]``; the actions are evaluated and the
  LSTM runs over the whole sequence from ``state`` (None = zeros). Outputs are flattened to ``[B*T, ...]``.

Either way it returns ``(action [BT, 2] int32, logprob [BT], entropy [BT], value [BT, 1], full_log_probs
[BT, num_flat_actions])`` and writes the new detached LSTM state into ``state`` (None after a training replay
whose rows have episode starts inside: see ``PolicyState``).

Actions are flattened as ``flat = cum[type] + arg`` with ``cum`` the running sum of ``max_arg + 1`` over
earlier action types; ``action_index_tensor[flat]`` is the reverse lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metta.agent.agent_config import AgentConfig, ComponentConfig, resolve_agent_config
from metta.agent.lib.action import ActionEmbedding
from metta.agent.lib.actor import MettaActorSingleHead
from metta.agent.lib.lstm import LSTM
from metta.agent.lib.metta_layer import AgentContext, LayerBase, ParamLayer
from metta.agent.lib.nn_layer_library import Conv2d, Flatten, Linear
from metta.agent.lib.obs_token_to_box_shaper import UNKNOWN_FEATURE, ObsTokenToBoxShaper
from metta.agent.lib.observation_normalizer import ObservationNormalizer
from metta.agent.lib.token_conv import TokenConv
from metta.agent.lib.weight_metrics import weight_matrix_metrics
from metta.agent.policy_state import PolicyState

logger = logging.getLogger(__name__)

COMPONENT_TYPES: dict[str, type[LayerBase]] = {
    cls.__name__: cls
    for cls in (
        ObsTokenToBoxShaper,
        ObservationNormalizer,
        Conv2d,
        Flatten,
        Linear,
        LSTM,
        ActionEmbedding,
        MettaActorSingleHead,
    )
}


def build_component(name: str, cfg: ComponentConfig, context: AgentContext) -> LayerBase:
    cls = COMPONENT_TYPES.get(cfg.type)
    if cls is None:
        raise ValueError(f"component {name!r}: type {cfg.type!r} is unknown; use one of {sorted(COMPONENT_TYPES)}")
    if cls is LSTM:
        if cfg.output_size is None:
            raise ValueError(f"component {name!r} (LSTM) needs output_size (the hidden size), e.g. 128")
        return LSTM(name, cfg.sources, context, output_size=cfg.output_size, nn_params=cfg.nn_params)
    if cls is ActionEmbedding:
        return ActionEmbedding(name, cfg.sources, context, nn_params=cfg.nn_params)
    if issubclass(cls, ParamLayer):
        nn_params = dict(cfg.nn_params)
        if cls is Linear and "out_features" not in nn_params:
            if cfg.output_size is None:
                raise ValueError(f"component {name!r} (Linear) needs nn_params.out_features or output_size")
            nn_params["out_features"] = cfg.output_size
        return cls(
            name,
            cfg.sources,
            context,
            nn_params=nn_params,
            nonlinearity=cfg.nonlinearity,
            initialization=cfg.initialization,
            clip_scale=cfg.clip_scale,
            l2_init_scale=cfg.l2_init_scale,
            analyze_weights=cfg.analyze_weights,
        )
    return cls(name, cfg.sources, context)


class MettaAgent(nn.Module):
    def __init__(
        self,
        obs_shape: tuple[int, ...],
        obs_width: int,
        obs_height: int,
        feature_normalizations: Mapping[int, float],
        config: AgentConfig | Mapping[str, Any] | str | None = None,
    ):
        super().__init__()
        self.config = resolve_agent_config(config)
        self.obs_shape = tuple(int(s) for s in obs_shape)
        if len(self.obs_shape) != 2 or self.obs_shape[1] != 3:
            raise ValueError(f"obs_shape={self.obs_shape} must be (num_tokens, 3): MettaAgent reads token observations")
        self.obs_width, self.obs_height = int(obs_width), int(obs_height)
        self.feature_normalizations = {int(k): float(v) for k, v in feature_normalizations.items()}
        context = AgentContext(self.obs_width, self.obs_height, self.feature_normalizations, self.config.clip_range)
        self.components = nn.ModuleDict({n: build_component(n, c, context) for n, c in self.config.components.items()})
        self._order = self._setup_components()
        # The first convolution straight from the tokens (same function, a tenth of the arithmetic); set to
        # None to run the box, normalizer and convolution components instead.
        self.token_conv = TokenConv.for_components(dict(self.components))

        core = self.components["_core_"]
        if not isinstance(core, LSTM):
            raise ValueError(f"component '_core_' must be an LSTM, got {type(core).__name__}")
        self.hidden_size = core.hidden_size
        self.core_num_layers = core.num_layers

        # Filled by initialize_to_environment / activate_actions.
        self.original_feature_mapping: dict[str, int] | None = None
        self._env_features: dict[str, dict[str, float]] | None = None
        self.action_names: list[str] = []
        self.max_action_args: list[int] = []
        self.num_flat_actions = 0
        self.register_buffer("cum_action_max_params", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("action_index_tensor", torch.zeros(0, 2, dtype=torch.int32), persistent=False)

    # ------------------------------------------------------------------------------------------------
    # Graph setup
    def _setup_components(self) -> list[LayerBase]:
        """Set components up in dependency order (sources first), starting from the two outputs."""
        order: list[LayerBase] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            component = self.components[name]
            if component.ready:
                return
            if name in visiting:
                raise ValueError(f"component {name!r} is part of a cycle of sources")
            visiting.add(name)
            for source in component.sources:
                visit(source)
            component.setup([self.components[s].out_shape for s in component.sources])
            order.append(component)

        visit("_value_")
        visit("_action_")
        unused = [n for n in self.components if not self.components[n].ready]
        if unused:
            raise ValueError(
                f"components {unused} feed neither _value_ nor _action_; remove them or use them as sources"
            )
        return order

    @property
    def token_conv(self) -> TokenConv | None:
        return self._token_conv

    @token_conv.setter
    def token_conv(self, token_conv: TokenConv | None) -> None:
        """Setting it (or None) also fixes what forward runs: the fused first convolution in place of its three
        components, or the components."""
        self._token_conv = token_conv
        if token_conv is None:
            self._forward_order = list(self._order)
        else:
            fused = (token_conv.shaper, token_conv.normalizer, token_conv.conv)
            self._forward_order = [token_conv, *(c for c in self._order if c not in fused)]
        core = self._forward_order.index(self.components["_core_"])  # sources come first: the order is topological
        self._encoder_order = self._forward_order[:core]
        self._decoder_order = self._forward_order[core + 1 :]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------------------
    # Env binding: actions and features
    def initialize_to_environment(
        self,
        features: Mapping[str, Mapping[str, float]],
        action_names: list[str],
        max_action_args: list[int],
        device: torch.device | str,
        is_training: bool | None = None,
    ) -> None:
        """Bind the policy to an env: its feature ids (remapped to the ones this policy learned) and actions.

        ``is_training`` (default: ``self.training``) decides what happens to features the policy has never
        seen: training gives them an id of their own to learn, evaluation drops them.
        """
        self._env_features = {str(n): dict(v) for n, v in features.items()}
        self._remap_features(self.training if is_training is None else is_training)
        self.activate_actions(action_names, max_action_args, device)

    def _remap_features(self, is_training: bool) -> None:
        assert self._env_features is not None
        current = {name: int(info["id"]) for name, info in self._env_features.items()}
        shaper = self.components["_obs_"]
        if self.original_feature_mapping is None:
            self.original_feature_mapping = dict(current)
            shaper.set_feature_remap(torch.arange(256, dtype=torch.uint8))
            return
        remap = torch.full((256,), UNKNOWN_FEATURE, dtype=torch.uint8)
        for name, env_id in current.items():
            if name not in self.original_feature_mapping and is_training:
                self._learn_new_feature(name, env_id)
            remap[env_id] = self.original_feature_mapping.get(name, UNKNOWN_FEATURE)
        shaper.set_feature_remap(remap)

    def _learn_new_feature(self, name: str, env_id: int) -> None:
        assert self.original_feature_mapping is not None and self._env_features is not None
        used = set(self.original_feature_mapping.values())
        new_id = env_id if env_id not in used else next(i for i in range(UNKNOWN_FEATURE) if i not in used)
        self.original_feature_mapping[name] = new_id
        channels = self.components["_obs_"].num_channels
        if new_id >= channels:
            logger.warning(
                "feature %r (id %d) has no input channel in this policy (%d channels); it is ignored",
                name,
                new_id,
                channels,
            )
        for component in self.components.values():
            if isinstance(component, ObservationNormalizer):
                component.set_normalization(new_id, self._env_features[name]["normalization"])

    def activate_actions(self, action_names: list[str], max_action_args: list[int], device: torch.device | str) -> None:
        if len(action_names) != len(max_action_args):
            raise ValueError(
                f"{len(action_names)} action_names but {len(max_action_args)} max_action_args; they must pair up"
            )
        self.action_names = list(action_names)
        self.max_action_args = [int(m) for m in max_action_args]
        full_names = [
            f"{name}_{arg}" for name, m in zip(self.action_names, self.max_action_args) for arg in range(m + 1)
        ]
        self.components["_action_embeds_"].activate_actions(full_names)
        widths = torch.tensor([m + 1 for m in self.max_action_args], dtype=torch.long)
        self.cum_action_max_params = torch.cat([torch.zeros(1, dtype=torch.long), widths.cumsum(0)]).to(device)
        pairs = [(t, arg) for t, m in enumerate(self.max_action_args) for arg in range(m + 1)]
        self.action_index_tensor = torch.tensor(pairs, dtype=torch.int32, device=device)
        self.num_flat_actions = len(pairs)

    def action_to_flat(self, action: torch.Tensor) -> torch.Tensor:
        """``[N, 2]`` (type, arg) -> ``[N]`` flat index."""
        return self.cum_action_max_params[action[:, 0].long()] + action[:, 1].long()

    def flat_to_action(self, flat: torch.Tensor) -> torch.Tensor:
        """``[N]`` flat index -> ``[N, 2]`` int32 (type, arg)."""
        return self.action_index_tensor[flat]

    # ------------------------------------------------------------------------------------------------
    # Forward
    def forward(
        self, obs: torch.Tensor, state: PolicyState, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.num_flat_actions == 0:
            raise RuntimeError(
                "no actions are active; call initialize_to_environment(...) or activate_actions(...) first"
            )
        if obs.dim() == 4:
            batch, horizon = obs.shape[0], obs.shape[1]
        elif obs.dim() == 3:
            batch, horizon = obs.shape[0], 1
        else:
            raise ValueError(f"obs must be [BT, tokens, 3] or [B, T, tokens, 3], got shape {list(obs.shape)}")
        td: dict[str, Any] = {
            "x": obs if horizon == 1 and obs.dim() == 3 else obs.reshape(batch * horizon, *obs.shape[-2:]),
            "_B_": batch,
            "_T_": horizon,
            "lstm_h": state.lstm_h,
            "lstm_c": state.lstm_c,
            "episode_starts": state.episode_starts,
        }
        self._encode(td)
        self._core(td)
        state.lstm_h, state.lstm_c = td["lstm_h"], td["lstm_c"]
        return self._decode(td, action)

    # The forward pass in three parts: what runs before the LSTM core, the core (whose sequence splits depend on
    # the data, so it stays eager), and the heads with the action sampling. compile_forward compiles the first
    # and the last.
    def _encode(self, td: dict[str, Any]) -> None:
        for component in self._encoder_order:
            component(td)

    def _core(self, td: dict[str, Any]) -> None:
        self.components["_core_"](td)

    def _decode(self, td: dict[str, Any], action: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        for component in self._decoder_order:
            component(td)
        log_probs = F.log_softmax(td["_action_"], dim=-1)  # [BT, A]
        probs = log_probs.exp()
        if action is None:
            # torch.multinomial(probs, 1)'s own draw (same random numbers, same actions) without its check that
            # the probabilities are finite, which reads a value back from the device on every step.
            flat = (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1)
            action = self.flat_to_action(flat)
        else:
            action = action.reshape(-1, 2)
            flat = self.action_to_flat(action)
        logprob = log_probs.gather(1, flat.unsqueeze(1)).squeeze(1)
        entropy = -(probs * log_probs).sum(-1)
        return action, logprob, entropy, td["_value_"], log_probs

    def compile_forward(self, mode: str = "default") -> None:
        """Run the parts before and after the LSTM under ``torch.compile(mode=mode)``; the LSTM stays eager.
        Same outputs as eager (up to float rounding); parameters, state dict and checkpoints are unchanged."""
        self._encode = torch.compile(self._encode, mode=mode)
        self._decode = torch.compile(self._decode, mode=mode)

    # ------------------------------------------------------------------------------------------------
    # Weight regularisation and diagnostics
    def _param_layers(self) -> list[ParamLayer]:
        return [c for c in self._order if isinstance(c, ParamLayer)]

    def clip_weights(self) -> None:
        """Clamp weights after an optimizer step; a no-op when ``clip_range`` is 0."""
        if self.config.clip_range > 0:
            for layer in self._param_layers():
                layer.clip_weights()

    def l2_init_loss(self) -> torch.Tensor:
        """Sum over layers of ``l2_init_scale * ||W - W_init||^2``; differentiable in W."""
        losses = [layer.l2_init_loss() for layer in self._param_layers()]
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.device)

    def update_l2_init_weight_copy(self, alpha: float = 0.9) -> None:
        """Move each L2-init anchor toward the current weights: ``W_init = alpha W_init + (1 - alpha) W``."""
        for layer in self._param_layers():
            layer.update_l2_init_weight_copy(alpha)

    def compute_weight_metrics(self, delta: float = 0.01) -> list[dict[str, float | str]]:
        """One dict per analysed weight layer: ``name`` plus singular-value stats and effective rank."""
        return [
            {"name": layer.name, **weight_matrix_metrics(layer.weight_net.weight, delta)}
            for layer in self._param_layers()
            if layer.analyze_weights
        ]

    # ------------------------------------------------------------------------------------------------
    # The feature mapping travels with the state dict, so a plain load_state_dict keeps remapping right.
    def get_extra_state(self) -> dict:
        return {"original_feature_mapping": self.original_feature_mapping}

    def set_extra_state(self, state: dict) -> None:
        mapping = state.get("original_feature_mapping")
        self.original_feature_mapping = None if mapping is None else {str(k): int(v) for k, v in mapping.items()}
        if self._env_features is not None and self.original_feature_mapping is not None:
            self._remap_features(self.training)

    def policy_as_metta_agent(self) -> MettaAgent:
        return self


def make_policy(
    env: Any, config: AgentConfig | Mapping[str, Any] | str | None = None, device: torch.device | str = "cpu"
) -> MettaAgent:
    """Build a ``MettaAgent`` sized for ``env`` (a MettaGridEnv, or a vecenv with ``driver_env``) and bind it.

    ``config`` is None (the ``fast`` agent), ``"fast"``/``"interface_default"``, an ``AgentConfig`` or a
    mapping (see ``resolve_agent_config``).
    """
    env = getattr(env, "driver_env", env)
    agent = MettaAgent(
        obs_shape=env.single_observation_space.shape,
        obs_width=env.obs_width,
        obs_height=env.obs_height,
        feature_normalizations=env.feature_normalizations,
        config=config,
    ).to(device)
    agent.initialize_to_environment(env.get_observation_features(), env.action_names, env.max_action_args, device)
    return agent
