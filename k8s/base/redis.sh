#!/bin/sh
# Valkey/Redis pod helper, the single source for the Helm chart (files/redis.sh is a symlink)
# and kustomize. One script, four verbs:
#   init      (init container) write the runtime redis.conf, and sentinel.conf with
#             replication, into RUN_DIR (a memory-backed emptyDir). The password is read
#             from the mounted Secret file and written into those files, never passed on a
#             command line, so `ps` and the pod spec never show it.
#   run X     exec the server (X=redis) or the Sentinel (X=sentinel) on the generated file.
#   ready X   readiness: PONG, and with replication a replica only once its link to the
#             master is up (a replica still syncing must not count as available).
#   prestop   with replication, a master hands its role to a replica through Sentinel
#             before a planned stop, so a rollout or a node drain is a switchover, not a
#             crash that waits down-after-milliseconds.
# Replicas find the master by asking the other Sentinels; when none answers (first start,
# or every pod restarted) pod 0 is the master. Settings come from the environment; the
# defaults are the pod's paths and ports.
set -eu

MODE="${MODE:-standalone}"
CONFIG_DIR="${CONFIG_DIR:-/opt/redis/config}"
RUN_DIR="${RUN_DIR:-/run/redis}"
DATA_DIR="${DATA_DIR:-/data}"
PASSWORD_FILE="${PASSWORD_FILE:-/opt/redis/secret/password}"
BIND="${BIND:-* -::*}"
REDIS_PORT="${REDIS_PORT:-6379}"
SENTINEL_PORT="${SENTINEL_PORT:-26379}"
ANNOUNCE_HOST="${ANNOUNCE_HOST:-}"
BOOTSTRAP_HOST="${BOOTSTRAP_HOST:-}"
BOOTSTRAP_PORT="${BOOTSTRAP_PORT:-$REDIS_PORT}"
SENTINELS="${SENTINELS:-}"
MASTER_SET="${MASTER_SET:-mymaster}"
QUORUM="${QUORUM:-2}"
DOWN_AFTER_MS="${DOWN_AFTER_MS:-5000}"
FAILOVER_TIMEOUT_MS="${FAILOVER_TIMEOUT_MS:-20000}"

# Valkey images ship valkey-*, Redis images redis-*.
SERVER="$(command -v valkey-server || command -v redis-server || true)"
CLI="$(command -v valkey-cli || command -v redis-cli || true)"

log() { printf 'redis.sh: %s\n' "$*" >&2; }
# line TEXT: one config line, verbatim (dash's echo would eat the backslashes of a password).
line() { printf '%s\n' "$1"; }
die() {
    log "$*"
    exit 1
}

password() { cat "$PASSWORD_FILE"; }

# cli HOST PORT ARGS...: the password travels in the environment, not in argv (newer
# valkey-cli reads VALKEYCLI_AUTH, redis-cli and older valkey-cli REDISCLI_AUTH).
cli() {
    host="$1"
    port="$2"
    shift 2
    auth="$(password)"
    if command -v timeout >/dev/null 2>&1; then
        REDISCLI_AUTH="$auth" VALKEYCLI_AUTH="$auth" timeout 3 "$CLI" -h "$host" -p "$port" "$@"
    else
        REDISCLI_AUTH="$auth" VALKEYCLI_AUTH="$auth" "$CLI" -h "$host" -p "$port" "$@"
    fi
}

# The master the other Sentinels agree on now, else the bootstrap master (pod 0).
find_master() {
    for sentinel in $SENTINELS; do
        host="${sentinel%:*}"
        port="${sentinel##*:}"
        [ "$host:$port" = "$ANNOUNCE_HOST:$SENTINEL_PORT" ] && continue
        reply="$(cli "$host" "$port" SENTINEL get-master-addr-by-name "$MASTER_SET" 2>/dev/null)" || continue
        master_host="$(printf '%s\n' "$reply" | sed -n 1p)"
        master_port="$(printf '%s\n' "$reply" | sed -n 2p)"
        case "$master_port" in '' | *[!0-9]*) continue ;; esac
        log "Sentinel $host:$port names the master: $master_host:$master_port"
        return 0
    done
    master_host="$BOOTSTRAP_HOST"
    master_port="$BOOTSTRAP_PORT"
    log "no Sentinel answered: bootstrap master $master_host:$master_port"
}

init() {
    [ -n "$SERVER" ] || die "no valkey-server or redis-server on PATH"
    pw="$(password)" || die "cannot read the password file"
    [ -n "$pw" ] || die "the Redis password is empty"
    [ "$(printf '%s' "$pw" | wc -l)" -eq 0 ] || die "the Redis password contains a newline"
    # A double-quoted config string: backslash and double quote escaped.
    quoted="\"$(printf '%s' "$pw" | sed 's/\\/\\\\/g; s/"/\\"/g')\""
    umask 077
    mkdir -p "$RUN_DIR"
    master_host=""
    master_port=""
    if [ "$MODE" = replication ]; then
        [ -n "$ANNOUNCE_HOST" ] && [ -n "$BOOTSTRAP_HOST" ] || die "ANNOUNCE_HOST and BOOTSTRAP_HOST are required"
        find_master
    fi
    {
        line "include $CONFIG_DIR/redis.conf"
        line "bind $BIND"
        line "port $REDIS_PORT"
        line "dir $DATA_DIR"
        line "requirepass $quoted"
        line "masterauth $quoted"
        if [ "$MODE" = replication ]; then
            line "replica-announce-ip $ANNOUNCE_HOST"
            line "replica-announce-port $REDIS_PORT"
            if [ "$master_host:$master_port" != "$ANNOUNCE_HOST:$REDIS_PORT" ]; then
                line "replicaof $master_host $master_port"
            fi
        fi
    } >"$RUN_DIR/redis.conf.tmp"
    mv "$RUN_DIR/redis.conf.tmp" "$RUN_DIR/redis.conf"
    [ "$MODE" = replication ] || return 0
    {
        line "bind $BIND"
        line "port $SENTINEL_PORT"
        line "dir $RUN_DIR"
        line "requirepass $quoted"
        line "sentinel sentinel-pass $quoted"
        line "sentinel resolve-hostnames yes"
        line "sentinel announce-hostnames yes"
        line "sentinel announce-ip $ANNOUNCE_HOST"
        line "sentinel announce-port $SENTINEL_PORT"
        line "sentinel monitor $MASTER_SET $master_host $master_port $QUORUM"
        line "sentinel auth-pass $MASTER_SET $quoted"
        line "sentinel down-after-milliseconds $MASTER_SET $DOWN_AFTER_MS"
        line "sentinel failover-timeout $MASTER_SET $FAILOVER_TIMEOUT_MS"
        line "sentinel parallel-syncs $MASTER_SET 1"
    } >"$RUN_DIR/sentinel.conf.tmp"
    mv "$RUN_DIR/sentinel.conf.tmp" "$RUN_DIR/sentinel.conf"
}

run() {
    [ -n "$SERVER" ] || die "no valkey-server or redis-server on PATH"
    case "${1:-}" in
    redis) exec "$SERVER" "$RUN_DIR/redis.conf" ;;
    sentinel) exec "$SERVER" "$RUN_DIR/sentinel.conf" --sentinel ;;
    *) die "run: expected redis or sentinel" ;;
    esac
}

ready() {
    case "${1:-}" in
    redis) port="$REDIS_PORT" ;;
    sentinel) port="$SENTINEL_PORT" ;;
    *) die "ready: expected redis or sentinel" ;;
    esac
    [ "$(cli 127.0.0.1 "$port" PING 2>/dev/null)" = PONG ] || exit 1
    if [ "$1" = redis ] && [ "$MODE" = replication ]; then
        info="$(cli 127.0.0.1 "$REDIS_PORT" INFO replication | tr -d '\r')"
        case "$info" in *role:slave*)
            case "$info" in *master_link_status:up*) ;; *) exit 1 ;; esac
            ;;
        esac
    fi
    return 0
}

role() { cli 127.0.0.1 "$REDIS_PORT" INFO replication 2>/dev/null | tr -d '\r' | sed -n 's/^role://p'; }

# The master's address as the local Sentinel reports it, host:port.
sentinel_master() {
    cli 127.0.0.1 "$SENTINEL_PORT" SENTINEL get-master-addr-by-name "$MASTER_SET" 2>/dev/null | paste -s -d: -
}

prestop() {
    [ "$MODE" = replication ] || return 0
    [ "$(role)" = master ] || return 0
    replicas="$(cli 127.0.0.1 "$REDIS_PORT" INFO replication | tr -d '\r' | sed -n 's/^connected_slaves://p')"
    [ "${replicas:-0}" -gt 0 ] || return 0
    # Sentinel only promotes a replica whose INFO it refreshed in the last 5 s, and asks
    # replicas every 10 s: NOGOODSLAVE is usually transient, so try for up to 10 s. With
    # the wait below that stays under 20 s of the pod's 30 s grace period.
    i=0
    while :; do
        reply="$(cli 127.0.0.1 "$SENTINEL_PORT" SENTINEL FAILOVER "$MASTER_SET" 2>&1)" || true
        [ "$reply" = OK ] && break
        if [ "$i" -ge 20 ]; then
            log "SENTINEL FAILOVER: $reply; stopping without a switchover"
            return 0
        fi
        sleep 0.5
        i=$((i + 1))
    done
    # Done once the Sentinels name another master: clients follow it from then on.
    i=0
    while [ "$i" -lt 20 ]; do
        current="$(sentinel_master)"
        if [ -n "$current" ] && [ "$current" != "$ANNOUNCE_HOST:$REDIS_PORT" ]; then
            log "handed the master role over to $current"
            return 0
        fi
        sleep 0.5
        i=$((i + 1))
    done
    log "the Sentinels still name this pod after 10 s; stopping anyway"
}

case "${1:-}" in
init) init ;;
run) run "${2:-}" ;;
ready) ready "${2:-}" ;;
prestop) prestop ;;
*) die "usage: redis.sh init | run redis|sentinel | ready redis|sentinel | prestop" ;;
esac
