"""An instant version switch under load: 8 concurrent clients (v2 REST, TF REST and v2 gRPC) keep two models busy
on real backends — `switch_scale` on TorchServe (v1 y=2x, v2 y=3x) and `switch_affine` on TF Serving (v1
y=0.5x+2, v2 y=0.5x+3) — while the admin API switches each default from 1 to 2. No request may fail; every answer
names version 1 or 2 and carries that version's numbers; once the switch is applied every request is served by
version 2. The models are the test's own (conftest build_routes) and go back to version 1 at the end."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import yaml

from gateway.protos import services
from gateway.protos import v2_pb2 as v2

from .conftest import Gateway

MODELS = ("switch_scale", "switch_affine")
EXPECTED: dict[str, dict[str, Callable[[np.ndarray], np.ndarray]]] = {  # type: ignore[type-arg]
    "switch_scale": {"1": lambda x: 2 * x, "2": lambda x: 3 * x},
    "switch_affine": {"1": lambda x: 0.5 * x + 2, "2": lambda x: 0.5 * x + 3},
}
CLIENTS = (("v2-rest", 3), ("tf-rest", 2), ("v2-grpc", 3))  # 8 concurrent clients
CALL_TIMEOUT_S = 10.0
WARMUP_S = 1.5  # load before the switch
AFTER_S = 2.0  # load after the switch is applied
MAX_REQUESTS = 50_000
TEST_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Result:
    client: str
    model: str
    started: float
    finished: float
    version: str | None  # None: failed
    correct: bool
    error: str = ""


class Load:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.results: list[Result] = []
        self.stop = asyncio.Event()

    def record(self, result: Result) -> None:
        self.results.append(result)
        if len(self.results) >= MAX_REQUESTS:
            self.stop.set()

    @staticmethod
    def check(model: str, version: str | None, x: np.ndarray, y: list[float] | np.ndarray) -> bool:  # type: ignore[type-arg]
        if version not in EXPECTED[model]:
            return False
        return bool(np.allclose(np.asarray(y, np.float64).reshape(x.shape), EXPECTED[model][version](x), rtol=1e-5))

    async def rest(self, name: str, front: str, rng: random.Random) -> None:
        async with httpx.AsyncClient(base_url=self.gateway.url, timeout=CALL_TIMEOUT_S) as client:
            i = 0
            while not self.stop.is_set():
                model = MODELS[i % 2]
                i += 1
                x = np.array([[rng.uniform(-10, 10) for _ in range(3)]], np.float32)
                started = time.monotonic()
                try:
                    if front == "v2-rest":
                        r = await client.post(f"/v2/models/{model}/infer", json={"inputs": [
                            {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": x.ravel().tolist()}]})
                        y = r.json()["outputs"][0]["data"] if r.status_code == 200 else None
                    else:
                        r = await client.post(f"/v1/models/{model}:predict", json={"instances": x.tolist()})
                        y = r.json()["predictions"] if r.status_code == 200 else None
                except Exception as exc:
                    self.record(Result(name, model, started, time.monotonic(), None, False, repr(exc)))
                    continue
                if y is None:
                    self.record(Result(name, model, started, time.monotonic(), None, False,
                                       f"{r.status_code} {r.text[:200]}"))
                    continue
                version = r.headers.get("x-model-version")
                self.record(Result(name, model, started, time.monotonic(), version, self.check(model, version, x, y)))

    async def grpc(self, name: str, rng: random.Random) -> None:
        method = services.V2_MODEL_INFER
        async with grpc.aio.insecure_channel(self.gateway.grpc_target) as channel:
            infer = channel.unary_unary(method.path, request_serializer=method.request.SerializeToString,
                                        response_deserializer=method.response.FromString)
            i = 0
            while not self.stop.is_set():
                model = MODELS[i % 2]
                i += 1
                x = np.array([[rng.uniform(-10, 10) for _ in range(3)]], np.float32)
                request = v2.ModelInferRequest(model_name=model, inputs=[v2.ModelInferRequest.InferInputTensor(
                    name="x", datatype="FP32", shape=[1, 3],
                    contents=v2.InferTensorContents(fp32_contents=x.ravel().tolist()))])
                started = time.monotonic()
                try:
                    call = infer(request, timeout=CALL_TIMEOUT_S)
                    response = await call
                    trailing = dict(await call.trailing_metadata() or ())
                except Exception as exc:
                    self.record(Result(name, model, started, time.monotonic(), None, False, repr(exc)[:300]))
                    continue
                version = trailing.get("x-model-version")
                y = (np.frombuffer(response.raw_output_contents[0], np.float32) if response.raw_output_contents
                     else np.asarray(response.outputs[0].contents.fp32_contents))
                correct = self.check(model, version, x, y) and response.model_version == version
                self.record(Result(name, model, started, time.monotonic(), version, correct))

    def clients(self) -> list[asyncio.Task[None]]:
        tasks = []
        for front, count in CLIENTS:
            for k in range(count):
                name, rng = f"{front}-{k}", random.Random(f"{front}-{k}")
                coro = self.grpc(name, rng) if front == "v2-grpc" else self.rest(name, front, rng)
                tasks.append(asyncio.create_task(coro, name=name))
        return tasks


async def _defaults(admin: httpx.AsyncClient) -> tuple[int, dict[str, str]]:
    got = (await admin.get("/routes")).json()
    raw = yaml.safe_load(got["text"])
    return got["revision"], {m: str(raw["models"][m].get("default_version")) for m in MODELS}


async def _set_default(admin: httpx.AsyncClient, model: str, version: str, revision: int) -> int:
    r = await admin.post(f"/models/{model}/default", json={"version": version, "revision": revision})
    assert r.status_code == 200, r.text
    return int(r.json()["revision"])


async def _switch_under_load(gateway: Gateway, admin: httpx.AsyncClient) -> None:
    revision, defaults = await _defaults(admin)
    for model in MODELS:  # another test may have left them elsewhere
        if defaults[model] != "1":
            revision = await _set_default(admin, model, "1", revision)

    load = Load(gateway)
    tasks = load.clients()
    try:
        await asyncio.sleep(WARMUP_S)
        called: dict[str, float] = {}
        answered: dict[str, float] = {}
        applied: dict[str, float] = {}
        for model in MODELS:
            called[model] = time.monotonic()
            revision = await _set_default(admin, model, "2", revision)
            answered[model] = time.monotonic()
            while (await admin.get("/routes")).json()["applied_revision"] < revision:  # poll until applied
                await asyncio.sleep(0.01)
            applied[model] = time.monotonic()
        await asyncio.sleep(AFTER_S)
    finally:
        load.stop.set()
        await asyncio.wait(tasks, timeout=CALL_TIMEOUT_S + 5)
        for task in tasks:
            task.cancel()

    results = load.results
    failures = [r for r in results if r.version is None]
    wrong = [r for r in results if r.version is not None and not r.correct]
    per_version = Counter((r.model, r.version) for r in results)
    per_client = Counter(r.client.rsplit("-", 1)[0] for r in results)
    elapsed = max(r.finished for r in results) - min(r.started for r in results)
    print(f"\n{len(results)} requests in {elapsed:.1f} s ({len(results) / elapsed:.0f}/s) from 8 clients "
          f"{dict(per_client)}; failures: {len(failures)}; wrong answers: {len(wrong)}")
    for model in MODELS:
        first_new = min((r.finished for r in results if r.model == model and r.version == "2"), default=None)
        latency = "never" if first_new is None else f"{(first_new - called[model]) * 1000:.1f} ms"
        after = [r for r in results if r.model == model and r.started >= applied[model]]
        print(f"  {model}: v1 {per_version[(model, '1')]}, v2 {per_version[(model, '2')]}; admin call "
              f"{(answered[model] - called[model]) * 1000:.1f} ms; admin call -> first v2 answer {latency}; "
              f"started after applied: {len(after)}, of which v2: {sum(r.version == '2' for r in after)}")
    assert not failures, failures[:5]
    assert not wrong, wrong[:5]
    for model in MODELS:
        before = [r for r in results if r.model == model and r.finished < called[model]]
        after = [r for r in results if r.model == model and r.started >= applied[model]]
        assert before and all(r.version == "1" for r in before)
        assert len(after) > 20 and all(r.version == "2" for r in after), Counter(r.version for r in after)
        assert {r.version for r in results if r.model == model} == {"1", "2"}
    assert {r.client.rsplit("-", 1)[0] for r in results} == {"v2-rest", "tf-rest", "v2-grpc"}


async def test_instant_switch_under_load_drops_nothing(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.admin_url, timeout=CALL_TIMEOUT_S,
                                 headers={"authorization": f"Bearer {gateway.admin_token}"}) as admin:
        try:
            await asyncio.wait_for(_switch_under_load(gateway, admin), TEST_TIMEOUT_S)
        finally:  # the models go back to version 1 for whoever runs next
            revision, defaults = await _defaults(admin)
            for model in MODELS:
                if defaults[model] != "1":
                    revision = await _set_default(admin, model, "1", revision)
