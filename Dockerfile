# edgeseg as a one-shot processing container: a mercure module (also run as-is by MONAI-Deploy-style engines).
# The container runs `edgeseg run` once per task: input folder -> output folder, then exits with the documented code.
#
#   docker build -t edgeseg-mercure .                                   # the demo bundle baked in
#   docker build -t edgeseg-mercure --build-arg BUNDLE=bundles/total_mr .   # another bundle (inside the context)
#
# Runtime only (the base install: OpenVINO, no torch/onnx/nncf), CPU only (mercure's hardened mode passes no device
# into the container), no network needed (mercure: network_enabled false), any non-root user (mercure starts modules
# as its own uid:gid with cap_drop ALL). NOT BUILT OR RUN ON THE DEVELOPMENT MACHINES (they cannot build images);
# tests/installer/test_dockerfile.py checks these promises statically. See README, "Running under mercure / MONAI
# Deploy / a vendor AI platform".
FROM python:3.11-slim

ARG BUNDLE=edgeseg/demo/bundle

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    OPENVINO_TELEMETRY_DISABLE=1 \
    EDGESEG_BUNDLE=/opt/edgeseg/bundle

# the package, installed without extras (pyproject's package-dir needs every top-level source folder; export/ is
# source only: its torch/onnx/nncf are the "export" extra, not installed)
COPY pyproject.toml README.md LICENSE watch_config.yaml /tmp/edgeseg-src/
COPY edgeseg /tmp/edgeseg-src/edgeseg
COPY bundle /tmp/edgeseg-src/bundle
COPY runtime /tmp/edgeseg-src/runtime
COPY export /tmp/edgeseg-src/export
RUN pip install /tmp/edgeseg-src \
    && rm -rf /tmp/edgeseg-src \
    && python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'onnx', 'nncf')))"

# the model bundle, baked in (or mount one and set EDGESEG_BUNDLE to it in the module's environment)
COPY ${BUNDLE} /opt/edgeseg/bundle

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin edgeseg
USER 10001

ENTRYPOINT ["edgeseg", "run"]
