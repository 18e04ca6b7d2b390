# syntax=docker/dockerfile:1
# The two release images for people with Docker: the same images `make images`
# builds without Docker (internal/imagebuild; a test parses this file and checks
# that both agree): a static binary on an empty base (no shell, no libc, no
# CA certificates: neither binary uses the system trust store), non-root
# 65532:65532, the same entrypoint, PATH and OCI labels. Docker's layer tar and
# gzip differ from make images', so the digests differ; the files do not.
#
#   docker build -t ghcr.io/sds-injector/sds-injector .                     # the injector (default, last stage)
#   docker build --target sds-agent -t ghcr.io/sds-injector/sds-agent .     # the slim SDS agent
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=v0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(date -u -d @$(git log -1 --format=%ct) +%Y-%m-%dT%H:%M:%SZ) .
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS=linux
ARG TARGETARCH=amd64

FROM build AS build-sds-agent
RUN CGO_ENABLED=0 GOFLAGS= GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -trimpath -buildvcs=false -ldflags "-s -w -buildid= -X main.version=${VERSION}" -o /out/sds-agent ./cmd/sds-agent

FROM build AS build-sds-injector
RUN CGO_ENABLED=0 GOFLAGS= GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -trimpath -buildvcs=false -tags nocheck -ldflags "-s -w -buildid= -X main.version=${VERSION}" -o /out/sds-injector ./cmd/sds-injector

# The agent the `sds-agent` flavor injects (the injector runs it as UID/GID
# 1337 through the pod's securityContext); its probes and postStart hook exec
# `sds-agent probe` / `sds-agent wait`, found through PATH.
FROM scratch AS sds-agent
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
COPY --from=build-sds-agent --chmod=0555 /out/sds-agent /usr/local/bin/sds-agent
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
USER 65532:65532
LABEL org.opencontainers.image.title="sds-agent" \
      org.opencontainers.image.description="sds-agent: slim SDS agent serving an Istio workload certificate on a Unix socket" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/sds-injector/sds-injector" \
      org.opencontainers.image.url="https://github.com/sds-injector/sds-injector"
ENTRYPOINT ["/usr/local/bin/sds-agent"]

# Last, so that a plain `docker build` still produces the injector.
FROM scratch AS sds-injector
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
COPY --from=build-sds-injector --chmod=0555 /out/sds-injector /usr/local/bin/sds-injector
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
USER 65532:65532
LABEL org.opencontainers.image.title="sds-injector" \
      org.opencontainers.image.description="sds-injector: admission webhook and CLI injecting an SDS agent into edge gateway pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/sds-injector/sds-injector" \
      org.opencontainers.image.url="https://github.com/sds-injector/sds-injector"
ENTRYPOINT ["/usr/local/bin/sds-injector"]
