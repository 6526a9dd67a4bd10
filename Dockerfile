# Fedra's container image: Debian 12, two stages. The first builds `fedra` from this tree; the
# second holds only the runtime libraries, Fashion-MNIST (the default dataset), the binary and its
# libraries,
# and runs as an unprivileged user. docs/deploy.md; deploy/k8s/ uses it as fedra:latest.
#   podman build -t fedra:latest .        (or: buildah bud -t fedra:latest . ; docker build ...)
#   podman run --rm fedra:latest version
ARG BASE=docker.io/library/debian:12

FROM ${BASE} AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      libtorch-dev libcapnp-dev capnproto libasio-dev libboost-program-options-dev \
      libfmt-dev libspdlog-dev nlohmann-json3-dev zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake cmake
COPY transport transport
COPY core core
COPY strategies strategies
COPY apps apps
COPY examples examples
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFEDRA_BUILD_TESTS=OFF -DFEDRA_BUILD_BENCHMARKS=OFF \
      -DFEDRA_BUILD_EXAMPLES=OFF -DFEDRA_WERROR=OFF \
 && cmake --build build -j "$(nproc)" --target fedra \
 && cmake --install build --prefix /opt/fedra --strip

FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
# Runtime only: LibTorch's shared library (it pulls its own), OpenBLAS for fast matrix products
# (the reference BLAS is ~30x slower), and the libraries fedra links; no compiler, no -dev package.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libtorch1.13 libopenblas0-openmp libcapnp-0.9.2 libboost-program-options1.74.0 \
      libfmt9 libspdlog1.10 libssl3 zlib1g dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin fedra
# The binary and its own shared libraries (it finds them by RUNPATH $ORIGIN/../lib); no headers.
COPY --from=build /opt/fedra/bin/fedra /opt/fedra/bin/fedra
COPY --from=build /opt/fedra/lib/libfedra_*.so /opt/fedra/lib/
ENV PATH=/opt/fedra/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 10001:10001
WORKDIR /tmp
EXPOSE 7443
ENTRYPOINT ["fedra"]
CMD ["--help"]
