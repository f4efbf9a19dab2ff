# edgeseg as a one-shot processing container: a mercure module, and a MONAI Application Package (MAP) laid out as
# the MAP specification asks: /etc/holoscan/app.json and pkg.json (installer/map/), the application (a virtual
# environment with edgeseg) in /opt/holoscan/app/, the bundle in /opt/holoscan/models/edgeseg/, README and licence in
# /opt/holoscan/docs/, work folders /var/holoscan/{input,output,logs}. Under a MAP host (HOLOSCAN_*/MONAI_*
# variables) `edgeseg run` writes the DICOM results at the output folder's top level (layout "map"); mounting
# /var/run/holoscan/export/ exports the manifests (and app, models, docs); `--show-manifests` prints them.
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
    PATH=/opt/holoscan/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    EDGESEG_BUNDLE=/opt/holoscan/models/edgeseg \
    HOLOSCAN_APPLICATION=/opt/holoscan/app \
    HOLOSCAN_INPUT_PATH=/var/holoscan/input \
    HOLOSCAN_OUTPUT_PATH=/var/holoscan/output \
    HOLOSCAN_WORKDIR=/var/holoscan \
    HOLOSCAN_MODEL_PATH=/opt/holoscan/models \
    HOLOSCAN_CONFIG_PATH=/var/holoscan/app.yaml \
    HOLOSCAN_APP_MANIFEST_PATH=/etc/holoscan/app.json \
    HOLOSCAN_PKG_MANIFEST_PATH=/etc/holoscan/pkg.json \
    HOLOSCAN_DOCS_PATH=/opt/holoscan/docs \
    HOLOSCAN_LOGS_PATH=/var/holoscan/logs

LABEL org.opencontainers.image.title="edgeseg" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Offline MRI segmentation: one-shot module for mercure and MONAI Deploy"

# the package, installed without extras (pyproject's package-dir needs every top-level source folder; export/ is
# source only: its torch/onnx/nncf are the "export" extra, not installed)
COPY pyproject.toml README.md LICENSE watch_config.yaml /tmp/edgeseg-src/
COPY edgeseg /tmp/edgeseg-src/edgeseg
COPY bundle /tmp/edgeseg-src/bundle
COPY runtime /tmp/edgeseg-src/runtime
COPY export /tmp/edgeseg-src/export
RUN python -m venv /opt/holoscan/app \
    && /opt/holoscan/app/bin/pip install /tmp/edgeseg-src \
    && rm -rf /tmp/edgeseg-src \
    && /opt/holoscan/app/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'onnx', 'nncf')))" \
    && mkdir -p /var/holoscan/input /var/holoscan/output /var/holoscan/logs \
    && chmod 1777 /var/holoscan /var/holoscan/input /var/holoscan/output /var/holoscan/logs

# the MAP manifests and documents
COPY installer/map/app.json installer/map/pkg.json /etc/holoscan/
COPY README.md LICENSE /opt/holoscan/docs/

# the model bundle, baked in (or mount one over /opt/holoscan/models/edgeseg, or set EDGESEG_BUNDLE)
COPY ${BUNDLE} /opt/holoscan/models/edgeseg

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin edgeseg
USER 10001
WORKDIR /var/holoscan

ENTRYPOINT ["edgeseg", "run"]
