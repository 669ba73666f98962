# ecrl-policy-server: the gRPC PolicyService (Decide, ScoreNodes, GetPolicyInfo) with
# grpc.health.v1 and reflection, serving the packaged ONNX policy (ecrl/models/); metrics :9101.
# The chart also runs Triton's model-preparation init container from it (onnx, onnxruntime).
#
# Built from the repository root by `make images` (context: the repo, filtered by .dockerignore):
#   docker build -f deploy/docker/ecrl-policy-server.Dockerfile -t ecrl-policy-server .
# Base image: an exact tag, the Python of requirements/*.lock (3.11); pin it by digest on the
# box with --build-arg PYTHON_IMAGE=python:3.11.7-slim-bookworm@sha256:... if wanted.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml requirements/dev.lock deploy/docker/requirements.py ./
# Runtime dependencies: the core and the `services` extra only, at the versions of the lock the
# tests ran with (the lock pins every extra, so it pins this whole closure), wheels only.
RUN python requirements.py services > requirements.txt \
    && python -m venv /opt/ecrl \
    && /opt/ecrl/bin/pip install --no-cache-dir --only-binary=:all: -c dev.lock -r requirements.txt
# `make proto`: grpcio-tools (the lock's version) in a build-only venv, code generated into ecrl/v1.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --only-binary=:all: -c dev.lock grpcio-tools
COPY proto/ proto/
COPY ecrl/ /app/ecrl/
COPY services/ /app/services/
# Generate ecrl/v1, then byte-compile /app once here: the pod's root filesystem is read-only
# (the chart's securityContext); unchecked-hash .pyc stay valid whatever mtimes COPY gives.
RUN mkdir -p /app/ecrl/v1 && touch /app/ecrl/v1/__init__.py \
    && /opt/build/bin/python -m grpc_tools.protoc -Iproto --python_out=/app --pyi_out=/app \
        --grpc_python_out=/app proto/ecrl/v1/*.proto \
    && /opt/ecrl/bin/python -m compileall -q --invalidation-mode unchecked-hash /app

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin ecrl
COPY --from=build /opt/ecrl /opt/ecrl
COPY --from=build /app /app
# The service reads every flag from ECRL_POLICY_<FLAG> too (a flag wins): listen on all
# addresses inside the pod instead of the loopback default.
ENV PATH=/opt/ecrl/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    ECRL_POLICY_LISTEN=0.0.0.0:50051 ECRL_POLICY_METRICS_LISTEN=0.0.0.0:9101
WORKDIR /app
USER 10001:10001
EXPOSE 50051 9101
# grpc.health.v1 Check of ecrl.v1.PolicyService on the port of ECRL_POLICY_LISTEN.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-c", "import os, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; port = os.environ['ECRL_POLICY_LISTEN'].rpartition(':')[2]; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:' + port)).Check(h.HealthCheckRequest(service='ecrl.v1.PolicyService'), timeout=3); raise SystemExit(r.status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["python", "-m", "services.policy_server"]
