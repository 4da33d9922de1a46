# The gateway's image: `docker build -t model-gateway .` (docker-compose.yml builds it as the `gateway` service).
# The build stage compiles gateway/protos into *_pb2 modules and installs the gateway into a virtualenv; the final
# stage is the slim Python base plus that virtualenv and a non-root user: no compiler, no grpcio-tools, no
# tensorflow or torch, nothing written into the installed package at run time.
# `docker build --target models -t model-gateway-models .` packs model_repo for the Helm chart's initContainer.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# strip(1), for the build stage only; it follows the base image's Debian release, hence no version pin.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends binutils && rm -rf /var/lib/apt/lists/*
# The protobuf compiler gets its own virtualenv, which never reaches the final image (pin: pyproject's build extra).
RUN python -m venv /opt/protoc && /opt/protoc/bin/pip install --no-cache-dir grpcio-tools==1.85.1
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN /opt/protoc/bin/python -m gateway.protos
# No pip or setuptools in the runtime virtualenv; modules are byte-compiled here, since the running user cannot.
# Then no test suites, of Swagger UI only the two files /docs serves (9 MB less), and no symbols in extension
# modules (the virtualenv: 155 MB -> 115 MB, measured before Swagger UI); the vendored
# libraries under *.libs/ keep theirs: auditwheel's patched ELF files no longer load once stripped.
RUN python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir . \
    && find /opt/venv -type d -name tests -prune -exec rm -rf {} + \
    && find /opt/venv -path '*/swagger_ui_bundle/vendor/*' ! -name swagger-ui.css ! -name swagger-ui-bundle.js \
       -type f -delete \
    && find /opt/venv -name '*.cpython-*.so' -exec strip --strip-unneeded {} + \
    && /opt/venv/bin/python -c "import gateway.cli, gateway.server, gateway.api.rest, gateway.api.grpc, gateway.admin.app, gateway.protos.services" \
    && /opt/venv/bin/python -c "import importlib.util as u; bad = [m for m in ('grpc_tools', 'tensorflow', 'torch') if u.find_spec(m)]; assert not bad, bad"

FROM busybox:1.37 AS models
COPY model_repo/tfserving /models/tfserving
COPY model_repo/torchserve /models/torchserve

FROM ${PYTHON_IMAGE} AS gateway
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_ROUTES_FILE=/srv/gateway/routes.yaml
# /srv/*: the routes file and admin token, TF Serving's models.config, TorchServe's key_file.json. Owned by the
# gateway's user, so that compose's named volumes mounted there take that owner.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /srv/gateway --no-create-home \
       --shell /usr/sbin/nologin gateway \
    && mkdir -p /srv/gateway /srv/tfserving /srv/torchserve \
    && chown gateway:gateway /srv/gateway /srv/tfserving /srv/torchserve
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /srv/gateway
# REST, gRPC, admin API (the admin API listens on 127.0.0.1 unless GATEWAY_ADMIN_HOST says otherwise).
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('GATEWAY_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["gateway", "serve"]
