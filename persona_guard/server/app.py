"""The FastAPI app of ``persona-guard serve`` and its batching worker.

Requests that arrive within ``batch_window_ms`` of each other are generated as one batch by a single
worker thread (a model on one device gains nothing from running two batches at once). Each answer
carries a ``persona_guard`` field (see docs/serving.md)::

    "persona_guard": {"conversation_id": "...", "choices": [{"index": 0, "action": "none",
        "traits": {"evil": {"layer": 2, "prompt_last": 0.41, "prompt_last_z": 0.2,
                            "response_mean": 0.97, "response_mean_z": 1.1, "alert": false,
                            "reasons": [], "action": "alert"}}}]}

Streaming answers send it on the last chunk, after every choice's ``finish_reason`` chunk.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import queue
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from persona_guard.errors import PersonaGuardError
from persona_guard.llm_client import TokenLogprobs, render_messages
from persona_guard.models import LoadedModel
from persona_guard.projection import Projector
from persona_guard.schema import bounds, check
from persona_guard.server.engine import Engine, RowResult, RowSpec
from persona_guard.server.observe import AuditLog, Feed, Metrics, Webhook
from persona_guard.server.policy import Policy, TraitVerdict, verdict
from persona_guard.server.protocol import (
    ChatParams,
    RequestError,
    chunk_body,
    completion_body,
    error_body,
    logprob_entry,
    new_completion_id,
    parse_json_body,
    parse_request,
    usage_of,
)
from persona_guard.steering import Steering

REFUSAL = "I can't help with this request: persona-guard blocked it ({reasons})."


@dataclass(frozen=True)
class ServerConfig:
    """The server's limits and switches; most fields are also flags of ``persona-guard serve`` (checked by
    :mod:`persona_guard.schema`)."""

    model_name: str
    max_tokens_cap: int = field(default=2048, metadata=bounds(
        ge=1, help="largest max_tokens a request may ask for (400 above)"))
    max_body_bytes: int = field(default=1 << 20, metadata=bounds(ge=1, help="largest request body (413 above)"))
    batch_window_ms: float = field(default=10.0, metadata=bounds(
        ge=0, le=60_000, help="how long the first request of a batch waits for others to join, in ms"))
    max_batch_rows: int = field(default=32, metadata=bounds(ge=1, help="most answers generated in one batch"))
    api_key: str | None = field(default=None, repr=False)
    audit_log: str | None = field(default=None, metadata=bounds(help="JSONL file receiving one line per alert"))
    log_content: bool = field(default=False, metadata=bounds(
        help="include the messages and the answer in audit-log lines and webhook events"))
    allow_unmonitored: bool = field(default=False, metadata=bounds(
        help='let a request turn readings off with "persona_guard": {"monitor": false} (benchmarks)'))

    def __post_init__(self) -> None:
        check(self)


@dataclass
class ChoiceOutcome:
    """One finished choice: the answer, its readings and what the policy did (none/steered/blocked)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[TokenLogprobs]
    prompt_last: dict[str, float]
    response_mean: dict[str, float | None]
    action: str = "none"
    reasons: tuple[str, ...] = ()


def _outcome(result: RowResult, traits: Sequence[str]) -> ChoiceOutcome:
    return ChoiceOutcome(
        result.text,
        result.token_ids,
        result.finish_reason,
        result.logprobs,
        dict(result.prompt_last),
        {t: result.response_mean(t) for t in traits if t in result.prompt_last},
    )


def blocked_outcome(prompt_last: dict[str, float], reasons: Sequence[str]) -> ChoiceOutcome:
    return ChoiceOutcome(
        REFUSAL.format(reasons="; ".join(reasons)),
        [],
        "content_filter",
        [],
        dict(prompt_last),
        {t: None for t in prompt_last},
        "blocked",
        tuple(reasons),
    )


def forecast_actions(policy: Policy, prompt_last: Mapping[str, float]) -> tuple[str, list[str], list[str]]:
    """What the policy does before generation: ("block"|"steer"|"none", triggering traits, reasons)."""
    for action in ("block", "steer"):
        traits = [
            t
            for t, v in prompt_last.items()
            if policy.for_trait(t).action == action and policy.for_trait(t).over("prompt_last", v)
        ]
        if traits:
            reasons = [
                f"{t} forecast {prompt_last[t]:.4f} > {policy.for_trait(t).threshold.prompt_last}" for t in traits
            ]
            return action, traits, reasons
    return "none", [], []


@dataclass
class _Job:
    specs: list[RowSpec]
    monitor: bool
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue

    def push(self, event: tuple) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class LocalBackend:
    """Generate with the local model; one worker thread batches what arrives within the window."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        *,
        window_s: float,
        max_rows: int,
        metrics: Metrics,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.window_s = window_s
        self.max_rows = max_rows
        self.metrics = metrics
        self.tokenizer = engine.tokenizer
        self._queue: queue.Queue[_Job] = queue.Queue()
        threading.Thread(target=self._work, name="persona-guard-batcher", daemon=True).start()

    @property
    def traits(self) -> dict[str, int]:
        return self.engine.traits

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        return self.tokenizer(render_messages(self.tokenizer, messages), add_special_tokens=False)["input_ids"]

    async def run(self, params: ChatParams, prompt_ids: list[int]) -> AsyncIterator[tuple]:
        """Yield ``("delta", choice, text, logprob_entry)`` while streaming, then ``("done", outcomes)``."""
        want = params.top_logprobs if params.logprobs else None
        specs = [
            RowSpec(
                tuple(prompt_ids),
                params.max_tokens,
                params.temperature,
                None if params.seed is None else params.seed + choice,
                params.stop,
                want,
                params.top_p,
            )
            for choice in range(params.n)
        ]
        job = _Job(specs, params.monitor, params.stream, asyncio.get_running_loop(), asyncio.Queue())
        self._queue.put(job)
        while True:
            event = await job.events.get()
            if event[0] == "error":
                raise RuntimeError(event[1])
            yield event
            if event[0] == "done":
                return

    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            rows = len(batch[0].specs)
            deadline = time.monotonic() + self.window_s
            while rows < self.max_rows:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(job)
                rows += len(job.specs)
            try:
                self._generate(batch)
            except Exception as error:  # answer every waiting request, keep the worker alive
                for job in batch:
                    job.push(("error", f"{type(error).__name__}: {error}"))

    def _generate(self, batch: list[_Job]) -> None:
        owners = [(job, choice) for job in batch for choice in range(len(job.specs))]
        specs = [spec for job in batch for spec in job.specs]
        self.metrics.batch_rows.observe(len(specs))
        decisions: dict[int, tuple[str, list[str], list[str]]] = {}

        def on_prefill(prompt_last: list[dict[str, float]]) -> list[int]:
            for row, readings in enumerate(prompt_last):
                if owners[row][0].monitor:
                    action, traits, reasons = forecast_actions(self.policy, readings)
                    if action != "none":
                        decisions[row] = (action, traits, reasons)
            return list(decisions)

        def delta_to(rows: Sequence[int]):
            def on_delta(index: int, text: str, entry) -> None:
                job, choice = owners[rows[index]]
                if job.stream:
                    job.push(("delta", choice, text, entry))

            return on_delta

        monitor = any(job.monitor for job in batch)
        results = self.engine.generate(
            specs, monitor=monitor, on_delta=delta_to(range(len(specs))), on_prefill=on_prefill if monitor else None
        )
        traits = list(self.engine.traits)
        outcomes = [_outcome(result, traits) for result in results]
        steer_groups: dict[frozenset[str], list[int]] = defaultdict(list)
        for row, (action, triggered, reasons) in decisions.items():
            if action == "block":
                outcomes[row] = blocked_outcome(results[row].prompt_last, reasons)
            else:
                steer_groups[frozenset(triggered)].append(row)
        for triggered, rows in steer_groups.items():
            with Steering(self.engine.loaded.layers, self._steering_directions(triggered), coef=1.0):
                steered = self.engine.generate([specs[row] for row in rows], on_delta=delta_to(rows))
            for row, result in zip(rows, steered):
                outcome = _outcome(result, traits)
                outcome.prompt_last = dict(results[row].prompt_last)  # the forecast that triggered it
                outcome.action, outcome.reasons = "steered", tuple(decisions[row][2])
                outcomes[row] = outcome
        self.metrics.completion_tokens.inc(sum(len(o.token_ids) for o in outcomes))
        for job in batch:
            job.push(("done", [outcomes[row] for row, (owner, _) in enumerate(owners) if owner is job]))

    def _steering_directions(self, traits: frozenset[str]) -> dict:
        """``-steer_coef * vector`` at each triggering trait's layer (summed where layers coincide)."""
        directions: dict = {}
        projector = self.engine.projector
        assert projector is not None  # steering is decided from readings
        for trait in sorted(traits):
            vector, layer = projector.vectors[trait], projector.layers[trait]
            delta = -self.policy.for_trait(trait).steer_coef * vector.direction(layer)
            directions[layer] = directions[layer] + delta if layer in directions else delta
        return directions


class MonitorService:
    """Everything a request touches besides HTTP: backend, policy, verdicts, metrics, logs, feed."""

    def __init__(self, backend, policy: Policy, config: ServerConfig, metrics: Metrics) -> None:
        self.backend = backend
        self.policy = policy
        self.config = config
        self.metrics = metrics
        self.feed = Feed()
        self.audit = AuditLog(config.audit_log) if config.audit_log else None
        self.webhook = Webhook(policy.webhook, metrics=metrics) if policy.webhook else None

    def verdicts(self, outcome: ChoiceOutcome) -> dict[str, TraitVerdict]:
        layers = self.backend.traits
        return {
            trait: verdict(self.policy.for_trait(trait), layers[trait], value, outcome.response_mean.get(trait))
            for trait, value in outcome.prompt_last.items()
        }

    def report(self, completion_id: str, params: ChatParams, outcomes: list[ChoiceOutcome], started: float) -> dict:
        """Build the ``persona_guard`` field and record the answer in metrics, feed, audit log, webhook."""
        choices = []
        conversation = params.conversation_id or completion_id
        for index, outcome in enumerate(outcomes):
            verdicts = self.verdicts(outcome) if params.monitor else {}
            self.metrics.observe_verdicts(verdicts)
            traits = {t: v.to_dict() for t, v in verdicts.items()}
            choices.append({"index": index, "action": outcome.action, "traits": traits})
            self.feed.add(
                {
                    "time": time.time(),
                    "id": completion_id,
                    "choice": index,
                    "action": outcome.action,
                    "latency_s": round(time.monotonic() - started, 4),
                    "traits": traits,
                }
            )
            alerted = {t: v for t, v in traits.items() if v["alert"]}
            if not alerted:
                continue
            event = {
                "event": "persona_guard.alert",
                "time": time.time(),
                "id": completion_id,
                "conversation_id": conversation,
                "model": self.config.model_name,
                "choice": index,
                "action": outcome.action,
                "traits": alerted,
            }
            if self.config.log_content:
                event["messages"] = list(params.messages)
                event["answer"] = outcome.text
            if self.audit is not None:
                self.audit.write(event)
            if self.webhook is not None and any(v["action"] == "alert" for v in alerted.values()):
                self.webhook.send(event)
        return {"conversation_id": conversation, "choices": choices}


def _choice(index: int, outcome: ChoiceOutcome, params: ChatParams) -> dict:
    choice: dict = {
        "index": index,
        "message": {"role": "assistant", "content": outcome.text},
        "finish_reason": outcome.finish_reason,
        "logprobs": None,
    }
    if params.logprobs:
        choice["logprobs"] = {"content": [logprob_entry(e, params.top_logprobs) for e in outcome.logprobs]}
    if params.return_token_ids:
        choice["token_ids"] = outcome.token_ids
    return choice


#: status recorded for a request whose client disconnected before sending its body (nginx's code)
CLIENT_CLOSED_REQUEST = 499


def create_app(service: MonitorService) -> FastAPI:
    config = service.config
    metrics = service.metrics
    app = FastAPI(title="persona-guard", docs_url=None, redoc_url=None, openapi_url=None)
    open_paths = {"/health", "/dashboard"}
    routes = open_paths | {"/v1/models", "/v1/chat/completions", "/metrics", "/dashboard/data"}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        route = request.url.path
        if config.api_key and route not in open_paths:
            header = request.headers.get("authorization", "")
            if not hmac.compare_digest(header.encode(), f"Bearer {config.api_key}".encode()):
                metrics.requests.labels(route if route in routes else "other", "401").inc()
                return JSONResponse(
                    error_body(
                        "missing or wrong API key (Authorization: Bearer ...)",
                        "authentication_error",
                        code="invalid_api_key",
                    ),
                    401,
                )
        response = await call_next(request)
        metrics.requests.labels(route if route in routes else "other", str(response.status_code)).inc()
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = (
            f"no route {request.method} {request.url.path}" if error.status_code in (404, 405) else str(error.detail)
        )
        return JSONResponse(
            error_body(
                message, "invalid_request_error" if error.status_code < 500 else "server_error", code=error.status_code
            ),
            error.status_code,
        )

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError):
        return JSONResponse(error_body(str(error), error.kind, error.param), error.status)

    @app.exception_handler(PersonaGuardError)
    async def usage_error(request: Request, error: PersonaGuardError):  # e.g. a model without a chat template
        return JSONResponse(error_body(str(error)), 400)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect):
        # the client left before its body arrived (e.g. a Content-Length longer than what it sent):
        # nobody reads an answer, so none is logged; counted as nginx's 499 "client closed request"
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception):
        return JSONResponse(error_body(f"internal error ({type(error).__name__})", "server_error"), 500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model_name, "traits": sorted(service.backend.traits)}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "persona-guard"}],
        }

    @app.get("/metrics")
    async def metrics_route():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/dashboard")
    async def dashboard():
        return HTMLResponse(files("persona_guard.server").joinpath("dashboard.html").read_text(encoding="utf-8"))

    @app.get("/dashboard/data")
    async def dashboard_data():
        return {
            **service.feed.to_dict(),
            "model": config.model_name,
            "traits": {
                t: {
                    "layer": layer,
                    "action": service.policy.for_trait(t).action,
                    "threshold": vars(service.policy.for_trait(t).threshold),
                }
                for t, layer in service.backend.traits.items()
            },
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        started = time.monotonic()
        body = await _read_json(request, config.max_body_bytes)
        params = parse_request(
            body,
            model_name=config.model_name,
            max_tokens_cap=config.max_tokens_cap,
            allow_unmonitored=config.allow_unmonitored,
        )
        prompt_ids = service.backend.prompt_ids(params.messages)
        completion_id = new_completion_id()
        events = service.backend.run(params, prompt_ids)
        if params.stream:
            return StreamingResponse(
                _sse(service, params, completion_id, prompt_ids, events, started),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        async for event in events:
            if event[0] == "done":
                outcomes = event[1]
        reply = completion_body(
            completion_id,
            config.model_name,
            [_choice(i, o, params) for i, o in enumerate(outcomes)],
            usage_of(len(prompt_ids), sum(len(o.token_ids) for o in outcomes)),
        )
        if params.return_token_ids:
            reply["prompt_token_ids"] = prompt_ids
        reply["persona_guard"] = service.report(completion_id, params, outcomes, started)
        metrics.latency.labels("/v1/chat/completions").observe(time.monotonic() - started)
        return reply

    return app


async def _read_json(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes is over the {limit}-byte limit", status=413)
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise RequestError(f"request body is over the {limit}-byte limit", status=413)
    return parse_json_body(bytes(data), request.headers.get("content-type"))


def _sse_line(payload) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


async def _sse(
    service: MonitorService,
    params: ChatParams,
    completion_id: str,
    prompt_ids: list[int],
    events: AsyncIterator[tuple],
    started: float,
) -> AsyncIterator[bytes]:
    name = service.config.model_name
    sent = [""] * params.n
    try:
        yield _sse_line(
            chunk_body(
                completion_id,
                name,
                [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                    for i in range(params.n)
                ],
            )
        )
        async for event in events:
            if event[0] == "delta":
                _, choice, text, entry = event
                sent[choice] += text
                logprobs = (
                    {"content": [logprob_entry(entry, params.top_logprobs)]}
                    if params.logprobs and entry is not None
                    else None
                )
                yield _sse_line(
                    chunk_body(
                        completion_id,
                        name,
                        [{"index": choice, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}],
                    )
                )
                continue
            outcomes: list[ChoiceOutcome] = event[1]
            for index, outcome in enumerate(outcomes):
                rest = outcome.text[len(sent[index]) :] if outcome.text.startswith(sent[index]) else ""
                delta = {"content": rest} if rest else {}
                extra = {"token_ids": outcome.token_ids} if params.return_token_ids else {}
                yield _sse_line(
                    chunk_body(
                        completion_id,
                        name,
                        [
                            {
                                "index": index,
                                "delta": delta,
                                "logprobs": None,
                                "finish_reason": outcome.finish_reason,
                                **extra,
                            }
                        ],
                    )
                )
            usage = usage_of(len(prompt_ids), sum(len(o.token_ids) for o in outcomes))
            final = {"persona_guard": service.report(completion_id, params, outcomes, started)}
            if params.include_usage:
                final["usage"] = usage
            if params.return_token_ids:
                final["prompt_token_ids"] = prompt_ids
            yield _sse_line(chunk_body(completion_id, name, [], **final))
        service.metrics.latency.labels("/v1/chat/completions").observe(time.monotonic() - started)
    except RequestError as error:
        yield _sse_line(error_body(str(error), error.kind, error.param))
    except Exception as error:  # the stream has started: report in-band, as OpenAI does
        yield _sse_line(error_body(f"internal error ({type(error).__name__})", "server_error"))
    yield _sse_line("[DONE]")


def local_service(
    loaded: LoadedModel,
    projector: Projector | None,
    policy: Policy,
    config: ServerConfig,
) -> MonitorService:
    """Serve ``loaded`` itself, reading ``projector``'s vectors (None: no monitoring) as it generates."""
    metrics = Metrics()
    backend = LocalBackend(
        Engine(loaded, projector),
        policy,
        window_s=config.batch_window_ms / 1000,
        max_rows=config.max_batch_rows,
        metrics=metrics,
    )
    return MonitorService(backend, policy, config, metrics)
