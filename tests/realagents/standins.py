"""Stand-in model servers for the real agent CLIs: one HTTP server on 127.0.0.1 that speaks the four provider APIs
the CLIs call, so that a real CLI runs a batch end to end with no network and no key.

    POST /v1/messages                      Anthropic Messages (Claude Code; SSE when "stream": true)
    POST /v1/responses                     OpenAI Responses, SSE (codex, through a custom model provider)
    POST /v1/chat/completions              OpenAI Chat Completions (aider through litellm; SSE when asked)
    POST /v1beta/models/M:generateContent  Gemini (gemini-cli's router and main model; :streamGenerateContent SSE)

What it answers follows the prompt, with the fake agent's convention (``distpar.testing.fake_agent.prompt_commands``):

    @fake write PATH TEXT    the model calls the CLI's file tool (or shell, or an edit block) to write TEXT to PATH
    @standin status CODE     answer HTTP CODE with the provider's error body (429 adds retry-after: 1)
    @standin delay SECONDS   wait that long before answering (bounded by the server's shutdown)
    @standin drop            close the connection without an answer
    @standin call NAME JSON  (Claude) call tool NAME with JSON input, one call per turn in the order given; in
                             JSON, $run_id is the last "run_id" a tool result held (MCP tools: mcp__SERVER__TOOL)

distpar's resolve prompt (``--on-conflict resolve``) is answered by Claude's Read then Write of each file it quotes
with conflict markers, merged as the fake agent merges (both sides' lines: ``distpar.testing.fake_resolve``).

Once the request carries the results of its tool calls, the model answers with a short text and ends its turn.
Any other request (a title, a commit message, a quota check) gets a short text. Every request is recorded in
``StandIn.requests`` (path, model, what was decided) for the tests to assert on.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from distpar.testing.fake_agent import prompt_commands
from distpar.testing.fake_resolve import union

MAX_DELAY = 120.0
MAX_BODY = 64 * 1024 * 1024
TOKENS_IN, TOKENS_OUT = 120, 30  # reported per answer

# The provider's error body per status.
ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                    529: "overloaded_error"}
OPENAI_ERRORS = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
                 403: ("permission_error", "unsupported_country_region_territory"),
                 429: ("requests", "rate_limit_exceeded"), 500: ("server_error", None),
                 503: ("server_error", None), 529: ("server_error", None)}
GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 529: "UNAVAILABLE"}


@dataclass
class Plan:
    """What one request is answered with, from the prompt's directives."""

    writes: list[tuple[str, str]] = field(default_factory=list)
    status: int | None = None
    delay: float = 0.0
    drop: bool = False
    tools: list[tuple[str, str]] = field(default_factory=list)  # @standin call NAME JSON


def plan_for(text: str) -> Plan:
    plan = Plan()
    for words in prompt_commands(text, prefix="@fake "):
        if words[:1] == ["write"] and len(words) >= 2:
            plan.writes.append((words[1], words[2] if len(words) > 2 else ""))
    for words in prompt_commands(text, prefix="@standin "):
        if words[:1] == ["status"] and len(words) == 2:
            plan.status = int(words[1])
        elif words[:1] == ["delay"] and len(words) == 2:
            plan.delay = min(float(words[1]), MAX_DELAY)
        elif words[:1] == ["drop"]:
            plan.drop = True
        elif words[:1] == ["call"] and len(words) == 3:
            plan.tools.append((words[1], words[2]))
    return plan


@dataclass
class Call:
    """A tool call the model makes: write ``content`` to ``path`` (as given in the prompt)."""

    path: str
    content: str
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:16])


class StandIn:
    """The server. ``with StandIn() as s:`` starts it on a free port; leaving the block shuts it down."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="standin", daemon=True)

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def paths(self) -> list[str]:
        with self._lock:
            return [r["path"] for r in self.requests]


class _Handler(BaseHTTPRequestHandler):
    standin: StandIn
    protocol_version = "HTTP/1.1"
    server_version = "distpar-standin/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # --- plumbing --------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # Claude Code's connectivity check
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._json(200, {"object": "list", "data": [], "models": []})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = self._read_chunked()
        else:
            raw = self.rfile.read(min(length, MAX_BODY))
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._json(400, {"error": {"message": "body is not JSON"}})
            return
        path = self.path.split("?", 1)[0]
        route = ("anthropic" if path.endswith("/messages") else "responses" if path.endswith("/responses")
                 else "chat" if path.endswith("/chat/completions")
                 else "gemini" if ":generateContent" in path or ":streamGenerateContent" in path else None)
        entry: dict[str, Any] = {"path": path, "api": route, "model": body.get("model"), "time": time.time(),
                                 "stream": bool(body.get("stream")) or "streamGenerateContent" in path}
        if route is None:
            self.standin.record({**entry, "answer": "404"})
            self._json(404, {"error": {"message": f"no such endpoint {path}"}})
            return
        if route == "gemini":
            entry["model"] = path.rsplit("/", 1)[-1].split(":", 1)[0]
        prompt, done, workdir = _read_conversation(route, body)
        plan = plan_for(prompt)
        entry.update(prompt=prompt[:2000], prompt_chars=len(prompt), workdir=workdir, tool_results=done,
                     system=_system_text(body)[:20000], body=body)
        if plan.delay:
            self.standin.wait(plan.delay)
        if plan.drop:
            self.standin.record({**entry, "answer": "drop"})
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if plan.status:
            self.standin.record({**entry, "answer": str(plan.status)})
            self._error(route, plan.status)
            return
        # aider's second call asks for a commit message about the diff (which quotes the prompt): text only
        commit = route == "chat" and "commit message" in _system_text(body).lower() + _chat_system(body).lower()
        calls = [] if done or commit or not plan.writes else [Call(p, c) for p, c in plan.writes]
        results = tool_results(body) if route == "anthropic" else []
        offered = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
        fixes = resolutions(prompt) if route == "anthropic" and {"Read", "Write"} <= offered else []
        steps = [step for path, content in fixes for step in (
            ("Read", {"file_path": _absolute(path, workdir)}),
            ("Write", {"file_path": _absolute(path, workdir), "content": content}))]
        if len(results) < len(steps):  # distpar's resolve prompt: read, then write each file merged
            name, tool_input = steps[len(results)]
            self.standin.record({**entry, "answer": "tool", "calls": [name], "tool": name, "input": tool_input})
            self._answer_anthropic(body, [], "", workdir, tool=(name, tool_input))
            return
        if plan.tools and len(results) < len(plan.tools) and plan.tools[len(results)][0] in offered:
            name, args = plan.tools[len(results)]
            ids = re.findall(r'"run_id"\s*:\s*"([^"]+)"', "\n".join(results))
            args = args.replace("$run_id", ids[-1] if ids else "")
            self.standin.record({**entry, "answer": "tool", "calls": [name], "tool": name, "input": args})
            self._answer_anthropic(body, [], "", workdir, tool=(name, json.loads(args)))
            return
        text = _text_answer(route, body, prompt)
        self.standin.record({**entry, "answer": "tools" if calls else "text", "calls": [c.path for c in calls]})
        getattr(self, f"_answer_{route}")(body, calls, text, workdir)

    def _read_chunked(self) -> bytes:
        out = b""
        for _ in range(100_000):
            size = int(self.rfile.readline().strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                break
            out += self.rfile.read(size)
            self.rfile.readline()
        return out

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: Iterator[tuple[str | None, dict[str, Any]]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for name, data in events:
            chunk = (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
            self.wfile.write(chunk.encode())
            self.wfile.flush()

    def _error(self, route: str, status: int) -> None:
        headers = {"retry-after": "1"} if status == 429 else {}
        if route == "anthropic":
            etype = ANTHROPIC_ERRORS.get(status, "api_error")
            self._json(status, {"type": "error", "error": {"type": etype, "message": f"stand-in {status} {etype}"}},
                       {**headers, "request-id": "req_standin", "x-should-retry": "false"})
        elif route in ("responses", "chat"):
            etype, code = OPENAI_ERRORS.get(status, ("server_error", None))
            self._json(status, {"error": {"message": f"stand-in {status} {etype}", "type": etype, "param": None,
                                          "code": code}}, headers)
        else:
            gstatus = GOOGLE_STATUS.get(status, "UNKNOWN")
            self._json(status, {"error": {"code": status, "message": f"stand-in {status} {gstatus}",
                                          "status": gstatus}}, headers)

    # --- Anthropic Messages -----------------------------------------------------------------------------

    def _answer_anthropic(self, body: dict[str, Any], calls: list[Call], text: str, workdir: str | None,
                          tool: tuple[str, dict[str, Any]] | None = None) -> None:
        model = body.get("model") or "claude-standin"
        tools = {t.get("name") for t in body.get("tools") or []}
        blocks: list[dict[str, Any]] = []
        if tool is not None:
            blocks.append({"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:16], "name": tool[0],
                           "input": tool[1]})
        elif calls and "Write" in tools:
            for c in calls:
                blocks.append({"type": "tool_use", "id": "toolu_" + c.id[5:], "name": "Write",
                               "input": {"file_path": _absolute(c.path, workdir), "content": c.content}})
        else:
            blocks.append({"type": "text", "text": text})
        stop = "tool_use" if blocks[0]["type"] == "tool_use" else "end_turn"
        usage = {"input_tokens": TOKENS_IN, "output_tokens": TOKENS_OUT, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        msg_id = "msg_" + uuid.uuid4().hex[:20]
        if not body.get("stream"):
            self._json(200, {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                             "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": usage})
            return

        def events() -> Iterator[tuple[str | None, dict[str, Any]]]:
            yield "message_start", {"type": "message_start", "message": {
                "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}}
            for i, b in enumerate(blocks):
                if b["type"] == "text":
                    yield "content_block_start", {"type": "content_block_start", "index": i,
                                                  "content_block": {"type": "text", "text": ""}}
                    yield "content_block_delta", {"type": "content_block_delta", "index": i,
                                                  "delta": {"type": "text_delta", "text": b["text"]}}
                else:
                    yield "content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                        "type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}}
                    yield "content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                        "type": "input_json_delta", "partial_json": json.dumps(b["input"])}}
                yield "content_block_stop", {"type": "content_block_stop", "index": i}
            yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                    "usage": {"output_tokens": TOKENS_OUT}}
            yield "message_stop", {"type": "message_stop"}

        self._sse(events())

    # --- OpenAI Responses ---------------------------------------------------------------------------------

    def _answer_responses(self, body: dict[str, Any], calls: list[Call], text: str, workdir: str | None) -> None:
        model = body.get("model") or "gpt-standin"
        tools = {t.get("name"): t for t in body.get("tools") or [] if isinstance(t, dict)}
        items: list[dict[str, Any]] = []
        if calls:
            script = " && ".join(_shell_write(c.path, c.content) for c in calls)
            if "exec_command" in tools:
                name, args = "exec_command", {"cmd": script}
            elif "shell_command" in tools:
                name, args = "shell_command", {"command": script}
            else:
                name, args = "shell", {"command": ["bash", "-lc", script]}
            if workdir:
                args["workdir"] = workdir
            items.append({"type": "function_call", "id": "fc_" + calls[0].id[5:], "call_id": calls[0].id,
                          "name": name, "arguments": json.dumps(args), "status": "completed"})
        else:
            items.append({"type": "message", "id": "msg_" + uuid.uuid4().hex[:16], "role": "assistant",
                          "status": "completed", "content": [{"type": "output_text", "text": text,
                                                              "annotations": []}]})
        resp_id = "resp_" + uuid.uuid4().hex[:16]
        base = {"id": resp_id, "object": "response", "created_at": int(time.time()), "model": model}
        usage = {"input_tokens": TOKENS_IN, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": TOKENS_OUT, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": TOKENS_IN + TOKENS_OUT}

        def events() -> Iterator[tuple[str | None, dict[str, Any]]]:
            yield "response.created", {"type": "response.created", "response": {
                **base, "status": "in_progress", "output": []}}
            for i, item in enumerate(items):
                start = ({**item, "content": []} if item["type"] == "message" else {**item, "arguments": ""})
                yield "response.output_item.added", {"type": "response.output_item.added", "output_index": i,
                                                     "item": {**start, "status": "in_progress"}}
                if item["type"] == "message":
                    yield "response.output_text.delta", {"type": "response.output_text.delta", "output_index": i,
                                                         "item_id": item["id"], "content_index": 0, "delta": text}
                yield "response.output_item.done", {"type": "response.output_item.done", "output_index": i,
                                                    "item": item}
            yield "response.completed", {"type": "response.completed", "response": {
                **base, "status": "completed", "output": items, "usage": usage}}

        self._sse(events())

    # --- OpenAI Chat Completions ----------------------------------------------------------------------------

    def _answer_chat(self, body: dict[str, Any], calls: list[Call], text: str, workdir: str | None) -> None:
        model = body.get("model") or "gpt-standin"
        if calls:  # aider's diff edit format: a SEARCH/REPLACE block per file, an empty SEARCH creates it
            fence = "`" * 3
            text = "\n\n".join(f"{c.path}\n{fence}\n<<<<<<< SEARCH\n=======\n{c.content.rstrip(chr(10))}\n"
                               f">>>>>>> REPLACE\n{fence}" for c in calls)
        usage = {"prompt_tokens": TOKENS_IN, "completion_tokens": TOKENS_OUT, "total_tokens": TOKENS_IN + TOKENS_OUT}
        base = {"id": "chatcmpl-" + uuid.uuid4().hex[:16], "created": int(time.time()), "model": model}
        if not body.get("stream"):
            self._json(200, {**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage})
            return

        def events() -> Iterator[tuple[str | None, dict[str, Any]]]:
            yield None, {**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]}
            yield None, {**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}

        self._sse(events())
        self.wfile.write(b"data: [DONE]\n\n")

    # --- Gemini ---------------------------------------------------------------------------------------------

    def _answer_gemini(self, body: dict[str, Any], calls: list[Call], text: str, workdir: str | None) -> None:
        model = self.path.split("?", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
        decls = {d.get("name") for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []}
        gen = body.get("generationConfig") or {}
        schema = gen.get("responseJsonSchema") or gen.get("responseSchema")
        if isinstance(schema, dict) and gen.get("responseMimeType") == "application/json":
            # gemini-cli's router (a classifier asked for JSON): an answer that fits the schema, a simple task
            parts = [{"text": json.dumps(_fill(schema))}]
        elif calls and "write_file" in decls:
            parts = [{"functionCall": {"name": "write_file", "args": {"file_path": _absolute(c.path, workdir),
                                                                      "content": c.content}}} for c in calls]
        else:
            parts = [{"text": text}]
        answer = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP",
                                  "index": 0}],
                  "usageMetadata": {"promptTokenCount": TOKENS_IN, "candidatesTokenCount": TOKENS_OUT,
                                    "totalTokenCount": TOKENS_IN + TOKENS_OUT},
                  "modelVersion": model}
        if ":streamGenerateContent" in self.path:
            self._sse(iter([(None, answer)]))
        else:
            self._json(200, answer)


# --- reading a request --------------------------------------------------------------------------------------

RESOLVE_HEAD = "distpar: resolve a merge conflict."
FILES_HEAD = "The files as they are now, with the conflict markers:"


def resolutions(text: str) -> list[tuple[str, str]]:
    """distpar's resolve prompt (``distpar.coordinator.resolve.prompt``) answered as the fake agent does: each
    file it quotes with conflict markers, merged by taking both sides' lines. [] for any other prompt."""
    if RESOLVE_HEAD not in text or FILES_HEAD not in text:
        return []
    out: list[tuple[str, str]] = []
    path: str | None = None
    lines: list[str] = []
    for line in [*text.split(FILES_HEAD, 1)[1].splitlines(), "--- "]:
        if line.startswith("--- "):
            if path:
                out.append((path, union("".join(ln + "\n" for ln in lines))))
            path, lines = line[4:].strip(), []
        elif path is not None and line.startswith("| "):
            lines.append(line[2:])
    return out


def _chat_system(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content", "")) for m in body.get("messages") or [] if m.get("role") == "system")


def tool_results(body: dict[str, Any]) -> list[str]:
    """The text of every tool result in an Anthropic conversation, in order."""
    out = []
    for m in body.get("messages") or []:
        for b in m.get("content") if isinstance(m.get("content"), list) else []:
            if b.get("type") == "tool_result":
                c = b.get("content")
                out.append(c if isinstance(c, str) else "\n".join(
                    str(x.get("text", "")) for x in c or [] if isinstance(x, dict)))
    return out


def _system_text(body: dict[str, Any]) -> str:
    system = body.get("system") or body.get("instructions") or (body.get("systemInstruction") or {}).get("parts")
    if isinstance(system, list):
        return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    return str(system or "")


def _read_conversation(route: str, body: dict[str, Any]) -> tuple[str, bool, str | None]:
    """(the user's text, whether tool results came back, the working directory the CLI told the model)."""
    texts: list[str] = []
    done = False
    system = body.get("system") or body.get("instructions") or ""
    if isinstance(system, list):
        system = "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    if route == "anthropic":
        for m in body.get("messages") or []:
            content = m.get("content")
            if isinstance(content, str):
                texts.append(content) if m.get("role") == "user" else None
                continue
            for b in content or []:
                if b.get("type") == "tool_result":
                    done = True
                elif b.get("type") == "text" and m.get("role") == "user":
                    texts.append(str(b.get("text", "")))
    elif route == "responses":
        for item in body.get("input") or []:
            if item.get("type") in ("function_call_output", "custom_tool_call_output"):
                done = True
            elif item.get("role") == "user":
                for c in item.get("content") or []:
                    texts.append(str(c.get("text", "")))
    elif route == "chat":
        for m in body.get("messages") or []:
            content = m.get("content")
            if isinstance(content, list):
                content = "\n".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            if m.get("role") == "system":
                system = f"{system}\n{content}"
            elif m.get("role") == "user":
                texts.append(str(content or ""))
            elif m.get("role") == "tool":
                done = True
    else:
        si = body.get("systemInstruction") or {}
        system = "\n".join(str(p.get("text", "")) for p in si.get("parts") or [])
        for c in body.get("contents") or []:
            for p in c.get("parts") or []:
                if "functionResponse" in p:
                    done = True
                elif c.get("role") == "user" and "text" in p:
                    texts.append(str(p["text"]))
    if route == "chat" and any("applied edit" in t.lower() or "i committed" in t.lower() for t in texts[-1:]):
        done = True  # aider reports applied edits back as a user turn
    joined = "\n".join(texts)
    return joined, done, _workdir(f"{system}\n{joined}")


_WORKDIR = re.compile(r"(?:Primary working directory|Working directory|current working directory is|"
                      r"Workspace Directories:\*\*|<cwd>)\s*:?\s*\n?\s*(?:-\s*)?(/[^\s<`]+)", re.IGNORECASE)


def _workdir(text: str) -> str | None:
    m = _WORKDIR.search(text)
    return m.group(1).rstrip(".,") if m else None


def _fill(schema: dict[str, Any]) -> Any:
    """A small value that fits a JSON schema (the object types the routers ask for)."""
    kind = str(schema.get("type", "object")).lower()
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: _fill(v) for k, v in props.items() if k in (schema.get("required") or props)}
    if kind in ("integer", "number"):
        return max(int(schema.get("minimum", 10)), 10)
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    return "stand-in"


def _text_answer(route: str, body: dict[str, Any], prompt: str) -> str:
    blob = json.dumps(body)[:200_000]
    if "model_choice" in blob:  # gemini-cli's router: a JSON choice among the models its schema names
        enum = re.search(r'\\"enum\\": \[\\"([^"\\]+)\\"', blob) or re.search(r'"enum": \["([^"]+)"', blob)
        return json.dumps({"reasoning": "stand-in", "model_choice": enum.group(1) if enum else "flash"})
    if route == "chat" and "commit message" in blob.lower():
        return "feat: edits by the stand-in model"
    return "done"


def _absolute(path: str, workdir: str | None) -> str:
    return path if path.startswith("/") or not workdir else f"{workdir.rstrip('/')}/{path}"


def _shell_write(path: str, content: str) -> str:
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    mk = f"mkdir -p {shlex.quote(parent)} && " if parent else ""
    return f"{mk}printf %s {shlex.quote(content)} > {shlex.quote(path)}"
