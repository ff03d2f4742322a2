# orga-proxy container image.
#
# Two stages: the official Rust image builds a release binary (dependencies in their
# own layer, so editing src/ does not rebuild them), and distroless/cc runs it:
# glibc and libgcc for the binary (rustls uses aws-lc-rs, linked against glibc), the
# CA certificates for Orga Cloud, no shell, no package manager, user 65532.
#
# Secrets never enter the image: pass ORGA_API_KEY (or ORGA_API_KEY_FILE pointing at a
# mounted secret) when the container starts; ORGA_USER_EMAIL only if your Orga account
# still needs it.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# Dependency layer: build every dependency against placeholder sources, so this layer
# is reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. Drop the placeholder build's fingerprints so cargo never mistakes
# the copied files (whose timestamps come from the build context) for up to date.
COPY src ./src
RUN rm -rf target/release/.fingerprint/orga-proxy-* \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/orga-proxy /out/orga-proxy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/orga-proxy /usr/local/bin/orga-proxy
COPY config/orga-proxy.toml /etc/orga-proxy/orga-proxy.toml
ENV ORGA_PROXY_CONFIG=/etc/orga-proxy/orga-proxy.toml
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# 8080: the public listener (server.listen); 9090: Prometheus /metrics
# (server.metrics_listen), which should stay on a private network.
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/orga-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/orga-proxy"]
CMD ["serve"]
