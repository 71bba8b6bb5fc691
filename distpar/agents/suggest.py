"""``distpar plan --suggest-deps``: ask the configured agent which batches need which, as structured output.

A plan without ``depends_on`` runs as ordered stages (each batch after the one before it). The agent reads the
plan (and may read the repository, never change it) and answers, through Claude Code's ``--json-schema``
structured output, which earlier batches each batch needs; ``apply`` writes those as ``depends_on`` into the
plan's text, changing nothing else. Only dependencies on earlier batches are taken (the stage order already
allowed no others, and this keeps the plan acyclic); a batch the answer leaves out keeps its stage order.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distpar.agents.base import GUARD_VARS
from distpar.agents.claude import parse_claude
from distpar.agents.registry import PRESETS, command, secret_values
from distpar.core.errors import DistparError, ExitCode, UsageError
from distpar.core.masking import mask
from distpar.core.model import AgentConfig
from distpar.core.plan import Plan, Spans, extract_block, parse_plan
from distpar.infra.process import run_process

TIMEOUT = 600.0
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "batches": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "the batch id"},
                    "depends_on": {"type": "array", "items": {"type": "string"},
                                   "description": "ids of earlier batches this batch needs"},
                    "reason": {"type": "string", "description": "one sentence: why"},
                },
                "required": ["id", "depends_on", "reason"],
            },
        }
    },
    "required": ["batches"],
}
READ_ONLY = "Bash,Edit,Write,NotebookEdit"  # claude --disallowedTools: the agent may read, never change


class SuggestError(DistparError):
    """The agent gave no usable answer."""

    exit_code = ExitCode.BATCH_FAILED


@dataclass(frozen=True, slots=True)
class Suggestion:
    depends_on: dict[str, tuple[str, ...]]  # batch id -> earlier batch ids, for every batch of the plan
    reasons: dict[str, str]
    notes: tuple[str, ...] = ()  # what was dropped or kept, and why
    cost_usd: float | None = None


def prompt(plan: Plan) -> str:
    """What the agent is asked. Prompts are quoted line by line, as data, not instructions."""
    parts = [
        "You are reviewing a multi-batch coding plan (a CAST Agent Dispatch Manifest) before it runs. Its batches "
        "now run as ordered stages, each one after the one before it. For each batch, decide which EARLIER "
        "batches it truly needs: their code, files or results must exist before it starts. Be conservative: "
        "when in doubt, keep a dependency. A batch that needs no earlier batch gets an empty list. You may read "
        "the repository; do not change anything. Answer with one entry per batch, ids exactly as given.",
        "",
        "Batches, in plan order:",
    ]
    for b in plan.batches:
        parts.append(f'\nbatch "{b.id}"' + (f": {b.description}" if b.description else "")
                     + (" (its agents run in parallel)" if b.concurrent and len(b.agents) > 1 else ""))
        if not b.agents:
            parts.append("  (no agents: skipped)")
        for k, a in enumerate(b.agents, 1):
            parts.append(f"  agent {k} (subagent_type: {a.subagent_type}), prompt:")
            parts += [f"    > {line}" for line in a.prompt.splitlines()]
            if a.owns_files:
                parts.append(f"  agent {k} owns: {', '.join(a.owns_files)}")
        if b.verify_files:
            parts.append(f"  must leave: {', '.join(b.verify_files)}")
    return "\n".join(parts) + "\n"


def parse_answer(plan: Plan, answer: Any) -> Suggestion:
    """The agent's structured answer, checked against the plan (pure)."""
    rows = answer.get("batches") if isinstance(answer, dict) else None
    if not isinstance(rows, list):
        raise SuggestError(f"the agent's answer has no list of batches: {json.dumps(answer)[:300]}")
    ids = plan.ids
    position = {b: i for i, b in enumerate(ids)}
    notes: list[str] = []
    deps: dict[str, tuple[str, ...]] = {}
    reasons: dict[str, str] = {}
    for row in rows:
        if not isinstance(row, dict) or str(row.get("id")) not in position:
            notes.append(f"ignored an answer for an unknown batch: {json.dumps(row)[:200]}")
            continue
        bid = str(row["id"])
        kept: list[str] = []
        for d in row.get("depends_on") or []:
            d = str(d)
            if d not in position:
                notes.append(f"batch {bid}: ignored unknown batch {d!r}")
            elif position[d] >= position[bid]:
                notes.append(f"batch {bid}: ignored {d} (not an earlier batch)")
            elif d not in kept:
                kept.append(d)
        deps[bid] = tuple(sorted(kept, key=position.__getitem__))
        reasons[bid] = str(row.get("reason", ""))
    for i, bid in enumerate(ids):
        if bid not in deps:
            deps[bid] = (ids[i - 1],) if i else ()
            notes.append(f"batch {bid}: no answer, it keeps its stage order" + (f" (after {ids[i - 1]})" if i else ""))
    return Suggestion({b: deps[b] for b in ids}, reasons, tuple(notes))


def ask(plan: Plan, cfg: AgentConfig, workdir: Path, *, env: Mapping[str, str] | None = None,
        timeout: float = TIMEOUT) -> Suggestion:
    """Run the agent once, read-only, in ``workdir`` and return its checked suggestion."""
    if plan.declares_dependencies:
        raise UsageError("the plan already declares depends_on: --suggest-deps is for plans without any")
    if cfg.preset not in ("claude", "fake"):
        raise UsageError(f"--suggest-deps needs structured output, which distpar asks of Claude Code "
                         f"(--json-schema): the {cfg.preset} agent has none; use --agent claude")
    base = dict(os.environ if env is None else env)
    preset = PRESETS[cfg.preset]
    argv = [*command(cfg, base), "-p", "--output-format", "json", "--json-schema", json.dumps(SCHEMA),
            "--disallowedTools", READ_ONLY]
    if cfg.model:
        argv += ["--model", cfg.model]
    argv += ["--", prompt(plan)]
    run_env = {k: v for k, v in base.items() if k not in preset.unset}
    run_env.update({var: "1" for var in GUARD_VARS})
    with tempfile.TemporaryDirectory(prefix="distpar-suggest-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        result = run_process(argv, cwd=workdir, env=run_env, stdout_path=out, stderr_path=err, timeout=timeout)
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    secrets = secret_values(run_env, {})
    if result.timed_out:
        raise SuggestError(f"the agent gave no answer within {timeout:g} s")
    outcome = parse_claude(stdout, stderr, result.exit_code)
    if not outcome.ok:
        raise SuggestError(f"the agent failed ({outcome.result_class}): {mask(outcome.message, secrets)}")
    suggestion = parse_answer(plan, _structured(stdout))
    return Suggestion(suggestion.depends_on, suggestion.reasons, suggestion.notes, outcome.cost_usd)


def _structured(stdout: str) -> Any:
    """``structured_output`` of claude's JSON result; else JSON in its ``result`` text (older CLIs)."""
    data: dict[str, Any] | None = None
    for line in reversed(stdout.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("type", "result") == "result":
            data = obj
            break
    if data is None:
        raise SuggestError("the agent printed no JSON result")
    if data.get("structured_output") is not None:
        return data["structured_output"]
    text = str(data.get("result") or "")
    m = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        return json.loads(m.group(0)) if m else None
    except ValueError:
        raise SuggestError(f"the agent's answer is not JSON: {text[:300]}") from None


def apply(text: str, plan: Plan, suggestion: Suggestion) -> str:
    """``text`` (the plan file) with ``"depends_on": [...]`` written after each batch's id, nothing else
    changed; checked by parsing it again."""
    block, first_line = extract_block(text, plan.source)
    count = block.count("\n") + 1  # lines of the block in the file
    spans = Spans(block, first_line)
    ids = {b.id: spans.text(("batches", i, "id")) for i, b in enumerate(plan.batches)}  # as written: 1 or "1"
    inserts = []
    for i, b in enumerate(plan.batches):
        end = spans.end(spans.start(("batches", i, "id")))
        inserts.append((end, f', "depends_on": [{", ".join(ids[d] for d in suggestion.depends_on[b.id])}]'))
    for end, piece in sorted(inserts, reverse=True):
        block = block[:end] + piece + block[end:]
    lines = text.splitlines(keepends=True)
    eol = "\r\n" if lines[first_line - 1].endswith("\r\n") else "\n"
    new = "".join(lines[: first_line - 1]) + block.replace("\n", eol) + eol + "".join(lines[first_line - 1 + count :])
    again = parse_plan(new, plan.source)
    if {b.id: b.depends_on for b in again.batches} != suggestion.depends_on:  # pragma: no cover - a bug guard
        raise SuggestError("writing depends_on into the plan changed it otherwise; nothing was written")
    return new
