"""The public REST API's bodies as pydantic models: what the OpenAPI document (gateway/api/openapi.py) says the
fronts accept and answer. Documentation only: the fronts decode with their codecs, never with these models, so
pydantic stays off the inference path (nothing on it imports this module)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeAliasType

Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                   "FP64", "BYTES"]

# A tensor's elements: flat row-major or nested like its shape; numbers, booleans (BOOL) or strings (BYTES). Not a
# recursive type: client generators (openapi-python-client) refuse those.
TensorData = TypeAliasType("TensorData", list[float | bool | str | list[Any]])


class Open(BaseModel):
    """A JSON object that may carry more members than the ones named (the protocols allow extensions)."""

    model_config = ConfigDict(extra="allow")


# --- errors ---------------------------------------------------------------------------------------------------

class Error(Open):
    """Every v2 and TF Serving refusal (`{"error": "..."}`), with the status of its class (gateway/errors.py)."""

    error: str = Field(description="what went wrong, for a person", examples=["Model 'nope' is not served by "
                                                                              "this gateway"])


class TorchServeError(BaseModel):
    """Every /predictions and /ping refusal, in TorchServe's own shape: clients switch on `type`."""

    code: int = Field(description="the HTTP status again", examples=[404])
    type: str = Field(description="TorchServe's exception name: BadRequestException, ModelNotFoundException, "
                                  "ModelVersionNotFoundException, ResourceNotFoundException, "
                                  "MethodNotAllowedException, RequestEntityTooLargeException, "
                                  "ServiceUnavailableException, RequestTimeoutException, InternalServerException",
                      examples=["ModelNotFoundException"])
    message: str = Field(examples=["Model 'nope' is not served by this gateway"])


# --- Open Inference Protocol v2 -------------------------------------------------------------------------------

class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ServerNotReady(BaseModel):
    """400 from /v2/health/ready: the process is draining (SIGTERM) and out of the load balancer."""

    ready: Literal[False]
    error: str


class ServerMetadata(BaseModel):
    name: str = Field(examples=["model-gateway"])
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="a v2 datatype (BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES)")
    shape: list[int] = Field(description="-1 is any size")


class ModelMetadata(BaseModel):
    name: str = Field(description="the logical model")
    versions: list[str] = Field(description="the version asked for, or every version of the model")
    platform: str = Field(examples=["tensorflow_savedmodel", "pytorch_torchserve"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    version: str = Field(description="the logical version that answered")
    ready: bool


class ModelNotReady(ModelReady):
    """400 from .../ready: the version is not loaded (or its backend does not answer)."""

    ready: Literal[False]
    error: str


class RequestInput(BaseModel):
    name: str = Field(min_length=1)
    shape: list[int] = Field(description="non-negative sizes")
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data_size": N}: the tensor\'s bytes follow the JSON header (binary extension)')
    data: TensorData | None = Field(None, description="row-major, flat or nested; absent with binary_data_size")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description='{"binary_data": true}: this output as raw bytes')


class InferRequest(BaseModel):
    """POST .../infer as JSON; with the binary tensor extension this JSON is the header of an
    application/octet-stream body (its length in Inference-Header-Content-Length)."""

    id: str | None = Field(None, description="echoed in the answer")
    parameters: dict[str, Any] | None = Field(
        None, description='request parameters; {"binary_data_output": true} asks for every output as raw bytes; '
                          "a sticky experiment may read its key here")
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="the outputs wanted (default: every output)")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}]})


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(None, description='{"binary_data_size": N} for a binary output')
    data: TensorData | None = Field(None, description="row-major and flat; absent for a binary output")


class InferResponse(BaseModel):
    model_name: str = Field(description="the logical model")
    model_version: str = Field(description="the logical version that served the request")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


# --- TF Serving REST ------------------------------------------------------------------------------------------

class PredictRows(BaseModel):
    """The row format: one entry per example; named inputs as objects, a single input as bare values."""

    signature_name: str | None = Field(None, description="default serving_default")
    instances: list[Any]

    model_config = ConfigDict(json_schema_extra={"examples": [{"instances": [[1.0, 2.0, 3.0]]}]})


class PredictColumns(BaseModel):
    """The columnar format: {input name: batch} (or the batch itself for a model with one input)."""

    signature_name: str | None = Field(None, description="default serving_default")
    inputs: Any

    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": {"x": [[1.0, 2.0, 3.0]]}}]})


class RowPredictions(BaseModel):
    """The answer to a row request: one entry per example (an object when the model has several outputs)."""

    predictions: list[Any]


class ColumnarOutputs(BaseModel):
    """The answer to a columnar request: {output name: batch}, or the batch itself for a single output."""

    outputs: Any


class ClassifyRegressRequest(BaseModel):
    """:classify and :regress (TF-served models only): tf.Example features as JSON."""

    signature_name: str | None = None
    context: dict[str, Any] | None = Field(None, description="features shared by every example")
    examples: list[dict[str, Any]]

    model_config = ConfigDict(json_schema_extra={"examples": [{"examples": [{"x": [1.0, 2.0, 3.0]}]}]})


class ClassifyRegressResult(BaseModel):
    """:classify answers [[label, score], ...] per example, :regress one number per example."""

    result: list[Any]


class TFStatusDetail(BaseModel):
    error_code: str = Field(examples=["OK"])
    error_message: str


class TFVersionStatus(BaseModel):
    version: str
    state: str = Field(description="START, LOADING, AVAILABLE, UNLOADING, END or UNKNOWN (backend unreachable)")
    status: TFStatusDetail


class TFModelStatus(BaseModel):
    """GET /v1/models/{m}[/versions/{n}]: every version's state, highest first (labels are ignored)."""

    model_version_status: list[TFVersionStatus]


class TFModelSpec(BaseModel):
    name: str
    signature_name: str
    version: str


class TFModelMetadata(Open):
    """GET .../metadata: TF Serving's own answer (every signature) for TF-served models, else the serving_default
    signature built from the routes file's schema."""

    model_spec: TFModelSpec
    metadata: dict[str, Any] = Field(description='{"signature_def": {"signature_def": {name: {inputs, outputs, '
                                                 'method_name}}}}')


# --- TorchServe REST ------------------------------------------------------------------------------------------

class Healthy(BaseModel):
    status: Literal["Healthy"]


class Unhealthy(BaseModel):
    """503 from /ping: the process is draining (SIGTERM) and out of the load balancer."""

    status: Literal["Unhealthy"]
    reason: str
