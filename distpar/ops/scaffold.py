"""``distpar init``: a commented plan skeleton to start a plan by hand from, one that ``distpar plan`` accepts as
it is (a parallel batch, a ``depends_on``, ``owns_files``, a verify step)."""

from __future__ import annotations

import os
from pathlib import Path

from distpar.core.errors import UsageError

DEFAULT_NAME = "plan.md"

SKELETON = """\
# Plan: {title}

<!--
A distpar plan: this markdown file with one fenced block opened by ```json dispatch (the CAST Agent Dispatch
Manifest). Text outside the block (like this comment) is yours: distpar reads only the block.

  distpar plan {name}              what would run, in which order, the predicted timeline (changes nothing)
  distpar run {name} --agent claude --verify 'make test'
                                   run it: one agent session per unit, each in its own worktree, merged back

In the block, JSON has no comments, so here is what each field does:
  plan_id       names the run in `distpar status` and reports
  batches       run in the order `depends_on` gives; a batch that names no dependency starts at once
  parallel      true: the batch's agents run at the same time (one unit each: 1#1, 1#2), merged before what waits
  owns_files    the files an agent will change: two units that may run together and own the same file are
                warned about by `distpar plan`
  depends_on    ids of the batches that must finish (and be merged) first
  verify_files  must exist and not be empty after the batch, else the batch fails
  estimate      minutes, for the predicted timeline
The last batch is the verify step: it waits for everything and checks the merged work (add --verify CMD to
`distpar run` to also run a command after every batch, --verify-merged CMD before the work lands).
Replace every prompt with the real instructions: an agent sees only its own prompt.
-->

```json dispatch
{{
  "plan_id": "{plan_id}",
  "batches": [
    {{
      "id": 1,
      "description": "two independent pieces, side by side",
      "parallel": true,
      "estimate": 10,
      "agents": [
        {{"subagent_type": "general-purpose", "owns_files": ["src/feature_a.py"],
         "prompt": "Implement feature A in src/feature_a.py. Do not edit other files."}},
        {{"subagent_type": "general-purpose", "owns_files": ["src/feature_b.py"],
         "prompt": "Implement feature B in src/feature_b.py. Do not edit other files."}}
      ]
    }},
    {{
      "id": 2,
      "description": "documentation, independent of the code",
      "depends_on": [],
      "estimate": 5,
      "verify_files": ["docs/features.md"],
      "agents": [
        {{"subagent_type": "general-purpose", "owns_files": ["docs/features.md"],
         "prompt": "Write docs/features.md describing features A and B for users."}}
      ]
    }},
    {{
      "id": 3,
      "description": "verify: tests for the merged work",
      "depends_on": [1, 2],
      "estimate": 5,
      "verify_files": ["tests/test_features.py"],
      "agents": [
        {{"subagent_type": "general-purpose", "owns_files": ["tests/test_features.py"],
         "prompt": "Write tests/test_features.py covering features A and B, run the test suite and fix what fails."}}
      ]
    }}
  ]
}}
```
"""


def skeleton(name: str = DEFAULT_NAME) -> str:
    """The skeleton's text; ``name`` is how the comments refer to the file."""
    stem = Path(name).stem or "plan"
    plan_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem.lower()).strip("-") or "plan"
    return SKELETON.format(title=stem, name=name, plan_id=plan_id)


def write_skeleton(path: Path) -> Path:
    """Write the skeleton to ``path`` (a directory gets ``plan.md`` in it); an existing file is never replaced."""
    if path.is_dir():
        path = path / DEFAULT_NAME
    if not path.parent.is_dir():
        raise UsageError(f"{path}: the directory {path.parent} does not exist")
    text = skeleton(path.name)
    try:
        # O_EXCL: refused if the file exists, even if it appeared since the check (nothing is overwritten)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UsageError(f"{path} already exists; distpar init never overwrites a file",
                         hint="give another path: distpar init PATH") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path
