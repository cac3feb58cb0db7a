"""The documented Alibaba KMS envelope flow, run with an official SDK against `envseal kms serve`.

Usage: alibaba_sdk_flow.py --endpoint 127.0.0.1:PORT --flavor old|v3|v2
Credentials: ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET.

Flavors: `old` = aliyun-python-sdk-core + aliyun-python-sdk-kms (signature v1, HMAC-SHA1),
`v3` = alibabacloud_kms20160120 in its default ACS3-HMAC-SHA256 mode, `v2` = the same SDK with
signature_algorithm="v2" (HMAC-SHA1). Prints each check; exits 1 on the first mismatch.
"""

import argparse
import base64
import json
import os
import sys
import uuid

ALIAS = "alias/Apollo/WorkKey"
REGION = "cn-hangzhou"


class Mismatch(Exception):
    pass


def check(label, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + label + (f": {detail}" if detail else ""), flush=True)
    if not ok:
        raise Mismatch(label)


class OldSdk:
    """aliyunsdkcore's AcsClient; every KMS request class forces https, so each request is
    pointed at the local endpoint over http (docs/KMS-WIRE.md §7)."""

    def __init__(self, endpoint, ak, secret):
        from aliyunsdkcore.client import AcsClient

        self.endpoint = endpoint
        self.client = AcsClient(ak, secret, REGION)

    def call(self, name, **params):
        import importlib

        module = importlib.import_module(f"aliyunsdkkms.request.v20160120.{name}Request")
        req = getattr(module, f"{name}Request")()
        req.set_endpoint(self.endpoint)
        req.set_protocol_type("http")
        req.set_accept_format("JSON")
        for k, v in params.items():
            if isinstance(v, dict):
                v = json.dumps(v)
            getattr(req, f"set_{k}")(v)
        return json.loads(self.client.do_action_with_exception(req))

    @staticmethod
    def error_code(e):
        from aliyunsdkcore.acs_exception.exceptions import ServerException

        if isinstance(e, ServerException):
            return e.get_error_code(), e.get_http_status()
        return None, None


class NewSdk:
    """alibabacloud_kms20160120 (tea/darabonba), signature v3 by default or v2."""

    def __init__(self, endpoint, ak, secret, algorithm):
        from alibabacloud_kms20160120.client import Client
        from alibabacloud_tea_openapi.utils_models import Config

        config = Config(
            access_key_id=ak,
            access_key_secret=secret,
            endpoint=endpoint,
            protocol="http",
            region_id=REGION,
        )
        if algorithm == "v2":
            config.signature_algorithm = "v2"
        self.client = Client(config)

    def call(self, name, **params):
        import re

        from alibabacloud_kms20160120 import models

        snake = lambda s: re.sub(r"(?<!^)(?=[A-Z])", "_", s).lower()
        req = getattr(models, f"{name}Request")(**{snake(k): v for k, v in params.items()})
        resp = getattr(self.client, snake(name))(req)
        check(f"{name} HTTP status 200", resp.status_code == 200, str(resp.status_code))
        return resp.body.to_map()

    @staticmethod
    def error_code(e):
        from alibabacloud_tea_openapi.exceptions import AlibabaCloudException

        if isinstance(e, AlibabaCloudException):
            return e.code, getattr(e, "status_code", None)
        return None, None


def expect_error(sdk, label, code, status, fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the SDKs raise several classes
        got, got_status = sdk.error_code(e)
        check(f"{label} -> {code}", got == code, f"got {got!r} ({type(e).__name__}: {e})")
        if status is not None:
            check(f"{label} HTTP {status}", got_status == status, f"got {got_status!r}")
        return
    check(f"{label} -> {code}", False, "no error raised")


def flow(sdk, make_sdk_with_secret, flavor):
    key = sdk.call("CreateKey", Description=f"apollo work key ({flavor})")["KeyMetadata"]
    key_id = key["KeyId"]
    check("CreateKey returns an enabled key", key.get("KeyState") == "Enabled", key_id)
    check("CreateKey KeySpec", key.get("KeySpec") == "Aliyun_AES_256", key.get("KeySpec"))

    sdk.call("CreateAlias", AliasName=ALIAS, KeyId=key_id)
    described = sdk.call("DescribeKey", KeyId=ALIAS)["KeyMetadata"]
    check("DescribeKey by alias resolves the key", described["KeyId"] == key_id)

    ctx = {"purpose": "envelope", "file": "a b*~.txt"}
    g = sdk.call("GenerateDataKey", KeyId=ALIAS, NumberOfBytes=32, EncryptionContext=ctx)
    check("GenerateDataKey names the resolved key", g["KeyId"] == key_id, g["KeyId"])
    check("GenerateDataKey has a RequestId", bool(g.get("RequestId")))
    check("data key is 32 bytes", len(base64.b64decode(g["Plaintext"])) == 32)
    d = sdk.call("Decrypt", CiphertextBlob=g["CiphertextBlob"], EncryptionContext=ctx)
    check("Decrypt gives the same base64 plaintext", d["Plaintext"] == g["Plaintext"])
    check("Decrypt names the key", d["KeyId"] == key_id)
    # The docs' sample passes the blob line with its trailing newline.
    d = sdk.call("Decrypt", CiphertextBlob=g["CiphertextBlob"] + "\n", EncryptionContext=ctx)
    check("Decrypt accepts a trailing newline", d["Plaintext"] == g["Plaintext"])

    text = "-----BEGIN KEY-----\nhello, 世界 & more+stuff=\n-----END KEY-----\n"
    e = sdk.call("Encrypt", KeyId=key_id, Plaintext=text)
    d = sdk.call("Decrypt", CiphertextBlob=e["CiphertextBlob"])
    check("Encrypt/Decrypt of a small text round-trips", d["Plaintext"] == text, repr(d["Plaintext"]))

    expect_error(sdk, "DescribeKey of an unknown key", "Forbidden.KeyNotFound", 404,
                 lambda: sdk.call("DescribeKey", KeyId=str(uuid.uuid4())))
    expect_error(sdk, "GenerateDataKey with an unknown key", "Forbidden.KeyNotFound", 404,
                 lambda: sdk.call("GenerateDataKey", KeyId=str(uuid.uuid4()), NumberOfBytes=32))
    blob = g["CiphertextBlob"]
    mid = len(blob) // 2
    tampered = blob[:mid] + ("A" if blob[mid] != "A" else "B") + blob[mid + 1:]
    expect_error(sdk, "Decrypt of a tampered blob", "InvalidParameter", 400,
                 lambda: sdk.call("Decrypt", CiphertextBlob=tampered, EncryptionContext=ctx))
    expect_error(sdk, "Decrypt with another context", "InvalidParameter", 400,
                 lambda: sdk.call("Decrypt", CiphertextBlob=blob, EncryptionContext={"purpose": "x"}))

    wrong = make_sdk_with_secret("definitely-not-the-secret")
    wrong_code = "InvalidAccessKeySecret" if flavor == "old" else "SignatureDoesNotMatch"
    expect_error(wrong, "a wrong secret", wrong_code, None,
                 lambda: wrong.call("DescribeKey", KeyId=key_id))

    sdk.call("DisableKey", KeyId=key_id)
    expect_error(sdk, "GenerateDataKey on a disabled key", "Rejected.Disabled", 409,
                 lambda: sdk.call("GenerateDataKey", KeyId=ALIAS, NumberOfBytes=32))
    expect_error(sdk, "Decrypt under a disabled key", "Rejected.Disabled", 409,
                 lambda: sdk.call("Decrypt", CiphertextBlob=blob, EncryptionContext=ctx))
    sdk.call("EnableKey", KeyId=key_id)
    d = sdk.call("Decrypt", CiphertextBlob=blob, EncryptionContext=ctx)
    check("Decrypt works again after EnableKey", d["Plaintext"] == g["Plaintext"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True, help="host:port of envseal kms serve")
    ap.add_argument("--flavor", required=True, choices=["old", "v3", "v2"])
    args = ap.parse_args()
    ak = os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"]
    secret = os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]

    def make(s):
        if args.flavor == "old":
            return OldSdk(args.endpoint, ak, s)
        return NewSdk(args.endpoint, ak, s, args.flavor)

    print(f"== {args.flavor} SDK against {args.endpoint}", flush=True)
    try:
        flow(make(secret), make, args.flavor)
    except Mismatch as m:
        print(f"mismatch: {m}", file=sys.stderr)
        return 1
    print(f"== {args.flavor}: all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
