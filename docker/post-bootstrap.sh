#!/bin/sh
# Patroni's post_bootstrap for the compose demo: runs once, on the member that ran initdb, with a
# superuser connection string as $1. Creates the users docker/userlist.txt names.
set -eu
psql -v ON_ERROR_STOP=1 -d "$1" <<'SQL'
CREATE ROLE app LOGIN PASSWORD 'app';
CREATE ROLE app_ro LOGIN PASSWORD 'app_ro';
CREATE DATABASE app OWNER app;
GRANT pg_read_all_data TO app_ro;
SQL
