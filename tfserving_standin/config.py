"""Model server configuration: the official ModelServerConfig proto, and MonitoringConfig.

tensorflow-serving-api does not ship monitoring_config_pb2, so MonitoringConfig is built here from
its descriptor (tensorflow_serving/config/monitoring_config.proto, field numbers included) and parsed
with the same text_format parser.
"""

from __future__ import annotations

import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

from tfserving_standin import status

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig

TENSORFLOW_PLATFORM = "tensorflow"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def _build_monitoring_config_class() -> type:
    pool = descriptor_pool.DescriptorPool()
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
    )
    prom = fdp.message_type.add(name="PrometheusConfig")
    prom.field.add(
        name="enable",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    prom.field.add(
        name="path",
        number=2,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    mon = fdp.message_type.add(name="MonitoringConfig")
    mon.field.add(
        name="prometheus_config",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


MonitoringConfig = _build_monitoring_config_class()


def _read_text_proto(path: str, message: object, type_name: str) -> None:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise status.not_found(f"{path}; No such file or directory") from None
    except OSError as exc:
        raise status.ServingError(status.Code.UNKNOWN, f"{path}; {exc.strerror}") from None
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise status.invalid_argument(f"Invalid protobuf file: '{path}'; {type_name}: {exc}") from None


def read_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    config = ModelServerConfig()
    _read_text_proto(path, config, "tensorflow.serving.ModelServerConfig")
    return config


def read_monitoring_config(path: str) -> object:
    config = MonitoringConfig()
    _read_text_proto(path, config, "tensorflow.serving.MonitoringConfig")
    return config


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """server.cc BuildSingleModelConfig: --model_name/--model_base_path."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = TENSORFLOW_PLATFORM
    return config


def platform_of(model: model_server_config_pb2.ModelConfig) -> str:
    """server_core.cc GetPlatform."""
    if model.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if model.model_platform:
            raise status.invalid_argument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {model.name}"
            )
        if model.model_type == model_server_config_pb2.TENSORFLOW:
            return TENSORFLOW_PLATFORM
        raise status.invalid_argument(f"ModelServerConfig::model_type choice {model.model_type} not supported.")
    if not model.model_platform:
        raise status.invalid_argument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            f"ModelServerConfig::model_platform, model name is {model.name}"
        )
    return model.model_platform


def _is_relative(uri: str) -> bool:
    return "://" not in uri and not os.path.isabs(uri)


def validate_model_config_list(config_list: model_server_config_pb2.ModelConfigList) -> None:
    """server_core.cc ValidateModelConfigList (no model_config_list_root_dir)."""
    names: set[str] = set()
    for model in config_list.config:
        if model.name in names:
            raise status.invalid_argument(f"Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)
    for model in config_list.config:
        if _is_relative(model.base_path):
            raise status.invalid_argument(
                f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}"
            )


def validate_no_platform_changes(
    old: model_server_config_pb2.ModelConfigList, new: model_server_config_pb2.ModelConfigList
) -> None:
    old_platforms = {model.name: platform_of(model) for model in old.config}
    for model in new.config:
        if model.name not in old_platforms:
            continue
        new_platform = platform_of(model)
        if new_platform != old_platforms[model.name]:
            raise status.invalid_argument(
                f"Illegal to change a model's platform. For model {model.name} platform was "
                f"{old_platforms[model.name]} and new platform requested is {new_platform}"
            )


def validate_platforms(config_list: model_server_config_pb2.ModelConfigList) -> None:
    """server_core.cc CreateStoragePathRoutes: only the tensorflow platform is configured."""
    for model in config_list.config:
        platform = platform_of(model)
        if platform != TENSORFLOW_PLATFORM:
            raise status.invalid_argument(f"Model {model.name} requests unsupported platform {platform}")
