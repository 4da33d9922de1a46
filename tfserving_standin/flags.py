"""tensorflow_model_server's command line (model_servers/main.cc), with the same names and defaults.

Accepts ``--flag=value`` (TensorFlow's own syntax) and also ``--flag value``; booleans also accept a
bare ``--flag``. Flags the stand-in does not act upon are accepted (so that one argv can start either
binary) and reported once at startup.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence


@dataclasses.dataclass
class Options:
    port: int = 8500
    grpc_socket_path: str = ""
    rest_api_port: int = 0
    rest_api_num_threads: int = 4 * (os.cpu_count() or 1)
    rest_api_timeout_in_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    enable_batching: bool = False
    allow_version_labels_for_unavailable_models: bool = False
    batching_parameters_file: str = ""
    enable_per_model_batching_parameters: bool = False
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    model_name: str = "default"
    model_base_path: str = ""
    num_load_threads: int = 0
    num_unload_threads: int = 0
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    file_system_poll_wait_seconds: int = 1
    flush_filesystem_caches: bool = True
    tensorflow_session_parallelism: int = 0
    tensorflow_session_config_file: str = ""
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    use_alts_credentials: bool = False
    ssl_config_file: str = ""
    platform_config_file: str = ""
    per_process_gpu_memory_fraction: float = 0.0
    saved_model_tags: str = "serve"
    grpc_channel_arguments: str = ""
    grpc_max_threads: int = 4 * (os.cpu_count() or 1)
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    version: bool = False
    monitoring_config_file: str = ""
    remove_unused_fields_from_bundle_metagraph: bool = True
    prefer_tflite_model: bool = False
    num_tflite_pools: int = os.cpu_count() or 1
    num_tflite_interpreters_per_pool: int = 1
    enable_signature_method_name_check: bool = False
    xla_cpu_compilation_enabled: bool = False
    xla_gpu_compilation_enabled: bool = False
    enable_profiler: bool = True
    thread_pool_factory_config_file: str = ""
    mixed_precision: str = ""
    skip_initialize_tpu: bool = False
    enable_grpc_healthcheck_service: bool = False
    enable_serialization_as_tensor_content: bool = False
    force_allow_any_version_labels_for_unavailable_models: bool = False

    # Flags whose effect the stand-in reproduces; the others are accepted and ignored.
    IMPLEMENTED = frozenset(
        {
            "port",
            "grpc_socket_path",
            "rest_api_port",
            "rest_api_timeout_in_ms",
            "rest_api_enable_cors_support",
            "allow_version_labels_for_unavailable_models",
            "model_config_file",
            "model_config_file_poll_wait_seconds",
            "model_name",
            "model_base_path",
            "max_num_load_retries",
            "load_retry_interval_micros",
            "file_system_poll_wait_seconds",
            "saved_model_tags",
            "enable_model_warmup",
            "num_request_iterations_for_warmup",
            "version",
            "monitoring_config_file",
            "enable_signature_method_name_check",
            "enable_serialization_as_tensor_content",
            "force_allow_any_version_labels_for_unavailable_models",
            "tensorflow_intra_op_parallelism",
            "tensorflow_inter_op_parallelism",
            "tensorflow_session_parallelism",
        }
    )


class FlagError(ValueError):
    pass


_FIELDS = {f.name: f for f in dataclasses.fields(Options)}
_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def _convert(name: str, text: str) -> object:
    kind = _FIELDS[name].type
    if kind == "bool":
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise FlagError(f"Illegal value for flag --{name}: {text}")
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise FlagError(f"Illegal value for flag --{name}: {text}") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise FlagError(f"Illegal value for flag --{name}: {text}") from None
    return text


def parse(argv: Sequence[str]) -> tuple[Options, list[str], set[str]]:
    """Returns (options, unknown arguments, names of the flags given)."""
    options = Options()
    unknown: list[str] = []
    given: set[str] = set()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            unknown.append(arg)
            continue
        body = arg[2:]
        name, has_value, value = body.partition("=")
        if name not in _FIELDS or name == "IMPLEMENTED":
            unknown.append(arg)
            continue
        is_bool = _FIELDS[name].type == "bool"
        if not has_value:
            if is_bool:
                nxt = args[i].lower() if i < len(args) else ""
                if nxt in _TRUE | _FALSE:
                    value = args[i]
                    i += 1
                else:
                    value = "true"
            else:
                if i >= len(args):
                    raise FlagError(f"Missing value for flag --{name}")
                value = args[i]
                i += 1
        setattr(options, name, _convert(name, value))
        given.add(name)
    return options, unknown, given


def usage(program: str = "tfserving_standin") -> str:
    lines = [f"usage: python -m {program}", "Flags (tensorflow_model_server's own):"]
    for name, field in _FIELDS.items():
        if name == "IMPLEMENTED":
            continue
        default = field.default
        lines.append(f"\t--{name}={default!s}\t{field.type}")
    return "\n".join(lines) + "\n"
