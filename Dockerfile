# syntax=docker/dockerfile:1
# Static sds-injector binary on distroless: non-root, no shell, works with a
# read-only root filesystem.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/sds-injector ./cmd/sds-injector

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sds-injector /usr/local/bin/sds-injector
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sds-injector"]
