# syntax=docker/dockerfile:1
# The stepq worker service image: build a worker binary of this workspace, run it as a
# non-root user with a health check on its HTTP listener (`[worker] http`, see
# docs/operations.md).
#
#   docker build -t stepq-worker .                                   # `stepq worker start`
#   docker build -t my-worker --build-arg WORKER_PACKAGE=example-worker-service \
#     --build-arg WORKER_BIN=example-worker-service .                # your own ops' binary
#
# RUST_VERSION is the workspace's `rust-version` (`cargo xtask deploy-check` checks that
# they agree and that no locked dependency needs a newer Rust). The image expects the
# worker's HTTP listener on port 9464: STEPQ_WORKER_HTTP=0.0.0.0:9464 is set below, and, being
# the environment, it wins over `worker.http` in the config file (the health check asks that
# port).
ARG RUST_VERSION=1.94.1

FROM rust:${RUST_VERSION}-bookworm AS build
ARG WORKER_PACKAGE=stepq-cli
ARG WORKER_BIN=stepq
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p "${WORKER_PACKAGE}" --bin "${WORKER_BIN}" \
    && install -m 0755 "target/release/${WORKER_BIN}" /usr/local/bin/stepq-worker-service

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/stepq stepq
COPY --from=build /usr/local/bin/stepq-worker-service /usr/local/bin/stepq-worker-service
USER stepq
WORKDIR /var/lib/stepq
ENV STEPQ_WORKER_HTTP=0.0.0.0:9464
EXPOSE 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["curl", "-fsS", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["/usr/local/bin/stepq-worker-service"]
# For the default binary (the stepq CLI): a worker on the config in /etc/stepq/stepq.toml
# (mount it). Another WORKER_BIN takes its own arguments: give them as the container's
# command (`docker run IMAGE ...`, compose `command:`).
CMD ["worker", "start", "--config", "/etc/stepq/stepq.toml"]
