# syntax=docker/dockerfile:1
# Two images from one Dockerfile, both static binaries on distroless: non-root,
# no shell, working with a read-only root filesystem.
#
#   docker build -t ghcr.io/sds-injector/sds-injector .                     # the injector (default, last stage)
#   docker build --target sds-agent -t ghcr.io/sds-injector/sds-agent .     # the slim SDS agent
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev

FROM build AS build-sds-agent
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/sds-agent ./cmd/sds-agent

FROM build AS build-sds-injector
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/sds-injector ./cmd/sds-injector

# The agent the `sds-agent` flavor injects. The injector runs it as UID/GID
# 1337 with no arguments (this entrypoint); its probes and postStart hook exec
# `sds-agent probe` / `sds-agent wait`, found through distroless's PATH.
FROM gcr.io/distroless/static-debian12:nonroot AS sds-agent
COPY --from=build-sds-agent /out/sds-agent /usr/local/bin/sds-agent
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/sds-agent"]

# Last, so that a plain `docker build` still produces the injector.
FROM gcr.io/distroless/static-debian12:nonroot AS sds-injector
COPY --from=build-sds-injector /out/sds-injector /usr/local/bin/sds-injector
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sds-injector"]
