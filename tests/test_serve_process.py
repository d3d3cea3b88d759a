"""`adasearch serve` as a real process on a loopback port: Triton's own client, Prometheus' parser, overload
and SIGTERM. Every server is started and stopped by its PID; traffic is bounded in count."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from adasearch import load_model
from adasearch.data.digits import digits
from adasearch.serving import Deployment
from tests.helpers import free_port, served_run

pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return served_run(tmp_path_factory.mktemp("serve-process"), name="digits-front")


class Server:
    """`adasearch serve RUN ARGS...` in its own process, ready (warmed up) before the test sends anything."""

    def __init__(self, run, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "adasearch.cli", "serve", str(run), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300  # a generous bound: 2 cores shared by several test runs
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        code, err = self.stop()
        raise AssertionError(f"server not ready (exit code {code}): {err}")

    def stop(self) -> tuple:
        """(exit code, stderr) after SIGTERM."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def v2_body(x: torch.Tensor, **parameters) -> dict:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
    return {**body, "parameters": parameters} if parameters else body


def send_many(url: str, n: int, workers: int, body: dict) -> list:
    """n POSTs of body to the v2 infer URL from `workers` keep-alive clients: [status or the error's type name]."""
    outcomes = []

    def client(count):
        with httpx.Client(timeout=60) as c:
            for _ in range(count):
                try:
                    outcomes.append(c.post(url, json=body).status_code)
                except httpx.HTTPError as e:
                    outcomes.append(type(e).__name__)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(client, [n // workers] * workers))
    return outcomes


def test_tritons_client_runs_an_inference(run):
    import tritonclient.http as triton

    dep = Deployment.load(run)
    name = "digits-front"
    x = digits("val")[0][:3].numpy()
    with Server(run, "--max-batch", "4", "--max-delay-ms", "1") as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8] and meta["inputs"][0]["datatype"] == "FP32"
        model = load_model("demo")
        for binary in (True, False):  # the binary tensor extension, and JSON tensors
            inp = triton.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outputs = [triton.InferRequestedOutput(o, binary_data=binary) for o in ("logits", "classes")]
            result = client.infer(name, [inp], outputs=outputs)
            config = next(e.config for e in dep.configs if e.name == result.get_response()["parameters"]["config_name"])
            with torch.inference_mode():
                expected = model.run(torch.from_numpy(x), config).logits
            np.testing.assert_allclose(result.as_numpy("logits"), expected.numpy(), rtol=1e-4, atol=1e-4)
            assert result.as_numpy("classes").tolist() == expected.argmax(-1).tolist()
        with pytest.raises(triton.InferenceServerException, match="not served here"):
            client.infer("other-model", [inp])
        with pytest.raises(triton.InferenceServerException, match="no config can answer within budget_ms"):
            client.infer(name, [inp], parameters={"budget_ms": 1e-6})  # a request parameter, as /predict's
        client.close()


def test_metrics_are_scraped_and_parsed(run):
    from prometheus_client.parser import text_string_to_metric_families

    x = digits("val")[0][:1]
    with Server(run, "--max-batch", "8", "--max-delay-ms", "2") as server:
        url = f"{server.url}/v2/models/digits-front/infer"
        outcomes = send_many(url, 40, 4, v2_body(x))
        outcomes += send_many(url, 4, 1, v2_body(x, budget_ms=1e-6))  # no config can: shed
        assert Counter(outcomes) == {200: 40, 503: 4}
        text = httpx.get(server.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def total(name, **labels):
        return sum(
            s.value
            for s in families[name].samples
            if s.name == name + "_total" and all(s.labels.get(k) == v for k, v in labels.items())
        )

    infer_path = "/v2/models/{name}..."
    assert total("adasearch_requests", path=infer_path, status="200") == 40
    assert total("adasearch_requests", path=infer_path, status="503") == 4
    assert total("adasearch_config_served") == 40 and total("adasearch_shed", reason="admission") == 4

    def count(name):
        return next(s.value for s in families[name].samples if s.name == name + "_count")

    assert count("adasearch_request_seconds") == 40 and count("adasearch_queue_seconds") == 40
    batches = families["adasearch_batch_size"].samples
    assert next(s.value for s in batches if s.name.endswith("_sum")) == 40  # every request rode in one batch
    assert 1 <= count("adasearch_batch_size") <= 40
    assert "adasearch_deadline_misses" in families


def test_overload_gives_only_200_and_503_and_the_server_recovers(run):
    x = digits("val")[0][:1]
    slo = 3 * min(e.metrics["latency_p90_ms"] for e in Deployment.load(run).configs)  # a few batches' worth
    args = ("--max-batch", "8", "--max-delay-ms", "1", "--slo-ms", f"{slo:.3f}", "--max-queue", "16")
    with Server(run, *args) as server:
        url = f"{server.url}/v2/models/digits-front/infer"
        outcomes = send_many(url, 2400, 48, v2_body(x))
        statuses = Counter(outcomes)
        assert set(statuses) <= {200, 503}, statuses  # no 5xx but 503, no dropped connection
        assert sum(statuses.values()) == 2400
        assert httpx.get(server.url + "/v2/health/ready").status_code == 200
        assert httpx.post(url, json=v2_body(x, budget_ms=1e4)).status_code == 200  # and it still answers
        code, err = server.stop()
    assert code == 0, err
    admitted, answered = map(int, re.search(r"(\d+) requests admitted, (\d+) answered", err).groups())
    assert admitted == answered >= statuses[200]


def test_sigterm_mid_load_answers_every_admitted_request_and_exits_0(run):
    x = digits("val")[0][:1]
    server = Server(run, "--max-batch", "8", "--max-delay-ms", "2")
    url = f"{server.url}/v2/models/digits-front/infer"
    outcomes = []
    answered_some = threading.Event()

    def client(count):
        with httpx.Client(timeout=60) as c:
            for _ in range(count):
                try:
                    outcomes.append(c.post(url, json=v2_body(x)).status_code)
                except httpx.HTTPError as e:  # refused or closed by a server that stopped admitting
                    outcomes.append(type(e).__name__)
                    return
                if len(outcomes) >= 100:
                    answered_some.set()

    try:
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(client, 200) for _ in range(16)]
            assert answered_some.wait(120)
            os.kill(server.proc.pid, signal.SIGTERM)
            for f in futures:
                f.result()
    finally:
        code, err = server.stop()
    assert code == 0, err
    admitted, answered = map(int, re.search(r"(\d+) requests admitted, (\d+) answered", err).groups())
    statuses = Counter(outcomes)
    assert admitted == answered == statuses[200], (statuses, err)  # each admitted request got its 200
    # the rest were never admitted: 503 (draining) on a connection still open, or refused or closed unread
    assert set(statuses) - {200} <= {503, "ConnectError", "RemoteProtocolError", "ReadError"}, statuses
    assert statuses[200] < 16 * 200  # the signal came mid-load
