#!/usr/bin/env bash
# The family graph of include/moe and its one SIMD seam, enforced (docs/architecture.md draws it).
# Families, lowest first:
#
#   core -> kernels -> routing -> dispatch -> sparse -> experts -> {balance, health} -> layer
#        -> parallel
#
# A header may include headers of its own family and of families below it; balance and health sit
# side by side and include neither each other. Nobody includes another family's detail/ folder.
# moe/moe.hpp (the umbrella) and moe/version.hpp sit outside the families: the umbrella may include
# any public header, no family header includes it. And one header, moe/kernels/simd.hpp, is the
# SIMD seam: no other names Eigen::internal or an intrinsic. The product kernels' bodies
# (kernels/detail/products/*.inc, included once per instruction set) are checked like headers.
# Exits 1 listing every break.
set -euo pipefail
cd "$(dirname "$0")/../include"

rank() {
  case "$1" in
    core) echo 0 ;;
    kernels) echo 1 ;;
    routing) echo 2 ;;
    dispatch) echo 3 ;;
    sparse) echo 4 ;;
    experts) echo 5 ;;
    balance | health) echo 6 ;;
    layer) echo 7 ;;
    parallel) echo 8 ;;
    *) echo "" ;;
  esac
}

problems=()
headers=0
while IFS= read -r header; do
  headers=$((headers + 1))
  relative=${header#moe/}
  family=${relative%%/*}
  [ "$family" = "$relative" ] && family=""  # moe/moe.hpp, moe/version.hpp
  if [ -n "$family" ] && [ -z "$(rank "$family")" ]; then
    problems+=("$header: not in a family (add it to scripts/check_includes.sh and the docs)")
    continue
  fi
  while IFS= read -r included; do
    target=${included#moe/}
    target_family=${target%%/*}
    [ "$target_family" = "$target" ] && target_family=""
    if [ -z "$family" ]; then
      # The umbrella: public headers only.
      case "$target" in */detail/*) problems+=("$header -> $included: a detail/ header") ;; esac
      continue
    fi
    if [ -z "$target_family" ]; then
      [ "$target" = "version.hpp" ] || problems+=("$header -> $included: the umbrella header")
      continue
    fi
    if [ "$target_family" = "$family" ]; then continue; fi
    case "$target" in
      */detail/*)
        problems+=("$header -> $included: another family's detail/")
        continue
        ;;
    esac
    target_rank=$(rank "$target_family")
    if [ -z "$target_rank" ] || [ "$target_rank" -ge "$(rank "$family")" ]; then
      problems+=("$header -> $included: $target_family is not below $family")
    fi
  done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*["<]\(moe\/[^">]*\)[">].*/\1/p' "$header")
done < <(find moe -name '*.hpp' -o -name '*.inc' | sort)

# The SIMD seam.
seam=moe/kernels/simd.hpp
while IFS= read -r hit; do
  problems+=("${hit}: Eigen::internal or an intrinsic outside ${seam}")
done < <(grep -rnE 'Eigen::internal|<immintrin\.h>|_mm(256|512)?_[a-z]|__builtin_prefetch' moe |
  grep -v "^${seam}:" | cut -d: -f1,2)

if [ ${#problems[@]} -gt 0 ]; then
  echo "include graph: ${#problems[@]} break(s) of the family order or the SIMD seam (scripts/check_includes.sh):"
  printf '  %s\n' "${problems[@]}"
  exit 1
fi
echo "include graph: ${headers} headers, every include goes down the family order;" \
  "Eigen::internal and intrinsics only in ${seam}"
