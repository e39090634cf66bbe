# syntax=docker/dockerfile:1
# prerank: multi-stage build. Builder compiles a release binary; the runtime image holds only the
# binary, runs as a non-root user, reads models from a volume and is configured by PRERANK_* env vars.
# (No image can be pulled on our build machines; see docs/operations.md for the buildah path.)

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p prerank \
    && install -D -m 0755 target/release/prerank /out/prerank

FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 prerank \
    && useradd --system --uid 10001 --gid prerank --no-create-home --shell /usr/sbin/nologin prerank
COPY --from=builder /out/prerank /usr/local/bin/prerank
COPY --chown=prerank:prerank models /models
USER 10001:10001
ENV PRERANK_MODEL_ROOT=/models \
    PRERANK_BIND=0.0.0.0:8080 \
    PRERANK_LOG_JSON=true
EXPOSE 8080
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/prerank", "probe", "--addr", "127.0.0.1:8080", "--path", "/readyz"]
ENTRYPOINT ["/usr/local/bin/prerank"]
CMD ["serve"]
