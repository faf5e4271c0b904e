#!/usr/bin/env bash
# The delta measures (issue 18), sourced by bench/run (step 7) and by bench/delta (alone).
# Expects ROOT, PY, BENCH, RAW, OUT, QUICK and the log/die helpers of bench/lib.sh.
#
# Real pairs: consecutive releases of the same binary software, from PyPI wheels
# (manylinux x86_64, CPython 3.12), cached in target/bench/delta-pairs:
#   orjson 3.10.14 → 3.10.15        orjson/orjson.cpython-312-x86_64-linux-gnu.so
#   cryptography 44.0.0 → 44.0.1    cryptography/hazmat/bindings/_rust.abi3.so
#   numpy 2.2.2 → 2.2.3             numpy/_core/_multiarray_umath.cpython-312-x86_64-linux-gnu.so
# For each: bsdiff 4.3 (Debian) and Rampart make a delta; qbsdiff as shipped too; Rampart's
# applier and bspatch 4.3 apply it (output compared with the new file). Then a synthetic
# image (256 MiB, --quick 32 MiB): Rampart makes and applies, for the ECU's peak RSS.

measure_deltas() {
  local pairs="$OUT/delta-pairs" work="$OUT/delta-work"
  rm -rf "$work"
  mkdir -p "$pairs/wheels" "$work"
  if ! command -v bsdiff >/dev/null 2>&1; then
    log "installing bsdiff (Debian)"
    "$ROOT/scripts/apt-need" bsdiff:bsdiff
  fi
  local spec pkg old new member name
  for spec in \
    "orjson 3.10.14 3.10.15 orjson/orjson.cpython-312-x86_64-linux-gnu.so" \
    "cryptography 44.0.0 44.0.1 cryptography/hazmat/bindings/_rust.abi3.so" \
    "numpy 2.2.2 2.2.3 numpy/_core/_multiarray_umath.cpython-312-x86_64-linux-gnu.so"; do
    read -r pkg old new member <<<"$spec"
    name="$pkg"
    for v in "$old" "$new"; do
      if [ ! -s "$pairs/$name-$v.so" ]; then
        log "7/7 deltas: fetching $pkg $v from PyPI"
        "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
          --platform manylinux2014_x86_64 --python-version 3.12 "$pkg==$v" -d "$pairs/wheels" >&2
        "$PY" - "$pairs/wheels" "$pkg" "$v" "$member" "$pairs/$name-$v.so" <<'PYEOF'
import glob, sys, zipfile
wheels, pkg, version, member, out = sys.argv[1:]
wheel = [w for w in glob.glob(f"{wheels}/{pkg}-{version}-*.whl")][0]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read(member))
PYEOF
      fi
    done
    local o="$pairs/$name-$old.so" n="$pairs/$name-$new.so"
    log "7/7 deltas: $pkg $old → $new ($(stat -c %s "$n") bytes)"
    /usr/bin/time -v -o "$RAW/delta-$name-bsdiff.time" bsdiff "$o" "$n" "$work/$name.bsdiff43"
    # Three runs each, alternating (a shared machine's speed drifts); medians are reported.
    for run in 1 2 3; do
      /usr/bin/time -v -o "$RAW/delta-$name-qbsdiff-$run.time" \
        "$BENCH" delta-create "$o" "$n" "$work/$name.qbsdiff" --qbsdiff-default >"$RAW/delta-$name-qbsdiff.json"
      /usr/bin/time -v -o "$RAW/delta-$name-rampart-$run.time" \
        "$BENCH" delta-create "$o" "$n" "$work/$name.rampart" >"$RAW/delta-$name-rampart.json"
    done
    /usr/bin/time -v -o "$RAW/delta-$name-apply.time" \
      "$BENCH" delta-apply "$o" "$work/$name.rampart" "$work/$name.out" >"$RAW/delta-$name-apply.json"
    cmp -s "$work/$name.out" "$n" || die "Rampart's applier did not rebuild $name $new"
    /usr/bin/time -v -o "$RAW/delta-$name-bspatch.time" bspatch "$o" "$work/$name.bspatch-out" "$work/$name.rampart"
    cmp -s "$work/$name.bspatch-out" "$n" || die "bspatch 4.3 did not rebuild $name $new from our delta"
    printf '{"pair": "%s %s -> %s", "member": "%s", "old_bytes": %s, "new_bytes": %s, "bsdiff43_bytes": %s}\n' \
      "$pkg" "$old" "$new" "$member" "$(stat -c %s "$o")" "$(stat -c %s "$n")" \
      "$(stat -c %s "$work/$name.bsdiff43")" >"$RAW/delta-$name-pair.json"
    rm -f "$work/$name.out" "$work/$name.bspatch-out"
  done
  local mib=256
  [ "$QUICK" = 1 ] && mib=32
  log "7/7 deltas: a synthetic $mib MiB image (make, then apply as an ECU)"
  "$BENCH" delta-synth --mib "$mib" "$work/synth.old" "$work/synth.new" >"$RAW/delta-synth-pair.json"
  /usr/bin/time -v -o "$RAW/delta-synth-rampart.time" \
    "$BENCH" delta-create "$work/synth.old" "$work/synth.new" "$work/synth.rampart" >"$RAW/delta-synth-rampart.json"
  /usr/bin/time -v -o "$RAW/delta-synth-apply.time" \
    "$BENCH" delta-apply "$work/synth.old" "$work/synth.rampart" "$work/synth.out" >"$RAW/delta-synth-apply.json"
  cmp -s "$work/synth.out" "$work/synth.new" || die "Rampart's applier did not rebuild the synthetic image"
  printf '{"mib": %s}\n' "$mib" >"$RAW/delta-synth-size.json"
  rm -rf "$work"
}
