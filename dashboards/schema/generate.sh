#!/usr/bin/env bash
# Regenerates dashboard.schema.json: Grafana's dashboard schema (the `Dashboard` TypeScript type of
# the npm package @grafana/schema, Grafana 11.6) as a JSON Schema. The result is committed, so CI
# validates the dashboards with Python's jsonschema and needs no npm. Run after changing the target
# Grafana version (and keep GRAFANA_SCHEMA in step with the grafana-foundation-sdk pin).
set -euo pipefail
cd "$(dirname "$0")"
GRAFANA_SCHEMA=${GRAFANA_SCHEMA:-11.6.16}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm init -y >/dev/null && npm install --no-audit --no-fund --silent \
    "@grafana/schema@$GRAFANA_SCHEMA" ts-json-schema-generator@2.4.0 typescript@5.6.3)
"$work/node_modules/.bin/ts-json-schema-generator" --no-type-check --type Dashboard \
    --path "$work/node_modules/@grafana/schema/dist/esm/raw/dashboard/x/dashboard_types.gen.d.ts" \
    -o dashboard.schema.json
echo "wrote $(pwd)/dashboard.schema.json from @grafana/schema@$GRAFANA_SCHEMA"
