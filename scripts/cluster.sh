#!/usr/bin/env bash
# A multi-node setup on one machine, for trying vaebench "at scale" and for the integration tier
# (docs/scale.md walks through it):
#
#   PostgreSQL      from the distribution's package (Debian: apt-get install postgresql), a fresh
#                   cluster (initdb) under $VAEBENCH_CLUSTER, listening on a Unix socket only
#   MLflow server   on 127.0.0.1, its store in PostgreSQL (database mlflow), artifacts proxied
#                   (--serve-artifacts) into $VAEBENCH_CLUSTER/artifacts
#   Optuna storage  database optuna in the same PostgreSQL
#   Ray             a head and two worker nodes on 127.0.0.1 (1 CPU each), token authentication
#
# Usage (with vaebench's virtual environment active: mlflow, ray and psycopg2 come from it):
#   scripts/cluster.sh up            start everything; prints the settings (also in $VAEBENCH_CLUSTER/env)
#   scripts/cluster.sh status        what runs
#   scripts/cluster.sh down          stop everything and delete $VAEBENCH_CLUSTER
#   scripts/cluster.sh stop  PART    stop one part: postgres | mlflow | head | worker1 | worker2
#   scripts/cluster.sh start PART    start it again (same ports, same data)
#   scripts/cluster.sh kill  PART    SIGKILL a part's processes (a node lost without warning)
#
# Every process is stopped by the process group the script started (never `ray stop`, which would
# stop every Ray on the machine). PostgreSQL refuses to run as root: as root the script runs it as
# the user postgres (the package's), else as the calling user.
set -euo pipefail

DIR=${VAEBENCH_CLUSTER:-/tmp/vaebench-cluster}
RUN="$DIR/run"  # pid files, one per part (the process group's leader)
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}

die() { echo "cluster.sh: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

as_pg() {  # run a PostgreSQL command as the database's owner
  if [ "$(id -u)" = 0 ]; then runuser -u "${PG_USER:-postgres}" -- "$@"; else "$@"; fi
}

start_group() {  # start_group NAME LOG CMD...: a process group of its own, its leader's pid saved
  local name=$1 log=$2
  shift 2
  setsid "$@" >>"$log" 2>&1 < /dev/null &
  echo $! >"$RUN/$name.pid"
}

stop_group() {  # stop_group NAME [SIGNAL]
  local pidf="$RUN/$1.pid" sig=${2:-TERM}
  [ -f "$pidf" ] || return 0
  local pid
  pid=$(cat "$pidf")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" -- "-$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pidf"
}

wait_until() {  # wait_until SECONDS WHAT CMD...
  local t=$1 what=$2
  shift 2
  for _ in $(seq $((t * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "timed out after $t s waiting for $what (logs in $DIR/*.log)"
}

load_env() { [ -f "$DIR/env" ] || die "not up (no $DIR/env); run: scripts/cluster.sh up"; . "$DIR/env"; }

# ------------------------------------------------------------------------- parts

pg_ctl_() { as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/postgres.log" -w -t 60 "$@"; }

start_postgres() { pg_ctl_ start >/dev/null; }
stop_postgres() { pg_ctl_ stop -m fast >/dev/null 2>&1 || true; }
kill_postgres() {
  local pid
  pid=$(head -1 "$DIR/pg/data/postmaster.pid" 2>/dev/null) || return 0
  kill -KILL "$pid" 2>/dev/null || true
}

mlflow_server() {  # the tracking server: its store in PostgreSQL, artifacts proxied (--serve-artifacts)
  start_group mlflow "$DIR/mlflow.log" python -m mlflow server \
    --backend-store-uri "postgresql+psycopg2://vaebench@/mlflow?host=$PG_SOCKET&port=$PG_PORT" \
    --serve-artifacts --artifacts-destination "$DIR/artifacts" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
}

wait_mlflow() {
  wait_until 240 "the MLflow server" python3 -c \
    "import urllib.request; urllib.request.urlopen('$MLFLOW_TRACKING_URI/health', timeout=2)"
}

ray_node() {  # ray_node NAME: the head, or a worker joining it
  local name=$1 args=(--num-cpus=1 --node-ip-address=127.0.0.1 --disable-usage-stats --block)
  if [ "$name" = head ]; then
    args+=(--head "--port=$RAY_PORT" --include-dashboard=false)
  else
    args+=("--address=$RAY_ADDRESS")
  fi
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DIR/ray-token" start_group "$name" "$DIR/$name.log" ray start "${args[@]}"
}

ray_alive() {  # ray_alive N: N live nodes
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DIR/ray-token" python3 -c "
import ray, sys
ray.init(address='$RAY_ADDRESS', logging_level='ERROR')
sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= $1 else 1)"
}

start_part() {
  case $1 in
    postgres) start_postgres ;;
    mlflow) mlflow_server; wait_mlflow ;;
    head) ray_node head; wait_until 180 "the Ray head" python3 -c \
      "import socket; socket.create_connection(('127.0.0.1', $RAY_PORT), timeout=2)" ;;
    worker1 | worker2) ray_node "$1" ;;
    *) die "unknown part $1; allowed: postgres, mlflow, head, worker1, worker2" ;;
  esac
}

stop_part() {
  case $1 in
    postgres) stop_postgres ;;
    mlflow | head | worker1 | worker2) stop_group "$1" ;;
    *) die "unknown part $1; allowed: postgres, mlflow, head, worker1, worker2" ;;
  esac
}

kill_part() {
  case $1 in
    postgres) kill_postgres ;;
    mlflow | head | worker1 | worker2) stop_group "$1" KILL ;;
    *) die "unknown part $1; allowed: postgres, mlflow, head, worker1, worker2" ;;
  esac
}

# ------------------------------------------------------------------------- commands

up() {
  [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] || die "PostgreSQL not found (Debian: apt-get install -y postgresql)"
  python3 -c "import mlflow, ray, psycopg2" 2>/dev/null \
    || die "mlflow, ray and psycopg2 must import: activate vaebench's venv (pip install -e '.[scale]')"
  [ ! -f "$DIR/env" ] || die "already up ($DIR/env); run: scripts/cluster.sh down"
  mkdir -p "$DIR/pg" "$RUN" "$DIR/artifacts"
  chmod 755 "$DIR"
  [ "$(id -u)" != 0 ] || chown "${PG_USER:-postgres}" "$DIR/pg"
  local sock="$DIR/pg/sock" pgport
  pgport=$(free_port)
  as_pg mkdir -p "$sock"
  as_pg chmod 700 "$sock"  # only the database's owner (and root) reach the socket
  as_pg "$PG_BIN/initdb" -D "$DIR/pg/data" -U vaebench --auth=trust -E UTF8 >"$DIR/initdb.log"
  # a Unix socket only: no TCP listener at all
  as_pg tee -a "$DIR/pg/data/postgresql.conf" >/dev/null <<EOF
listen_addresses = ''
unix_socket_directories = '$sock'
port = $pgport
max_connections = 200
EOF
  python3 -c "import secrets; print(secrets.token_hex(32))" >"$DIR/ray-token"
  chmod 600 "$DIR/ray-token"
  local ray_port mlflow_port
  ray_port=$(free_port)
  mlflow_port=$(free_port)
  cat >"$DIR/env" <<EOF
export VAEBENCH_CLUSTER=$DIR
export PG_SOCKET=$sock PG_PORT=$pgport
export MLFLOW_PORT=$mlflow_port
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
export VAEBENCH_OPTUNA_STORAGE='postgresql+psycopg2://vaebench@/optuna?host=$sock&port=$pgport'
export RAY_PORT=$ray_port
export RAY_ADDRESS=127.0.0.1:$ray_port
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$DIR/ray-token
EOF
  . "$DIR/env"
  start_postgres
  as_pg "$PG_BIN/createdb" -h "$sock" -p "$pgport" -U vaebench mlflow
  as_pg "$PG_BIN/createdb" -h "$sock" -p "$pgport" -U vaebench optuna
  mlflow_server  # its schema migrations run while Ray starts
  start_part head
  ray_node worker1
  ray_node worker2
  wait_mlflow
  # Ray gives a raylet a fixed 30 s to register; on a loaded machine `ray start` can give up on
  # it: a worker whose `ray start` ended is started again (twice at most each)
  local tries=0 part pid
  until ray_alive 3 >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -le 40 ] || die "timed out waiting for three live Ray nodes (logs in $DIR/*.log)"
    for part in worker1 worker2; do
      pid=$(cat "$RUN/$part.pid")
      if ! kill -0 "$pid" 2>/dev/null && [ "$(cat "$RUN/$part.restarts" 2>/dev/null || echo 0)" -lt 2 ]; then
        echo $(($(cat "$RUN/$part.restarts" 2>/dev/null || echo 0) + 1)) >"$RUN/$part.restarts"
        ray_node "$part"
      fi
    done
    sleep 5
  done
  echo "up: source $DIR/env, then e.g."
  echo "  vaebench sweep STUDY --address \$RAY_ADDRESS --tracking-uri \$MLFLOW_TRACKING_URI --storage \$VAEBENCH_OPTUNA_STORAGE"
  cat "$DIR/env"
}

down() {
  [ -d "$DIR" ] || { echo "not up"; return 0; }
  for part in worker2 worker1 head mlflow; do stop_group "$part"; done
  [ ! -d "$DIR/pg/data" ] || stop_postgres
  rm -rf "$DIR"
  echo "down"
}

status() {
  load_env
  local pid
  for part in mlflow head worker1 worker2; do
    pid=$(cat "$RUN/$part.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$part: running (pid $pid)"; else echo "$part: stopped"; fi
  done
  if as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg/data" status >/dev/null 2>&1; then echo "postgres: running"; else echo "postgres: stopped"; fi
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  start) load_env; start_part "${2:?name a part}" ;;
  stop) load_env; stop_part "${2:?name a part}" ;;
  kill) load_env; kill_part "${2:?name a part}" ;;
  *) die "usage: scripts/cluster.sh up|down|status|start PART|stop PART|kill PART" ;;
esac
