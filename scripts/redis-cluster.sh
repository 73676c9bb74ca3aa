#!/usr/bin/env bash
# A local Redis Cluster for tierkv's remote tier (G4): three masters on 127.0.0.1
# (replicas on request), data in a directory of their own, stopped by pid. For tests, for a
# developer, and for an operator trying the remote tier out.
#
# Usage: scripts/redis-cluster.sh start [DIR]   starts the nodes; the last line
#                                               printed is the cluster's URL
#                                               (redis://127.0.0.1:P1,127.0.0.1:P2,...)
#        scripts/redis-cluster.sh stop [DIR]    stops the nodes started in DIR
#                                               (only those) and removes DIR
#        scripts/redis-cluster.sh url [DIR]     prints the URL of a running cluster
#        scripts/redis-cluster.sh install       installs the server if missing and
#                                               prints its path
#
# DIR defaults to $TIERKV_REDIS_DIR, else $TMPDIR/tierkv-redis-<uid>. Settings:
#   TIERKV_REDIS_MASTERS    masters (default 3); 1 with TIERKV_REDIS_MODE=standalone
#   TIERKV_REDIS_REPLICAS   replicas of each master (default 0); a replica takes
#                           over when its master dies (about 2-4 s)
#   TIERKV_REDIS_MODE       cluster (default) or standalone (one plain server)
#   TIERKV_REDIS_MAXMEMORY  maxmemory per node (default 256mb), evicted allkeys-lru
#   TIERKV_REDIS_SERVER     the server binary (default: redis-server, else valkey-server)
#   TIERKV_REDIS_TLS        1: TLS only (clients and the cluster bus), with a CA,
#                           a server and a client certificate made in DIR/tls
#                           (ca.crt, client.crt, client.key); the URL is rediss://
#   TIERKV_REDIS_TLS_AUTH   with TLS, whether clients must show a certificate:
#                           yes (default, the server's own default), optional, no
# Without a server binary, Debian's redis-server package is installed (its
# service is never started). Ports are free ones picked at random (each node also
# needs its port + 10000 for the cluster bus). Nodes keep serving their slots
# when another master dies (cluster-require-full-coverage no).
set -euo pipefail

cmd=${1:-}
dir=${2:-${TIERKV_REDIS_DIR:-${TMPDIR:-/tmp}/tierkv-redis-$(id -u)}}
mode=${TIERKV_REDIS_MODE:-cluster}
tls=${TIERKV_REDIS_TLS:-0}
tls_auth=${TIERKV_REDIS_TLS_AUTH:-yes}
masters=${TIERKV_REDIS_MASTERS:-3}
replicas=${TIERKV_REDIS_REPLICAS:-0}
maxmemory=${TIERKV_REDIS_MAXMEMORY:-256mb}

log() { echo "redis-cluster: $*" >&2; }

install_server() {
  local policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  {
    apt-get install -y --no-install-recommends redis-server redis-tools \
      || { apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools; }
  } >&2
}

server_bin() {
  if [ -n "${TIERKV_REDIS_SERVER:-}" ]; then echo "$TIERKV_REDIS_SERVER"; return; fi
  command -v redis-server || command -v valkey-server || { install_server; command -v redis-server; }
}

cli_bin() {
  command -v redis-cli || command -v valkey-cli
}

# redis-cli with the TLS options a running cluster in $dir needs.
cli() {
  local t=()
  if [ -d "$dir/tls" ]; then
    t=(--tls --cacert "$dir/tls/ca.crt" --cert "$dir/tls/client.crt" --key "$dir/tls/client.key")
  fi
  "$(cli_bin)" "${t[@]}" "$@"
}

# A CA, a server certificate for 127.0.0.1 and a client certificate, in $dir/tls.
make_certs() {
  local t="$dir/tls"
  mkdir -p "$t"
  (
    cd "$t"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=tierkv test CA" \
      -keyout ca.key -out ca.crt
    for who in server client; do
      openssl req -newkey rsa:2048 -nodes -subj "/CN=tierkv $who" -keyout "$who.key" -out "$who.csr"
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$who.ext"
      openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$who.ext" -out "$who.crt"
    done
    chmod 600 ./*.key
  ) >"$dir/tls.log" 2>&1 || { cat "$dir/tls.log" >&2; return 1; }
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

ping() {
  cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG
}

url() {
  local ports scheme=redis
  ports=$(cat "$dir/ports")
  [ -d "$dir/tls" ] && scheme=rediss
  echo "$scheme://$(echo "$ports" | sed 's/\([0-9]*\)/127.0.0.1:\1/g; s/ /,/g')"
}

# Starts one node on $1; returns non-zero when it did not come up.
start_node() {
  local p=$1 d="$dir/$1"
  mkdir -p "$d"
  local args=(--port "$p" --bind 127.0.0.1 --protected-mode yes --dir "$d"
    --daemonize yes --pidfile "$d/redis.pid" --logfile "$d/redis.log"
    --save "" --appendonly no --maxmemory "$maxmemory" --maxmemory-policy allkeys-lru)
  if [ "$tls" = 1 ]; then
    local t="$dir/tls"
    args=(--port 0 --tls-port "$p" "${args[@]:2}" --tls-cert-file "$t/server.crt"
      --tls-key-file "$t/server.key" --tls-ca-cert-file "$t/ca.crt"
      --tls-auth-clients "$tls_auth" --tls-cluster yes --tls-replication yes)
  fi
  if [ "$mode" = cluster ]; then
    args+=(--cluster-enabled yes --cluster-config-file "$d/nodes.conf"
      --cluster-node-timeout 2000 --cluster-require-full-coverage no)
  fi
  "$server" "${args[@]}" >/dev/null 2>&1 || return 1
  for _ in $(seq 100); do
    ping "$p" && return 0
    sleep 0.05
  done
  return 1
}

stop_nodes() {
  [ -d "$dir" ] || return 0
  local f pid
  for f in "$dir"/*/redis.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    # Only a server this script started (its pid file, its command line).
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -Eq '(redis|valkey)-server'; then
      kill "$pid" 2>/dev/null || true
      # Gone, or a zombie (empty command line) where nothing reaps daemons.
      for _ in $(seq 100); do
        [ -s "/proc/$pid/cmdline" ] || break
        sleep 0.05
      done
      [ -s "/proc/$pid/cmdline" ] && kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

case "$cmd" in
  start)
    if [ -f "$dir/ports" ] && ping "$(cut -d' ' -f1 < "$dir/ports")"; then
      log "already running in $dir"
      url
      exit 0
    fi
    server=$(server_bin)
    [ "$mode" = standalone ] && { masters=1; replicas=0; }
    count=$((masters * (1 + replicas)))
    rm -rf "$dir"
    mkdir -p "$dir"
    chmod 700 "$dir"
    if [ "$tls" = 1 ]; then make_certs || exit 1; fi
    started=""
    for _ in $(seq 20); do
      base=$((20000 + RANDOM % 9000))
      ports=()
      ok=1
      for i in $(seq 0 $((count - 1))); do
        p=$((base + i))
        if ! port_free "$p" || ! port_free $((p + 10000)); then ok=0; break; fi
        ports+=("$p")
      done
      [ "$ok" = 1 ] || continue
      ok=1
      for p in "${ports[@]}"; do
        start_node "$p" || { ok=0; break; }
      done
      if [ "$ok" = 1 ]; then started=1; break; fi
      stop_nodes
      find "$dir" -mindepth 1 -maxdepth 1 ! -name tls -exec rm -rf {} +
    done
    [ -n "$started" ] || { log "no free ports found"; exit 1; }
    echo "${ports[*]}" > "$dir/ports"
    if [ "$mode" = cluster ]; then
      nodes=()
      for p in "${ports[@]}"; do nodes+=("127.0.0.1:$p"); done
      cli --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log" 2>&1 \
        || { cat "$dir/create.log" >&2; stop_nodes; exit 1; }
      for p in "${ports[@]}"; do
        for _ in $(seq 200); do
          cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
          sleep 0.05
        done
      done
    fi
    log "started $mode of ${#ports[@]} in $dir (maxmemory $maxmemory each)"
    if [ "$tls" = 1 ]; then
      log "TLS: TIERKV_REMOTE_TLS_CA_FILE=$dir/tls/ca.crt TIERKV_REMOTE_TLS_CERT_FILE=$dir/tls/client.crt TIERKV_REMOTE_TLS_KEY_FILE=$dir/tls/client.key"
    fi
    url
    ;;
  stop)
    stop_nodes
    rm -rf "$dir"
    ;;
  url)
    url
    ;;
  install)
    server_bin
    ;;
  *)
    echo "usage: $0 start|stop|url|install [DIR]" >&2
    exit 2
    ;;
esac
