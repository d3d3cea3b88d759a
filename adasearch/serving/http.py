"""`adasearch serve`: HTTP inference that picks a Pareto config per request budget.

    POST /predict   an image file (multipart field `file`, or a raw image/* body) or JSON
                    {"inputs": [[...]] (C,H,W) or (B,C,H,W), "budget_ms": 5}; budget_ms may also be a
                    query parameter. Returns the classes, the top-5 probabilities, the config used and
                    its measured latency, and whether that latency fits the budget.
    GET  /configs   the Pareto configs with their measured metrics
    GET  /healthz   liveness

Every malformed request gets a 4xx with a message and the server stays up. Bodies are capped
(--max-body-mb) while they are read, not after, and images by their pixel count (413) before they are
decoded. Inputs whose logits overflow get a 422; no response holds NaN or infinity, which JSON cannot.
It binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from adasearch.errors import UserError
from adasearch.metrics import P50, P90
from adasearch.serving import v2
from adasearch.serving.batcher import Answer, Batcher, Shed
from adasearch.serving.deployment import TOP_K, Deployment
from adasearch.serving.errors import RequestError, load_json
from adasearch.serving.prometheus import CountResponses, ServingMetrics
from adasearch.serving.scheduler import DEADLINE, FigurePredictor, LatencyPredictor, NoCertifiedConfig, Scheduler

MAX_BATCH = 256  # images in one request (a batch the server forms holds at most --max-batch)
INLINE_PARSE_BYTES = 64 << 10
MAX_IMAGE_PIXELS = 4096 * 4096  # a large photo; the model resizes to img_size anyway


def _finite(value):
    """`value` with every NaN or infinite float replaced by None, in dicts, lists and tuples at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class FiniteJSONResponse(JSONResponse):
    """JSON that is always valid: a NaN or infinite number (a metric a run could not take, say) becomes
    null rather than failing the response with a 500. /predict refuses non-finite outputs before this."""

    def render(self, content) -> bytes:
        return json.dumps(
            _finite(content), ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        ).encode("utf-8")


def _too_many_pixels(what: str) -> RequestError:
    return RequestError(413, f"image of {what} pixels is over the limit of {MAX_IMAGE_PIXELS} pixels; resize it first")


def _budget(value) -> Optional[float]:
    if value is None or value == "":
        return None
    if isinstance(value, bool):  # JSON true would otherwise read as 1 ms
        raise RequestError(422, f"budget_ms={value!r} is not a number; give milliseconds > 0")
    try:
        b = float(value)
    except (TypeError, ValueError):
        raise RequestError(422, f"budget_ms={value!r} is not a number; give milliseconds > 0")
    if not math.isfinite(b) or b <= 0:
        raise RequestError(422, f"budget_ms={value!r} is not allowed; give milliseconds > 0")
    return b


def _tensor_from_json(body: bytes):
    doc = load_json(body, "body", too_deep_status=422)
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise RequestError(422, 'JSON body must be an object {"inputs": [...], "budget_ms": optional number}')
    unknown = [k for k in doc if k not in ("inputs", "budget_ms", "max_drop")]
    if unknown:
        raise RequestError(422, f"unknown key {unknown[0]!r}; allowed: inputs, budget_ms, max_drop")
    try:
        x = torch.tensor(doc["inputs"], dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError, OverflowError, RecursionError):
        raise RequestError(422, "inputs must be a rectangular nested array of numbers")
    if not torch.isfinite(x).all():
        raise RequestError(422, "inputs contain NaN or infinity")
    return x, doc.get("budget_ms"), doc.get("max_drop")


def _tensor_from_image(data: bytes, dep: Deployment):
    from PIL import Image, UnidentifiedImageError

    from adasearch.data.datasets import preprocess_image, resized_size

    def bomb(e: Exception) -> RequestError:
        # Pillow refuses canvases far over its own limit inside open(), before the size reaches us; its
        # message carries the pixel count: "Image size (10000000000 pixels) exceeds limit of ..."
        found = re.search(r"\((\d+) pixels\)", str(e))
        return _too_many_pixels(found.group(1) if found else "more than " + str(MAX_IMAGE_PIXELS))

    try:
        with warnings.catch_warnings():  # Pillow warns on big canvases; the check below answers them
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise bomb(e)
    except (UnidentifiedImageError, OSError, ValueError):
        raise RequestError(415, "the file is not an image Pillow can read (JPEG, PNG, BMP, WebP, ...)")
    # A small file can declare a huge canvas (a decompression bomb): check before decoding a pixel.
    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise _too_many_pixels(f"{img.width}x{img.height}")
    cfg = dep.model.cfg
    # A long thin strip passes the pixel cap but is resized by its shorter side: 1 x 16M pixels would
    # become gigabytes before the crop. Refuse what the resize would make too big, as a bomb.
    rw, rh = resized_size(max(1, img.width), max(1, img.height), cfg.img_size)
    if rw * rh > MAX_IMAGE_PIXELS:
        raise RequestError(
            413,
            f"image of {img.width}x{img.height} pixels is too elongated: resized for the model it would be "
            f"{rw}x{rh} pixels, over the limit of {MAX_IMAGE_PIXELS} pixels; crop it first",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Image.DecompressionBombError as e:  # a later frame or tile can declare a bigger canvas
        raise bomb(e)
    except (OSError, ValueError):
        raise RequestError(415, "the file is not an image Pillow can read (JPEG, PNG, BMP, WebP, ...)")
    return preprocess_image(img, cfg.img_size, cfg.in_channels)[None]


def _max_drop(value) -> Optional[float]:
    """A request's max_drop: a fraction of top-1 in (0, 1)."""
    if value is None or value == "":
        return None
    try:
        drop = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        drop = math.nan
    if not 0 < drop < 1:  # NaN fails too
        raise RequestError(422, f"max_drop={value!r} is not allowed; a fraction of top-1 in (0, 1), e.g. 0.01")
    return drop


def _finite_answer(answer: Answer, x: torch.Tensor) -> None:
    """Finite but huge inputs (1e30, say) overflow inside the model; NaN logits would make the
    probabilities and classes meaningless, and NaN is not JSON. The client's inputs are at fault: 422."""
    if torch.isfinite(answer.logits).all() and torch.isfinite(answer.top_values).all():
        return
    bad = (~torch.isfinite(answer.logits).all(-1)).nonzero().flatten().tolist() or list(range(len(answer.logits)))
    raise RequestError(
        422,
        f"the inputs give non-finite logits (overflow) for sample(s) {bad[:10]} under config "
        f"{answer.entry.name!r}; largest |input| is {x.abs().max().item():.3g}: send normalised pixels",
    )


def _predict_body(answer: Answer, budget: Optional[float], max_drop: Optional[float]) -> dict:
    entry = answer.entry
    return {
        "classes": answer.logits.argmax(-1).tolist(),
        f"top{TOP_K}": [
            [{"class": int(i), "prob": round(float(v), 6)} for v, i in zip(vs, ix)]
            for vs, ix in zip(answer.top_values.tolist(), answer.top_indices.tolist())
        ],
        "exit_depth": answer.exit_depth.tolist(),
        "config_name": entry.name,
        "config": entry.config.to_dict(),
        P50: entry.metrics.get(P50),
        P90: entry.metrics.get(P90),
        "budget_ms": budget,
        "within_budget": answer.within_deadline,
        "max_drop": max_drop,
        "guarantee": entry.guarantee,
        "batch_size": answer.batch_size,
        "queue_ms": round(answer.queue_ms, 3),
        "deadline_met": answer.deadline_met,
    }


@dataclass(frozen=True)
class ServeOptions:
    """How the server batches and chooses (the `serve` command's options of the same names)."""

    max_batch: int = 1  # samples per forward; 1: one request per forward
    max_delay_ms: float = 0.0  # the longest a request waits for others to fill its batch
    max_queue: int = 1024  # samples waiting, at most
    slo_ms: Optional[float] = None  # the budget of a request that gives none
    policy: str = DEADLINE  # deadline: the scheduler's choice per batch; static: the most accurate config
    latency: str = FigurePredictor.RUN  # what predicts latency: the run's figures, or the warm-up's timings


def create_app(
    dep: Deployment,
    max_body_bytes: int = 8 << 20,
    options: ServeOptions = ServeOptions(),
    predictor: Optional[LatencyPredictor] = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The app around a loaded Deployment; predictor and clock default to the run's figures and the time."""
    if predictor is None:
        batch_size = dep.hardware.get("batch_size", 1)
        predictor = FigurePredictor(batch_size, _latency_model(dep), dep.model, options.latency)
    slo_ms = options.slo_ms
    scheduler = Scheduler(dep.configs, predictor, options.max_batch, options.policy, clock)
    metrics = ServingMetrics()
    batcher = Batcher(dep, scheduler, metrics, options.max_batch, options.max_delay_ms, options.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        warming = asyncio.create_task(batcher.start())  # live at once, ready once warmed up
        yield
        await warming
        await batcher.stop()  # uvicorn has answered every request in flight before this

    app = FastAPI(title="adasearch", version="1", default_response_class=FiniteJSONResponse, lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(CountResponses, metrics=metrics, known_paths=KNOWN_PATHS)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise RequestError(413, f"body of {declared} bytes is over the limit of {max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise RequestError(413, f"body is over the limit of {max_body_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        request._body = body  # starlette's form() re-reads a cached body instead of the consumed stream
        return body

    async def infer(x: torch.Tensor, budget, max_drop) -> tuple:
        """(answer, budget) for x, (C,H,W) or (B,C,H,W), through the batcher; refusals as HTTP errors."""
        cfg = dep.model.cfg
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[0] == 0 or x.shape[1] != cfg.in_channels or x.shape[0] > MAX_BATCH:
            raise RequestError(
                422,
                f"inputs shape {list(x.shape)} is not allowed: (C,H,W) or (B,C,H,W) with "
                f"C={cfg.in_channels}, 1 <= B <= {MAX_BATCH}, H and W multiples of {cfg.patch_size} "
                f"(trained at {cfg.img_size})",
            )
        budget, max_drop = _budget(budget), _max_drop(max_drop)
        budget = slo_ms if budget is None else budget
        try:
            answer = await batcher.submit(x, budget, max_drop)
        except NoCertifiedConfig as e:
            raise RequestError(422, str(e))
        except UserError as e:  # shape/size the model refuses: the client's mistake
            raise RequestError(422, str(e))
        _finite_answer(answer, x)
        return answer, budget

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return FiniteJSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(Shed)
    async def shed(request, exc: Shed):
        return FiniteJSONResponse(
            {"error": exc.message}, status_code=503, headers={"Retry-After": str(exc.retry_after)}
        )

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "configs": len(dep.configs)}

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/configs")
    def configs():
        return [
            {"name": e.name, "config": e.config.to_dict(), "metrics": e.metrics, "guarantee": e.guarantee}
            for e in dep.configs
        ]

    @app.post("/predict")
    async def predict(request: Request):
        body = await read_body(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        budget = request.query_params.get("budget_ms")
        max_drop = request.query_params.get("max_drop")
        if ctype == "application/json":
            x, json_budget, json_drop = await _off_loop(body, _tensor_from_json, body)
            budget = json_budget if json_budget is not None else budget
            max_drop = json_drop if json_drop is not None else max_drop
        elif ctype == "multipart/form-data":
            form = await request.form()
            upload = form.get("file")
            if upload is None or not hasattr(upload, "read"):
                raise RequestError(422, "multipart body needs a file field named 'file'")
            x = await run_in_threadpool(_tensor_from_image, await upload.read(), dep)
            budget = form.get("budget_ms", budget)
            max_drop = form.get("max_drop", max_drop)
        elif ctype.startswith("image/") or ctype == "application/octet-stream":
            x = await run_in_threadpool(_tensor_from_image, body, dep)  # decoding must not block the loop
        else:
            raise RequestError(
                415,
                f"content-type {ctype or 'none'!r} is not allowed; send application/json, "
                f"multipart/form-data (field 'file') or an image/* body",
            )
        answer, budget = await infer(x, budget, max_drop)
        return _predict_body(answer, budget, _max_drop(max_drop))

    add_v2_routes(app, dep, batcher, read_body, infer)
    return app


async def _off_loop(body: bytes, parse, *args):
    """parse(*args), on a worker thread for a large body: a small one parses faster than a thread switch,
    a large one must not stall every other request."""
    return parse(*args) if len(body) <= INLINE_PARSE_BYTES else await run_in_threadpool(parse, *args)


def _latency_model(dep: Deployment):
    """The run's latency model, or None where it has none or it cannot be read (then figures and warm-up)."""
    if not dep.latency_model:
        return None
    from adasearch.measure.latency_model import LatencyModel

    try:
        return LatencyModel.from_dict(dep.latency_model)
    except ValueError:
        return None


def add_v2_routes(app: FastAPI, dep: Deployment, batcher: Batcher, read_body, infer) -> None:
    """The Open Inference Protocol's routes (adasearch/serving/v2.py)."""
    name = dep.name

    def check(model: str) -> None:
        if model != name:
            raise RequestError(404, f"model {model!r} is not served here; this server serves {name!r}")

    @app.get("/v2")
    def server_metadata():
        return {"name": "adasearch", "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready():
        ok = batcher.ready and not batcher.draining
        return FiniteJSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    def metadata(model: str, version: str = "1"):
        check(model)
        return v2.model_metadata(name, dep.model.cfg)

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    def model_ready(model: str, version: str = "1"):
        check(model)
        return ready()

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def v2_infer(model: str, request: Request, version: str = "1"):
        check(model)
        body = await read_body(request)
        doc, x = await _off_loop(body, v2.parse_request, body, request.headers.get(v2.HEADER_LENGTH))
        if not torch.isfinite(x).all():
            raise RequestError(400, "inputs[0] holds NaN or infinity")
        params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
        answer, budget = await infer(x, params.get("budget_ms"), params.get("max_drop"))
        content, headers = v2.response(doc, name, answer, budget)
        return Response(content, headers=headers)


KNOWN_PATHS = frozenset({"/predict", "/healthz", "/configs", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready"})


def load_for_serving(
    run: str,
    model=None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    threads: Optional[int] = None,
    runtime: Optional[str] = None,
) -> Deployment:
    """The Deployment, with this process's CPU threads set to the run's (or `threads`), so the
    latencies that budgets are compared with were measured under the same thread count."""
    dep = Deployment.load(run, model=model, device=device, dtype=dtype, runtime=runtime)
    threads = threads or dep.hardware.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    return dep


def serve(
    run: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    model=None,
    max_body_mb: float = 8.0,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    threads: Optional[int] = None,
    runtime: Optional[str] = None,
    **options,
) -> None:
    """Serve until SIGTERM or SIGINT; options are ServeOptions'. SIGTERM drains: nothing new is admitted,
    every admitted request is answered, and the process exits 0."""
    import uvicorn

    dep = load_for_serving(run, model=model, device=device, dtype=dtype, threads=threads, runtime=runtime)
    opts = ServeOptions(**options)
    app = create_app(dep, int(max_body_mb * (1 << 20)), opts)
    batcher = app.state.batcher

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            batcher.draining = True  # a flag only: this runs inside a signal handler
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:  # uvicorn re-raises captured signals after shutdown; a drain is a clean exit
                self._captured_signals.remove(sig)

    device = next(dep.model.parameters()).device
    print(
        f"serving {run} as model {dep.name!r} ({len(dep.configs)} configs, {device}, {torch.get_num_threads()} "
        f"threads, batches <= {opts.max_batch}, policy {opts.policy}) on http://{host}:{port} (POST /predict, "
        f"POST /v2/models/{dep.name}/infer, GET /metrics, /configs, /v2/health/ready)",
        file=sys.stderr,
        flush=True,
    )
    DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
    print(f"stopped: {batcher.admitted} requests admitted, {batcher.answered} answered", file=sys.stderr, flush=True)
