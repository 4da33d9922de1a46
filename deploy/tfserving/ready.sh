#!/bin/bash
# Ready only when every named model has a version that TF Serving reports AVAILABLE. GET /v1/models/NAME answers
# 200 while a version is still LOADING, so a plain HTTP probe passes too early. The compose healthcheck and the
# Helm chart's probes run this file; the tensorflow/serving image has bash but no curl, hence /dev/tcp.
# usage: ready.sh REST_PORT MODEL...
set -u
port=$1
shift
for model in "$@"; do
  exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
  printf 'GET /v1/models/%s HTTP/1.0\r\nHost: localhost\r\n\r\n' "${model}" >&3
  response=$(cat <&3)
  exec 3<&-
  if [[ ! ${response} =~ ^HTTP/1\.[01]\ 200 ]] || [[ ! ${response} =~ \"state\"[[:space:]]*:[[:space:]]*\"AVAILABLE\" ]]; then
    echo "tfserving: model ${model} has no AVAILABLE version: ${response:0:300}" >&2
    exit 1
  fi
done
