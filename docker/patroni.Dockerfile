# The compose demo's database node: Debian bookworm with PostgreSQL 15, Patroni and etcd, all
# from Debian's packages. compose.yml runs it both as an etcd member (command: etcd ...) and
# as a Patroni member (the default command).
#
#   docker build -f docker/patroni.Dockerfile -t pgrouter-demo-node docker
FROM debian:bookworm-slim
# Patroni runs initdb itself: keep postgresql-common from creating a "main" cluster.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common \
 && sed -ri 's/^#?(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      postgresql-15 patroni python3-etcd etcd-server etcd-client curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/patroni /var/lib/postgresql/etcd
COPY patroni.yml /etc/patroni/patroni.yml
COPY post-bootstrap.sh /usr/local/bin/demo-post-bootstrap
RUN chmod 0755 /usr/local/bin/demo-post-bootstrap \
 && chmod 0644 /etc/patroni/patroni.yml
USER postgres
WORKDIR /var/lib/postgresql
# 5432 PostgreSQL, 8008 Patroni REST, 2379/2380 etcd client/peer.
EXPOSE 5432 8008 2379 2380
CMD ["patroni", "/etc/patroni/patroni.yml"]
