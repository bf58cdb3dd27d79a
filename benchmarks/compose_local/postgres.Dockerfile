# A stand-in for the official postgres:16 image, from Debian's PostgreSQL 15, for machines that cannot reach Docker
# Hub (`python -m benchmarks.compose_stack --local-base`). Same contract as far as the stack uses it: POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB create the role and database on first start, data in /var/lib/postgresql/data,
# pg_isready for the health check, password logins over the network.
ARG BASE
FROM ${BASE}
RUN apt-get update -q && apt-get install -y -q --no-install-recommends postgresql-15 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
RUN chmod 755 /usr/local/bin/postgres-entrypoint.sh \
    && mkdir -p "$PGDATA" /run/postgresql && chown postgres "$PGDATA" /run/postgresql
VOLUME /var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
