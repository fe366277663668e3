# registryx-guard's image for users who build it with a container engine: `docker build -t
# registry.example.com/team/registryx-guard:0.1.0 .` (or podman, buildah, kaniko). The release image is
# built by `make image` instead (e2e/image/build.sh: reproducible, one digest per binary, no engine
# needed), and this file ships what that image ships: the release binary and the libraries it links
# (glibc, libgcc: distroless cc), CA certificates, numeric user 65532, no shell, entrypoint
# /registryx-guard. It is never built by the tests (they run without a container engine);
# `make dockerfile-check` (e2e/image/dockerfile-check.sh) fails when its Rust version, user or
# entrypoint drift from Cargo.toml's rust-version and e2e/image/build.sh.

# The toolchain is Cargo.toml's rust-version; bookworm's glibc is the runtime's (distroless debian12).
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin registryx-guard \
	&& strip --strip-debug target/release/registryx-guard

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/registryx-guard /registryx-guard
USER 65532:65532
ENTRYPOINT ["/registryx-guard"]
