# Two stages: build with the Rust toolchain, run from a small Debian image
# with only the binary and the example zones.
#   docker build -t signpost .
#   docker run -p 8600:8600/udp -p 8600:8600/tcp signpost
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin signpost

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin signpost
COPY --from=build /src/target/release/signpost /usr/local/bin/signpost
COPY zones /etc/signpost/zones
USER signpost
# DNS on every interface of the container; the HTTP API stays on the
# container's loopback unless given a token (--http-token-file) and --http.
EXPOSE 8600/udp 8600/tcp
ENTRYPOINT ["/usr/local/bin/signpost"]
CMD ["--zones", "/etc/signpost/zones", "--dns", "0.0.0.0:8600"]
