#!/usr/bin/env bash
# Start, stop and inspect the project's real services without Docker:
# Apache Kafka (KRaft, jars from Maven Central), PostgreSQL and Redis (Debian).
#
#   scripts/services.sh up                 install what is missing, start all, wait until they answer
#   scripts/services.sh down               stop all
#   scripts/services.sh status             one line per service
#   scripts/services.sh stop NAME [--kill] stop one service (kafka|postgres|redis); --kill sends SIGKILL
#   scripts/services.sh start NAME         start one service and wait until it answers
#   scripts/services.sh install            install packages and broker jars only
#
# Everything lives under $SA01_STATE_DIR (default: <repo>/.run); the broker jars are
# cached under <repo>/.cache. `up` reuses a service that already answers on its port.
#
# Credentials: the first start generates a PostgreSQL password (scram over TCP; the
# superuser only through its 0700 socket directory, by peer) and a Redis password, and
# writes them with the URLs to $SA01_STATE_DIR/credentials.env (mode 0600, git-ignored),
# which the project's Settings.load() reads. No password is ever on a command line.
#
# Kafka also serves SASL_SSL on 127.0.0.1:$SA01_KAFKA_SASL_PORT (default 9094; 0: off):
# a throwaway CA made with openssl, SCRAM-SHA-256/512 users made by the storage tool's
# --add-scram (and PLAIN), the user's generated password in credentials.env.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${SA01_STATE_DIR:-$ROOT/.run}"
CACHE="${SA01_CACHE_DIR:-$ROOT/.cache}"

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/kafka/pom.xml")"
KAFKA_PORT="${SA01_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${SA01_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${SA01_KAFKA_HEAP:-768m}"
KAFKA_SASL_PORT="${SA01_KAFKA_SASL_PORT:-9094}"
KAFKA_SASL_USER="${SA01_KAFKA_SASL_USER:-sa01}"
KAFKA_LIBS="$CACHE/kafka-libs/$KAFKA_VERSION"
PG_PORT="${SA01_POSTGRES_PORT:-5432}"
PG_USER="${SA01_POSTGRES_USER:-sa01}"
PG_DB="${SA01_POSTGRES_DB:-sa01}"
REDIS_PORT="${SA01_REDIS_PORT:-6379}"
WAIT_SECONDS="${SA01_SERVICE_WAIT_SECONDS:-90}"
CREDENTIALS="$STATE/credentials.env"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- credentials
# One KEY=value per line in $CREDENTIALS; the environment wins over the file.
stored() { [ -f "$CREDENTIALS" ] && sed -n "s/^$1=//p" "$CREDENTIALS" | tail -n 1; return 0; }

credential() { # KEY -> value from the environment, else the file, else empty
  local key="$1"
  if [ -n "${!key:-}" ]; then printf '%s' "${!key}"; else stored "$key"; fi
}

new_secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

save_credential() { # KEY VALUE: replace or add the line, keep the file 0600
  local key="$1" value="$2" tmp
  [ "$(stored "$key")" = "$value" ] && return 0
  mkdir -p "$STATE"
  tmp="$(mktemp "$STATE/.credentials.XXXXXX")"
  chmod 600 "$tmp"
  if [ -f "$CREDENTIALS" ]; then grep -v "^$key=" "$CREDENTIALS" >>"$tmp" || true
  else printf '# The local services of scripts/services.sh: keep private (git-ignored).\n' >>"$tmp"; fi
  printf '%s=%s\n' "$key" "$value" >>"$tmp"
  mv "$tmp" "$CREDENTIALS"
}

secret_for() { # KEY: the given or stored secret, generated and saved on first use
  local key="$1" value
  value="$(credential "$key")"
  [ -n "$value" ] || value="$(new_secret)"
  save_credential "$key" "$value"
  printf '%s' "$value"
}

write_urls() { # the URLs clients use, with the passwords known for what runs here
  local pg_pw redis_pw
  pg_pw="$(credential SA01_POSTGRES_PASSWORD)"
  redis_pw="$(credential SA01_REDIS_PASSWORD)"
  save_credential SA01_KAFKA_BOOTSTRAP_SERVERS "127.0.0.1:$KAFKA_PORT"
  save_credential SA01_DATABASE_URL \
    "postgresql://$PG_USER${pg_pw:+:$pg_pw}@127.0.0.1:$PG_PORT/$PG_DB"
  save_credential SA01_REDIS_URL "redis://${redis_pw:+:$redis_pw@}127.0.0.1:$REDIS_PORT/0"
  # The SASL_SSL listener, for clients that choose it (SA01_KAFKA_SECURITY_PROTOCOL=SASL_SSL
  # with these as SA01_KAFKA_BOOTSTRAP_SERVERS, _SASL_USERNAME, _SASL_PASSWORD, _SSL_CAFILE).
  if [ "$KAFKA_SASL_PORT" != 0 ] && [ -n "$(credential SA01_KAFKA_SASL_PASSWORD)" ]; then
    save_credential SA01_KAFKA_SASL_BOOTSTRAP "127.0.0.1:$KAFKA_SASL_PORT"
    save_credential SA01_KAFKA_SASL_USER "$KAFKA_SASL_USER"
    save_credential SA01_KAFKA_SASL_CAFILE "$STATE/kafka/tls/ca.crt"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$dir" ] || return 1
  printf '%s' "$dir"
}

# ---------------------------------------------------------------- installation
apt_install() {
  local pkgs=("$@")
  command -v apt-get >/dev/null || die "apt-get is not available: install ${pkgs[*]} by hand"
  log "installing ${pkgs[*]} from Debian's packages"
  if [ ! -f "$STATE/.apt-updated" ]; then
    mkdir -p "$STATE"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$STATE/apt.log" 2>&1 ||
      die "apt-get update failed (see $STATE/apt.log)"
    touch "$STATE/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" \
    >>"$STATE/apt.log" 2>&1 || die "apt-get install ${pkgs[*]} failed (see $STATE/apt.log)"
}

install_packages() {
  local missing=()
  pg_bin >/dev/null || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v kcat >/dev/null || missing+=(kcat)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v openssl >/dev/null || missing+=(openssl)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
  # Debian's package creates and may start a default cluster on 5432: ours replaces it.
  if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q ' online'; then
    pg_lsclusters -h | awk '$4 ~ /online/ {print $1, $2}' | while read -r ver name; do
      log "stopping Debian's default PostgreSQL cluster $ver/$name (ours runs from $STATE/postgres)"
      pg_ctlcluster "$ver" "$name" stop || true
    done
  fi
}

install_kafka() {
  if [ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; then return 0; fi
  mkdir -p "$CACHE"
  exec 8>"$CACHE/.install.lock" && flock 8 # two test processes may start this at once
  if [ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; then return 0; fi
  log "resolving Apache Kafka $KAFKA_VERSION broker jars from Maven Central (once; cached in $KAFKA_LIBS)"
  mkdir -p "$KAFKA_LIBS.tmp" "$STATE"
  mvn -q -B -f "$ROOT/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp" >"$STATE/maven.log" 2>&1 ||
    die "could not resolve the Kafka jars with Maven (see $STATE/maven.log)"
  rm -rf "$KAFKA_LIBS" && mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
}

# ------------------------------------------------------------------ readiness
wait_for() { # name check-function log-file
  local name="$1" check="$2" logfile="$3" deadline=$((SECONDS + WAIT_SECONDS))
  until "$check"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name did not answer within ${WAIT_SECONDS}s; last lines of $logfile:"
      tail -n 20 "$logfile" >&2 2>/dev/null || true
      die "$name failed to start (log: $logfile)"
    fi
    sleep 0.3
  done
}

kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  if command -v kcat >/dev/null; then
    kcat -L -b "127.0.0.1:$KAFKA_PORT" -m 2 -J 2>/dev/null | grep -q '"brokers":\[{' || return 1
  fi
}
postgres_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; }
redis_ready() {
  REDISCLI_AUTH="$(credential SA01_REDIS_PASSWORD)" redis-cli --no-auth-warning \
    -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG
}

# ------------------------------------------------------- kafka: SASL_SSL listener
# Beside the plaintext listener, the broker serves SASL_SSL on $KAFKA_SASL_PORT
# (SA01_KAFKA_SASL_PORT=0: none): TLS from a throwaway CA made with openssl, SCRAM-SHA-256,
# SCRAM-SHA-512 and PLAIN for the user $KAFKA_SASL_USER, whose generated password is in
# $CREDENTIALS (SA01_KAFKA_SASL_PASSWORD) with the CA file and the listener's address.
kafka_tls() { # dir: a CA and a broker certificate for 127.0.0.1 and localhost, once
  local tls="$1"
  [ -f "$tls/broker-keystore.pem" ] && return 0
  log "making a throwaway CA and a broker certificate in $tls (openssl)"
  mkdir -p "$tls"
  (
    umask 077
    cd "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=sa01 local Kafka CA" \
      -keyout ca.key -out ca.crt >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout broker.key -out broker.csr >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
    openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
      -extfile san.ext -out broker.crt >/dev/null 2>&1
    cat broker.key broker.crt >broker-keystore.pem
    rm -f broker.csr san.ext ca.srl
    chmod 644 ca.crt
  ) || die "openssl could not make the broker's certificate in $tls"
}

kafka_sasl_properties() { # props tls-dir password: the SASL_SSL listener's lines
  local props="$1" tls="$2" password="$3"
  cat >>"$props" <<EOF

# SASL_SSL beside PLAINTEXT (scripts/services.sh; SA01_KAFKA_SASL_PORT=0 turns it off)
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$password";
ssl.keystore.type=PEM
ssl.keystore.location=$tls/broker-keystore.pem
ssl.client.auth=none
EOF
}

kafka_sasl_ready() { port_open "$KAFKA_SASL_PORT"; }

add_scram_users() { # password: SCRAM users for a storage formatted before the listener existed
  local python="$ROOT/.venv/bin/python"
  [ -x "$python" ] || die "the KRaft storage in $STATE/kafka/data has no SCRAM users and there is no .venv to add them (make setup), or remove $STATE/kafka (its topics go too)"
  log "adding the SCRAM users to a storage formatted without them"
  # The password goes through the environment, not a command line.
  SA01_SCRAM_PASSWORD="$1" "$python" - "127.0.0.1:$KAFKA_PORT" "$KAFKA_SASL_USER" <<'EOF' ||
import os
import sys

from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

admin = AdminClient({"bootstrap.servers": sys.argv[1]})
password = os.environ["SA01_SCRAM_PASSWORD"].encode()
for mechanism in (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512):
    info = ScramCredentialInfo(mechanism, 8192)
    upsert = UserScramCredentialUpsertion(sys.argv[2], info, password)
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)
EOF
    die "could not add the SCRAM users (see above)"
}

# ---------------------------------------------------------------------- kafka
kafka_pidfile() { printf '%s' "$STATE/kafka/kafka.pid"; }

start_kafka() {
  if kafka_ready; then
    log "kafka already answers on 127.0.0.1:$KAFKA_PORT"
    [ "$KAFKA_SASL_PORT" = 0 ] || kafka_sasl_ready ||
      log "note: no SASL_SSL listener on 127.0.0.1:$KAFKA_SASL_PORT (a broker this script did not start?)"
    return 0
  fi
  install_kafka
  local dir="$STATE/kafka" props="$STATE/kafka/server.properties"
  mkdir -p "$dir/data" "$dir/logs"
  (umask 077 && sed -e "s:@DATA_DIR@:$dir/data:" -e "s:@PORT@:$KAFKA_PORT:" \
    -e "s:@CONTROLLER_PORT@:$KAFKA_CONTROLLER_PORT:g" \
    "$ROOT/kafka/server.properties.template" >"$props")
  local sasl_password=""
  if [ "$KAFKA_SASL_PORT" != 0 ]; then
    sasl_password="$(secret_for SA01_KAFKA_SASL_PASSWORD)"
    kafka_tls "$dir/tls"
    kafka_sasl_properties "$props" "$dir/tls" "$sasl_password"
  fi
  local java_opts=(-Xms256m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -Djava.awt.headless=true "-Dkafka.logs.dir=$dir/logs"
    "-Dlog4j2.configurationFile=$ROOT/kafka/log4j2.properties")
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id
    cluster_id="$(java -cp "$KAFKA_LIBS/*" "${java_opts[@]}" kafka.tools.StorageTool random-uuid)"
    # The tool's arguments go through a 0600 argument file: no password on a command line.
    local argfile="$dir/format.args"
    (
      umask 077
      printf '%s\n' kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$props"
      if [ -n "$sasl_password" ]; then
        for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
          printf -- '--add-scram\n"%s=[name=%s,password=%s]"\n' \
            "$mechanism" "$KAFKA_SASL_USER" "$sasl_password"
        done
      fi
    ) >"$argfile"
    java -cp "$KAFKA_LIBS/*" "${java_opts[@]}" "@$argfile" >"$dir/logs/format.log" 2>&1 ||
      die "formatting the KRaft storage failed (see $dir/logs/format.log)"
    rm -f "$argfile"
    if [ -n "$sasl_password" ]; then touch "$dir/data/.scram-users"; fi
  fi
  log "starting kafka $KAFKA_VERSION (KRaft) on 127.0.0.1:$KAFKA_PORT"
  setsid nohup java -cp "$KAFKA_LIBS/*" "${java_opts[@]}" kafka.Kafka "$props" \
    >"$dir/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$(kafka_pidfile)"
  wait_for kafka kafka_ready "$dir/logs/server.log"
  if [ -n "$sasl_password" ]; then
    wait_for "kafka's SASL_SSL listener" kafka_sasl_ready "$dir/logs/server.log"
    [ -f "$dir/data/.scram-users" ] || add_scram_users "$sasl_password"
    touch "$dir/data/.scram-users"
    log "kafka ready on 127.0.0.1:$KAFKA_PORT (PLAINTEXT) and 127.0.0.1:$KAFKA_SASL_PORT (SASL_SSL: SCRAM-SHA-256/512, PLAIN; user $KAFKA_SASL_USER)"
  else
    log "kafka ready on 127.0.0.1:$KAFKA_PORT"
  fi
}

stop_kafka() {
  local signal="${1:-TERM}" pidfile pid
  pidfile="$(kafka_pidfile)"
  [ -f "$pidfile" ] || { log "kafka is not running (no pid file)"; return 0; }
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping kafka (pid $pid, SIG$signal)"
    kill "-$signal" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
      sleep 0.2
    done
  fi
  rm -f "$pidfile"
}

# ------------------------------------------------------------------- postgres
pg_dir() { printf '%s' "$STATE/postgres"; }

start_postgres() {
  if postgres_ready; then
    log "postgres already answers on 127.0.0.1:$PG_PORT"
    [ -n "$(credential SA01_POSTGRES_PASSWORD)" ] ||
      log "note: not started by this script (no password in $CREDENTIALS): set SA01_DATABASE_URL"
    return 0
  fi
  local bin dir os_user
  bin="$(pg_bin)" || die "PostgreSQL is not installed"
  dir="$(pg_dir)"
  mkdir -p "$dir/sock"
  local as_user=()
  os_user="$(id -un)"
  if [ "$(id -u)" = 0 ]; then
    as_user=(runuser -u postgres --)
    os_user=postgres
    chown -R postgres:postgres "$dir"
    "${as_user[@]}" test -w "$dir" ||
      die "user postgres cannot write $dir: set SA01_STATE_DIR to a folder it can reach"
  fi
  chmod 700 "$dir/sock"
  local password
  password="$(secret_for SA01_POSTGRES_PASSWORD)"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    log "initialising a PostgreSQL cluster in $dir/data"
    # The superuser's password is random and thrown away: it logs in by peer only.
    local pwfile="$dir/.pw"
    (umask 077 && new_secret >"$pwfile")
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$pwfile"
    "${as_user[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth-local=peer \
      --auth-host=scram-sha-256 --pwfile="$pwfile" -E UTF8 >"$dir/initdb.log" 2>&1 ||
      die "initdb failed (see $dir/initdb.log)"
    rm -f "$pwfile"
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$dir/sock'
unix_socket_permissions = 0700
password_encryption = 'scram-sha-256'
max_connections = 300
fsync = on
synchronous_commit = on
shared_buffers = 128MB
EOF
  fi
  # Written on every start, so a cluster made by an older script loses its trust lines.
  "${as_user[@]}" tee "$dir/data/pg_hba.conf" >/dev/null <<EOF
# scripts/services.sh: the superuser by peer on the 0700 socket, everyone else scram.
local   all   postgres                  peer map=services
host    all   all       127.0.0.1/32    scram-sha-256
host    all   all       ::1/128         scram-sha-256
EOF
  printf 'services  %s  postgres\n' "$os_user" |
    "${as_user[@]}" tee "$dir/data/pg_ident.conf" >/dev/null
  log "starting postgres on 127.0.0.1:$PG_PORT"
  "${as_user[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null ||
    die "postgres failed to start (log: $dir/postgres.log)"
  wait_for postgres postgres_ready "$dir/postgres.log"
  # The password goes through stdin, never a command line.
  "${as_user[@]}" "$bin/psql" -h "$dir/sock" -p "$PG_PORT" -U postgres -d postgres -q \
    -v ON_ERROR_STOP=1 -f - >/dev/null <<EOF ||
SELECT format('CREATE ROLE %I', '$PG_USER')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') \gexec
ALTER ROLE "$PG_USER" WITH LOGIN CREATEDB PASSWORD '$password';
SELECT format('CREATE DATABASE %I OWNER %I', '$PG_DB', '$PG_USER')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB') \gexec
EOF
    die "could not create the role and database (log: $dir/postgres.log)"
  log "postgres ready on 127.0.0.1:$PG_PORT (database $PG_DB, user $PG_USER, scram)"
}

stop_postgres() {
  local signal="${1:-TERM}" dir pid
  dir="$(pg_dir)"
  [ -f "$dir/data/postmaster.pid" ] || { log "postgres is not running"; return 0; }
  pid="$(head -n 1 "$dir/data/postmaster.pid")"
  if [ "$signal" = KILL ]; then
    log "killing postgres (pid $pid)"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    return 0
  fi
  log "stopping postgres"
  local as_user=()
  [ "$(id -u)" = 0 ] && as_user=(runuser -u postgres --)
  "${as_user[@]}" "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
}

# ---------------------------------------------------------------------- redis
start_redis() {
  if redis_ready; then
    log "redis already answers on 127.0.0.1:$REDIS_PORT"
    [ -n "$(credential SA01_REDIS_PASSWORD)" ] ||
      log "note: not started by this script (no password in $CREDENTIALS): set SA01_REDIS_URL"
    return 0
  fi
  local dir="$STATE/redis" password
  mkdir -p "$dir"
  password="$(secret_for SA01_REDIS_PASSWORD)"
  # The password is in a 0600 file, not on redis-server's command line.
  (umask 077 && cat >"$dir/redis.conf" <<EOF
bind 127.0.0.1
port $REDIS_PORT
dir $dir
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
save ""
appendonly no
protected-mode yes
requirepass $password
EOF
  )
  log "starting redis on 127.0.0.1:$REDIS_PORT (password required)"
  redis-server "$dir/redis.conf" >/dev/null
  wait_for redis redis_ready "$dir/redis.log"
  log "redis ready on 127.0.0.1:$REDIS_PORT"
}

stop_redis() {
  local signal="${1:-TERM}" pidfile="$STATE/redis/redis.pid" pid
  [ -f "$pidfile" ] || { log "redis is not running"; return 0; }
  pid="$(cat "$pidfile")"
  log "stopping redis (SIG$signal)"
  kill "-$signal" "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$pidfile"
}

# ----------------------------------------------------------------------- main
status_line() { # name ready-fn address
  if "$2"; then printf '%-9s up    %s\n' "$1" "$3"; else printf '%-9s down  %s\n' "$1" "$3"; fi
}

check_name() {
  case "${1:-}" in
    kafka | postgres | redis) ;;
    *) die "unknown service '${1:-}': expected kafka, postgres or redis" ;;
  esac
}

cmd="${1:-}"
case "$cmd" in
  install) mkdir -p "$STATE"; install_packages; install_kafka ;;
  up)
    mkdir -p "$STATE"
    install_packages
    install_kafka
    start_postgres
    start_redis
    start_kafka
    write_urls
    log "clients read $CREDENTIALS (Settings.load; keep it private)"
    ;;
  down) stop_kafka; stop_redis; stop_postgres ;;
  status)
    status_line kafka kafka_ready "127.0.0.1:$KAFKA_PORT (Apache Kafka $KAFKA_VERSION, KRaft)"
    [ "$KAFKA_SASL_PORT" = 0 ] ||
      status_line kafka-sasl kafka_sasl_ready "127.0.0.1:$KAFKA_SASL_PORT (SASL_SSL, SCRAM)"
    status_line postgres postgres_ready "127.0.0.1:$PG_PORT"
    status_line redis redis_ready "127.0.0.1:$REDIS_PORT"
    ;;
  start) check_name "${2:-}"; mkdir -p "$STATE"; "start_$2"; write_urls ;;
  stop)
    check_name "${2:-}"
    signal=TERM
    [ "${3:-}" = "--kill" ] && signal=KILL
    "stop_$2" "$signal"
    ;;
  *)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
