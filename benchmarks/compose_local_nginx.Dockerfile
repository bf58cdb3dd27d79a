# A stand-in for the official nginx image, from Debian's nginx package, for machines that cannot reach Docker Hub
# (`python -m benchmarks.compose_scale --local-base`). Same contract as far as the `lb` service uses it: a server
# configuration mounted at /etc/nginx/conf.d/default.conf, nginx in the foreground.
ARG BASE
FROM ${BASE}
RUN apt-get update -q && apt-get install -y -q --no-install-recommends nginx && rm -rf /var/lib/apt/lists/* \
    && rm -f /etc/nginx/sites-enabled/default
CMD ["nginx", "-g", "daemon off;"]
