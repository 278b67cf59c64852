#!/usr/bin/env bash
# Load time and peak memory of data.Corpus on a synthetic WikiText-103-sized corpus:
# the first read (tokenizes, writes the cache), a second read (from the cache), and the
# reader before streaming (git b787614) for comparison. Run from the repository root:
#   bash results/data-scale/measure.sh /tmp/big
set -euo pipefail
out=${1:-/tmp/big}
date -u +%Y-%m-%dT%H:%M:%SZ; grep -m1 "model name" /proc/cpuinfo; echo "$(nproc --all) cores"; free -g | sed -n 2p
python -c "import torch; print('torch', torch.__version__)"
rm -rf "$out"
python results/data-scale/make_corpus.py "$out"
git show b787614:data.py > /tmp/data_before_streaming.py
load='import sys, time; t = time.time(); c = Corpus(sys.argv[1]); print(f"{label}: {time.time() - t:.1f} s, {len(c.train):,} train tokens, {len(c.dictionary):,} words")'
for label in "first read" "second read (cache)"; do
    /usr/bin/time -f "  peak RSS %M KiB" python -c "from data import Corpus; label = '$label'; $load" "$out"
done
/usr/bin/time -f "  peak RSS %M KiB" python -c "import sys; sys.path.insert(0, '/tmp'); from data_before_streaming import Corpus; label = 'before streaming (b787614)'; $load" "$out"
