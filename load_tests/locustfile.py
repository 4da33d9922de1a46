"""Locust scenarios on the digits classifier through the gateway: v2 REST, TF Serving REST and v2 gRPC users.

    locust -f load_tests/locustfile.py --headless -u 10 -r 5 -t 20s --host http://127.0.0.1:8000
    locust -f load_tests/locustfile.py --host http://127.0.0.1:8000     # web UI on http://127.0.0.1:8089

``--grpc-target HOST:PORT`` is the gateway's gRPC listener (default: the --host's name, port 8001, as `make up`
starts it); ``--stop-after N`` ends the run once every kind of user has had N answers. Every simulated user is
one sticky user of the ``digits`` experiment (``x-user-id`` header or gRPC metadata, so the gateway's
TensorFlow / PyTorch split holds per user) and sends held-out images (model_repo/digits/heldout.json), one per
request. A request fails on a non-200 answer (or a non-OK gRPC status) and on an answer that is not 10
probabilities for the image; wrong digits are not failures (the models are ~96% right: the replay script
measures accuracy). Locust exits 1 when any request failed.
"""

from __future__ import annotations

# grpc's own I/O must yield to gevent (Locust's users are greenlets), or one waiting gRPC call blocks every user
# of the process; this must run before any channel exists.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import collections  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import FastHttpUser, User, between, events, task  # noqa: E402

from gateway.protos import services  # noqa: E402
from gateway.protos import v2_pb2 as v2  # noqa: E402

MODEL = "digits"
HELDOUT = json.loads((Path(__file__).resolve().parents[1] / "model_repo" / "digits" / "heldout.json").read_text())
IMAGES: list[list[float]] = [[float(v) for v in image] for image in HELDOUT["images"]]
_users = itertools.count()


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--grpc-target", default="", help="the gateway's gRPC host:port (default: --host's, 8001)")
    parser.add_argument("--stop-after", type=int, default=0,
                        help="stop once every kind of user has had this many answers (a smoke test that ends as "
                             "soon as it has seen enough, however slow the machine; --run-time still bounds it)")


_answers: collections.Counter[str] = collections.Counter()


@events.init.add_listener
def _stop_after_enough_answers(environment: Any, **_: Any) -> None:
    wanted = getattr(environment.parsed_options, "stop_after", 0) if environment.parsed_options else 0
    if not wanted:
        return
    names = {cls.request_name for cls in environment.user_classes}
    stopping = []

    @events.request.add_listener
    def _count(name: str, exception: BaseException | None, **__: Any) -> None:
        if exception is None:
            _answers[name] += 1
        if not stopping and all(_answers[n] >= wanted for n in names):
            stopping.append(True)
            gevent.spawn(environment.runner.quit)  # not from inside the request's own greenlet


def _check_probabilities(data: Any, shape: Any) -> str:
    """'' when the answer holds 10 probabilities for the one image sent, else what is wrong."""
    if list(shape) != [1, 10] or len(data) != 10:
        return f"expected probabilities of shape [1, 10], got shape {list(shape)} with {len(data)} values"
    if abs(sum(data) - 1.0) > 1e-3:
        return f"probabilities sum to {sum(data)}"
    return ""


def _v2_probabilities(answer: Any) -> tuple[Any, Any]:
    out = answer["outputs"][0]
    return out["data"], out["shape"]


def _tf_probabilities(answer: Any) -> tuple[Any, Any]:
    rows = answer["predictions"]  # row format: one row of probabilities per instance
    return rows[0], [len(rows), len(rows[0])]


class _DigitsUser:
    """A sticky experiment user walking through the held-out images from its own offset."""

    request_name = ""  # what Locust's statistics call its requests

    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        number = next(_users)
        self.user_id = f"locust-{number}"
        self._images = itertools.cycle(IMAGES[number % len(IMAGES) :] + IMAGES[: number % len(IMAGES)])

    def next_image(self) -> list[float]:
        return next(self._images)


class _RestDigitsUser(_DigitsUser, FastHttpUser):
    abstract = True  # not a user class of its own

    def post(self, path: str, body: dict[str, Any], probabilities: Callable[[Any], tuple[Any, Any]]) -> None:
        """POST as this user; ``probabilities`` takes the answer's (data, shape) out of its JSON."""
        with self.client.post(path, json=body, headers={"x-user-id": self.user_id}, name=self.request_name,
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code} {r.text[:200]}")
                return
            problem = _check_probabilities(*probabilities(r.json()))
            if problem:
                r.failure(problem)


class V2RestUser(_RestDigitsUser):
    """Open Inference Protocol v2 over REST: POST /v2/models/digits/infer."""

    request_name = "v2 REST infer digits"

    @task
    def infer(self) -> None:
        body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": self.next_image()}]}
        self.post(f"/v2/models/{MODEL}/infer", body, _v2_probabilities)


class TFRestUser(_RestDigitsUser):
    """TF Serving REST: POST /v1/models/digits:predict with row-format instances."""

    request_name = "TF REST predict digits"

    @task
    def predict(self) -> None:
        body = {"instances": [self.next_image()]}
        self.post(f"/v1/models/{MODEL}:predict", body, _tf_probabilities)


class V2GrpcUser(_DigitsUser, User):
    """Open Inference Protocol v2 over gRPC: inference.GRPCInferenceService/ModelInfer (answers in raw bytes)."""

    request_name = "v2 gRPC ModelInfer digits"

    def on_start(self) -> None:
        super().on_start()
        target = self.environment.parsed_options.grpc_target if self.environment.parsed_options else ""
        if not target:
            target = f"{urlsplit(self.host or 'http://127.0.0.1').hostname}:8001"
        self.channel = grpc.insecure_channel(target)
        method = services.V2_MODEL_INFER
        self.infer_call = self.channel.unary_unary(method.path, request_serializer=method.request.SerializeToString,
                                                   response_deserializer=method.response.FromString)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def infer(self) -> None:
        contents = v2.InferTensorContents(fp32_contents=self.next_image())
        request = v2.ModelInferRequest(model_name=MODEL, inputs=[v2.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[1, 64], contents=contents)])
        start = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            response = self.infer_call(request, timeout=10, metadata=(("x-user-id", self.user_id),))
            length = response.ByteSize()
            [out] = response.outputs
            data = np.frombuffer(response.raw_output_contents[0], np.float32) if response.raw_output_contents else []
            problem = _check_probabilities(list(data), out.shape)
            if problem:
                exception = ValueError(problem)
        except grpc.RpcError as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="gRPC", name=self.request_name, response_time=(time.perf_counter() - start) * 1000,
            response_length=length, exception=exception, context={})
