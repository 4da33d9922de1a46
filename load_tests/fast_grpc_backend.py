"""A FAST stand-in TF Serving gRPC backend for overhead benchmarks: grpc.aio, generic handlers, fixed answers.

The gRPC sibling of ``fast_backend.py``: it does almost nothing per call (the request bytes are never parsed,
the answer is serialized once at start), so a benchmark through the gateway's gRPC fronts measures the
gateway's own cost rather than a model's. It speaks just enough of TF Serving's gRPC API for the gateway's
TF gRPC adapter (``transport: grpc``), on the public method paths of :mod:`gateway.protos.services` with the
gateway's own messages (:mod:`gateway.protos.tf_serving_pb2`):

* ``/tensorflow.serving.PredictionService/Predict`` -> a fixed PredictResponse: output ``y`` DT_FLOAT [8, 3]
  (``tensor_content``, as TF Serving answers), model_spec ``fast`` version 1 ``serving_default``; whatever the
  request was;
* ``/tensorflow.serving.PredictionService/GetModelMetadata`` -> signature ``serving_default``: input ``x``
  DT_FLOAT [-1, 3] -> output ``y`` DT_FLOAT [-1, 3] (for the model and version asked);
* ``/tensorflow.serving.ModelService/GetModelStatus`` -> one AVAILABLE version (the one asked, else 1).

Other methods answer UNIMPLEMENTED (grpc's default for an unknown method).

``--delay-s`` makes every Predict answer that much later (a slow model, for the tests of timeouts and slow calls).

Run: ``python load_tests/fast_grpc_backend.py --port 9500`` (one process, one grpc.aio server, uvloop when
``--loop uvloop``; the default asyncio loop otherwise); ``--tls-cert/--tls-key`` serve TLS, ``--client-ca`` requires a
client certificate it signed (mutual TLS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import signal
from typing import Any

import grpc
import numpy as np

from gateway.protos import pack_any
from gateway.protos import services as svc
from gateway.protos import tf_framework_pb2 as tf
from gateway.protos import tf_serving_pb2 as tfs

ROWS = np.array([[round(0.5 * i + j * 0.25, 2) for j in range(3)] for i in range(8)], dtype=np.float32)
SIGNATURE = "serving_default"


def _tensor_info(name: str) -> tf.TensorInfo:
    info = tf.TensorInfo(name=name, dtype=tf.DT_FLOAT)
    info.tensor_shape.dim.add(size=-1)
    info.tensor_shape.dim.add(size=3)
    return info


def predict_response() -> bytes:
    resp = tfs.PredictResponse()
    resp.model_spec.name = "fast"
    resp.model_spec.version.value = 1
    resp.model_spec.signature_name = SIGNATURE
    y = resp.outputs["y"]
    y.dtype = tf.DT_FLOAT
    for size in ROWS.shape:
        y.tensor_shape.dim.add(size=size)
    y.tensor_content = ROWS.tobytes()
    data: bytes = resp.SerializeToString()
    return data


def metadata_response(request: tfs.GetModelMetadataRequest) -> tfs.GetModelMetadataResponse:
    sig = tf.SignatureDef(method_name="tensorflow/serving/predict")
    sig.inputs["x"].CopyFrom(_tensor_info("serving_default_x:0"))
    sig.outputs["y"].CopyFrom(_tensor_info("StatefulPartitionedCall:0"))
    sig_map = tfs.SignatureDefMap()
    sig_map.signature_def[SIGNATURE].CopyFrom(sig)
    resp = tfs.GetModelMetadataResponse()
    resp.model_spec.name = request.model_spec.name
    resp.model_spec.version.value = request.model_spec.version.value if request.model_spec.HasField("version") else 1
    resp.metadata["signature_def"].CopyFrom(pack_any(sig_map))
    return resp


def status_response(request: tfs.GetModelStatusRequest) -> tfs.GetModelStatusResponse:
    resp = tfs.GetModelStatusResponse()
    version = request.model_spec.version.value if request.model_spec.HasField("version") else 1
    entry = resp.model_version_status.add(version=version, state=tfs.ModelVersionStatus.AVAILABLE)
    entry.status.error_code = 0
    return resp


PREDICT_RESPONSE = predict_response()
Context = Any  # grpc.aio.ServicerContext


async def predict(request: bytes, context: Context) -> bytes:
    return PREDICT_RESPONSE  # raw bytes both ways: no protobuf work per call


async def get_model_metadata(request: tfs.GetModelMetadataRequest, context: Context) -> tfs.GetModelMetadataResponse:
    return metadata_response(request)


async def get_model_status(request: tfs.GetModelStatusRequest, context: Context) -> tfs.GetModelStatusResponse:
    return status_response(request)


def slowed(fn: Any, delay_s: float) -> Any:
    if delay_s <= 0:
        return fn

    async def slow(request: Any, context: Context) -> Any:
        await asyncio.sleep(delay_s)
        return await fn(request, context)

    return slow


def handlers(delay_s: float = 0.0) -> tuple[grpc.GenericRpcHandler, ...]:
    def typed(method: svc.Method[Any, Any], fn: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=method.request.FromString,
                                                   response_serializer=method.response.SerializeToString)

    return (
        grpc.method_handlers_generic_handler(svc.PREDICTION_SERVICE, {
            svc.TF_PREDICT.name: grpc.unary_unary_rpc_method_handler(slowed(predict, delay_s)),  # bytes in and out
            svc.TF_GET_MODEL_METADATA.name: typed(svc.TF_GET_MODEL_METADATA, get_model_metadata),
        }),
        grpc.method_handlers_generic_handler(svc.MODEL_SERVICE, {
            svc.TF_GET_MODEL_STATUS.name: typed(svc.TF_GET_MODEL_STATUS, get_model_status),
        }),
    )


async def serve(host: str, port: int, tls: tuple[bytes, bytes, bytes | None] | None = None,
                delay_s: float = 0.0) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers(handlers(delay_s))
    if tls is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:  # (certificate, key, client CA): with a client CA, mutual TLS
        cert, key, client_ca = tls
        bound = server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None))
    if bound == 0:
        raise SystemExit(f"could not bind {host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"fast gRPC backend listening on {host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--tls-cert", help="serve TLS with this certificate (and --tls-key)")
    parser.add_argument("--tls-key")
    parser.add_argument("--client-ca", help="require a client certificate signed by this CA (mutual TLS)")
    parser.add_argument("--delay-s", type=float, default=0.0, help="answer every Predict this much later")
    args = parser.parse_args(argv)
    tls = None
    if args.tls_cert:
        read = pathlib.Path.read_bytes
        tls = (read(pathlib.Path(args.tls_cert)), read(pathlib.Path(args.tls_key)),
               read(pathlib.Path(args.client_ca)) if args.client_ca else None)
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port, tls, args.delay_s))


if __name__ == "__main__":
    main()
