# syntax=docker/dockerfile:1
# mxserve on CPU. The GPU image is Dockerfile.gpu; docs/kubernetes.md shows both in use.
#   docker build -t mxserve:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/sample-models:/models:ro" mxserve:0.1.0
# Every install step is scripts/install_image.sh, which CI also runs on the host.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY common common
COPY frontend frontend
COPY worker worker
COPY instance instance
COPY scripts/install_image.sh scripts/
RUN scripts/install_image.sh python /opt/mxserve /src

# The same base as the build stage: the venv's python is the base image's interpreter.
FROM ${PYTHON_IMAGE} AS runtime
COPY scripts/install_image.sh /usr/local/sbin/install_image.sh
RUN install_image.sh system \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin mxserve
COPY --from=build /opt/mxserve /opt/mxserve
# Settings are MXSERVE_* variables (docs/configuration.md); a ConfigMap overrides any of them.
# The store is mounted read-only; MXSERVE_MODELS=all serves every archive in it.
ENV PATH=/opt/mxserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    MXSERVE_HOST=0.0.0.0 \
    MXSERVE_PORT=8080 \
    MXSERVE_GRPC_PORT=8085 \
    MXSERVE_MANAGEMENT_PORT=8081 \
    MXSERVE_MODEL_STORE=/models \
    MXSERVE_MODELS=all
# 8080: HTTP inference (/predict, /predictions, KServe v2 REST, /livez, /readyz).
# 8085: KServe v2 gRPC. 8081: management and /metrics, on loopback unless
# MXSERVE_MANAGEMENT_HOST says otherwise (it then requires the token; see docs/security.md).
EXPOSE 8080 8085 8081
USER 10001:10001
WORKDIR /tmp
# SIGTERM: readiness goes false, in-flight requests drain (drain_timeout_s), then exit 0.
STOPSIGNAL SIGTERM
# /livez, not /readyz: an orchestrator that restarts unhealthy containers must not restart
# one whose only fault is a model still loading or an optional model that failed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["mxserve", "probe", "livez"]
ENTRYPOINT ["mxserve"]
CMD ["start"]
