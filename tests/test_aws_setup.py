"""``aws setup`` / ``aws teardown`` against moto's OpenSearch Serverless control plane and STS,
with the k-NN index created on ``fake_opensearch`` (SigV4 for ``aoss`` verified), plus checks of
the IAM policy documents in ``deploy/``.

moto gaps, bridged here and nowhere in product code: moto does not implement the data-access
policy API nor ``DeleteSecurityPolicy`` (answered by a small in-test store through botocore's
``before-call`` hook, after botocore validated the parameters against the service model), and
moto's ``CreateCollection`` reads a ``KmsARN`` key from the encryption policy that real AWS does
not need (injected for moto only).

Not covered (needs AWS): real collection creation time (minutes), real policy validation and
propagation delays, IAM evaluation of deploy/*.json, VPC endpoints.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.credentials import Credentials
from fake_opensearch import FAKE_KEY, FAKE_SECRET, FakeOpenSearch
from moto import mock_aws
from opensearchpy import OpenSearch, RequestsAWSV4SignerAuth, RequestsHttpConnection

from search_core.aws import clients
from search_core.aws import setup as aws_setup
from search_core.config import Settings
from search_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = Settings(aws_region="us-east-1", titan_embedding_length=1024)


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    clients._session_for.cache_clear()


class AccessPolicies:
    """The AOSS operations moto lacks, answered after botocore validated the request."""

    def __init__(self) -> None:
        self.data: dict[str, dict] = {}
        self.deleted_security: list[tuple[str, str]] = []

    @staticmethod
    def _reply(status: int, parsed: dict) -> tuple[AWSResponse, dict]:
        return AWSResponse("https://aoss.us-east-1.amazonaws.com", status, {}, None), parsed

    def _missing(self, name: str) -> tuple[AWSResponse, dict]:
        return self._reply(404, {"Error": {"Code": "ResourceNotFoundException",
                                           "Message": f"{name} not found"}})

    def __call__(self, model, params, **kwargs):
        body = json.loads(params["body"] or b"{}")
        name = body.get("name")
        op = model.name
        if op == "CreateAccessPolicy":
            if name in self.data:
                return self._reply(409, {"Error": {"Code": "ConflictException",
                                                   "Message": "exists"}})
            self.data[name] = {"name": name, "type": body["type"],
                               "policyVersion": "version-000000000001",
                               "policy": json.loads(body["policy"])}
            return self._reply(200, {"accessPolicyDetail": self.data[name]})
        if op == "GetAccessPolicy":
            if name not in self.data:
                return self._missing(name)
            return self._reply(200, {"accessPolicyDetail": self.data[name]})
        if op == "UpdateAccessPolicy":
            current = self.data[name]
            assert body["policyVersion"] == current["policyVersion"]
            number = int(current["policyVersion"].rsplit("-", 1)[1]) + 1
            current.update(policy=json.loads(body["policy"]),
                           policyVersion=f"version-{number:012d}")
            return self._reply(200, {"accessPolicyDetail": current})
        if op == "DeleteAccessPolicy":
            if self.data.pop(name, None) is None:
                return self._missing(name)
            return self._reply(200, {})
        if op == "DeleteSecurityPolicy":
            key = (name, body["type"])
            if key in self.deleted_security:
                return self._missing(name)
            self.deleted_security.append(key)
            return self._reply(200, {})
        return None


def _moto_kms_workaround(params, **kwargs) -> None:
    if params.get("type") == "encryption":
        policy = json.loads(params["policy"])
        policy.setdefault("KmsARN", "")
        params["policy"] = json.dumps(policy)


@pytest.fixture
def env() -> Iterator[tuple]:
    with mock_aws(), FakeOpenSearch(strict=True, service="aoss") as fake:
        aoss = boto3.client("opensearchserverless", region_name="us-east-1")
        policies = AccessPolicies()
        for op in ("CreateAccessPolicy", "GetAccessPolicy", "UpdateAccessPolicy",
                   "DeleteAccessPolicy", "DeleteSecurityPolicy"):
            aoss.meta.events.register(f"before-call.opensearchserverless.{op}", policies)
        aoss.meta.events.register(
            "before-parameter-build.opensearchserverless.CreateSecurityPolicy",
            _moto_kms_workaround)
        sts = boto3.client("sts", region_name="us-east-1")
        index_client = OpenSearch(
            hosts=[fake.url], connection_class=RequestsHttpConnection,
            # moto swaps the environment credentials for its own: sign with the fake's.
            http_auth=RequestsAWSV4SignerAuth(
                Credentials(FAKE_KEY, FAKE_SECRET), "us-east-1", "aoss"),
        )
        yield aoss, sts, index_client, policies, fake


def _run_setup(env, principals=()) -> aws_setup.SetupResult:
    aoss, sts, index_client, _, _ = env
    return aws_setup.setup(SETTINGS, "visual-search", principals=principals, aoss=aoss,
                           sts=sts, index_client=index_client, poll=0, log=lambda _: None)


def test_setup_creates_everything_then_converges(env) -> None:
    aoss, sts, _, policies, fake = env
    caller = sts.get_caller_identity()["Arn"]
    app_role = "arn:aws:iam::123456789012:role/visual-search-app"
    result = _run_setup(env, principals=[app_role])
    assert result.endpoint.startswith("https://") and ".aoss.amazonaws.com" in result.endpoint
    assert result.arn.startswith("arn:aws:aoss:us-east-1:")
    assert result.actions[:4] == [
        "created encryption policy visual-search-enc", "created collection visual-search",
        "created network policy visual-search-net", "created data access policy visual-search-acc",
    ]
    (collection,) = aoss.batch_get_collection(names=["visual-search"])["collectionDetails"]
    assert collection["type"] == "VECTORSEARCH" and collection["status"] == "ACTIVE"
    enc = aoss.get_security_policy(name="visual-search-enc", type="encryption")
    assert enc["securityPolicyDetail"]["policy"]["AWSOwnedKey"] is True
    net = aoss.get_security_policy(name="visual-search-net", type="network")
    assert net["securityPolicyDetail"]["policy"][0]["Rules"][0]["Resource"] == [
        "collection/visual-search"]
    (rule,) = policies.data["visual-search-acc"]["policy"]
    assert set(rule["Principal"]) == {caller, app_role}
    assert "aoss:*" not in json.dumps(rule)
    mapping = fake.indices["visual-search"].mapping["properties"]["vector"]
    assert mapping["dimension"] == 1024 and not fake.auth_failures

    again = _run_setup(env)
    assert again.endpoint == result.endpoint
    assert all(a.startswith(("kept", "index")) for a in again.actions)
    assert len(aoss.list_collections()["collectionSummaries"]) == 1

    other = "arn:aws:iam::123456789012:role/other"
    third = _run_setup(env, principals=[other])
    assert any("added" in a and other in a for a in third.actions)
    assert other in policies.data["visual-search-acc"]["policy"][0]["Principal"]
    assert app_role in policies.data["visual-search-acc"]["policy"][0]["Principal"]


def test_teardown_removes_everything_and_is_repeatable(env) -> None:
    aoss, *_rest = env
    _run_setup(env)
    removed = aws_setup.teardown(SETTINGS, "visual-search", aoss=aoss, poll=0,
                                 log=lambda _: None)
    assert removed == ["collection visual-search", "data access policy visual-search-acc",
                       "network policy visual-search-net",
                       "encryption policy visual-search-enc"]
    assert aoss.batch_get_collection(names=["visual-search"])["collectionDetails"] == []
    assert aws_setup.teardown(SETTINGS, "visual-search", aoss=aoss, poll=0,
                              log=lambda _: None) == []


def test_names_and_principals() -> None:
    assert aws_setup.principal_arn(
        "arn:aws:sts::123456789012:assumed-role/Admin/alice@example.com"
    ) == "arn:aws:iam::123456789012:role/Admin"
    assert aws_setup.principal_arn("arn:aws:iam::123456789012:user/bob") == (
        "arn:aws:iam::123456789012:user/bob")
    long = "a" * 32
    assert all(len(n) <= 32 for n in aws_setup.policy_names(long).values())
    for bad in ("ab", "Upper", "1abc", "a" * 33, "has_underscore"):
        with pytest.raises(ConfigError):
            aws_setup.validate_collection_name(bad)


def test_cli_registration(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    parser = argparse.ArgumentParser(prog="search_core")
    aws_setup.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["aws", "setup", "--collection", "shop-vectors",
                              "--principal", "arn:aws:iam::1:role/app"])
    seen = {}

    def fake_setup(settings, collection, **kwargs):
        seen.update(collection=collection, **kwargs)
        return aws_setup.SetupResult(collection=collection, endpoint="https://x.aoss",
                                     index="visual-search", arn="arn:aws:aoss:r:1:collection/x")

    monkeypatch.setattr(aws_setup, "setup", fake_setup)
    assert args.func(args, SETTINGS) == 0
    assert seen["collection"] == "shop-vectors"
    assert seen["principals"] == ["arn:aws:iam::1:role/app"]
    assert "export OPENSEARCH_ENDPOINT=https://x.aoss" in capsys.readouterr().out
    bad = parser.parse_args(["aws", "teardown", "--collection", "X"])
    assert bad.func(bad, SETTINGS) == 2
    assert "invalid collection name" in capsys.readouterr().err


def _statements(name: str) -> list[dict]:
    document = json.loads((ROOT / "deploy" / name).read_text())
    assert document["Version"] == "2012-10-17"
    return document["Statement"]


def test_app_policy_is_least_privilege() -> None:
    statements = _statements("iam-policy.json")
    actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str)
                                               else s["Action"])}
    assert actions == {"rekognition:DetectLabels", "bedrock:InvokeModel", "s3:ListBucket",
                       "s3:GetObject", "aoss:APIAccessAll"}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        if statement["Resource"] == "*":
            # DetectLabels has no resource-level permissions; everything else is named.
            assert statement["Action"] == "rekognition:DetectLabels"
    text = json.dumps(statements)
    assert "aoss:*" not in text and '"*:' not in text
    assert "foundation-model/amazon.titan-embed-image-v1" in text


def test_setup_policy_covers_the_calls_made() -> None:
    statements = _statements("iam-setup-policy.json")
    actions = {a for s in statements for a in s["Action"]} | {
        s["Action"] for s in statements if isinstance(s["Action"], str)}
    for op in ("CreateCollection", "BatchGetCollection", "DeleteCollection",
               "CreateSecurityPolicy", "DeleteSecurityPolicy", "CreateAccessPolicy",
               "GetAccessPolicy", "UpdateAccessPolicy", "DeleteAccessPolicy", "APIAccessAll"):
        assert f"aoss:{op}" in actions
    assert "aoss:*" not in json.dumps(statements)


def test_no_redundancy_creates_without_standby_replicas(env) -> None:
    aoss, sts, index_client, _, _ = env
    sent: list[dict] = []
    aoss.meta.events.register("before-parameter-build.opensearchserverless.CreateCollection",
                              lambda params, **_: sent.append(dict(params)))
    aws_setup.setup(SETTINGS, "demo-vectors", aoss=aoss, sts=sts, index_client=index_client,
                    redundancy=False, poll=0, log=lambda _: None)
    assert sent[0]["standbyReplicas"] == "DISABLED"
    parser = argparse.ArgumentParser(prog="search_core")
    aws_setup.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["aws", "setup", "--collection", "x-y", "--no-redundancy"])
    assert args.no_redundancy is True


@pytest.mark.parametrize("status", ["UPDATE_FAILED", "FAILED", "DELETING"])
def test_terminal_collection_states_end_the_wait_at_once(status: str) -> None:
    calls: list[int] = []

    class Aoss:
        def batch_get_collection(self, names: list[str]) -> dict:
            calls.append(1)
            return {"collectionDetails": [{"name": names[0], "status": status,
                                           "failureMessage": "capacity limit"}]}

    with pytest.raises(Exception, match=f"is {status} \\(capacity limit\\)"):
        aws_setup.wait_active(Aoss(), "shop", SETTINGS, timeout=3600, poll=0,
                              log=lambda _: None)
    assert len(calls) == 1  # no waiting until the timeout


def test_setup_policy_allows_only_the_aoss_service_linked_role() -> None:
    (statement,) = [s for s in _statements("iam-setup-policy.json")
                    if s["Action"] == "iam:CreateServiceLinkedRole"]
    assert statement["Condition"] == {
        "StringEquals": {"iam:AWSServiceName": "observability.aoss.amazonaws.com"}}
    assert statement["Resource"].endswith(
        ":role/aws-service-role/observability.aoss.amazonaws.com/"
        "AWSServiceRoleForAmazonOpenSearchServerless")
