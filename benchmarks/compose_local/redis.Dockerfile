# A stand-in for the official redis:7 image, from Debian's redis-server (7.0), for machines that cannot reach
# Docker Hub (`python -m benchmarks.compose_stack --local-base`). Same contract as far as the stack uses it:
# `redis-server ARGS` as the command, data in /data, redis-cli for the health check, reachable from other
# containers (the official entrypoint turns protected mode off for the same reason).
ARG BASE
FROM ${BASE}
RUN apt-get update -q && apt-get install -y -q --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*
WORKDIR /data
ENTRYPOINT ["/bin/sh", "-c", "exec \"$@\" --protected-mode no", "--"]
CMD ["redis-server"]
