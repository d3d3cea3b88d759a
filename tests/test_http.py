"""`adasearch serve` against a real uvicorn server on a free loopback port, malformed requests mixed in."""

import io
import math
import struct
import zlib

import pytest
import torch
from PIL import Image

from adasearch import load_model
from adasearch.data.digits import digits
from adasearch.serving import Deployment
from adasearch.serving.deployment import Entry
from adasearch.serving.http import MAX_IMAGE_PIXELS, create_app
from tests.helpers import served_run, serving


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    dep = Deployment.load(served_run(tmp_path_factory.mktemp("serve")))
    with serving(create_app(dep, max_body_bytes=64 * 1024)) as client:
        yield client, dep


def _huge_png() -> bytes:
    """A decompression bomb: 10000 x 10000 pixels that compress to about 12 kB."""
    buf = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 64 * 1024  # under the body limit: the pixel check must catch it
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG (a 1x1 image) whose header declares width x height pixels, its CRC made right again:
    a decompression bomb of any size that Pillow opens as far as the header."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    assert png[12:16] == b"IHDR"  # 8-byte signature, 4-byte length, then the type, the data and the CRC
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(png[12:29]))
    return bytes(png)


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_json_equals_the_model(server):
    client, dep = server
    x, y = digits("val")
    r = client.post("/predict", json={"inputs": x[:4].tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    best = dep.choose()[0]
    assert body["config_name"] == best.name
    with torch.inference_mode():
        expected = load_model("demo").run(x[:4], best.config).logits.argmax(-1).tolist()
    assert body["classes"] == expected
    assert len(body["top5"]) == 4 and len(body["top5"][0]) == 5
    assert body["top5"][0][0]["class"] == body["classes"][0]
    assert body["latency_p90_ms"] > 0 and body["within_budget"] is True


def test_budgets_pick_configs(server):
    client, dep = server
    x = digits("val")[0][:1].tolist()
    tight = client.post("/predict?budget_ms=0.000001", json={"inputs": x})
    assert tight.status_code == 503 and tight.headers["retry-after"] == "1", tight.text
    assert "budget_ms=1e-06" in tight.json()["error"]  # no config makes it: refused, not served late
    p90 = {e.name: e.metrics["latency_p90_ms"] for e in dep.configs}
    budget = sorted(p90.values())[len(p90) // 2] + 50  # fits some configs, with room for the request's own time
    mid = client.post("/predict", json={"inputs": x, "budget_ms": budget}).json()
    assert "error" not in mid, (mid, p90, budget)
    assert mid["within_budget"] is True and p90[mid["config_name"]] <= budget
    loose = client.post("/predict", json={"inputs": x, "budget_ms": 1e6}).json()
    assert loose["within_budget"] is True and loose["config_name"] == dep.choose()[0].name


def test_image_upload(server):
    client, _ = server
    img = (digits("val")[0][0, 0] * 0.5 + 0.5).clamp(0, 1).mul(255).byte().numpy()
    r = client.post("/predict", files={"file": ("d.png", _png(img), "image/png")}, data={"budget_ms": "50"})
    assert r.status_code == 200, r.text
    r = client.post("/predict", content=_png(img), headers={"content-type": "image/png"})
    assert r.status_code == 200 and 0 <= r.json()["classes"][0] < 10


@pytest.mark.parametrize(
    "kwargs,status,needle",
    [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(json={"inputs": [[1, 2], [3]]}), 422, "rectangular"),
        (dict(json={"inputs": torch.zeros(3, 8, 8).tolist()}), 422, "C=1"),
        (dict(json={"inputs": torch.zeros(1, 7, 8).tolist()}), 422, "patch_size=2"),
        (dict(json={"inputs": torch.zeros(1, 8, 8).tolist(), "budget_ms": "fast"}), 422, "budget_ms"),
        (dict(json={"inputs": torch.zeros(1, 8, 8).tolist(), "budget_ms": -1}), 422, "budget_ms"),
        (dict(json={"inputs": torch.zeros(1, 8, 8).tolist(), "budget_ms": True}), 422, "budget_ms"),
        (dict(json={"images": []}), 422, "inputs"),
        (dict(content=b"GIF89a-not-really", headers={"content-type": "image/gif"}), 415, "not an image"),
        (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "content-type"),
        (dict(content=b"x" * (65 * 1024), headers={"content-type": "application/json"}), 413, "limit"),
        (dict(content=b"[" * 30000, headers={"content-type": "application/json"}), 422, "nested too deeply"),
        (
            dict(content=b'{"inputs": [[[' + b"9" * 400 + b"]]]}", headers={"content-type": "application/json"}),
            422,
            "rectangular nested array of numbers",
        ),
        (dict(content=None, headers={"content-type": "image/png"}), 413, "pixels"),  # content: _huge_png()
    ],
)
def test_malformed_requests_get_4xx_and_the_server_stays_up(server, kwargs, status, needle):
    client, _ = server
    if kwargs.get("content", b"") is None:
        kwargs = {**kwargs, "content": _huge_png()}
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert client.get("/healthz").json()["status"] == "ok"


def test_configs_endpoint(server):
    client, dep = server
    configs = client.get("/configs").json()
    assert [c["name"] for c in configs] == [e.name for e in dep.configs]
    assert all("accuracy" in c["metrics"] for c in configs)


@pytest.mark.parametrize(
    "inputs",
    [
        [[[1e30, 0], [0, 0]]],  # the tracker's case: finite, but the logits overflow
        torch.full((2, 1, 8, 8), -1e30).tolist(),
        torch.full((1, 8, 8), 3e38).tolist(),
    ],
)
def test_inputs_that_overflow_get_422_not_500(server, inputs):
    client, _ = server
    r = client.post("/predict", json={"inputs": inputs})
    assert r.status_code == 422, r.text
    assert "non-finite logits" in r.json()["error"] and "normalised" in r.json()["error"]
    assert client.get("/healthz").json()["status"] == "ok"
    x = digits("val")[0][:1].tolist()  # and a good request is still answered
    assert client.post("/predict", json={"inputs": x}).status_code == 200


@pytest.mark.parametrize(
    "width,height,needle",
    [
        (100_000, 100_000, "10000000000 pixels"),  # past Pillow's own limit: it refuses inside open()
        (1, 16_000_000, "too elongated"),  # under the cap, but the resize would make 9 x 144M pixels
    ],
)
def test_pixel_bombs_get_413(server, width, height, needle):
    client, _ = server
    png = _png_declaring(width, height)
    assert len(png) < 100 and Image.open(io.BytesIO(_png_declaring(3, 2))).size == (3, 2)
    r = client.post("/predict", content=png, headers={"content-type": "image/png"})
    assert r.status_code == 413, r.text
    assert needle in r.json()["error"] and str(MAX_IMAGE_PIXELS) in r.json()["error"]
    r = client.post("/predict", files={"file": ("bomb.png", png, "image/png")})
    assert r.status_code == 413, r.text
    assert client.get("/healthz").json()["status"] == "ok"


def test_responses_never_hold_nan(server):
    """A metric a run could not take (NaN, inf) is null in the JSON, never a 500 from the encoder."""
    _, dep = server
    nan = {"latency_p90_ms": math.nan, "gmacs": math.inf}
    broken = Deployment(dep.model, [Entry(e.name, e.config, {**e.metrics, **nan}) for e in dep.configs])
    with serving(create_app(broken)) as client:
        configs = client.get("/configs")
        assert configs.status_code == 200, configs.text
        assert all(c["metrics"]["latency_p90_ms"] is None and c["metrics"]["gmacs"] is None for c in configs.json())
        r = client.post("/predict", json={"inputs": digits("val")[0][:1].tolist()})
        assert r.status_code == 200, r.text
        assert r.json()["latency_p90_ms"] is None and r.json()["classes"][0] in range(10)
