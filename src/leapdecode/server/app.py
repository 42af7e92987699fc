"""The OpenAI-compatible HTTP API over one Engine.

    app = create_app(engine)                      # or create_app(lambda: leapdecode.load(...))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: POST /v1/completions, POST /v1/chat/completions (both with `stream`), GET /v1/models,
GET /health, GET /metrics. Everything that touches the engine (tokenizer included) runs on the
scheduler's worker threads (one, or one per batched sequence); the event loop only parses, queues
and relays. A request is a job per choice (prompts x n; one per prompt for beams), and it is
answered with its status only once every job has started, so a prompt longer than the context
window is a 400 even when streaming was asked for.

A client that disconnects while queued leaves the queue at once; one that disconnects while its
request runs stops the generation at the next step (its response is logged with status 499).

GET / is the web view (webview.py), fed by `stream_options.include_steps` (steps.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
import hmac
from typing import Any, AsyncIterator, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import decoding
from ..config import GenerationConfig
from ..drafters import DEFAULT_METHOD, DRAFTERS
from ..engine import Engine, Generation, Stats, TokenLogprob
from ..models.base import Capabilities
from . import protocol, webview
from .metrics import CONTENT_TYPE, Metrics
from .protocol import APIError, GenRequest, invalid
from .scheduler import Job, Jobs, QueueFull, Scheduler
from .steps import StepEvents

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")
MAX_BODY_BYTES = 4 * 2**20  # a request body larger than this is a 413 (create_app / --max-body-bytes)
CHARS_PER_TOKEN = 8  # a prompt may have at most this many characters per context-window token
# drafters that need options a request cannot give (a datastore, a second model): refused cleanly
NEEDS_OPTIONS = {
    "retrieval": "the retrieval method needs a datastore (--opt store=...), which this server does not "
                 "take; use it with `leapdecode generate`, or choose another method",
    "draft-model": "the draft-model method needs a draft model (--draft-model), which this server does not "
                   "take; use it with `leapdecode generate`, or choose another method",
}
CLIENT_CLOSED = 499  # the status nginx logs for "client closed the request"; never seen by a client


def create_app(
    engine: Engine | Callable[[], Engine],
    *,
    model_name: str | None = None,
    method: str = DEFAULT_METHOD,
    max_queue: int = 64,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    request_timeout: float | None = None,
    workers: int = 1,
    max_n: int = protocol.MAX_N,
) -> FastAPI:
    """A FastAPI app serving `engine` (or the engine a factory returns at startup).

    api_key: if set, every endpoint but /health needs `Authorization: Bearer <api_key>` (else 401).
    allowed_hosts: if set, a request whose Host header (port ignored) is not one of these is a 421
    (DNS rebinding: a web page cannot reach a loopback server through a name it controls).
    max_body_bytes: larger bodies are a 413, refused before they are read whole.
    request_timeout: seconds a request may run on the worker; then it stops with a 504 / error event.
    workers: requests decoded at once (each on a session of the engine: on a batching target their
    passes are shared, `leapdecode serve --batch`); more wait in the queue.
    max_n: the most choices a request may ask for per prompt (`n`); more is a 400.
    """
    if method not in DRAFTERS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(DRAFTERS)}")
    if method in NEEDS_OPTIONS:
        raise ValueError(NEEDS_OPTIONS[method])
    server = Server(engine, model_name, method, Scheduler(max_queue, workers))
    server.request_timeout = request_timeout

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        yield
        await server.scheduler.stop()

    app = FastAPI(title="leapdecode", lifespan=lifespan)
    app.state.server = server
    app.add_middleware(Guard, api_key=api_key, allowed_hosts=allowed_hosts)
    app.add_middleware(CountRequests, metrics=server.metrics)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = protocol.parse_json(await read_body(request, max_body_bytes))
        gen = protocol.parse_completion(body, server.model_names, server.default_method, max_n)
        server.check(gen)
        return await server.serve(gen, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = protocol.parse_json(await read_body(request, max_body_bytes))
        gen = protocol.parse_chat(body, server.model_names, server.default_method, max_n)
        server.check(gen)
        return await server.serve(gen, request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict[str, Any]:
        if model not in server.model_names:
            raise APIError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")
        return server.model_card()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        scheduler = server.scheduler
        return {"status": "ok", "model": server.model_name, "queue_depth": scheduler.depth,
                "running": len(scheduler.running)}

    @app.get("/metrics")
    async def metrics() -> Response:
        scheduler = server.scheduler
        text = server.metrics.render(scheduler.depth, len(scheduler.running), scheduler.dropped)
        return Response(text, media_type=CONTENT_TYPE)

    webview.add_routes(app, lambda: [m for m in DRAFTERS if m not in NEEDS_OPTIONS], server.default_method)
    return app


class Server:
    """The engine, its scheduler and metrics, and the request life cycle."""

    def __init__(self, engine: Engine | Callable[[], Engine], model_name: str | None, method: str,
                 scheduler: Scheduler):
        self._engine_or_factory = engine
        self.engine: Engine | None = engine if hasattr(engine, "stream") else None
        self._model_name = model_name
        self.default_method = method
        self.scheduler = scheduler
        self.metrics = Metrics()
        self.created = int(time.time())
        self.request_timeout: float | None = None

    async def start(self) -> None:
        if self.engine is None:  # load on the event loop thread: nothing is served before it
            self.engine = self._engine_or_factory()
        await self.scheduler.start()

    @property
    def model_name(self) -> str:
        return self._model_name or getattr(self.engine, "name", None) or "model"

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.model_name, protocol.MODEL_ALIAS)

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "leapdecode"}

    def check(self, gen: GenRequest) -> None:
        """Checks made on the event loop before queueing: cheap, no tokenizer."""
        if gen.method in NEEDS_OPTIONS:
            raise invalid("method", NEEDS_OPTIONS[gen.method], "unsupported_parameter")
        window = getattr(getattr(self.engine, "target", None), "context_window", None) or 8192
        protocol.check_prompt_size(gen.prompts, CHARS_PER_TOKEN * window)
        if gen.beams and not getattr(self.engine.target, "capabilities", Capabilities()).hf_model:
            raise invalid("n", "n > 1 at temperature 0 asks for beam search's n best beams, which need a "
                          "transformers target (serve --backend hf); send temperature > 0 for n "
                          "independent samples", "unsupported_parameter")
        jobs = len(gen.prompts) * (1 if gen.beams else gen.n)
        if jobs > self.scheduler.max_queue:
            raise invalid("n" if gen.n > 1 else "prompt", f"the request needs {jobs} places in the queue "
                          f"(prompts x n) but it has {self.scheduler.max_queue} (--max-queue); send fewer "
                          "prompts or a smaller n")

    # ---- one request ------------------------------------------------------------------
    async def serve(self, gen: GenRequest, request: Request) -> Response:
        """Queue a job per choice (per prompt for beams), wait until every one has started (so a
        prompt too long is a 400 even when streaming), then stream or answer."""
        try:
            jobs = self.scheduler.submit_many(self._works(gen))
        except QueueFull as err:
            raise APIError(429, str(err), type="rate_limit_error", code="queue_full") from None
        total = len(gen.prompts) * gen.n
        gone = asyncio.ensure_future(_disconnected(request))
        streaming = False
        try:
            prompt_tokens: dict[int, int] = {}  # choice -> its prompt's tokens
            early: list[tuple[str, Any]] = []  # events of started choices while others wait
            while len(prompt_tokens) < total:
                kind, value = await _next(jobs, gone)
                if kind == "start":
                    prompt_tokens[value[0]] = value[1]
                elif kind in ("delta", "steps", "done"):
                    early.append((kind, value))
                else:
                    return _ended(kind, value)
            if gen.stream:  # from here on the response watches the connection
                streaming = True
                return JobStream(jobs, self._sse(jobs, gen, prompt_tokens, early))
            done = {value[0]: value for kind, value in early if kind == "done"}
            while len(done) < total:
                kind, value = await _next(jobs, gone)
                if kind == "done":
                    done[value[0]] = value
                elif kind != "delta":
                    return _ended(kind, value)
            return JSONResponse(self._body(gen, prompt_tokens, done, _new_id(gen)))
        finally:
            gone.cancel()
            if not streaming:  # a no-op once the jobs are done; else frees their places or stops them
                jobs.cancel()

    def _works(self, gen: GenRequest) -> list[Callable[[Job], None]]:
        if gen.beams:
            return [self._beams(gen, i, prompt) for i, prompt in enumerate(gen.prompts)]
        return [self._work(gen, *choice) for choice in gen.choices()]

    def _work(self, gen: GenRequest, index: int, prompt: Any, config: GenerationConfig) -> Callable[[Job], None]:
        """What a worker thread does for one choice; it reports through job events, each tagged
        with the choice: ("start", (index, prompt tokens)), ("delta", (index, text, logprobs)),
        ("done", (index, Generation, logprobs not yet sent)); with include_steps, before each delta
        ("steps", (index, [step events])) (steps.py)."""

        def work(job: Job) -> None:
            with self.engine.session() as engine:
                run(job, engine)

        def run(job: Job, engine: Engine) -> None:
            deadline = None if self.request_timeout is None else time.monotonic() + self.request_timeout
            ids = _encode(engine, gen.kind, prompt, gen.chat)
            stream = engine.stream(ids, config, gen.method, chat=False)
            steps = StepEvents(engine.tokenizer, stream) if gen.stream and gen.include_steps else None
            job.emit("start", (index, len(ids)))
            sent = 0  # logprobs sent with the deltas (none while a stop string may still cut tokens)
            for delta in stream:  # one decoding step (or more, while text is held back) per delta
                if job.cancelled:
                    self.metrics.cancellation()
                    job.emit("cancelled")
                    return
                if deadline is not None and time.monotonic() > deadline:
                    self.metrics.cancellation()
                    job.emit("error", APIError(
                        504, f"the request ran past the server's time limit of {self.request_timeout} s; "
                        "ask for fewer tokens (max_tokens) or raise --request-timeout",
                        type="timeout_error", code="request_timeout"))
                    return
                if steps is not None:
                    job.emit("steps", (index, steps.new()))
                if gen.stream:
                    upto = sent if config.stop else min(len(stream.tokens), len(stream.logprobs))
                    job.emit("delta", (index, delta, _token_logprobs(engine, stream.logprobs[sent:upto])))
                    sent = upto
            result = stream.result
            if steps is not None:
                job.emit("steps", (index, steps.last(result)))
            self.metrics.generation(gen.method, len(ids), result.stats.new_tokens, result.stats.steps)
            job.emit("done", (index, result, _token_logprobs(engine, (result.logprobs or [])[sent:])))

        return work

    def _beams(self, gen: GenRequest, i: int, prompt: Any) -> Callable[[Job], None]:
        """The n best beams of beam search for prompt i: choices i * n ... i * n + n - 1."""

        def work(job: Job) -> None:
            engine = self.engine
            ids = _encode(engine, gen.kind, prompt, gen.chat)
            for j in range(gen.n):
                job.emit("start", (i * gen.n + j, len(ids)))
            start = time.perf_counter()
            try:
                outputs = decoding.beam_search(engine, ids, decoding.BeamConfig(
                    num_beams=gen.n, max_new_tokens=gen.config.max_new_tokens))
            except ValueError as err:  # e.g. the beams do not fit the context window
                raise invalid("max_tokens", str(err)) from None
            wall = time.perf_counter() - start
            for j, out in enumerate(outputs):
                stats = Stats(new_tokens=len(out.token_ids), wall_s=wall)
                job.emit("done", (i * gen.n + j, Generation(out.token_ids, out.text, out.finish_reason, stats), []))

        return work

    async def _sse(self, jobs: Jobs, gen: GenRequest, prompt_tokens: dict[int, int],
                   early: list[tuple[str, Any]]) -> AsyncIterator[str]:
        """Server-sent events: chunks per choice and text delta, a last chunk per choice with its
        finish_reason, a usage chunk if asked for, [DONE]."""
        rid, created = _new_id(gen), int(time.time())
        total = len(prompt_tokens)
        offsets = dict.fromkeys(prompt_tokens, 0)  # text_offset of each choice's next logprob
        results: dict[int, Generation] = {}
        try:  # the finally: Starlette stops iterating this when the client disconnects
            if gen.kind == "chat":
                for index in sorted(prompt_tokens):
                    yield _event(self._chunk(gen, rid, created, index, {"role": "assistant", "content": ""}))
            while len(results) < total:
                kind, value = early.pop(0) if early else await jobs.next()
                if kind == "delta":
                    index, text, logprobs = value
                    yield _event(self._chunk(gen, rid, created, index, text,
                                             logprobs=self._logprobs(gen, logprobs, offsets, index)))
                elif kind == "steps":
                    index, events = value
                    for step in events:
                        yield _event(self._chunk(gen, rid, created, index, "", extra={"leapdecode": {"step": step}}))
                elif kind == "done":
                    index, result, logprobs = value
                    results[index] = result
                    yield _event(self._chunk(gen, rid, created, index, "", result.finish_reason,
                                             self._logprobs(gen, logprobs, offsets, index), _extra(gen, result)))
                elif kind == "error":
                    yield _event(_as_api_error(value).body())
                    return
                else:
                    return
            if gen.include_usage:
                usage = _usage(gen, prompt_tokens, results)
                yield _event({**self._chunk(gen, rid, created, 0, ""), "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
        finally:
            jobs.cancel()  # a no-op after [DONE]; otherwise the client went away mid-stream

    # ---- response bodies --------------------------------------------------------------
    def _body(self, gen: GenRequest, prompt_tokens: dict[int, int], done: dict[int, tuple], rid: str
              ) -> dict[str, Any]:
        choices, results = [], {}
        for index in sorted(done):
            _, result, logprobs = done[index]
            results[index] = result
            lp = self._logprobs(gen, logprobs, {index: 0}, index)
            if gen.kind == "chat":
                choices.append({"index": index, "message": {"role": "assistant", "content": result.text},
                                "logprobs": lp, "finish_reason": result.finish_reason})
            else:
                choices.append({"index": index, "text": result.text, "logprobs": lp,
                                "finish_reason": result.finish_reason})
        extra = _extra(gen, results[0])
        if len(results) > 1:
            extra["leapdecode"]["choices"] = [_extra(gen, results[i])["leapdecode"] for i in sorted(results)]
        return {"id": rid, "object": "chat.completion" if gen.kind == "chat" else "text_completion",
                "created": int(time.time()), "model": self.model_name, "choices": choices,
                "usage": _usage(gen, prompt_tokens, results), **extra}

    def _chunk(self, gen: GenRequest, rid: str, created: int, index: int, text: str | dict,
               finish: str | None = None, logprobs: dict | None = None, extra: dict | None = None
               ) -> dict[str, Any]:
        if gen.kind == "chat":
            delta = text if isinstance(text, dict) else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            kind = "text_completion"
        return {"id": rid, "object": kind, "created": created, "model": self.model_name,
                "choices": [choice], **(extra or {})}

    @staticmethod
    def _logprobs(gen: GenRequest, entries: list, offsets: dict[int, int], index: int) -> dict | None:
        """OpenAI's logprobs object for some of a choice's tokens (None when not asked for)."""
        if gen.config.logprobs is None:
            return None
        if gen.kind == "chat":
            def item(token: str, logprob: float) -> dict:
                return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

            return {"content": [{**item(token, lp), "top_logprobs": [item(t, v) for t, v in top]}
                                for token, lp, top in entries], "refusal": None}
        text_offset = []
        for token, _, _ in entries:
            text_offset.append(offsets[index])
            offsets[index] += len(token)
        return {"tokens": [token for token, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [dict(top) for _, _, top in entries] if gen.config.logprobs else None,
                "text_offset": text_offset}


def _ended(kind: str, value: Any) -> Response:
    """The response for a request whose jobs ended before they were done."""
    if kind == "error":
        raise _as_api_error(value)
    if kind == "disconnected":
        return Response(status_code=CLIENT_CLOSED)
    raise APIError(503, "the request was cancelled because the server is shutting down",
                   type="server_error", code="shutting_down")


def _token_logprobs(engine: Engine, logprobs: list[TokenLogprob]) -> list[tuple[str, float, list]]:
    """(token text, logprob, [(text, logprob) of the top tokens]): decoded on the worker thread."""
    def text(token: int) -> str:
        return engine.tokenizer.decode([token])

    return [(text(lp.token), lp.logprob, [(text(t), v) for t, v in lp.top]) for lp in logprobs]


def _encode(engine: Engine, kind: str, prompt: Any, chat: bool) -> list[int]:
    """Prompt -> ids on the worker thread, with the checks that need the tokenizer or model."""
    param = "messages" if kind == "chat" else "prompt"
    try:
        ids = engine.encode(prompt, chat=chat)
    except Exception as err:  # an empty prompt, a chat template that refuses the messages, ...
        raise invalid(param, f"cannot encode the {param}: {err}") from None
    vocab = engine.target.vocab_size
    if any(not 0 <= t < vocab for t in ids):
        raise invalid(param, f"token ids must be in [0, {vocab}) for this model")
    window = engine.target.context_window
    if len(ids) >= window:
        raise invalid(param, f"the prompt has {len(ids)} tokens but the model's context window is {window}; "
                      "shorten the prompt", "context_length_exceeded")
    return ids


class ClientGone(Exception):
    """The client closed the connection while its body was being read (logged as 499)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes: by Content-Length before reading, and by
    counting while reading (a chunked body has none). A client that aborts the upload is a 499."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _too_large(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes; "
                    "send a shorter prompt (or start the server with a larger --max-body-bytes)",
                    code="request_too_large")


async def _client_gone(request: Request, err: ClientGone) -> Response:
    return Response(status_code=CLIENT_CLOSED)


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _next(job: Job, gone: asyncio.Future) -> tuple[str, Any]:
    """The job's next event, or ("disconnected", None) once the client has gone."""
    event = asyncio.ensure_future(job.next())
    await asyncio.wait({event, gone}, return_when=asyncio.FIRST_COMPLETED)
    if event.done():
        return event.result()
    event.cancel()
    return "disconnected", None


def _usage(gen: GenRequest, prompt_tokens: dict[int, int], results: dict[int, Generation]) -> dict[str, int]:
    """Each prompt counted once (not once per choice), every choice's new tokens."""
    prompt = sum(prompt_tokens[i * gen.n] for i in range(len(gen.prompts)))
    new = sum(len(r.token_ids) for r in results.values())
    return {"prompt_tokens": prompt, "completion_tokens": new, "total_tokens": prompt + new}


def _extra(gen: GenRequest, result: Generation) -> dict[str, Any]:
    """leapdecode's own fields beside the OpenAI ones: the tokens and how decoding went."""
    stats = result.stats
    return {"leapdecode": {"method": gen.method, "token_ids": result.token_ids, "steps": stats.steps,
                           "tau": stats.tau, "tokens_per_s": stats.tokens_per_s, "wall_s": stats.wall_s}}


def _new_id(gen: GenRequest) -> str:
    return f"{'chatcmpl' if gen.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _as_api_error(err: BaseException) -> APIError:
    if isinstance(err, APIError):
        return err
    return APIError(500, f"internal error: {type(err).__name__}: {err}", type="server_error")


async def _api_error(request: Request, err: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status == 429 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
    body = APIError(err.status_code, str(err.detail), type=kind).body()
    return JSONResponse(body, status_code=err.status_code, headers=getattr(err, "headers", None))


class JobStream(StreamingResponse):
    """Server-sent events of one job; however the response ends (done, client gone, error),
    the job is cancelled, so a generation never outlives its client."""

    def __init__(self, job: Job, events: AsyncIterator[str]):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job = job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


class CountRequests:
    """ASGI middleware: count every HTTP request by endpoint and final status.

    (A plain ASGI wrapper: Starlette's BaseHTTPMiddleware would interfere with disconnect
    detection and streaming.)"""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = 500

        async def counting_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.request(endpoint, status)


class Guard:
    """ASGI middleware: Host header check (DNS rebinding), Bearer API key, JSON content type.

    /health and the web view's static files stay open to every client that passes the Host check
    (a browser cannot send the key when it opens the page; the page sends it with each API call)."""

    def __init__(self, app: Any, api_key: str | None, allowed_hosts: Sequence[str] | None):
        self.app, self.api_key = app, api_key
        self.allowed = None if allowed_hosts is None or "*" in allowed_hosts else {
            h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = self._refusal(scope)
        if error is not None:
            await JSONResponse(error.body(), status_code=error.status,
                               headers={"WWW-Authenticate": "Bearer"} if error.status == 401 else None
                               )(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: dict) -> APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed is not None:
            host = _hostname(headers.get("host", ""))
            if host not in self.allowed:
                return APIError(421, f"the Host header {headers.get('host', '')!r} is not one this server "
                                "answers to; start it with --allowed-host NAME to allow it", code="bad_host")
        if self.api_key is not None and scope["path"] != "/health" and not webview.is_page(scope["path"]):
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return APIError(401, "a valid API key is required: send 'Authorization: Bearer <key>' "
                                "(the key given by --api-key or LEAPDECODE_API_KEY)",
                                type="authentication_error", code="invalid_api_key")
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return APIError(415, f"the request body must be JSON, sent with 'Content-Type: "
                                f"application/json' (got {kind or 'none'!r})", code="unsupported_media_type")
        return None


def _hostname(host: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1'; '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
