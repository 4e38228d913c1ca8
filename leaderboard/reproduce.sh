#!/usr/bin/env bash
# Re-create every table in leaderboard/ from scratch (CPU, offline; about 3 hours at one torch thread).
# Each run trains or reuses checkpoints in .dlmbench-cache/, writes runs/<name>/, and is
# resumable: re-running skips finished cells. The kjv* runs need
#   apt-get install sword-text-kjv sword-text-sparv sword-comm-mhcc
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # see benchmarks/README.md: threads on a busy CPU

keep() {  # keep NAME: commit the records behind leaderboard/NAME.md (cells, models, run.json;
  # not the samples); tests/test_committed_tables.py re-renders the table from them
  rm -rf "leaderboard/records/$1" && mkdir -p "leaderboard/records/$1"
  cp -r "runs/$1/cells" "runs/$1/run.json" "leaderboard/records/$1/"
  if [ -d "runs/$1/models" ]; then cp -r "runs/$1/models" "leaderboard/records/$1/"; fi
}

board() {  # board NAME COMMAND...: run, then render leaderboard/NAME.md from its results
  local name=$1; shift
  "$@" --name "$name" --no-progress
  dlmbench leaderboard "runs/$name" -o "leaderboard/$name.md" --command "$* --name $name"
  keep "$name"
}

# The embedded default: README set-up command 1 (plot of quality vs steps and wall time).
dlmbench run --models elf,mdlm,duo,ar --steps 32,1024 --no-progress
dlmbench leaderboard runs/default -o leaderboard/default.md --plot leaderboard/default.png \
    --command "dlmbench run --models elf,mdlm,duo,ar --steps 32,1024"
keep default
# Its sensitivity audit: each sampling factor changed alone at 32 steps, reusing its models.
dlmbench audit runs/default --factors sample-batch,threads,world --steps 32 -o leaderboard/default-audit.md
# The same with 3 trained models per row (the spread includes training; its seed-0 models are
# the default run's, reused from the cache): the README's headline numbers.
board default-3seeds dlmbench run --models elf,mdlm,duo,ar --steps 32,1024 --train-seeds 0,1,2

# Conditional tasks on the grammar (exact references): translation and summarization.
board grammar-translate dlmbench run --models elf,mdlm,duo,ar --task grammar-translate --steps 32,256
board grammar-summarize dlmbench run --models elf,mdlm,duo,ar --task grammar-summarize --steps 32,256

# Real text, offline: KJV (proxy Gen PPL, labelled) and KJV -> Reina-Valera translation.
board kjv dlmbench run --models elf,mdlm,duo --task kjv --steps 32,256
board kjv-es dlmbench run --models elf,mdlm,duo --task kjv-es --steps 32,256 --seeds 0

# ELF ablations of the ELF paper (section 4.1, appendix C) on the embedded default.
board elf-ablations dlmbench run --config configs/elf-ablations.yaml

# Control quoted in leaderboard/README.md: ELF's encoder=scratch pretraining reads 8,192,000
# tokens of the training split outside the budget; MDLM given that many more tokens
# (2,457,600 + 8,192,000 = 64 x 32 x 5200 steps).
board mdlm-matched-tokens dlmbench run --models mdlm --steps 32,1024 --train-tokens 10649600 --train-seeds 0,1,2
