"""``python -m search_core aws setup|teardown``: the OpenSearch Serverless resources, by code.

Why: the sample had the collection, policies and index made by hand in the console, which is
where most "403 / index not found" reports came from. Setup is idempotent (re-running it
converges: existing policies are kept, the caller is added to the data-access policy if
missing), and teardown removes exactly what setup made.

Order matters: the encryption policy must exist before the collection; the network and
data-access policies may follow it. Teardown deletes the collection first (an encryption policy
in use cannot be deleted).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from search_core.aws.clients import aws_errors, error_code
from search_core.aws.clients import client as make_client
from search_core.config import Settings
from search_core.errors import BackendError, ConfigError, SearchError

SERVICE = "OpenSearch Serverless"
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{2,31}$")
COLLECTION_PERMISSIONS = [
    "aoss:DescribeCollectionItems",
    "aoss:CreateCollectionItems",
    "aoss:UpdateCollectionItems",
]
INDEX_PERMISSIONS = [
    "aoss:CreateIndex",
    "aoss:DescribeIndex",
    "aoss:UpdateIndex",
    "aoss:DeleteIndex",
    "aoss:ReadDocument",
    "aoss:WriteDocument",
]
Log = Callable[[str], None]


def validate_collection_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise ConfigError(
            f"invalid collection name {name!r}: 3-32 characters, lowercase letters, digits and "
            f"hyphens, starting with a letter"
        )
    return name


def policy_names(collection: str) -> dict[str, str]:
    """Policy names derived from the collection (policy names are limited to 32 characters)."""
    base = collection[:28].rstrip("-")
    return {"encryption": f"{base}-enc", "network": f"{base}-net", "data": f"{base}-acc"}


def encryption_policy(collection: str) -> dict[str, Any]:
    return {
        "Rules": [{"ResourceType": "collection", "Resource": [f"collection/{collection}"]}],
        "AWSOwnedKey": True,
    }


def network_policy(collection: str) -> list[dict[str, Any]]:
    """Public endpoint (every request still needs SigV4 and the data-access policy)."""
    return [
        {
            "Description": f"Public access to {collection} (IAM-authenticated)",
            "Rules": [{"ResourceType": "collection", "Resource": [f"collection/{collection}"]}],
            "AllowFromPublic": True,
        }
    ]


def access_policy(collection: str, principals: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {
            "Description": f"visual-search access to {collection}",
            "Rules": [
                {
                    "ResourceType": "collection",
                    "Resource": [f"collection/{collection}"],
                    "Permission": COLLECTION_PERMISSIONS,
                },
                {
                    "ResourceType": "index",
                    "Resource": [f"index/{collection}/*"],
                    "Permission": INDEX_PERMISSIONS,
                },
            ],
            "Principal": sorted(set(principals)),
        }
    ]


def principal_arn(caller_arn: str) -> str:
    """Data-access policies name IAM users/roles, not STS sessions: an assumed-role session ARN
    ``arn:aws:sts::123:assumed-role/Role/session`` becomes ``arn:aws:iam::123:role/Role``.
    (A role with a path must be passed explicitly with ``--principal``.)"""
    match = re.match(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/.+$", caller_arn)
    if match:
        partition, account, role = match.groups()
        return f"arn:{partition}:iam::{account}:role/{role}"
    return caller_arn


@dataclass
class SetupResult:
    collection: str
    collection_id: str = ""
    arn: str = ""
    endpoint: str = ""
    index: str = ""
    principals: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


def _get_collection(aoss: Any, name: str, settings: Settings) -> dict[str, Any] | None:
    with aws_errors(service=SERVICE, action="BatchGetCollection", settings=settings):
        details = aoss.batch_get_collection(names=[name]).get("collectionDetails", [])
    return details[0] if details else None


def _create_or_keep(call: Callable[[], Any], what: str, result: SetupResult, log: Log,
                    settings: Settings) -> bool:
    """True if created, False if it already existed."""
    try:
        call()
    except ClientError as exc:
        if error_code(exc) == "ConflictException":
            result.actions.append(f"kept {what}")
            log(f"  {what}: exists, kept")
            return False
        with aws_errors(service=SERVICE, action=f"create {what}", settings=settings):
            raise
    result.actions.append(f"created {what}")
    log(f"  {what}: created")
    return True


def _ensure_access_policy(aoss: Any, name: str, collection: str, principals: list[str],
                          result: SetupResult, log: Log, settings: Settings) -> None:
    document = json.dumps(access_policy(collection, principals))
    created = _create_or_keep(
        lambda: aoss.create_access_policy(name=name, type="data", policy=document,
                                          description=f"visual-search {collection}"),
        f"data access policy {name}", result, log, settings,
    )
    if created:
        return
    with aws_errors(service=SERVICE, action="GetAccessPolicy", settings=settings):
        detail = aoss.get_access_policy(name=name, type="data")["accessPolicyDetail"]
    current = detail.get("policy")
    if isinstance(current, str):
        current = json.loads(current)
    present = {p for rule in current or [] for p in rule.get("Principal", [])}
    missing = [p for p in principals if p not in present]
    if not missing:
        return
    merged = access_policy(collection, sorted(present | set(principals)))
    with aws_errors(service=SERVICE, action="UpdateAccessPolicy", settings=settings):
        aoss.update_access_policy(name=name, type="data", policyVersion=detail["policyVersion"],
                                  policy=json.dumps(merged))
    result.actions.append(f"added {', '.join(missing)} to {name}")
    log(f"  data access policy {name}: added {', '.join(missing)}")


#: collection states that will not become ACTIVE by waiting (UPDATE_FAILED: an update of
#: the collection failed; DELETING: somebody is removing it)
TERMINAL_STATES = frozenset({"FAILED", "UPDATE_FAILED", "DELETING", "MISSING"})


def wait_active(aoss: Any, name: str, settings: Settings, *, timeout: float, poll: float,
                log: Log) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        detail = _get_collection(aoss, name, settings)
        status = (detail or {}).get("status", "MISSING")
        if status == "ACTIVE" and detail:
            return detail
        if status in TERMINAL_STATES:
            reason = (detail or {}).get("failureMessage") or (detail or {}).get("failureCode")
            why = f" ({reason})" if reason else ""
            raise BackendError(
                f"collection {name} is {status}{why}: see the OpenSearch console; "
                "`aws teardown` then `aws setup` starts it again"
            )
        if time.monotonic() > deadline:
            raise BackendError(f"collection {name} still {status} after {timeout:.0f} s")
        log(f"  collection {name}: {status}, waiting...")
        time.sleep(poll)


def create_index(settings: Settings, endpoint: str, *, client: Any = None,
                 timeout: float = 180.0, poll: float = 10.0, log: Log = print) -> str:
    """Creates the k-NN index on a fresh collection. A new data-access policy takes a while to
    apply, so 403 answers are retried until ``timeout``."""
    from search_core.aws.opensearch_index import OpenSearchIndex

    index_settings = dataclasses.replace(
        settings, opensearch_endpoint=endpoint, opensearch_auth="sigv4-aoss", index="opensearch"
    )
    deadline = time.monotonic() + timeout
    while True:
        index = OpenSearchIndex(
            index_settings,
            dimension=settings.titan_embedding_length,
            model_id=settings.titan_model_id,
            client=client,
        )
        try:
            index.ensure_index()
            return index.index_name
        except BackendError as exc:
            if "403" not in str(exc) or time.monotonic() > deadline:
                raise
            log("  index: access policy not applied yet (403), retrying...")
            time.sleep(poll)


def setup(
    settings: Settings,
    collection: str,
    *,
    principals: Sequence[str] = (),
    with_index: bool = True,
    redundancy: bool = True,
    aoss: Any = None,
    sts: Any = None,
    index_client: Any = None,
    timeout: float = 1200.0,
    poll: float = 10.0,
    log: Log = print,
) -> SetupResult:
    validate_collection_name(collection)
    aoss = aoss or make_client("opensearchserverless", settings)
    sts = sts or make_client("sts", settings)
    names = policy_names(collection)
    result = SetupResult(collection=collection)
    with aws_errors(service="STS", action="GetCallerIdentity", settings=settings):
        caller = sts.get_caller_identity()["Arn"]
    result.principals = sorted({principal_arn(caller), *principals})
    log(f"Setting up OpenSearch Serverless collection {collection} in {settings.aws_region} "
        f"for {', '.join(result.principals)}")

    _create_or_keep(
        lambda: aoss.create_security_policy(
            name=names["encryption"], type="encryption",
            policy=json.dumps(encryption_policy(collection)),
        ),
        f"encryption policy {names['encryption']}", result, log, settings,
    )
    if _get_collection(aoss, collection, settings) is None:
        _create_or_keep(
            lambda: aoss.create_collection(
                name=collection,
                type="VECTORSEARCH",
                description="visual-search vectors",
                # DISABLED: no standby replicas in a second AZ -- half the idle OCUs, for
                # demos and development; production keeps the default (ENABLED)
                standbyReplicas="ENABLED" if redundancy else "DISABLED",
            ),
            f"collection {collection}", result, log, settings,
        )
    else:
        result.actions.append(f"kept collection {collection}")
        log(f"  collection {collection}: exists, kept")
    _create_or_keep(
        lambda: aoss.create_security_policy(
            name=names["network"], type="network", policy=json.dumps(network_policy(collection)),
        ),
        f"network policy {names['network']}", result, log, settings,
    )
    _ensure_access_policy(aoss, names["data"], collection, result.principals, result, log,
                          settings)
    detail = wait_active(aoss, collection, settings, timeout=timeout, poll=poll, log=log)
    result.collection_id = detail.get("id", "")
    result.arn = detail.get("arn", "")
    result.endpoint = detail.get("collectionEndpoint", "")
    if not result.endpoint:
        raise BackendError(f"collection {collection} is ACTIVE but reports no endpoint")
    if with_index:
        result.index = create_index(settings, result.endpoint, client=index_client,
                                    poll=poll, log=log)
        result.actions.append(f"index {result.index} ready")
        log(f"  index {result.index}: ready ({settings.titan_embedding_length} dimensions)")
    return result


def _delete_quietly(call: Callable[[], Any], what: str, removed: list[str], log: Log,
                    settings: Settings) -> None:
    try:
        call()
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            log(f"  {what}: not found")
            return
        with aws_errors(service=SERVICE, action=f"delete {what}", settings=settings):
            raise
    removed.append(what)
    log(f"  {what}: deleted")


def teardown(
    settings: Settings,
    collection: str,
    *,
    aoss: Any = None,
    timeout: float = 1200.0,
    poll: float = 10.0,
    log: Log = print,
) -> list[str]:
    """Deletes the collection (waiting until it is gone) and then its three policies."""
    validate_collection_name(collection)
    aoss = aoss or make_client("opensearchserverless", settings)
    names = policy_names(collection)
    removed: list[str] = []
    detail = _get_collection(aoss, collection, settings)
    if detail is not None:
        _delete_quietly(lambda: aoss.delete_collection(id=detail["id"]),
                        f"collection {collection}", removed, log, settings)
        deadline = time.monotonic() + timeout
        while _get_collection(aoss, collection, settings) is not None:
            if time.monotonic() > deadline:
                raise BackendError(f"collection {collection} still deleting after {timeout:.0f} s")
            time.sleep(poll)
    else:
        log(f"  collection {collection}: not found")
    _delete_quietly(lambda: aoss.delete_access_policy(name=names["data"], type="data"),
                    f"data access policy {names['data']}", removed, log, settings)
    for kind in ("network", "encryption"):
        _delete_quietly(
            lambda kind=kind: aoss.delete_security_policy(name=names[kind], type=kind),
            f"{kind} policy {names[kind]}", removed, log, settings,
        )
    return removed


# -- CLI ------------------------------------------------------------------------------------


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``aws setup`` and ``aws teardown``; each sets ``func`` to a handler(args) -> int."""
    aws = subparsers.add_parser("aws", help="Create or remove the AWS (OpenSearch Serverless) "
                                            "resources")
    sub = aws.add_subparsers(dest="aws_command", required=True)
    up = sub.add_parser("setup", help="Create policies, VECTORSEARCH collection and index "
                                      "(idempotent)")
    up.add_argument("--collection", required=True, help="collection name (3-32 chars, a-z0-9-)")
    up.add_argument("--principal", action="append", default=[],
                    help="extra IAM role/user ARN allowed to read/write (e.g. the app's role)")
    up.add_argument("--no-index", action="store_true", help="do not create the k-NN index")
    up.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for ACTIVE")
    up.add_argument("--no-redundancy", action="store_true",
                    help="no standby replicas (standbyReplicas=DISABLED): about half the idle "
                         "cost, for demos; cannot be changed after creation")
    up.set_defaults(func=handle_cli)
    down = sub.add_parser("teardown", help="Delete the collection and its policies")
    down.add_argument("--collection", required=True)
    down.add_argument("--timeout", type=float, default=1200.0)
    down.set_defaults(func=handle_cli)
    return aws


def handle_cli(args: argparse.Namespace, settings: Settings | None = None) -> int:
    settings = settings or Settings.from_env()
    try:
        if args.aws_command == "setup":
            result = setup(settings, args.collection, principals=args.principal,
                           with_index=not args.no_index, timeout=args.timeout,
                           redundancy=not args.no_redundancy)
            print(f"\nCollection endpoint: {result.endpoint}")
            print("Use it with:")
            print(f"  export AWS_REGION={settings.aws_region}")
            print(f"  export OPENSEARCH_ENDPOINT={result.endpoint}")
            print(f"  export OPENSEARCH_INDEX={result.index or settings.opensearch_index}")
            print("  export SEARCH_INDEX=opensearch SEARCH_EMBEDDER=titan "
                  "SEARCH_DETECTOR=rekognition")
            print(f"Collection ARN (for deploy/iam-policy.json): {result.arn}")
        else:
            teardown(settings, args.collection, timeout=args.timeout)
            print(f"Removed collection {args.collection} and its policies.")
        return 0
    except SearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
