#!/usr/bin/env python3
"""A port of the Alibaba Cloud KMS guide's envelope-encryption sample (Python, AES-EAX with
pycryptodome, the data key from GenerateDataKey through the official aliyun-python-sdk-kms),
pointed at a local `envseal kms serve`. It writes, for each input file, `<file>.cipher` holding
four lines, as the guide does:

    CiphertextBlob            (as GenerateDataKey returned it)
    base64(nonce)             (16 bytes, AES.MODE_EAX's default)
    base64(ciphertext)        (the whole file)
    base64(tag)               (16 bytes)

Usage: kms_guide_envelope.py --endpoint 127.0.0.1:PORT --key alias/... -o OUTDIR FILE...
Credentials: ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET.
"""

import argparse
import base64
import json
import os

from aliyunsdkcore.client import AcsClient
from aliyunsdkkms.request.v20160120.GenerateDataKeyRequest import GenerateDataKeyRequest
from Crypto.Cipher import AES


def generate_data_key(client, endpoint, key_alias):
    request = GenerateDataKeyRequest()
    # The SDK's request classes force https; the local server speaks http.
    request.set_endpoint(endpoint)
    request.set_protocol_type("http")
    request.set_accept_format("JSON")
    request.set_KeyId(key_alias)
    request.set_NumberOfBytes(32)
    response = json.loads(client.do_action_with_exception(request))
    return response["Plaintext"], response["CiphertextBlob"]


def local_encrypt(plain_key, plain_text):
    key = base64.b64decode(plain_key)
    cipher = AES.new(key, AES.MODE_EAX)
    ciphertext, tag = cipher.encrypt_and_digest(plain_text)
    return cipher.nonce, ciphertext, tag


def envelope_encrypt(client, endpoint, key_alias, in_path, out_path):
    plain_key, cipher_blob = generate_data_key(client, endpoint, key_alias)
    with open(in_path, "rb") as f:
        plain_text = f.read()
    nonce, ciphertext, tag = local_encrypt(plain_key, plain_text)
    with open(out_path, "w") as out:
        out.write(cipher_blob + "\n")
        out.write(base64.b64encode(nonce).decode() + "\n")
        out.write(base64.b64encode(ciphertext).decode() + "\n")
        out.write(base64.b64encode(tag).decode() + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    client = AcsClient(
        os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"],
        os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
        "cn-hangzhou",
    )
    for path in args.files:
        out = os.path.join(args.out, os.path.basename(path) + ".cipher")
        envelope_encrypt(client, args.endpoint, args.key, path, out)
        print(out)


if __name__ == "__main__":
    main()
