"""``python -m tfserving_standin``: builds the server the way model_servers/server.cc does.

Startup order: read the config, load every model (ServerCore::Create waits for them), start the
config-file poller, the gRPC server ("Running gRPC ModelServer at 0.0.0.0:PORT ..."), then the REST
server ("Exporting HTTP/REST API at:localhost:PORT ..."). A startup failure prints
"Failed to start server. Error: <status>" to stdout and exits with status 255, as main.cc does.
SIGTERM and SIGINT stop the servers and unload the models.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import ClassVar

from tfserving_standin import flags as flags_lib
from tfserving_standin.status import Code, ServingError, invalid_argument

log = logging.getLogger("tfserving_standin")

STANDIN_VERSION = "0.0.0+tfserving_standin"


class _TfStyleFormatter(logging.Formatter):
    """2024-01-01 12:00:00.123456: I tfserving_standin/server.py:42] message"""

    _LEVELS: ClassVar[dict[str, str]] = {"DEBUG": "I", "INFO": "I", "WARNING": "W", "ERROR": "E", "CRITICAL": "F"}

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S.%f")
        level = self._LEVELS.get(record.levelname, "I")
        where = f"tfserving_standin/{os.path.basename(record.pathname)}:{record.lineno}"
        return f"{stamp}: {level} {where}] {record.getMessage()}"


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TfStyleFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _session_config(options: flags_lib.Options) -> object:
    from tensorflow.core.protobuf import config_pb2

    config = config_pb2.ConfigProto()
    if options.tensorflow_session_config_file:
        from google.protobuf import text_format

        with open(options.tensorflow_session_config_file, encoding="utf-8") as handle:
            text_format.Parse(handle.read(), config)
    if options.tensorflow_intra_op_parallelism > 0 or options.tensorflow_inter_op_parallelism > 0:
        config.intra_op_parallelism_threads = options.tensorflow_intra_op_parallelism
        config.inter_op_parallelism_threads = options.tensorflow_inter_op_parallelism
    elif options.tensorflow_session_parallelism > 0:
        config.intra_op_parallelism_threads = options.tensorflow_session_parallelism
        config.inter_op_parallelism_threads = options.tensorflow_session_parallelism
    return config


class Server:
    def __init__(self, options: flags_lib.Options) -> None:
        self.options = options
        self.core = None
        self.grpc_server = None
        self.rest_runner = None
        self.grpc_address = ""
        self.rest_address = ""
        self._config_poll: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(4, 2 * (os.cpu_count() or 1)), thread_name_prefix="serve"
        )

    async def build_and_start(self) -> None:
        """server.cc Server::BuildAndStart."""
        options = self.options
        if options.port == 0 and not options.grpc_socket_path:
            raise invalid_argument(
                "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."
            )
        if options.use_alts_credentials and options.ssl_config_file:
            raise invalid_argument("Either use_alts_credentials must be false or ssl_config_file must be empty.")
        if not options.model_base_path and not options.model_config_file:
            raise invalid_argument(
                "Both server_options.model_base_path and server_options.model_config_file are empty!"
            )
        if options.ssl_config_file or options.use_alts_credentials:
            raise ServingError(Code.UNIMPLEMENTED, "The stand-in serves insecure gRPC only.")

        # Imports that pull TensorFlow in come after the cheap checks.
        import grpc

        from tfserving_standin import config as config_lib
        from tfserving_standin import grpc_service
        from tfserving_standin.core import CoreOptions, ServerCore
        from tfserving_standin.servable import RuntimeSettings

        RuntimeSettings.method_name_check = options.enable_signature_method_name_check
        RuntimeSettings.tensor_content = options.enable_serialization_as_tensor_content

        if options.model_config_file:
            model_server_config = config_lib.read_model_server_config(options.model_config_file)
        else:
            log.info(
                "Building single TensorFlow model file config:  model_name: %s model_base_path: %s",
                options.model_name,
                options.model_base_path,
            )
            model_server_config = config_lib.single_model_config(options.model_name, options.model_base_path)

        core_options = CoreOptions(
            file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
            allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
            force_allow_any_version_labels_for_unavailable_models=(
                options.force_allow_any_version_labels_for_unavailable_models
            ),
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_micros=options.load_retry_interval_micros,
            saved_model_tags=tuple(t for t in options.saved_model_tags.split(",") if t),
            enable_model_warmup=options.enable_model_warmup,
            num_request_iterations_for_warmup=options.num_request_iterations_for_warmup,
            session_config=_session_config(options),  # type: ignore[arg-type]
        )
        self.core = ServerCore(core_options)
        await self.core.reload_config(model_server_config)

        if options.model_config_file_poll_wait_seconds > 0 and options.model_config_file:
            self._config_poll = asyncio.get_running_loop().create_task(self._poll_config_file())

        self.grpc_server = grpc.aio.server(migration_thread_pool=None, options=grpc_service.SERVER_OPTIONS)
        grpc_service.add_services(self.grpc_server, self.core, self._executor)
        if options.port != 0:
            address = f"0.0.0.0:{options.port}"
            try:
                bound = self.grpc_server.add_insecure_port(address)
            except RuntimeError:
                bound = 0
            if not bound:
                raise invalid_argument("Failed to BuildAndStart gRPC server")
            self.grpc_address = address
        if options.grpc_socket_path:
            self.grpc_server.add_insecure_port(f"unix:{options.grpc_socket_path}")
        await self.grpc_server.start()
        if options.port != 0:
            log.info("Running gRPC ModelServer at %s ...", self.grpc_address)
        if options.grpc_socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", options.grpc_socket_path)

        if options.rest_api_port != 0:
            if options.rest_api_port != options.port:
                await self._start_rest()
            else:
                log.error(
                    "server_options.http_port cannot be same as grpc_port. Please use a different port for "
                    "HTTP/REST API. Skipped exporting HTTP/REST API."
                )

    async def _start_rest(self) -> None:
        from aiohttp import web

        from tfserving_standin import config as config_lib
        from tfserving_standin.rest import RestApi

        options = self.options
        address = f"localhost:{options.rest_api_port}"
        prometheus_path = None
        if options.monitoring_config_file:
            monitoring = config_lib.read_monitoring_config(options.monitoring_config_file)
            if monitoring.prometheus_config.enable:  # type: ignore[attr-defined]
                prometheus_path = monitoring.prometheus_config.path or config_lib.DEFAULT_PROMETHEUS_PATH  # type: ignore[attr-defined]
        api = RestApi(
            self.core,  # type: ignore[arg-type]
            self._executor,
            options.rest_api_timeout_in_ms,
            prometheus_path,
            options.rest_api_enable_cors_support,
        )
        runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "0.0.0.0", options.rest_api_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            log.error("Failed to start HTTP Server at %s: %s", address, exc)
            return
        self.rest_runner = runner
        self.rest_address = address
        log.info("Exporting HTTP/REST API at:%s ...", address)

    async def _poll_config_file(self) -> None:
        """server.cc PollFilesystemAndReloadConfig, every --model_config_file_poll_wait_seconds."""
        from tfserving_standin import config as config_lib

        while True:
            await asyncio.sleep(self.options.model_config_file_poll_wait_seconds)
            try:
                config = config_lib.read_model_server_config(self.options.model_config_file)
            except ServingError as exc:
                log.error("Failed to read ModelServerConfig file: %s", exc.message)
                continue
            try:
                await self.core.reload_config(config)  # type: ignore[union-attr]
            except ServingError as exc:
                log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", exc.message)

    async def stop(self) -> None:
        if self._config_poll is not None:
            self._config_poll.cancel()
            await asyncio.gather(self._config_poll, return_exceptions=True)
        if self.rest_runner is not None:
            await self.rest_runner.cleanup()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=0.5)
        if self.core is not None:
            await self.core.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


async def _serve(options: flags_lib.Options) -> int:
    server = Server(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    start = asyncio.ensure_future(server.build_and_start())
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if start in done:
        error = start.exception()
        if error is not None:
            stopper.cancel()
            await server.stop()
            if isinstance(error, ServingError):
                print(f"Failed to start server. Error: {error}", flush=True)
                return 255
            raise error
        await stopper
    else:
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
    log.info("Received shutdown signal, stopping the server ...")
    await server.stop()
    log.info("Server stopped.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options, unknown, given = flags_lib.parse(args)
    except flags_lib.FlagError as exc:
        print(exc)
        print(flags_lib.usage(), end="")
        return 255
    _setup_logging()
    if options.version:
        import tensorflow as tf

        print(f"TensorFlow ModelServer: {STANDIN_VERSION}\nTensorFlow Library: {tf.__version__}")
        return 0
    if unknown:
        print(f"unknown argument: {unknown[0]}\n{flags_lib.usage()}", end="", flush=True)
    ignored = sorted(given - flags_lib.Options.IMPLEMENTED)
    if ignored:
        log.warning("tfserving_standin accepts but does not act upon: %s", ", ".join(f"--{n}" for n in ignored))
    log.info("tfserving_standin: a TensorFlow-Serving-compatible stand-in (not TensorFlow Serving) starting")
    threading.current_thread().name = "main"
    try:
        return asyncio.run(_serve(options))
    except KeyboardInterrupt:
        return 0
