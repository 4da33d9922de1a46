"""The gRPC API: tensorflow.serving.PredictionService and ModelService, with the official stubs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from tfserving_standin import metrics
from tfserving_standin import servable as servable_lib
from tfserving_standin.core import ServerCore, Spec
from tfserving_standin.rest import metadata_response, status_response
from tfserving_standin.status import Code, ServingError, invalid_argument, truncate_for_grpc

log = logging.getLogger("tfserving_standin")

INT32_MAX = 2**31 - 1
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", INT32_MAX),
    ("grpc.max_receive_message_length", INT32_MAX),
]
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


async def _abort(context: grpc.aio.ServicerContext, error: ServingError) -> None:
    await context.abort(_GRPC_CODES[int(error.code)], truncate_for_grpc(error.message))


def _guarded(method: Callable) -> Callable:
    """Turns unexpected exceptions into INTERNAL errors (TF Serving never answers UNKNOWN for bugs)."""

    @functools.wraps(method)
    async def wrapper(self: object, request: object, context: grpc.aio.ServicerContext) -> object:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except ServingError as exc:
            await _abort(context, exc)
        except Exception as exc:
            log.exception("Unexpected error in %s", method.__name__)
            await _abort(context, ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}"))
        return None

    return wrapper


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServerCore, executor: concurrent.futures.Executor) -> None:
        self.core = core
        self.executor = executor

    async def _infer(
        self,
        api: str,
        model_name: str,
        spec: Spec | None,
        work: Callable[[servable_lib.Servable], object],
        context: grpc.aio.ServicerContext,
    ) -> object:
        start = time.perf_counter()
        code = Code.OK
        try:
            if spec is None:
                raise invalid_argument("Missing ModelSpec")
            servable = self.core.get_servable(spec)
            future = asyncio.get_running_loop().run_in_executor(self.executor, work, servable)
            future.add_done_callback(lambda _f: servable.release())
            remaining = context.time_remaining()
            try:
                if remaining is None:
                    return await future
                return await asyncio.wait_for(asyncio.shield(future), timeout=max(remaining, 0.0))
            except TimeoutError:
                raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except ServingError as exc:
            code = exc.code
            log.debug("%s failed: %s", api, exc.message)
            await _abort(context, exc)
            raise AssertionError("unreachable") from None
        except Exception:
            code = Code.INTERNAL
            raise
        finally:
            if code == Code.OK:
                metrics.record_request_latency(model_name, api, "GRPC", (time.perf_counter() - start) * 1e6)
            metrics.record_request_count(model_name, code)

    @_guarded
    async def Predict(self, request, context):
        spec = Spec.from_proto(request.model_spec) if request.HasField("model_spec") else None

        def work(servable: servable_lib.Servable) -> object:
            signature_name, outputs = servable_lib.predict(
                servable, request.model_spec.signature_name, dict(request.inputs), list(request.output_filter)
            )
            return servable_lib.predict_response(request.model_spec.name, servable, signature_name, outputs)

        return await self._infer("Predict", request.model_spec.name, spec, work, context)

    @_guarded
    async def Classify(self, request, context):
        spec = Spec.from_proto(request.model_spec) if request.HasField("model_spec") else None
        return await self._infer(
            "Classify", request.model_spec.name, spec, lambda s: servable_lib.classify(s, request), context
        )

    @_guarded
    async def Regress(self, request, context):
        spec = Spec.from_proto(request.model_spec) if request.HasField("model_spec") else None
        return await self._infer(
            "Regress", request.model_spec.name, spec, lambda s: servable_lib.regress(s, request), context
        )

    @_guarded
    async def MultiInference(self, request, context):
        first = request.tasks[0].model_spec if request.tasks and request.tasks[0].HasField("model_spec") else None
        spec = Spec.from_proto(first) if first is not None else Spec("")
        name = first.name if first is not None else ""
        return await self._infer(
            "MultiInference", name, spec, lambda s: servable_lib.multi_inference(s, request), context
        )

    @_guarded
    async def GetModelMetadata(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise invalid_argument(f"Metadata field {field} is not supported")
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            for _field in request.metadata_field:
                servable = self.core.get_servable(Spec.from_proto(request.model_spec))
                try:
                    response.MergeFrom(metadata_response(servable))
                finally:
                    servable.release()
            return response
        except ServingError as exc:
            await _abort(context, exc)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServerCore) -> None:
        self.core = core

    @_guarded
    async def GetModelStatus(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            version = request.model_spec.version.value if request.model_spec.HasField("version") else None
            return status_response(self.core, request.model_spec.name, version)
        except ServingError as exc:
            await _abort(context, exc)

    @_guarded
    async def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()
        error: ServingError | None = None
        if request.config.WhichOneof("config") == "model_config_list":
            for index, model in enumerate(request.config.model_config_list.config):
                log.info(
                    "\nConfig entry\n\tindex : %d\n\tpath : %s\n\tname : %s\n\tplatform : %s",
                    index,
                    model.base_path,
                    model.name,
                    model.model_platform,
                )
            try:
                await self.core.reload_config(request.config)
            except ServingError as exc:
                error = exc
        else:
            error = invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        for name in request.metric_names:
            response.metric.add(name=name, int64_value_increase=0)
        if error is not None:
            log.error("ReloadConfig failed: %s", error.message)
            response.status.error_code = int(error.code)
            response.status.error_message = error.message
            await _abort(context, error)
        return response


def add_services(server: grpc.aio.Server, core: ServerCore, executor: concurrent.futures.Executor) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core, executor), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
