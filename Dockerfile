# Molar container image: one static-ish binary on Debian slim, running as an
# unprivileged user. Build with:
#
#   docker build -t molar:0.1.0 .
#
# Nothing secret is baked in: configuration comes from the environment at run time
# (see .env.production.example and DEPLOYMENT.md).

# --- Build stage -------------------------------------------------------------------
FROM rust:1-slim-bookworm AS builder
WORKDIR /app

# Dependencies first, in their own layer: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main(){}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. `sqlx::migrate!("./migrations")` embeds migrations/ and
# `include_bytes!`/`include_str!` embed assets/, so both must be present at build time.
# `.sqlx/` holds the compile-time checked queries' data, so the build needs no database.
COPY build.rs ./
COPY .sqlx ./.sqlx
ENV SQLX_OFFLINE=true
COPY src ./src
COPY migrations ./migrations
COPY assets ./assets
# Make sure cargo rebuilds the crate itself rather than reusing the dummy build.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && ./target/release/molar --version

# --- Runtime stage -----------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can verify it and volume
# permissions are predictable.
RUN groupadd --system --gid 10001 molar \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin molar \
    && mkdir -p /app/migrations /var/lib/molar/records \
    && chown -R 10001:10001 /var/lib/molar \
    && chmod 0750 /var/lib/molar /var/lib/molar/records

COPY --from=builder /app/target/release/molar /usr/local/bin/molar
# The binary embeds the migrations (`molar migrate`); the SQL files are shipped as well
# so operators can run `sqlx migrate run --source /app/migrations` from this image.
COPY --from=builder /app/migrations /app/migrations

WORKDIR /app
USER 10001:10001

ENV ENVIRONMENT=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    MEDICAL_RECORDS_STORAGE_PATH=/var/lib/molar/records

EXPOSE 8000

# `molar healthcheck` probes /api/v2/health on the local port (the image has no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["molar", "healthcheck"]

LABEL org.opencontainers.image.title="molar" \
      org.opencontainers.image.description="Multi-tenant dental clinic management backend"

ENTRYPOINT ["molar"]
CMD ["serve"]
