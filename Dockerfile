# The managed plugin's rootfs, for hosts with a normal Docker setup:
#
#   docker build -t rustvlan-rootfs .                     # from source (pulls RUST_IMAGE)
#   docker build --target prebuilt -t rustvlan-rootfs .   # from target/x86_64-unknown-linux-gnu/release/rustvlan
#                                                         #   (RUSTFLAGS='-C target-feature=+crt-static' cargo build
#                                                         #    --release --target x86_64-unknown-linux-gnu)
#   mkdir -p plugin-dir/rootfs && cp config.json plugin-dir/
#   id=$(docker create rustvlan-rootfs /rustvlan) && docker export "$id" | tar -x -C plugin-dir/rootfs && docker rm "$id"
#   docker plugin create rustvlan/rustvlan plugin-dir && docker plugin enable rustvlan/rustvlan
#
# Both end in the same rootfs: one static binary and its mount points. `prebuilt` comes
# first so that the classic builder stops there without pulling RUST_IMAGE.

FROM scratch AS prebuilt
COPY target/x86_64-unknown-linux-gnu/release/rustvlan /rustvlan
WORKDIR /run/docker/plugins
WORKDIR /var/lib/rustvlan
WORKDIR /host-plugins
WORKDIR /
ENTRYPOINT ["/rustvlan", "serve"]

ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# protoc: the etcd client's protocol buffers are compiled at build time.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev && rm -rf /var/lib/apt/lists/*
RUN RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/rustvlan /out/rustvlan

FROM scratch AS rootfs
COPY --from=build /out/rustvlan /rustvlan
WORKDIR /run/docker/plugins
WORKDIR /var/lib/rustvlan
WORKDIR /host-plugins
WORKDIR /
ENTRYPOINT ["/rustvlan", "serve"]
