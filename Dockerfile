# ds01-controller's image, for labs with a registry:
#
#   docker build -t registry.example/ds01-controller:0.1.0 .
#
# The same contents as the image `ds01 dev up` builds without a registry
# (controller/devcluster/image.py): Debian bookworm's Python 3.11 with the
# packages in deploy/image/debian-packages, the wheels pinned with their hashes
# in deploy/image/requirements.txt (minus deploy/image/prune), the project's
# wheel, and the same entry point and user. tests/unit/test_image_recipe.py
# checks that the two recipes agree; the node tier checks the built image.

FROM debian:bookworm-slim AS wheels
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/image/requirements.txt deploy/image/prune /recipe/
RUN python3 -m pip install --no-deps --require-hashes --only-binary=:all: --no-compile \
      --target=/site -r /recipe/requirements.txt \
 && cd /site && grep -v '^#' /recipe/prune | xargs rm -rf && rm -rf /site/bin
COPY pyproject.toml README.md /src/
COPY controller /src/controller
RUN python3 -m venv /build && /build/bin/pip wheel --no-deps --wheel-dir=/wheels /src \
 && python3 -m pip install --no-deps --no-compile --target=/project /wheels/*.whl \
 && rm -rf /project/bin && cp -a /project/. /site/ \
 && python3 -m compileall -q -j0 --invalidation-mode unchecked-hash /site

FROM debian:bookworm-slim
COPY deploy/image/debian-packages /tmp/debian-packages
RUN apt-get update \
 && apt-get install -y --no-install-recommends $(grep -v '^#' /tmp/debian-packages) \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* \
      /usr/share/info/* /usr/share/locale/* /usr/share/lintian/* /tmp/debian-packages \
 && python3.11 -m compileall -q -j0 --invalidation-mode unchecked-hash /usr/lib/python3.11 \
 && echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'nonroot:x:65532:' >> /etc/group
COPY --from=wheels /site /usr/local/lib/python3.11/dist-packages
COPY --chmod=755 deploy/image/ds01 /usr/local/bin/ds01
COPY --chmod=755 deploy/image/ds01 /usr/local/bin/kubectl-ds01
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV LANG=C.UTF-8
ENV PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title=ds01-controller
ENTRYPOINT ["/usr/local/bin/ds01"]
CMD ["--help"]
