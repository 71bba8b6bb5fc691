"""The presets installed here (the built-ins and every ``distpar.agents`` entry point) and what is decided from
them: which preset runs an ``AgentConfig``, the command that starts it, the secrets to mask, a plan's agents."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from distpar.agents.aider import AIDER
from distpar.agents.base import Preset
from distpar.agents.claude import CLAUDE
from distpar.agents.codex import CODEX
from distpar.agents.fake import FAKE
from distpar.agents.gemini import GEMINI
from distpar.agents.template import TEMPLATE, validate_template
from distpar.core.errors import PlanError, UsageError
from distpar.core.model import AgentConfig
from distpar.core.plan import Plan

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "distpar.agents"


# The built-ins are registered under the entry-point group too (pyproject.toml), as a plugin's preset would be.
BUILTIN_PRESETS: dict[str, Preset] = {p.name: p for p in (CLAUDE, CODEX, GEMINI, AIDER, FAKE, TEMPLATE)}


def load_plugins() -> dict[str, Preset]:
    """The presets installed here: every ``distpar.agents`` entry point (an instance of Preset, or a Preset
    subclass that takes no arguments), the built-ins first. A plugin that fails to load is logged and left out."""
    from importlib.metadata import entry_points

    found = dict(BUILTIN_PRESETS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name] is BUILTIN_PRESETS.get(ep.name):
            continue  # a built-in, already here
        try:
            obj = ep.load()
            preset = obj() if isinstance(obj, type) else obj
        except Exception as exc:  # a broken plugin must not break distpar
            log.warning("agent plugin %s (%s) cannot be loaded: %s", ep.name, ep.value, exc)
            continue
        if not isinstance(preset, Preset):
            log.warning("agent plugin %s (%s) is not a distpar.agents.Preset", ep.name, ep.value)
            continue
        found[ep.name] = preset
    return found


PRESETS: dict[str, Preset] = load_plugins()
# Every preset's key variables: their values are masked whichever agent runs (an agent may print any of them).
KEY_VARS: tuple[str, ...] = tuple(dict.fromkeys(v for p in PRESETS.values() for v in p.key_vars))
_LIMITS = (("model", "--model"), ("max_turns", "--max-turns"), ("max_budget_usd", "--max-budget-usd"))


def preset_of(cfg: AgentConfig) -> Preset:
    """The preset that runs ``cfg``: a user-defined one carried by value (``cfg.preset_pickle``), else the one
    installed here under ``cfg.preset``. SSH and Ray workers resolve it this way from the JSON of the spec."""
    if cfg.preset_pickle:
        return _unpickle_preset(cfg.preset_pickle)
    preset = PRESETS.get(cfg.preset)
    if preset is None:
        raise UsageError(f"unknown agent preset {cfg.preset!r} (installed here: {', '.join(PRESETS)})")
    return preset


_unpickled: dict[str, Preset] = {}


def _unpickle_preset(data: str) -> Preset:
    if data not in _unpickled:
        import base64

        import cloudpickle

        try:
            preset = cloudpickle.loads(base64.b64decode(data))
        except Exception as exc:
            raise UsageError(f"the agent preset passed by value cannot be loaded here: {exc}") from None
        if not isinstance(preset, Preset):
            raise UsageError("the agent preset passed by value is not a distpar.agents.Preset")
        _unpickled[data] = preset
    return _unpickled[data]


def custom_agent(preset: Preset, base: AgentConfig | None = None) -> AgentConfig:
    """An AgentConfig that runs ``preset``, a Preset defined in the user's own code: it travels by value
    (cloudpickle, with its module pickled by value too), so workers that cannot import that module run it."""
    import base64
    import inspect

    import cloudpickle

    modules = {m for m in (inspect.getmodule(type(preset)), inspect.getmodule(preset.build),
                           inspect.getmodule(preset.parse)) if m is not None
               and m.__name__ != "__main__" and not m.__name__.startswith("distpar")}
    for m in modules:
        cloudpickle.register_pickle_by_value(m)
    try:
        data = base64.b64encode(cloudpickle.dumps(preset)).decode()
    finally:
        for m in modules:
            cloudpickle.unregister_pickle_by_value(m)
    return replace(base or AgentConfig(), preset=preset.name, template=None, preset_pickle=data)


def can_resume(cfg: AgentConfig) -> bool:
    """Whether the agent can continue an interrupted session it was started with (``--session-id``)."""
    try:
        return "resume" in preset_of(cfg).supports
    except UsageError:
        return False


def unsupported(cfg: AgentConfig) -> list[str]:
    """Options set in ``cfg`` that its preset cannot apply, as sentences."""
    try:
        preset = preset_of(cfg)
    except UsageError:
        return []
    if cfg.preset == "template":
        return []
    out = [f"the {preset.name} agent has no {flag}: {getattr(cfg, attr)} is not applied"
           for attr, flag in _LIMITS if getattr(cfg, attr) and attr not in preset.supports]
    if cfg.stream and "stream" not in preset.supports:
        out.append(f"the {preset.name} agent has no JSON event stream option: output is logged as it comes")
    return out


def command(cfg: AgentConfig, env: Mapping[str, str]) -> list[str]:
    """The argv prefix that runs ``cfg``'s preset on this machine (see the module docstring)."""
    return preset_of(cfg).command_line(cfg, env)


def secret_values(env: Mapping[str, str], forwarded: Mapping[str, str]) -> tuple[str, ...]:
    """Values to mask: the forwarded variables and every known API key variable that is set."""
    values = [*forwarded.values(), *(env[k] for k in KEY_VARS if env.get(k))]
    return tuple(sorted({v for v in values if len(v) >= 4}, key=len, reverse=True))


def agent_config(value: str | None, base: AgentConfig) -> AgentConfig:
    """A plan's or a flag's agent value (preset name or command template) on top of the run's options."""
    if not value:
        return base
    if value in PRESETS and value != "template":
        return replace(base, preset=value, template=None)
    if " " in value.strip() or "{" in value:
        validate_template(value)
        return replace(base, preset="template", template=value, extra_args=(), executable=None)
    raise UsageError(
        f"unknown agent {value!r}: use a preset ({', '.join(preset_names())}) or a command template such as "
        "'mytool --prompt-file {prompt_file}'"
    )


def check_plan_agents(plan: Plan, base: AgentConfig, budget_usd: float | None = None) -> list[str]:
    """Refuse a plan whose per-batch ``agent`` is neither a preset nor a valid template, pointing at it.
    Returns warnings (the CLI prints them): limits an agent cannot apply, a run budget an agent cannot count."""
    configs = {base.preset: base}
    for i, b in enumerate(plan.batches):
        for task in getattr(b, "agents", ()) or ():
            if "\0" in str(getattr(task, "prompt", "")):
                raise PlanError(f"batches[{i}]: the prompt contains a NUL byte, which no agent can be given",
                                where=f"{plan.source}:{b.line}")
        if b.agent:
            try:
                cfg = agent_config(b.agent, base)
            except UsageError as exc:
                raise PlanError(f"batches[{i}].agent: {exc.message}", where=f"{plan.source}:{b.line}") from None
            configs.setdefault(cfg.preset, cfg)
    warnings = [w for cfg in configs.values() for w in unsupported(cfg)]
    if budget_usd is not None:
        warnings += [f"--budget-usd: the {name} agent reports no cost, so its batches do not count against it"
                     for name, cfg in configs.items()
                     if name == "template" or not _reports_cost(cfg)]
    return warnings


def preset_names() -> list[str]:
    """What ``--agent`` takes: the installed presets but "template" (that one is ``--agent-cmd``)."""
    return [n for n in PRESETS if n != "template"]


def _reports_cost(cfg: AgentConfig) -> bool:
    try:
        return preset_of(cfg).reports_cost
    except UsageError:
        return False
