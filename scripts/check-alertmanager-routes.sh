#!/usr/bin/env bash
# Check each case of alertmanager/tests/routes.txt with the real amtool:
#   scripts/check-alertmanager-routes.sh [CONFIG...]   (default: alertmanager.yml + examples)
set -euo pipefail
cd "$(dirname "$0")/.."
amtool=${AMTOOL:-.tools/bin/amtool}
table=alertmanager/tests/routes.txt
configs=("$@")
((${#configs[@]})) || configs=(alertmanager/alertmanager.yml alertmanager/examples/*.yml)

failed=0 cases=0
for config in "${configs[@]}"; do
  while read -r receiver labels; do
    [[ -z "$receiver" || "$receiver" == \#* ]] && continue
    cases=$((cases + 1))
    # shellcheck disable=SC2086  # the labels are separate arguments on purpose
    if ! out=$("$amtool" config routes test --config.file="$config" --verify.receivers="$receiver" $labels 2>&1); then
      echo "FAIL $config: {$labels} should reach $receiver, got: $out"
      failed=$((failed + 1))
    fi
  done < "$table"
done
echo "alertmanager routes: $((cases - failed)) of $cases cases reach their receiver"
((failed == 0))
