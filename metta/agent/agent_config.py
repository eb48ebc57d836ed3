"""Agent configs: a typed description of the component graph, and the ready-made agents.

A config is ``AgentConfig`` (or a dict with the same fields, as upstream's YAML). Each component names a
``type`` from ``metta.agent.lib`` (upstream's dotted ``_target_`` is accepted too: its last part is the
type) and its ``sources``. The ready configs:

- ``fast`` (the default): upstream's ``configs/agent/fast.yaml``, small enough to train on a laptop CPU.
- ``fast_cpu``: the fast graph with one LSTM layer and 256-wide critic and actor layers, half its FLOPs: what
  learns most in runs of minutes on a CPU (run.py's and the CPU recipe's default).
- ``interface_default``: upstream's ``_get_default_agent_config`` (full-resolution CNN, 512-wide LSTM).

Two conveniences for configs written by hand: ``AgentConfig(name="fast", hidden_size=512)``
picks a ready graph by ``name`` (legacy names such as ``simple_cnn`` map to one, see ``AGENT_NAME_ALIASES``)
and ``hidden_size`` sets the LSTM width (``components._core_.output_size``). Both are filled in after
validation, so a dumped config names its graph's LSTM width and loads back to the same agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REQUIRED_COMPONENTS = ("_obs_", "_core_", "_value_", "_action_embeds_", "_action_")


class ComponentConfig(BaseModel):
    """One node of the graph. Only ParamLayer types use the weight knobs (nonlinearity ... analyze_weights)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str = Field(alias="_target_")
    """A class in metta.agent.lib: ObsTokenToBoxShaper, ObservationNormalizer, Conv2d, Flatten, Linear, LSTM,
    ActionEmbedding, MettaActorSingleHead."""
    sources: list[str] = Field(default_factory=list)
    """Names of the components whose outputs feed this one, in order."""
    nn_params: dict[str, Any] = Field(default_factory=dict)
    """Arguments of the torch layer (e.g. out_features, kernel_size; num_layers for the LSTM)."""
    output_size: int | None = None
    """The LSTM's hidden size; Linear also accepts it instead of nn_params.out_features."""
    nonlinearity: str | None = "nn.ReLU"
    initialization: str = "Orthogonal"
    clip_scale: float = 1.0
    l2_init_scale: float = 1.0
    analyze_weights: bool = True
    effective_rank: bool = False
    """Accepted for upstream YAML compatibility: every ParamLayer reports its effective rank."""

    @field_validator("type", mode="before")
    @classmethod
    def _short_type(cls, value: str) -> str:
        return str(value).rsplit(".", 1)[-1]

    @field_validator("sources", mode="before")
    @classmethod
    def _source_names(cls, value: Any) -> list[str]:
        # Upstream writes sources as [{name: cnn1}]; null means no sources.
        if value is None:
            return []
        return [s["name"] if isinstance(s, Mapping) else str(s) for s in value]


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = None
    """A ready graph ("fast", "interface_default" or a legacy alias) used when ``components`` is not given;
    None with no components means "fast". With explicit components it is only a label."""
    hidden_size: int | None = Field(default=None, gt=0)
    """The LSTM width: sets ``components._core_.output_size``. None keeps the graph's own (128 for fast)."""
    target: str | None = Field(default=None, alias="_target_")
    """Ignored; accepted so that upstream agent YAML files validate."""
    clip_range: float = 0.0
    """Weights are clamped to clip_range * largest initial weight * clip_scale after each step; 0 = off."""
    analyze_weights_interval: int = 300
    """Epochs between weight metrics (compute_weight_metrics); 0 = never."""
    l2_init_weight_update_interval: int = 0
    """Epochs between update_l2_init_weight_copy calls; 0 = never."""
    observations: dict[str, Any] = Field(default_factory=lambda: {"obs_key": "grid_obs"})
    """Accepted for upstream compatibility; tokens are always read from the observation tensor itself."""
    components: dict[str, ComponentConfig] = Field(default_factory=lambda: fast_components())

    @model_validator(mode="before")
    @classmethod
    def _apply_name_and_hidden_size(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        explicit_components = data.get("components") is not None
        if not explicit_components:
            data.pop("components", None)
            name = data.get("name")
            if name is None:
                data["name"] = "fast"
            elif isinstance(name, str):
                data["components"] = AGENT_CONFIGS_COMPONENTS[canonical_agent_name(name)]()
        hidden = data.get("hidden_size")
        if isinstance(hidden, int) and not isinstance(hidden, bool) and hidden > 0:
            components = dict(data.get("components") or fast_components())
            core = components.get("_core_")
            if core is not None:  # a graph without _core_ is reported by _check_graph
                core = core if isinstance(core, ComponentConfig) else ComponentConfig.model_validate(core)
                if explicit_components and core.output_size not in (None, hidden):
                    raise ValueError(
                        f"hidden_size={hidden} conflicts with components._core_.output_size={core.output_size}; "
                        "set only one of them (hidden_size sets the LSTM width)"
                    )
                components["_core_"] = core.model_copy(update={"output_size": hidden})
                data["components"] = components
        return data

    @model_validator(mode="after")
    def _check_graph(self) -> AgentConfig:
        missing = [n for n in REQUIRED_COMPONENTS if n not in self.components]
        if missing:
            raise ValueError(f"agent components {missing} are required (all of {list(REQUIRED_COMPONENTS)})")
        for name, component in self.components.items():
            unknown = [s for s in component.sources if s not in self.components]
            if unknown:
                raise ValueError(
                    f"component {name!r} has sources {unknown} that are not components; known: "
                    f"{sorted(self.components)}"
                )
        if self.clip_range < 0:
            raise ValueError(f"clip_range={self.clip_range} must be >= 0 (0 turns clipping off)")
        if self.hidden_size is None and self.components["_core_"].output_size is not None:
            self.hidden_size = self.components["_core_"].output_size
        return self


def _c(type_: str, *sources: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "sources": list(sources), **fields}


def _shared_head(core_features: str, actor_width: int = 512) -> dict[str, dict[str, Any]]:
    return {
        "actor_1": _c("Linear", core_features, nn_params={"out_features": actor_width}),
        "_action_embeds_": _c("ActionEmbedding", nn_params={"num_embeddings": 100, "embedding_dim": 16}),
        "_action_": _c("MettaActorSingleHead", "actor_1", "_action_embeds_"),
    }


def fast_components(
    lstm_layers: int = 2, critic_width: int = 1024, actor_width: int = 512
) -> dict[str, ComponentConfig]:
    """Upstream ``fast.yaml`` with its defaults: a strided 5x5 conv to 3x3, a 3x3 conv to 1x1, 128-wide 2-layer
    LSTM, a 1024-wide critic and a 512-wide actor layer. Other values make the ``fast_cpu`` graph."""
    raw = {
        "_obs_": _c("ObsTokenToBoxShaper"),
        "obs_normalizer": _c("ObservationNormalizer", "_obs_"),
        "cnn1": _c("Conv2d", "obs_normalizer", nn_params={"out_channels": 64, "kernel_size": 5, "stride": 3}),
        "cnn2": _c("Conv2d", "cnn1", nn_params={"out_channels": 64, "kernel_size": 3, "stride": 1}),
        "obs_flattener": _c("Flatten", "cnn2"),
        "fc1": _c("Linear", "obs_flattener", nn_params={"out_features": 128}),
        "encoded_obs": _c("Linear", "fc1", nn_params={"out_features": 128}),
        "_core_": _c("LSTM", "encoded_obs", output_size=128, nn_params={"num_layers": lstm_layers}),
        "critic_1": _c(
            "Linear", "_core_", nn_params={"out_features": critic_width}, nonlinearity="nn.Tanh", effective_rank=True
        ),
        "_value_": _c("Linear", "critic_1", nn_params={"out_features": 1}, nonlinearity=None),
        **_shared_head("_core_", actor_width),
    }
    return {name: ComponentConfig.model_validate(c) for name, c in raw.items()}


def fast_cpu_components() -> dict[str, ComponentConfig]:
    """The fast graph cut for CPU training: one LSTM layer instead of two, a 256-wide critic and actor layer
    instead of 1024 and 512. About 0.53 MFLOPs per agent step instead of 1.07, so on a CPU, where the learner's
    forward and backward set the pace, it trains on ~1.6x the agent steps per minute. On the navigation curriculum
    it learned more than fast in runs of minutes and was level with it after an hour (docs/training.md)."""
    return fast_components(lstm_layers=1, critic_width=256, actor_width=256)


def interface_default_components() -> dict[str, ComponentConfig]:
    """Upstream's interface default: 3x3 convs at full 11x11 resolution, a 512 encoder and 512 LSTM."""
    raw = {
        "_obs_": _c("ObsTokenToBoxShaper"),
        "obs_normalizer": _c("ObservationNormalizer", "_obs_"),
        "cnn1": _c(
            "Conv2d", "obs_normalizer", nn_params={"out_channels": 32, "kernel_size": 3, "stride": 1, "padding": 1}
        ),
        "cnn2": _c("Conv2d", "cnn1", nn_params={"out_channels": 64, "kernel_size": 3, "stride": 1, "padding": 1}),
        "obs_flattener": _c("Flatten", "cnn2"),
        "encoded_obs": _c("Linear", "obs_flattener", nn_params={"out_features": 512}),
        "_core_": _c("LSTM", "encoded_obs", output_size=512, nn_params={"num_layers": 1}),
        "_value_": _c("Linear", "_core_", nn_params={"out_features": 1}, nonlinearity=None),
        **_shared_head("_core_"),
    }
    return {name: ComponentConfig.model_validate(c) for name, c in raw.items()}


def fast_agent_config() -> AgentConfig:
    return AgentConfig(name="fast")


def fast_cpu_agent_config() -> AgentConfig:
    return AgentConfig(name="fast_cpu")


def interface_default_agent_config() -> AgentConfig:
    return AgentConfig(name="interface_default")


AGENT_CONFIGS = {
    "fast": fast_agent_config,
    "fast_cpu": fast_cpu_agent_config,
    "interface_default": interface_default_agent_config,
}
AGENT_CONFIGS_COMPONENTS = {
    "fast": fast_components,
    "fast_cpu": fast_cpu_components,
    "interface_default": interface_default_components,
}

# Names found in older configs and documents, and the ready graph each one means here.
AGENT_NAME_ALIASES = {
    "simple_cnn": "fast",  # the documented name of the plain CNN-LSTM: the fast graph
    "simple": "fast",
}


def canonical_agent_name(name: str) -> str:
    """The ready graph a name means ("fast", "interface_default"), or a ValueError listing the choices."""
    if name in AGENT_CONFIGS_COMPONENTS:
        return name
    if name in AGENT_NAME_ALIASES:
        return AGENT_NAME_ALIASES[name]
    hint = ""
    if str(name).startswith("latent_attn"):
        hint = " (upstream's attention agents are not implemented here)"
    aliases = ", ".join(f"{k!r} -> {v!r}" for k, v in AGENT_NAME_ALIASES.items())
    raise ValueError(
        f"agent name={name!r} is unknown{hint}; use one of {sorted(AGENT_CONFIGS_COMPONENTS)} (legacy aliases: "
        f"{aliases}) or give the graph as components"
    )


def resolve_agent_config(config: AgentConfig | Mapping[str, Any] | str | None, default: str = "fast") -> AgentConfig:
    """An ``AgentConfig`` from None (the ``default`` ready graph), a ready config's name, a dict/DictConfig, or
    a model.

    A mapping may be the agent config itself or, as in the seed documents, ``{"device": ..., "agent":
    {...}}``; a mapping with neither ``name`` nor ``components`` keeps the ``default`` graph and only changes
    the knobs.
    """
    if config is None:
        return AgentConfig(name=default)
    if isinstance(config, AgentConfig):
        return config
    if isinstance(config, str):
        if config not in AGENT_CONFIGS and config not in AGENT_NAME_ALIASES:
            raise ValueError(
                f"agent config {config!r} is unknown; ready configs: {sorted(AGENT_CONFIGS)} "
                f"(legacy aliases: {sorted(AGENT_NAME_ALIASES)})"
            )
        return AgentConfig(name=config)
    data = _plain(config)
    if not isinstance(data, dict):
        raise TypeError(f"agent config must be an AgentConfig, a mapping or a name, got {type(config).__name__}")
    if "agent" in data:
        data = data["agent"]
    if isinstance(data, dict) and data.get("name") is None and data.get("components") is None:
        data = {**data, "name": default}
    return AgentConfig.model_validate(data)


def _plain(config: Any) -> Any:
    # DictConfig -> dict without importing omegaconf unless it is in use.
    if type(config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(config, resolve=True)
    return dict(config) if isinstance(config, Mapping) else config
