"""A load driver for the zero-downtime tests: N concurrent clients over v2 REST, TF REST and v2 gRPC, each request
with a sticky key (``x-user`` header / gRPC metadata, drawn from a pool of users), alternating between models
whose every version has a known answer (``expected[model][version](x)``). Every request is recorded: which
client, model, user, when, the version that answered (None: failed) and whether the numbers were that version's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import httpx
import numpy as np

from gateway.protos import services
from gateway.protos import v2_pb2 as v2

Expected = Mapping[str, Mapping[str, Callable[[np.ndarray], np.ndarray]]]  # type: ignore[type-arg]
DEFAULT_MIX = (("v2-rest", 3), ("tf-rest", 2), ("v2-grpc", 3))
CALL_TIMEOUT_S = 30.0  # above every backend timeout of the tests' routes: the gateway answers first
USERS = 1000


@dataclass(frozen=True, slots=True)
class Result:
    client: str
    model: str
    user: str
    started: float  # time.time(), comparable with the admin API's history timestamps
    finished: float
    version: str | None  # None: failed
    correct: bool
    error: str = ""


@dataclass
class Load:
    url: str
    grpc_target: str
    expected: Expected
    mix: Sequence[tuple[str, int]] = DEFAULT_MIX
    sticky_header: str = "x-user"
    max_requests: int = 100_000
    results: list[Result] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return list(self.expected)

    def record(self, result: Result) -> None:
        self.results.append(result)
        if len(self.results) >= self.max_requests:
            self.stop.set()

    def check(self, model: str, version: str | None, x: np.ndarray, y: object) -> bool:  # type: ignore[type-arg]
        if version not in self.expected[model]:
            return False
        got = np.asarray(y, np.float64).reshape(x.shape)
        return bool(np.allclose(got, self.expected[model][version](x), rtol=1e-5, atol=1e-5))

    async def rest(self, name: str, front: str, rng: random.Random) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=CALL_TIMEOUT_S) as client:
            i = 0
            while not self.stop.is_set():
                model, user = self.models[i % len(self.models)], f"user-{rng.randrange(USERS)}"
                i += 1
                x = np.array([[rng.uniform(-10, 10) for _ in range(3)]], np.float32)
                started = time.time()
                headers = {self.sticky_header: user}
                try:
                    if front == "v2-rest":
                        r = await client.post(f"/v2/models/{model}/infer", headers=headers, json={"inputs": [
                            {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": x.ravel().tolist()}]})
                        y = r.json()["outputs"][0]["data"] if r.status_code == 200 else None
                    else:
                        r = await client.post(f"/v1/models/{model}:predict", headers=headers,
                                              json={"instances": x.tolist()})
                        y = r.json()["predictions"] if r.status_code == 200 else None
                except Exception as exc:
                    self.record(Result(name, model, user, started, time.time(), None, False, repr(exc)[:300]))
                    continue
                if y is None:
                    self.record(Result(name, model, user, started, time.time(), None, False,
                                       f"{r.status_code} {r.text[:200]}"))
                    continue
                version = r.headers.get("x-model-version")
                self.record(Result(name, model, user, started, time.time(), version,
                                   self.check(model, version, x, y)))

    async def grpc(self, name: str, rng: random.Random) -> None:
        method = services.V2_MODEL_INFER
        async with grpc.aio.insecure_channel(self.grpc_target) as channel:
            infer = channel.unary_unary(method.path, request_serializer=method.request.SerializeToString,
                                        response_deserializer=method.response.FromString)
            i = 0
            while not self.stop.is_set():
                model, user = self.models[i % len(self.models)], f"user-{rng.randrange(USERS)}"
                i += 1
                x = np.array([[rng.uniform(-10, 10) for _ in range(3)]], np.float32)
                request = v2.ModelInferRequest(model_name=model, inputs=[v2.ModelInferRequest.InferInputTensor(
                    name="x", datatype="FP32", shape=[1, 3],
                    contents=v2.InferTensorContents(fp32_contents=x.ravel().tolist()))])
                started = time.time()
                try:
                    call = infer(request, timeout=CALL_TIMEOUT_S, metadata=((self.sticky_header, user),))
                    response = await call
                    trailing = dict(await call.trailing_metadata() or ())
                except Exception as exc:
                    self.record(Result(name, model, user, started, time.time(), None, False, repr(exc)[:300]))
                    continue
                version = trailing.get("x-model-version")
                y = (np.frombuffer(response.raw_output_contents[0], np.float32) if response.raw_output_contents
                     else np.asarray(response.outputs[0].contents.fp32_contents))
                correct = self.check(model, version, x, y) and response.model_version == version
                self.record(Result(name, model, user, started, time.time(), version, correct))

    def start(self, seed: str = "") -> Load:
        for front, count in self.mix:
            for k in range(count):
                name, rng = f"{front}-{k}", random.Random(f"{seed}{front}-{k}")
                coro = self.grpc(name, rng) if front == "v2-grpc" else self.rest(name, front, rng)
                self.tasks.append(asyncio.create_task(coro, name=name))
        return self

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()

    async def finish(self) -> None:
        self.stop.set()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=CALL_TIMEOUT_S + 5)
        for task in self.tasks:
            task.cancel()

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.version is None]

    @property
    def wrong(self) -> list[Result]:
        return [r for r in self.results if r.version is not None and not r.correct]

    @property
    def bad(self) -> list[Result]:
        """Failed or wrong."""
        return [r for r in self.results if not r.correct]

    def summary(self) -> str:
        if not self.results:
            return "no requests"
        elapsed = max(r.finished for r in self.results) - min(r.started for r in self.results)
        per_client = Counter(r.client.rsplit("-", 1)[0] for r in self.results)
        per_version = Counter((r.model, r.version) for r in self.results)
        return (f"{len(self.results)} requests in {elapsed:.1f} s ({len(self.results) / max(elapsed, 1e-9):.0f}/s) "
                f"from {sum(n for _, n in self.mix)} clients {dict(per_client)}; failures {len(self.failures)}, "
                f"wrong answers {len(self.wrong)}; by (model, version) {dict(sorted(per_version.items(), key=str))}")

    def share(self, model: str, version: str, start: float, end: float) -> tuple[float, int]:
        """The share of ``model``'s requests started in [start, end) answered by ``version``, and how many."""
        window = [r for r in self.results if r.model == model and start <= r.started < end and r.version]
        return (sum(r.version == version for r in window) / len(window) if window else float("nan")), len(window)
