# meshlet images. Targets:
#   meshlet     the sidecar (default): a static meshlet binary and the iptables command go-iptables runs
#   simple-web  the demo web service: answers with its name (compose.yaml's restserver)
#   restclient  the demo client: Debian with curl and nothing of ours (an unchanged app)
#
# Base images are public ones, chosen through build arguments, so a machine
# without a registry can pass local stand-ins (scripts/docker-standins.sh).
# Works with the classic builder and BuildKit alike.
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/meshlet/meshlet/agent.Version=${VERSION}" -o /out/meshlet . \
 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/simple-web ./integration/testbin/webinstance

FROM ${BASE_IMAGE} AS simple-web
COPY --from=build /out/simple-web /usr/local/bin/simple-web
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/simple-web", "-listen", ":8080"]

FROM ${BASE_IMAGE} AS restclient
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
CMD ["bash"]

# The sidecar last, so that a plain `docker build .` makes it.
FROM ${BASE_IMAGE} AS meshlet
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/meshlet /usr/local/bin/meshlet
# Needs NET_ADMIN (iptables rules and socket marks in the app's namespace), nothing more.
HEALTHCHECK --interval=2s --timeout=2s --start-period=30s CMD ["meshlet", "health"]
ENTRYPOINT ["/usr/local/bin/meshlet"]
CMD ["run"]
