#!/usr/bin/env bash
# One prepared GPU session (the device machine is lent for minutes, once): run from the repository root.
#   1. the CUDA tests (tests/test_erasing.py: the eraser on CUDA tensors);
#   2. benchmarks/ppa_gpu.py at its defaults (PPA, 1024-px StyleGAN2, ResNet-18 target at 224 px);
#   3. issue 9's instrument for the quickstart, twice in parallel: variation 1.0 (the default) and 0.6
#      (the fallback, used only if 1.0 fails the NoDef / evaluation-model gates; rule fixed before the
#      run): `midre zoo build` of the quickstart's backbones, evaluation model and GAN prior, then the
#      NoDef-only calibrations (calibration-v2, calibration-v2-strong) against that zoo.
# Data: the quickstart's rendered faces travel in .gpucache/qs32.tar.xz (made here, torch 2.14.1), so the
# machine trains on bit-identical images whatever its torch version renders (the zoo matches runs by the
# sha256 of their images). Outputs under $OUT (at most 8 files of 16 MiB come back, hence the split tars).
# SMOKE=1: tiny settings on the CPU (checks this script end to end, no numbers).
set -u
OUT=${OUT:-/tmp/gpu_out}
W=${W:-/tmp/gpu_work}
DEADLINE=${DEADLINE:-560}           # seconds after start by which every job is stopped (then packing)
T0=$(date +%s)
mkdir -p "$OUT" "$W/logs" "$W/cfg"
ROOT=$PWD
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

if [ -d .whl ] && [ "${SMOKE:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$ROOT:/tmp/site || exit 1
fi
DEV=cuda
SET=()
if [ "${SMOKE:-0}" = 1 ]; then
  DEV=cpu
  SET=(--set attacks.0.params.iterations=2 --set attacks.1.params.iterations=2 --set attacks.0.identities=0-1
       --set attacks.1.identities=0-1 --set attacks.0.repeats=1 --set attacks.1.repeats=1)
fi
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '-', 'python', sys.version.split()[0])"
nproc

# ---- the carried faces, renamed to this torch's cache key
export MIDRE_CACHE_DIR=$W/cache MIDRE_CACHE_MIN_IMAGES=0
mkdir -p "$MIDRE_CACHE_DIR"
if [ -f .gpucache/qs32.tar.xz ]; then
  KEY=$(python3 -c "from midre.data.facecache import _source_hash; print(_source_hash())")
  (cd "$MIDRE_CACHE_DIR" && xz -dc "$ROOT/.gpucache/qs32.tar.xz" | tar -xf - \
    && for f in *.safetensors; do n="${f%-*}-$KEY.safetensors"; [ "$f" = "$n" ] || mv "$f" "$n"; done)
  log "cache: $(ls "$MIDRE_CACHE_DIR" | wc -l) blocks, key $KEY"
fi
python3 - <<'EOF' 2>&1 | tee "$W/logs/fingerprints.txt"
from midre.data import load_dataset, load_pretraining
from midre.priors import data_fingerprint
s = load_dataset("synthetic2", resolution=32, num_private=50, num_public=100, train_per_id=30, test_per_id=10,
                 public_per_id=30)
p = load_pretraining("synthetic2", resolution=32, num_identities=500, images_per_id=30)
print("fingerprints (here: pretrain ff46850b8a9d08ae train 1aa7c2a999ac2aeb test 9272f5e51f96e364 public 99774ccc851d1a68)")
print("fingerprints (there):", "pretrain", data_fingerprint(p), "train", data_fingerprint(s.private_train),
      "test", data_fingerprint(s.private_test), "public", data_fingerprint(s.public))
EOF

# ---- 1. CUDA tests, 2. PPA benchmark (alone on the GPU)
if [ "$DEV" = cuda ]; then
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_erasing.py 2>&1 | tail -5 | tee "$W/logs/pytest_cuda.txt"
  log "ppa_gpu"
  timeout 150 python3 benchmarks/ppa_gpu.py 2>&1 | tee "$OUT/ppa_gpu.txt" | tail -40
fi

# ---- 3. the instrument, v1.0 (A) and v0.6 (B) in parallel
C=$ROOT/midre/configs
for v in A B; do
  mkdir -p "$W/cfg/$v"
  opt=""; [ $v = B ] && opt="dataset: {options: {variation: 0.6}}"
  tiny=""
  if [ "${SMOKE:-0}" = 1 ]; then
    tiny=$'backbones: {smallcnn: {pool_options: {num_identities: 20, images_per_id: 10}, train: {epochs: 1}}, smallresnet: {pool_options: {num_identities: 20, images_per_id: 10}, train: {epochs: 1}}}\neval_model: {train: {epochs: 1}}\npriors: {params: {gan: {iterations: 4, ckpt_every: 2}, kedmi: {iterations: 2}, cgan: {iterations: 2}, lomma: {distill_epochs: 1}}}'
  fi
  printf '%s\n%s\n' "$opt" "$tiny" > "$W/cfg/$v/over.yaml"
  printf 'extends: [%s, %s]\nname: quickstart\n' "$C/quickstart.yaml" "$W/cfg/$v/over.yaml" > "$W/cfg/$v/quickstart.yaml"
  printf 'extends: [%s, %s]\nname: calibration-v2\n' "$C/calibration-v2.yaml" "$W/cfg/$v/over.yaml" > "$W/cfg/$v/calib.yaml"
  printf 'extends: [%s, %s]\nname: calibration-v2-strong\n' "$C/calibration-v2-strong.yaml" "$W/cfg/$v/over.yaml" > "$W/cfg/$v/strong.yaml"
done
job() {  # $1 = A|B
  local v=$1 d=$W/$1
  export OMP_NUM_THREADS=6 MIDRE_ZOO_DIR=$d/zoo
  timeout "$(left)" python3 -m midre zoo build --config "$W/cfg/$v/quickstart.yaml" --work "$d/build" --device $DEV --no-progress \
    && timeout "$(left)" python3 -m midre run "$W/cfg/$v/calib.yaml" --out "$d/calib" --device $DEV --no-progress "${SET[@]}" \
    ; timeout "$(left)" python3 -m midre run "$W/cfg/$v/strong.yaml" --out "$d/strong" --device $DEV --no-progress "${SET[@]}"
  python3 -m midre zoo list 2>&1
}
log "instrument A + B"
job A > "$W/logs/A.txt" 2>&1 &
job B > "$W/logs/B.txt" 2>&1 &
wait
log "done; packing"
tail -30 "$W/logs/A.txt"; tail -12 "$W/logs/B.txt"

# ---- pack: the zoos (B without its backbones: same keys as A's) and the calibration results
(cd "$W" && tar -cf - A/zoo | split -b 15M - "$OUT/zooA.tar.")
(cd "$W" && tar -cf - --exclude='B/zoo/weights/quickstart-backbone-*' B/zoo | split -b 15M - "$OUT/zooB.tar.")
(cd "$W" && tar -czf "$OUT/results.tgz" logs cfg \
   $(find A B -path '*/calib/*' -o -path '*/strong/*' 2>/dev/null | grep -E '\.(csv|json|md|html|txt|yaml)$' \
     | grep -v -E '/(reconstructions|samples)/') 2>/dev/null)
ls -la "$OUT"
log "end"
