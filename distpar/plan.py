"""Plan files: markdown with a fenced ```json dispatch block (the Agent Dispatch Manifest) -> ``Plan``.

Pure: text in, ``Plan`` out. Every error names the file, the line and the JSON path that is wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distpar.errors import PlanError

FENCE_OPEN = re.compile(r"^(?P<indent>\s{0,3})(?P<fence>`{3,}|~{3,})\s*json\s+dispatch\s*$")
DEFAULT_ESTIMATE = 1.0  # minutes; equal weights when a plan gives none
_BATCH_KEYS = {"id", "description", "parallel", "agents", "depends_on", "estimate", "agent", "timeout"}
_AGENT_KEYS = {"subagent_type", "prompt"}


@dataclass(frozen=True, slots=True)
class AgentTask:
    subagent_type: str
    prompt: str


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    description: str
    agents: tuple[AgentTask, ...]
    parallel: bool = False
    depends_on: tuple[str, ...] = ()
    estimate: float = DEFAULT_ESTIMATE
    agent: str | None = None  # preset name or command template overriding the run's agent
    timeout: float | None = None  # seconds
    line: int = 0  # line in the plan file where the batch starts

    def prompt(self) -> str:
        """The prompt given to the agent for this batch.

        One agent: its prompt verbatim. Several: one dispatch prompt that lists them, so a headless agent with
        sub-agents (Claude Code's Task tool) runs them as the manifest says, in one session and one worktree.
        """
        if len(self.agents) == 1:
            return self.agents[0].prompt
        how = "in parallel" if self.parallel else "one after another, in this order"
        parts = [
            f"Batch {self.id}: {self.description}".rstrip(": "),
            f"Dispatch the following {len(self.agents)} sub-agents {how}, each with its prompt verbatim:",
        ]
        for i, task in enumerate(self.agents, 1):
            parts.append(f"\n--- agent {i} (subagent_type: {task.subagent_type}) ---\n{task.prompt}")
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "description": self.description,
            "parallel": self.parallel,
            "agents": [{"subagent_type": a.subagent_type, "prompt": a.prompt} for a in self.agents],
            "depends_on": list(self.depends_on),
            "estimate": self.estimate,
            "agent": self.agent,
            "timeout": self.timeout,
            "line": self.line,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Batch:
        return cls(
            id=str(d["id"]),
            description=d.get("description", ""),
            agents=tuple(AgentTask(a["subagent_type"], a["prompt"]) for a in d["agents"]),
            parallel=bool(d.get("parallel", False)),
            depends_on=tuple(str(x) for x in d.get("depends_on", ())),
            estimate=float(d.get("estimate", DEFAULT_ESTIMATE)),
            agent=d.get("agent"),
            timeout=d.get("timeout"),
            line=int(d.get("line", 0)),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    batches: tuple[Batch, ...]
    source: str = "<plan>"
    has_dependencies: bool = field(default=False)

    def batch(self, batch_id: str) -> Batch:
        for b in self.batches:
            if b.id == batch_id:
                return b
        raise KeyError(batch_id)

    @property
    def ids(self) -> list[str]:
        return [b.id for b in self.batches]

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id,
            "source": self.source,
            "batches": [b.to_dict() for b in self.batches],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        batches = tuple(Batch.from_dict(b) for b in d["batches"])
        return cls(
            plan_id=d["plan_id"],
            batches=batches,
            source=d.get("source", "<plan>"),
            has_dependencies=any(b.depends_on for b in batches),
        )


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"plan file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"cannot read plan file {p}: {exc}") from None
    return parse_plan(text, source=str(path))


def parse_plan(text: str, source: str = "<plan>") -> Plan:
    block, first_line = _extract_block(text, source)
    try:
        data = json.loads(block)
    except json.JSONDecodeError as exc:
        raise PlanError(
            f"invalid JSON in the dispatch block: {exc.msg} (column {exc.colno})",
            where=f"{source}:{first_line + exc.lineno - 1}",
        ) from None
    lines = _batch_lines(block, first_line)
    return _build(data, source, first_line, lines)


def _extract_block(text: str, source: str) -> tuple[str, int]:
    """Return the dispatch block's JSON text and the file line number of its first line."""
    lines = text.splitlines()
    found: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = FENCE_OPEN.match(line)
        if m:
            found.append((i, m.group("fence")))
    if not found:
        raise PlanError(
            "no dispatch block: expected a fenced block opened by a line ```json dispatch",
            where=source,
            hint="see README.md, 'Plan format'",
        )
    if len(found) > 1:
        where = ", ".join(str(i + 1) for i, _ in found)
        raise PlanError(f"{len(found)} dispatch blocks (lines {where}); a plan has exactly one", where=source)
    start, fence = found[0]
    for j in range(start + 1, len(lines)):
        stripped = lines[j].strip()
        if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
            return "\n".join(lines[start + 1 : j]), start + 2
    raise PlanError(f"the dispatch block opened here is never closed with {fence}", where=f"{source}:{start + 1}")


def _batch_lines(block: str, first_line: int) -> list[int]:
    """Best-effort file line of each element of the top-level "batches" array (for error messages)."""
    m = re.search(r'"batches"\s*:\s*\[', block)
    if not m:
        return []
    decoder = json.JSONDecoder()
    out: list[int] = []
    i = m.end()
    line, counted = first_line + block.count("\n", 0, i), i
    for _ in range(1_000_000):
        while i < len(block) and block[i] in " \t\r\n,":
            i += 1
        if i >= len(block) or block[i] == "]":
            break
        line += block.count("\n", counted, i)
        counted = i
        out.append(line)
        try:
            _, i = decoder.raw_decode(block, i)
        except json.JSONDecodeError:
            break
    return out


def _build(data: Any, source: str, first_line: int, lines: list[int]) -> Plan:
    top = f"{source}:{first_line}"
    if not isinstance(data, dict):
        raise PlanError(f"the dispatch block must be a JSON object, not {_kind(data)}", where=top)
    plan_id = data.get("plan_id", "")
    if not isinstance(plan_id, (str, int)) or isinstance(plan_id, bool):
        raise PlanError(f"plan_id must be a string, not {_kind(plan_id)}", where=top)
    raw = data.get("batches")
    if raw is None:
        raise PlanError('no "batches": the manifest needs a list of batches', where=top)
    if not isinstance(raw, list):
        raise PlanError(f"batches must be a list, not {_kind(raw)}", where=top)
    if not raw:
        raise PlanError("batches is empty: nothing to run", where=top)

    batches: list[Batch] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        line = lines[i] if i < len(lines) else first_line
        batch = _parse_batch(item, i, f"{source}:{line}", line)
        if batch.id in seen:
            raise PlanError(
                f"batches[{i}].id: duplicate batch id {batch.id!r} (first used by batches[{seen[batch.id]}])",
                where=f"{source}:{line}",
            )
        seen[batch.id] = i
        batches.append(batch)

    for i, b in enumerate(batches):
        for j, dep in enumerate(b.depends_on):
            where = f"{source}:{b.line}"
            if dep not in seen:
                known = ", ".join(seen)
                raise PlanError(
                    f"batches[{i}].depends_on[{j}]: unknown batch id {dep!r} (known ids: {known})", where=where
                )
            if dep == b.id:
                raise PlanError(f"batches[{i}].depends_on[{j}]: batch {b.id!r} depends on itself", where=where)

    cycle = find_cycle(batches)
    if cycle:
        first = batches[seen[cycle[0]]]
        raise PlanError(
            "dependency cycle: " + " -> ".join([*cycle, cycle[0]]),
            where=f"{source}:{first.line}",
        )
    return Plan(
        plan_id=str(plan_id),
        batches=tuple(batches),
        source=source,
        has_dependencies=any(b.depends_on for b in batches),
    )


def _parse_batch(item: Any, i: int, where: str, line: int) -> Batch:
    path = f"batches[{i}]"
    if not isinstance(item, dict):
        raise PlanError(f"{path} must be an object, not {_kind(item)}", where=where)
    unknown = sorted(set(item) - _BATCH_KEYS)
    if unknown:
        raise PlanError(
            f"{path}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_BATCH_KEYS))})",
            where=where,
        )
    if "id" not in item:
        raise PlanError(f"{path}: missing id", where=where)
    bid = item["id"]
    if isinstance(bid, bool) or not isinstance(bid, (int, str)) or str(bid).strip() == "":
        raise PlanError(f"{path}.id must be a non-empty string or an integer, got {bid!r}", where=where)
    bid = str(bid)
    description = item.get("description", "")
    if not isinstance(description, str):
        raise PlanError(f"{path}.description must be a string, not {_kind(description)}", where=where)
    parallel = item.get("parallel", False)
    if not isinstance(parallel, bool):
        raise PlanError(f"{path}.parallel must be true or false, not {parallel!r}", where=where)

    agents_raw = item.get("agents")
    if not isinstance(agents_raw, list) or not agents_raw:
        raise PlanError(f"{path}.agents must be a non-empty list of {{subagent_type, prompt}}", where=where)
    agents: list[AgentTask] = []
    for j, a in enumerate(agents_raw):
        apath = f"{path}.agents[{j}]"
        if not isinstance(a, dict):
            raise PlanError(f"{apath} must be an object, not {_kind(a)}", where=where)
        extra = sorted(set(a) - _AGENT_KEYS)
        if extra:
            raise PlanError(f"{apath}: unknown field(s) {', '.join(extra)}", where=where)
        prompt = a.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise PlanError(f"{apath}.prompt is empty: every agent needs a prompt", where=where)
        stype = a.get("subagent_type", "general-purpose")
        if not isinstance(stype, str) or not stype.strip():
            raise PlanError(f"{apath}.subagent_type must be a non-empty string", where=where)
        agents.append(AgentTask(stype, prompt))

    deps_raw = item.get("depends_on", [])
    if isinstance(deps_raw, (str, int)) and not isinstance(deps_raw, bool):
        deps_raw = [deps_raw]
    if not isinstance(deps_raw, list):
        raise PlanError(f"{path}.depends_on must be a list of batch ids, not {_kind(deps_raw)}", where=where)
    deps: list[str] = []
    for j, d in enumerate(deps_raw):
        if isinstance(d, bool) or not isinstance(d, (int, str)):
            raise PlanError(f"{path}.depends_on[{j}] must be a batch id, not {d!r}", where=where)
        if str(d) not in deps:
            deps.append(str(d))

    estimate = item.get("estimate", DEFAULT_ESTIMATE)
    if isinstance(estimate, bool) or not isinstance(estimate, (int, float)) or not estimate > 0:
        raise PlanError(f"{path}.estimate must be a positive number of minutes, got {estimate!r}", where=where)
    timeout = item.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise PlanError(f"{path}.timeout must be a positive number of seconds, got {timeout!r}", where=where)
    agent = item.get("agent")
    if agent is not None and (not isinstance(agent, str) or not agent.strip()):
        raise PlanError(f"{path}.agent must be a preset name or a command template", where=where)

    return Batch(
        id=bid,
        description=description,
        agents=tuple(agents),
        parallel=parallel,
        depends_on=tuple(deps),
        estimate=float(estimate),
        agent=agent,
        timeout=float(timeout) if timeout is not None else None,
        line=line,
    )


def find_cycle(batches: list[Batch] | tuple[Batch, ...]) -> list[str] | None:
    """Return one dependency cycle as a list of ids, or None. Iterative DFS (plans may be large)."""
    deps = {b.id: b.depends_on for b in batches}
    state: dict[str, int] = {}  # 1 = on stack, 2 = done
    for root in deps:
        if state.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        state[root] = 1
        while stack:
            node, k = stack[-1]
            children = deps.get(node, ())
            if k < len(children):
                stack[-1] = (node, k + 1)
                child = children[k]
                if child not in deps:
                    continue
                if state.get(child) == 1:
                    return path[path.index(child) :]
                if not state.get(child):
                    state[child] = 1
                    stack.append((child, 0))
                    path.append(child)
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return None


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number"
    )
