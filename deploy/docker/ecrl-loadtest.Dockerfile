# ecrl-loadtest: Locust with the tritonclient HTTP/gRPC users of loadtest/locustfile.py and the
# shared load shapes (ecrl.load); the chart's Locust master and worker Jobs.
# The source keeps the repository's layout under /app (ecrl/, loadtest/): ecrl.load.locust_run
# finds loadtest/locustfile.py beside the ecrl package.
#
# Built from the repository root by `make images` (context: the repo, filtered by .dockerignore):
#   docker build -f deploy/docker/ecrl-loadtest.Dockerfile -t ecrl-loadtest .
# Base image: an exact tag, the Python of requirements/*.lock (3.11); pin it by digest on the
# box with --build-arg PYTHON_IMAGE=python:3.11.7-slim-bookworm@sha256:... if wanted.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml requirements/dev.lock deploy/docker/requirements.py ./
# Runtime dependencies: the core and the `testbed` extra only, at the versions of the lock the
# tests ran with (the lock pins every extra, so it pins this whole closure), wheels only.
RUN python requirements.py testbed > requirements.txt \
    && python -m venv /opt/ecrl \
    && /opt/ecrl/bin/pip install --no-cache-dir --only-binary=:all: -c dev.lock -r requirements.txt
# `make proto`: grpcio-tools (the lock's version) in a build-only venv, code generated into ecrl/v1.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --only-binary=:all: -c dev.lock grpcio-tools
COPY proto/ proto/
COPY ecrl/ /app/ecrl/
COPY loadtest/ /app/loadtest/
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
ENV PATH=/opt/ecrl/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
EXPOSE 8089 5557
# A load generator runs as a Job, not a service: nothing to probe.
HEALTHCHECK NONE
ENTRYPOINT ["locust", "-f", "/app/loadtest/locustfile.py"]
CMD ["--help"]
