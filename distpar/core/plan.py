"""Plan files: markdown with a fenced ```json dispatch block (the CAST Agent Dispatch Manifest) -> ``Plan``.

Pure: text in, ``Plan`` out. Every error names the file, the line and the JSON path that is wrong. Every field
the CAST protocol documents is accepted (its spec, planner templates and README); unknown top-level fields are
warnings (``Plan.warnings``), unknown batch or agent fields are errors (a typo there would change the plan).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distpar.core import names
from distpar.core.errors import PlanError
from distpar.core.jsonspans import NonFinite, Path_, Spans, decode, dollar_path, json_path

__all__ = ["AgentTask", "Batch", "Plan", "PlanError", "Spans", "extract_block", "find_cycle", "json_path",
           "load_plan", "parse_plan", "repo_relative"]

FENCE_OPEN = re.compile(r"^(?P<indent>\s{0,3})(?P<fence>`{3,}|~{3,})\s*json\s+dispatch\s*$")
DEFAULT_ESTIMATE = 1.0  # minutes; equal weights when a plan gives none
BATCH_TYPES = ("sequential", "fan-out")
_TOP_KEYS = {"plan_id", "batches", "target_branch", "pre_approved", "independent"}
_BATCH_KEYS = {"id", "description", "parallel", "type", "agents", "depends_on", "verify_files", "commit_repos",
               "estimate", "agent", "timeout"}
_AGENT_KEYS = {"subagent_type", "prompt", "owns_files", "depends_on", "commit_repos", "estimate", "timeout"}
MAX_PLAN_BYTES = 4 * 2**20  # a plan file larger than this is refused (it is read with this bound)


@dataclass(frozen=True, slots=True)
class AgentTask:
    subagent_type: str
    prompt: str
    owns_files: tuple[str, ...] = ()  # files this agent creates or modifies (conflict prediction)
    depends_on: tuple[str, ...] = ()  # batch ids this agent needs (CAST agent-level depends_on)
    commit_repos: tuple[str, ...] = ()
    estimate: float | None = None  # minutes; None: derived from the batch's estimate
    agent: str | None = None  # preset or template for this agent only (hand-built plans; not a manifest field)
    timeout: float | None = None
    line: int = 0
    depends_declared: bool = False  # the manifest has a depends_on key here (even an empty one)

    def to_dict(self) -> dict[str, Any]:
        return {"subagent_type": self.subagent_type, "prompt": self.prompt, "owns_files": list(self.owns_files),
                "depends_on": list(self.depends_on), "commit_repos": list(self.commit_repos),
                "estimate": self.estimate, "agent": self.agent, "timeout": self.timeout, "line": self.line,
                "depends_declared": self.depends_declared}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AgentTask:
        return cls(str(d.get("subagent_type", "general-purpose")), str(d["prompt"]),
                   tuple(d.get("owns_files", ())), tuple(str(x) for x in d.get("depends_on", ())),
                   tuple(d.get("commit_repos", ())), d.get("estimate"), d.get("agent"), d.get("timeout"),
                   int(d.get("line", 0)), bool(d.get("depends_declared", bool(d.get("depends_on")))))


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
    type: str = "sequential"  # CAST: "fan-out" hands the agents' answers to the next batch's prompts
    verify_files: tuple[str, ...] = ()  # must exist (and be non-empty) after the batch
    commit_repos: tuple[str, ...] = ()
    depends_declared: bool = False

    @property
    def concurrent(self) -> bool:
        """Whether the batch's agents run at the same time (CAST: ``parallel: true`` or ``type: fan-out``)."""
        return self.parallel or self.type == "fan-out"

    @property
    def all_depends_on(self) -> tuple[str, ...]:
        """The batch's dependencies and its agents' (agent-level ``depends_on``), in order, once each."""
        return tuple(dict.fromkeys([*self.depends_on, *(d for a in self.agents for d in a.depends_on)]))

    def prompt(self) -> str:
        """The prompt given to one agent session running the whole batch.

        One agent: its prompt verbatim. Several: one dispatch prompt that lists them, so a headless agent with
        sub-agents (Claude Code's Task tool) runs them as the manifest says, in one session and one worktree.
        """
        if len(self.agents) == 1:
            return self.agents[0].prompt
        how = "in parallel" if self.concurrent else "one after another, in this order"
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
            "type": self.type,
            "agents": [a.to_dict() for a in self.agents],
            "depends_on": list(self.depends_on),
            "estimate": self.estimate,
            "agent": self.agent,
            "timeout": self.timeout,
            "line": self.line,
            "verify_files": list(self.verify_files),
            "commit_repos": list(self.commit_repos),
            "depends_declared": self.depends_declared,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Batch:
        return cls(
            id=str(d["id"]),
            description=d.get("description", ""),
            agents=tuple(AgentTask.from_dict(a) for a in d["agents"]),
            parallel=bool(d.get("parallel", False)),
            depends_on=tuple(str(x) for x in d.get("depends_on", ())),
            estimate=float(d.get("estimate", DEFAULT_ESTIMATE)),
            agent=d.get("agent"),
            timeout=d.get("timeout"),
            line=int(d.get("line", 0)),
            type=d.get("type", "sequential"),
            verify_files=tuple(d.get("verify_files", ())),
            commit_repos=tuple(d.get("commit_repos", ())),
            depends_declared=bool(d.get("depends_declared", bool(d.get("depends_on")))),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    batches: tuple[Batch, ...]
    source: str = "<plan>"
    has_dependencies: bool = field(default=False)
    target_branch: str | None = None  # CAST: the branch the plan's work lands on (the default for --into)
    pre_approved: bool = False  # CAST: skip the approval gate (distpar never asks: accepted, no effect)
    independent: bool = False  # distpar: the batches do not need each other (the seed's assumption)
    warnings: tuple[str, ...] = ()  # for the CLI to print: unknown top-level fields, skipped batches

    def batch(self, batch_id: str) -> Batch:
        for b in self.batches:
            if b.id == batch_id:
                return b
        raise KeyError(batch_id)

    @property
    def ids(self) -> list[str]:
        return [b.id for b in self.batches]

    @property
    def declares_dependencies(self) -> bool:
        """Whether any batch or agent declares ``depends_on`` (even an empty one): the plan is then a DAG."""
        return self.has_dependencies or any(
            b.depends_on or b.depends_declared or any(a.depends_on or a.depends_declared for a in b.agents)
            for b in self.batches
        )

    def fan_out_source(self, batch_id: str) -> str | None:
        """The ``type: fan-out`` batch whose agents' answers go into ``batch_id``'s prompts (CAST: the batch
        immediately before it in plan order), or None."""
        ids = self.ids
        i = ids.index(batch_id)
        if i > 0 and self.batches[i - 1].type == "fan-out" and self.batches[i - 1].agents:
            return ids[i - 1]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id,
            "source": self.source,
            "batches": [b.to_dict() for b in self.batches],
            "target_branch": self.target_branch,
            "pre_approved": self.pre_approved,
            "independent": self.independent,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        batches = tuple(Batch.from_dict(b) for b in d["batches"])
        return cls(
            plan_id=d["plan_id"],
            batches=batches,
            source=d.get("source", "<plan>"),
            has_dependencies=any(b.depends_declared or b.all_depends_on for b in batches),
            target_branch=d.get("target_branch"),
            pre_approved=bool(d.get("pre_approved", False)),
            independent=bool(d.get("independent", False)),
            warnings=tuple(d.get("warnings", ())),
        )


def load_plan(path: str | Path) -> Plan:
    return parse_plan(read_plan_text(path), source=str(path))


def read_plan_text(path: str | Path, limit: int = MAX_PLAN_BYTES) -> str:
    """The text of the plan file at ``path``: a regular file (a FIFO, a device or a directory is refused at once,
    without waiting on it) of at most ``limit`` bytes, read with that bound."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PlanError(f"plan file not found: {p}") from None
    except OSError as exc:
        raise PlanError(f"cannot read plan file {p}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PlanError(f"the plan {p} is not a regular file ({_file_kind(st.st_mode)}): give a file")
        if st.st_size > limit:
            raise PlanError(f"the plan {p} is {st.st_size / 2**20:.1f} MiB: larger than the {limit // 2**20} MiB "
                            "a plan may be")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(2**20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise PlanError(f"cannot read plan file {p}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:  # it grew while being read
        raise PlanError(f"the plan {p} is larger than the {limit // 2**20} MiB a plan may be")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"cannot read plan file {p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def parse_plan(text: str, source: str = "<plan>") -> Plan:
    block, first_line = extract_block(text, source)
    try:
        data, twice = decode(block)
    except json.JSONDecodeError as exc:
        raise PlanError(
            f"invalid JSON in the dispatch block: {exc.msg} (column {exc.colno})",
            where=f"{source}:{first_line + exc.lineno - 1}",
        ) from None
    if twice is not None:
        path, key = twice
        spans = Spans(block, first_line)
        starts = spans.key_starts(spans.start(path), key)
        line = spans.line(starts[1]) if len(starts) > 1 else spans.line_of(path)
        raise PlanError(f"duplicate key {json.dumps(key)} at {dollar_path(path)}", where=f"{source}:{line}",
                        hint="JSON would keep only the last value silently: merge the two or rename one")
    return _Builder(block, first_line, source).build(data)


def extract_block(text: str, source: str) -> tuple[str, int]:
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


# Text that may hold a NUL byte (only as an escape: JSON strings cannot hold a raw one) or a non-finite number.
_BIG = re.compile(r"[eE]\+?[0-9]{3}|[0-9]{300}")


def _suspect(block: str) -> bool:
    return "\\u0000" in block or "NaN" in block or "Infinity" in block or _BIG.search(block) is not None


class _Builder:
    def __init__(self, block: str, first_line: int, source: str) -> None:
        self.spans = Spans(block, first_line)
        self.source = source
        self.first_line = first_line

    def error(self, path: Path_, message: str, *, sep: str = " ") -> PlanError:
        where = f"{self.source}:{self.spans.line_of(path) if path else self.first_line}"
        return PlanError(f"{json_path(path)}{sep}{message}" if path else message, where=where)

    # --- the whole manifest -------------------------------------------------------------------------------

    def build(self, data: Any) -> Plan:
        top = f"{self.source}:{self.first_line}"
        if not isinstance(data, dict):
            raise PlanError(f"the dispatch block must be a JSON object, not {_kind(data)}", where=top)
        if _suspect(self.spans.block):  # the walk is only needed when the text could hold one
            self.check_values(data, ())
        warnings: list[str] = []
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            warnings.append(f"{top}: unknown top-level field(s) {', '.join(unknown)} ignored "
                            f"(known: {', '.join(sorted(_TOP_KEYS))})")
        plan_id = data.get("plan_id", "")
        if not isinstance(plan_id, (str, int)) or isinstance(plan_id, bool):
            raise PlanError(f"plan_id must be a string, not {_kind(plan_id)}", where=top)
        target = data.get("target_branch")
        if target is not None:
            why = names.branch_problem(target) if isinstance(target, str) else f"must be a string, not {_kind(target)}"
            if why:
                raise self.error(("target_branch",), f"{target!r} cannot be a branch name: {why}")
        flags = {}
        for name in ("pre_approved", "independent"):
            flags[name] = data.get(name, False)
            if not isinstance(flags[name], bool):
                raise self.error((name,), f"must be true or false, not {flags[name]!r}")
        raw = data.get("batches")
        if raw is None:
            raise PlanError('no "batches": the manifest needs a list of batches', where=top)
        if not isinstance(raw, list):
            raise PlanError(f"batches must be a list, not {_kind(raw)}", where=top)
        if not raw:
            raise PlanError("batches is empty: nothing to run", where=top)

        # Batches that all have no agents make a valid plan (CAST's own fixtures): there is nothing to run.
        batches: list[Batch] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(raw):
            batch = self.batch(item, i)
            if batch.id in seen:
                raise self.error(("batches", i, "id"), f"duplicate batch id {batch.id!r} (first used by "
                                 f"batches[{seen[batch.id]}])", sep=": ")
            seen[batch.id] = i
            batches.append(batch)
            if not batch.agents:
                warnings.append(f"{self.source}:{batch.line}: batch {batch.id} has no agents: it is skipped")
        self.check_unit_names(batches, seen)
        self.check_dependencies(batches, seen)
        plan = Plan(
            plan_id=str(plan_id),
            batches=tuple(batches),
            source=self.source,
            target_branch=target,
            pre_approved=flags["pre_approved"],
            independent=flags["independent"],
            warnings=tuple(warnings),
        )
        return _with_has_dependencies(plan)

    def check_values(self, value: Any, path: Path_) -> None:
        """Anywhere in the manifest: no NUL byte in a string (it cannot reach a file or an argument), no
        non-finite number (``1e309``, ``NaN``, ``Infinity``)."""
        stack: list[tuple[Any, Path_]] = [(value, path)]
        while stack:
            v, p = stack.pop()
            if isinstance(v, NonFinite) or (isinstance(v, float) and not math.isfinite(v)):
                raise self.error(p, f"must be a finite number, got {self.spans.text(p)}")
            if isinstance(v, str) and "\x00" in v:
                raise self.error(p, "contains a NUL byte")
            if isinstance(v, dict):
                stack.extend((x, (*p, k)) for k, x in v.items())
            elif isinstance(v, list):
                stack.extend((x, (*p, k)) for k, x in enumerate(v))

    # --- one batch and its agents ---------------------------------------------------------------------------

    def batch(self, item: Any, i: int) -> Batch:
        path: Path_ = ("batches", i)
        line = self.spans.line_of(path)
        self.check_object(item, path, _BATCH_KEYS)
        if "id" not in item:
            raise self.error(path, "missing id", sep=": ")
        bid = item["id"]
        if isinstance(bid, bool) or not isinstance(bid, (int, str)) or str(bid).strip() == "":
            raise self.error((*path, "id"), f"must be a non-empty string or an integer, got {bid!r}")
        bid = str(bid)
        why = names.problem(bid)
        if why:
            raise self.error((*path, "id"), f"{bid!r} {why}: ids name branches, files and commit trailers")
        description = item.get("description", "")
        if not isinstance(description, str):
            raise self.error((*path, "description"), f"must be a string, not {_kind(description)}")
        parallel = item.get("parallel", False)
        if not isinstance(parallel, bool):
            raise self.error((*path, "parallel"), f"must be true or false, not {parallel!r}")
        btype = item.get("type", "sequential")
        if btype not in BATCH_TYPES:
            raise self.error((*path, "type"), f"must be one of {', '.join(BATCH_TYPES)}, not {btype!r}")
        agents_raw = item.get("agents")
        if not isinstance(agents_raw, list):
            raise self.error((*path, "agents"), "must be a list of {subagent_type, prompt} (an empty list skips "
                             "the batch)")
        # One agent: its line is the batch's (errors still find their exact line); several: each its own.
        agents = tuple(self.agent(a, (*path, "agents", j), line if len(agents_raw) == 1 else None)
                       for j, a in enumerate(agents_raw))
        return Batch(
            id=bid,
            description=description,
            agents=agents,
            parallel=parallel,
            depends_on=self.ids(item, (*path, "depends_on")),
            estimate=self.number(item, (*path, "estimate"), "a positive number of minutes") or DEFAULT_ESTIMATE,
            agent=self.agent_value(item, (*path, "agent")),
            timeout=self.number(item, (*path, "timeout"), "a positive number of seconds"),
            line=line,
            type=btype,
            verify_files=self.strings(item, (*path, "verify_files"), "paths"),
            commit_repos=self.strings(item, (*path, "commit_repos"), "repository paths"),
            depends_declared="depends_on" in item,
        )

    def agent(self, a: Any, path: Path_, line: int | None = None) -> AgentTask:
        self.check_object(a, path, _AGENT_KEYS)
        prompt = a.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise self.error((*path, "prompt"), "is empty: every agent needs a prompt")
        stype = a.get("subagent_type", "general-purpose")
        if not isinstance(stype, str) or not stype.strip():
            raise self.error((*path, "subagent_type"), "must be a non-empty string")
        if names.problem(stype):
            raise self.error((*path, "subagent_type"), f"{stype!r} {names.problem(stype)}")
        return AgentTask(
            subagent_type=stype,
            prompt=prompt,
            owns_files=self.strings(a, (*path, "owns_files"), "paths"),
            depends_on=self.ids(a, (*path, "depends_on")),
            commit_repos=self.strings(a, (*path, "commit_repos"), "repository paths"),
            estimate=self.number(a, (*path, "estimate"), "a positive number of minutes"),
            timeout=self.number(a, (*path, "timeout"), "a positive number of seconds"),
            line=line if line is not None else self.spans.line_of(path),
            depends_declared="depends_on" in a,
        )

    # --- field helpers ----------------------------------------------------------------------------------------

    def check_object(self, item: Any, path: Path_, allowed: set[str]) -> None:
        if not isinstance(item, dict):
            raise self.error(path, f"must be an object, not {_kind(item)}")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise self.error(path, f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})",
                             sep=": ")

    def ids(self, item: dict[str, Any], path: Path_) -> tuple[str, ...]:
        raw = item.get(str(path[-1]), [])
        if isinstance(raw, (str, int)) and not isinstance(raw, bool):
            raw = [raw]
        if not isinstance(raw, list):
            raise self.error(path, f"must be a list of batch ids, not {_kind(raw)}")
        out: list[str] = []
        for j, d in enumerate(raw):
            if isinstance(d, bool) or not isinstance(d, (int, str)):
                raise self.error((*path, j), f"must be a batch id, not {d!r}")
            if str(d) not in out:
                out.append(str(d))
        return tuple(out)

    def strings(self, item: dict[str, Any], path: Path_, what: str) -> tuple[str, ...]:
        raw = item.get(str(path[-1]), [])
        if not isinstance(raw, list) or not all(isinstance(x, str) and x.strip() for x in raw):
            raise self.error(path, f"must be a list of {what} (non-empty strings)")
        return tuple(raw)

    def number(self, item: dict[str, Any], path: Path_, what: str) -> float | None:
        value = item.get(str(path[-1]))
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(path, f"must be {what}, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise self.error(path, f"must be a finite number, got {self.spans.text(path)}")
        if number <= 0:
            raise self.error(path, f"must be {what}, got {value!r}")
        return number

    def agent_value(self, item: dict[str, Any], path: Path_) -> str | None:
        agent = item.get(str(path[-1]))
        if agent is not None and (not isinstance(agent, str) or not agent.strip()):
            raise self.error(path, "must be a preset name or a command template")
        return agent

    # --- across batches -------------------------------------------------------------------------------------

    def check_unit_names(self, batches: list[Batch], seen: dict[str, int]) -> None:
        """A batch of several agents runs them as units ``<id>#<k>``: no batch may be called that."""
        for i, b in enumerate(batches):
            if len(b.agents) > 1:
                for k in range(1, len(b.agents) + 1):
                    uid = f"{b.id}#{k}"
                    if uid in seen:
                        raise self.error(("batches", seen[uid], "id"),
                                         f"{uid!r} is the name of agent {k} of batch {b.id!r} (batches[{i}]); "
                                         "rename this batch", sep=": ")

    def check_dependencies(self, batches: list[Batch], seen: dict[str, int]) -> None:
        for i, b in enumerate(batches):
            sources: list[tuple[Path_, tuple[str, ...]]] = [(("batches", i, "depends_on"), b.depends_on)]
            sources += [(("batches", i, "agents", j, "depends_on"), a.depends_on) for j, a in enumerate(b.agents)]
            for path, deps in sources:
                for j, dep in enumerate(deps):
                    if dep not in seen:
                        raise self.error((*path, j), f"unknown batch id {dep!r} (known ids: {', '.join(seen)})",
                                         sep=": ")
                    if dep == b.id:
                        raise self.error((*path, j), f"batch {b.id!r} depends on itself", sep=": ")
        cycle = find_cycle(batches)
        if cycle:
            first = batches[seen[cycle[0]]]
            raise PlanError("dependency cycle: " + " -> ".join([*cycle, cycle[0]]),
                            where=f"{self.source}:{first.line}")


def _with_has_dependencies(plan: Plan) -> Plan:
    return replace(plan, has_dependencies=plan.declares_dependencies)


def find_cycle(batches: list[Batch] | tuple[Batch, ...]) -> list[str] | None:
    """Return one dependency cycle (batch and agent-level ``depends_on``) as a list of ids, or None.
    Iterative DFS (plans may be large)."""
    deps = {b.id: b.all_depends_on for b in batches}
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


def repo_relative(path: str, repo_root: str | None) -> str | None:
    """``path`` relative to the repository: as is when relative, stripped of ``repo_root`` when under it,
    None when it points outside (``~/...``, another absolute path). Pure string work, no I/O."""
    p = path.strip()
    if p.startswith("~"):
        return None
    if not p.startswith("/"):
        return p.removeprefix("./")
    if repo_root:
        root = repo_root.rstrip("/") + "/"
        if p.startswith(root):
            return p[len(root):]
    return None


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number"
    )
