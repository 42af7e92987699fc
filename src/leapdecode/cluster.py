"""leapdecode on Ray Serve: N engine replicas behind Ray's HTTP proxy, the same OpenAI routes.

    leapdecode serve --replicas 2 --threads 1              # a Ray instance on this machine
    leapdecode serve --replicas 4 --ray-address HEAD:6379  # a running Ray cluster
    serve run leapdecode.cluster:app model=smollm2-135m replicas=2 threads=1   # Ray's own CLI

Each replica is an actor holding one engine and the single-process server's own FastAPI app
(`create_app`, so the routes are the same code, not a copy), on `threads` CPU cores of its own (Ray
reserves them; the replica pins itself to them by its rank on the node) or on one GPU (Ray sets
CUDA_VISIBLE_DEVICES). A replica takes as many requests as it decodes at once (`--batch`); the rest
wait in Ray's proxy for whichever replica frees first, so a replica that dies loses only the
requests it was decoding. When a client goes away, the proxy cancels its request on the replica,
and the app's own disconnect handling stops the generation at the next step.

Every response names the replica that served it in the header `x-leapdecode-replica`. /metrics,
on whichever replica answers it, is the exposition of every live replica, each sample labelled
`replica="..."`: replicas report their text to a small `metrics` deployment every second (the
answering one just before it answers), and one not heard from for STALE_S seconds is left out.

Nothing here imports Ray until it is used: without it, `--replicas` says how to install it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

INSTALL = "pip install 'leapdecode[cluster]'"
APP_NAME = "leapdecode"
REPLICA_HEADER = "x-leapdecode-replica"
REPORT_S = 1.0  # a replica reports its metrics this often
STALE_S = 5.0  # a replica not heard from for this long is gone from /metrics


# ---- the plan: how many replicas, and what each holds (checked before anything starts) ----
@dataclass(frozen=True)
class Plan:
    replicas: int  # the number to start with
    threads: int  # CPU cores per replica
    gpus: int  # GPUs per replica: 0 or 1
    batch: int  # requests a replica decodes at once, and so takes from the proxy
    max_queue: int  # requests that may wait in the proxy for a replica (then 503)
    min_replicas: int | None = None  # autoscaling bounds; None: a fixed number of replicas
    max_replicas: int | None = None
    target_ongoing: float | None = None  # autoscaling: requests per replica to aim at

    @property
    def most(self) -> int:
        return self.replicas if self.max_replicas is None else self.max_replicas

    def deployment_options(self) -> dict[str, Any]:
        """The engine deployment's options for `Deployment.options`."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.threads, "num_gpus": self.gpus},
            "max_ongoing_requests": self.batch,
            "max_queued_requests": self.max_queue,
        }
        if self.max_replicas is None:
            options["num_replicas"] = self.replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": self.replicas, "target_ongoing_requests": self.target_ongoing}
        return options


def plan_replicas(args: argparse.Namespace, batch: int, cores: int | None, gpus: int | None) -> Plan:
    """`leapdecode serve`'s replica flags checked against the CPU cores and GPUs there are
    (None: unknown, not checked). A bad one is a ValueError of one line.

    >>> args = argparse.Namespace(replicas=2, min_replicas=None, max_replicas=None, threads=None,
    ...                           target_ongoing_requests=None, device="cpu", max_queue=64)
    >>> plan_replicas(args, batch=8, cores=16, gpus=0).threads
    8
    >>> plan_replicas(args, batch=8, cores=1, gpus=0)
    Traceback (most recent call last):
    ValueError: --replicas 2 at 1 thread each needs 2 CPU cores, and there are 1: ask for fewer replicas (or --threads)
    """
    for flag in ("replicas", "max_replicas"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.min_replicas is not None and args.min_replicas < 0:
        raise ValueError(f"--min-replicas must be >= 0, got {args.min_replicas}")
    target = args.target_ongoing_requests
    if target is not None and not target > 0:
        raise ValueError(f"--target-ongoing-requests must be > 0, got {target}")
    autoscale = any(v is not None for v in (args.min_replicas, args.max_replicas, target))
    low = high = None
    if autoscale:
        low = 1 if args.min_replicas is None else args.min_replicas
        high = args.max_replicas if args.max_replicas is not None else max(args.replicas or 1, low, 1)
        if low > high:
            raise ValueError(f"--min-replicas {low} is more than --max-replicas {high}")
    replicas = args.replicas if args.replicas is not None else max(low or 1, 1)
    if autoscale and not low <= replicas <= high:
        raise ValueError(f"--replicas {replicas} must lie within --min-replicas {low} and --max-replicas {high}")
    most = replicas if high is None else high
    flag = "--replicas" if high is None else "--max-replicas"
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    threads = args.threads or max(1, (cores or most) // most)
    if cores is not None and most * threads > cores:
        each = f"{threads} thread{'s' if threads > 1 else ''} each"
        raise ValueError(f"{flag} {most} at {each} needs {most * threads} CPU cores, and there are {cores}: "
                         "ask for fewer replicas (or --threads)")
    wants_gpu = getattr(args, "device", "cpu") == "cuda"
    if wants_gpu and gpus is not None and most > gpus:
        raise ValueError(f"{flag} {most} needs a GPU each, and there are {gpus}: ask for fewer replicas")
    return Plan(replicas, threads, int(wants_gpu), batch, args.max_queue, low, high,
                (target or float(batch)) if autoscale else None)


def check_address(address: str) -> None:
    """A Ray address that does not answer is an error here, within seconds (ray.init would retry
    for a long while). 'auto' is left to ray.init, which fails at once when there is no cluster."""
    if address == "auto":
        return
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--ray-address expects HOST:PORT (a Ray head's GCS port, 6379 by default), 'auto' "
                         f"or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
    except OSError as err:
        raise ValueError(f"no Ray cluster answers at {address} ({err.strerror or err}); start one there with "
                         "`ray start --head --port 6379`, or leave out --ray-address to run Ray on this machine"
                         ) from None


def _ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ModuleNotFoundError as err:
        raise ValueError(f"serving replicas needs Ray Serve ({err.name} is missing): {INSTALL}, "
                         "or serve without --replicas") from None
    return ray, serve


# ---- `leapdecode serve --replicas N` ---------------------------------------------------
def serve_replicas(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """`leapdecode serve` with replicas: start them (`start`), serve until interrupted, then
    delete the application (and stop a Ray started here)."""
    plan = start(args, options)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a SIGTERM cleans up as Ctrl-C does
    try:
        scaling = "" if plan.max_replicas is None else f", autoscaling {plan.min_replicas}-{plan.max_replicas}"
        print(f"leapdecode: {plan.replicas} replicas of {args.model} ({plan.threads} threads each{scaling}) "
              f"on http://{args.host}:{args.port}; Ctrl-C stops them", file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        stop(local=args.ray_address is None)


def start(args: argparse.Namespace, options: dict[str, Any]) -> Plan:
    """Check the flags, start Ray here (or join --ray-address), and deploy the replicas behind Ray
    Serve's proxy on --host:--port; returns once every replica serves. Every check that can fail
    on bad input runs before Ray starts, but for a cluster's resources, checked once joined."""
    from .options import resolve_backend
    from .server.cli import bind_socket, serving_batch

    local = args.ray_address is None
    cores = len(os.sched_getaffinity(0)) if local else None
    gpus = (_local_gpus() if args.device == "cuda" else 0) if local else None
    plan_replicas(args, 1, cores, gpus)  # the counts, before anything is imported or looked up
    ray, serve = _ray()
    if local:
        bind_socket(args.host, args.port).close()  # a busy port fails now, not in Ray's proxy
    else:
        check_address(args.ray_address)
    backend = resolve_backend(args, notice=lambda line: print(line, file=sys.stderr))
    batch = serving_batch(args, backend)
    if local:
        plan_replicas(args, batch, cores, gpus)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray would report usage to its makers
    try:
        if local:  # Ray's nodes talk over loopback; only the proxy listens on --host. Ray runs its
            # workers at nice 15 by default: a replica would yield its cores to any other process
            ray.init(num_cpus=cores, num_gpus=gpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     logging_level="warning", _system_config={"worker_niceness": 0})
        else:
            ray.init(address=args.ray_address, logging_level="warning")
    except ConnectionError as err:
        raise ValueError(f"cannot join the Ray cluster at {args.ray_address}: {err}") from None
    try:
        if not local:
            resources = ray.cluster_resources()
            cores, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        plan = plan_replicas(args, batch, cores, gpus)
        serve.start(http_options={"host": args.host, "port": args.port})
        try:
            serve.run(application(replica_settings(args, options, backend, plan), plan), name=APP_NAME,
                      route_prefix="/", logging_config={"log_level": args.log_level.upper()})
        except RuntimeError as err:  # a replica that cannot start: its traceback is in the log above
            raise ValueError(f"the replicas did not start: {str(err).splitlines()[0]}") from None
        return plan
    except BaseException:
        stop(local)
        raise


def stop(local: bool) -> None:
    """Delete the application; a Ray started here (local) is shut down with it."""
    ray, serve = _ray()
    try:
        if local:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    finally:
        ray.shutdown()


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def replica_settings(args: argparse.Namespace, options: dict[str, Any], backend: str, plan: Plan
                     ) -> dict[str, Any]:
    """What each replica needs to load its engine and app: plain values, sent to the actors."""
    return {"model": args.model, "dtype": args.dtype, "device": args.device, "backend": backend,
            "threads": plan.threads, "batch": plan.batch, "app": options}


# ---- `serve run leapdecode.cluster:app key=value ...` ---------------------------------
def app(args: dict[str, str]) -> Any:
    """The Ray Serve application builder: the keys are `leapdecode serve`'s flags without the
    dashes (`model=smollm2-135m replicas=2 threads=1 max_queue=64`). Ray is not running yet when
    Serve calls this, so the counts are checked by Ray as it places the replicas; --threads
    defaults to this machine's cores / replicas. Host and port are Serve's (`serve start`)."""
    from .options import resolve_backend
    from .server.cli import add_parser, app_options, serving_batch

    _ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # for the Ray instance `serve run` may start
    parser = argparse.ArgumentParser(prog="serve run leapdecode.cluster:app")
    add_parser(parser.add_subparsers())
    flags = parser.parse_args(["serve", *(f"--{key.replace('_', '-')}={value}" for key, value in args.items())])
    options = app_options(flags)
    backend = resolve_backend(flags, notice=lambda line: print(line, file=sys.stderr))
    if flags.threads is None:
        most = max(1, flags.max_replicas or flags.replicas or 1)
        flags.threads = max(1, len(os.sched_getaffinity(0)) // most)
    plan = plan_replicas(flags, serving_batch(flags, backend), None, None)
    return application(replica_settings(flags, options, backend, plan), plan)


def application(settings: dict[str, Any], plan: Plan) -> Any:
    """The Serve application: the engine replicas, bound to the metrics board."""
    engine, board = _deployments()
    return engine.options(**plan.deployment_options()).bind(settings, board.bind())


# ---- the deployments -----------------------------------------------------------------------
_DEPLOYMENTS: tuple[Any, Any] | None = None


def _deployments() -> tuple[Any, Any]:
    """(engine, metrics) deployments, made on first use (they need Ray)."""
    global _DEPLOYMENTS
    if _DEPLOYMENTS is None:
        _, serve = _ray()
        engine = serve.deployment(name="engine")(serve.ingress()(Replica))
        board = serve.deployment(name="metrics", num_replicas=1, ray_actor_options={"num_cpus": 0},
                                 logging_config={"enable_access_log": False})(Board)
        _DEPLOYMENTS = engine, board
    return _DEPLOYMENTS


class Replica:
    """One engine and its server (`create_app`), pinned to cores of its own; a Serve replica."""

    async def __init__(self, settings: dict[str, Any], board: Any) -> None:
        from ray import serve

        from . import load
        from .options import set_threads
        from .server.app import create_app

        context = serve.get_replica_context()
        self.name, self.board = context.replica_tag, board
        pin(settings["threads"], getattr(context.rank, "local_rank", None))
        set_threads(settings["threads"])
        engine = load(settings["model"], settings["dtype"], settings["device"], backend=settings["backend"],
                      batch=settings["batch"])
        self.http = create_app(engine, workers=engine.slots, **settings["app"])
        self.http.add_middleware(ReplicaHeader, name=self.name)
        self.own_metrics = _take_route(self.http, "/metrics")
        self.http.add_api_route("/metrics", self.metrics, methods=["GET"], response_model=None)
        self.reporter = asyncio.ensure_future(self._report_forever())

    def __serve_build_asgi_app__(self) -> Any:
        return self.http

    async def _own_text(self) -> str:
        return (await self.own_metrics()).body.decode()

    async def _report_forever(self) -> None:
        while True:
            try:
                await self.board.report.remote(self.name, await self._own_text())
            except Exception:  # the board restarting: the next report gets through
                pass
            await asyncio.sleep(REPORT_S)

    async def metrics(self) -> Any:
        """Every live replica's metrics, this one's as of now."""
        from fastapi.responses import Response

        from .server.metrics import CONTENT_TYPE

        await self.board.report.remote(self.name, await self._own_text())
        return Response(merge_expositions(await self.board.collect.remote()), media_type=CONTENT_TYPE)


class Board:
    """The latest metrics text of each replica (the `metrics` deployment, one replica)."""

    def __init__(self) -> None:
        self.texts: dict[str, tuple[float, str]] = {}  # replica -> (time reported, text)

    async def report(self, replica: str, text: str) -> None:
        self.texts[replica] = (time.monotonic(), text)

    async def collect(self) -> dict[str, str]:
        now = time.monotonic()
        self.texts = {r: (t, text) for r, (t, text) in self.texts.items() if now - t < STALE_S}
        return {r: text for r, (_, text) in sorted(self.texts.items())}


def _take_route(app: Any, path: str) -> Any:
    """Remove the app's GET route at `path`; returns its endpoint (to call it still)."""
    route = next(r for r in app.router.routes if getattr(r, "path", None) == path)
    app.router.routes.remove(route)
    return route.endpoint


class ReplicaHeader:
    """ASGI middleware: every response says which replica served it."""

    def __init__(self, app: Any, name: str):
        self.http, self.header = app, (REPLICA_HEADER.encode(), name.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.http(scope, receive, send)
            return

        async def send_named(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.http(scope, receive, send_named)


def pin(threads: int, local_rank: int | None) -> None:
    """Pin this process (every thread, and so the threads it starts) to cores of its own: the
    local_rank-th group of `threads` among the cores it may use. Ray reserves the count but leaves
    placement to the OS; replicas side by side would otherwise trade cores and caches."""
    cores = sorted(os.sched_getaffinity(0))
    if local_rank is None or (local_rank + 1) * threads > len(cores):
        return
    mine = cores[local_rank * threads:(local_rank + 1) * threads]
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), mine)
        except OSError:  # a thread that ended meanwhile
            pass


def merge_expositions(texts: dict[str, str]) -> str:
    """Prometheus texts of several replicas as one: each family's HELP and TYPE once, then every
    replica's samples with a `replica` label, and a gauge of how many replicas are in it.

    >>> a = '# HELP x_total X\\n# TYPE x_total counter\\nx_total{method="suffix"} 3\\nup 1\\n'
    >>> print(merge_expositions({"r1": a, "r2": "x_total 4\\n"}), end="")
    # HELP x_total X
    # TYPE x_total counter
    x_total{replica="r1",method="suffix"} 3
    x_total{replica="r2"} 4
    up{replica="r1"} 1
    # HELP leapdecode_replicas replicas whose metrics are in this exposition
    # TYPE leapdecode_replicas gauge
    leapdecode_replicas 2
    """
    families: dict[str, list[str]] = {}  # family name -> its HELP/TYPE lines, then its samples
    for replica, text in texts.items():
        for line in text.splitlines():
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    headers = families.setdefault(parts[2], [])
                    if line not in headers:
                        headers.append(line)
                continue
            if not line.strip():
                continue
            name, brace, rest = line.partition("{")
            if brace:
                sample = f'{name}{{replica="{replica}",{rest}' if not rest.startswith("}") else \
                    f'{name}{{replica="{replica}"{rest}'
            else:
                name, _, value = line.partition(" ")
                sample = f'{name}{{replica="{replica}"}} {value}'
            families.setdefault(_family_of(name, families), []).append(sample)
    families["leapdecode_replicas"] = [
        "# HELP leapdecode_replicas replicas whose metrics are in this exposition",
        "# TYPE leapdecode_replicas gauge", f"leapdecode_replicas {len(texts)}"]
    return "".join(line + "\n" for lines in families.values() for line in lines)


def _family_of(sample: str, families: dict[str, list[str]]) -> str:
    """The family a sample name belongs to (a histogram's x_bucket/x_sum/x_count belong to x)."""
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and sample.removesuffix(suffix) in families:
            return sample.removesuffix(suffix)
    return sample
