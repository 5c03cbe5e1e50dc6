"""Plays "another tool" for crates/sd-cli/tests/it/c2pa_readers.rs with the C2PA consortium's own SDK (PyPI
c2pa-python): makes a user's certificate chain (a root CA and an end-entity signing certificate, ECDSA P-256, with
the key usage and EKU C2PA asks for) and signs small PNG photos with a `c2pa.training-mining` assertion.

Writes into OUT_DIR: root.pem, chain.pem (end entity first), key.pem (PKCS#8), and
  allowed.png      signed, c2pa.ai_inference allowed
  reserved.png     signed, c2pa.ai_inference notAllowed

usage: python scripts/c2pa_other_tool.py OUT_DIR
"""
import datetime
import io
import json
import os
import sys

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Org")])


def chain():
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("Test Root CA")).issuer_name(name("Test Root CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ee_key = ec.generate_private_key(ec.SECP256R1())
    ee = (
        x509.CertificateBuilder().subject_name(name("Test User")).issuer_name(ca.subject)
        .public_key(ee_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ee_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    key = ee_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem(ca), pem(ee) + pem(ca), key


def signed_png(chain_pem, key_pem, inference):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 40)).save(buf, "PNG")
    manifest = {
        "claim_generator_info": [{"name": "c2pa-python test camera", "version": "1.0"}],
        "title": "photo.png",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created",
             "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"}]}},
            {"label": "c2pa.training-mining", "data": {"entries": {
                "c2pa.ai_inference": {"use": inference},
                "c2pa.ai_generative_training": {"use": "notAllowed"},
                "c2pa.ai_training": {"use": "notAllowed"},
                "c2pa.data_mining": {"use": "notAllowed"}}}},
        ],
    }
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain_pem, key_pem, None))
    builder = c2pa.Builder(json.dumps(manifest))
    out = io.BytesIO()
    buf.seek(0)
    builder.sign(signer, "image/png", buf, out)
    return out.getvalue()


def main():
    d = sys.argv[1]
    root, chain_pem, key = chain()
    for n, b in [("root.pem", root), ("chain.pem", chain_pem), ("key.pem", key)]:
        with open(os.path.join(d, n), "wb") as f:
            f.write(b)
    for n, use in [("allowed.png", "allowed"), ("reserved.png", "notAllowed")]:
        with open(os.path.join(d, n), "wb") as f:
            f.write(signed_png(chain_pem, key, use))


if __name__ == "__main__":
    main()
