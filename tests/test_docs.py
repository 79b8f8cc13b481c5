"""The documentation a clone carries must stand on its own and agree with the
code: the generated references match the model and the policy table, every
key has a meaning, every relative link resolves inside the repository, and
every example passes `lbcore check` (with certificates made here)."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from lbcore.config import reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"


# --- generated references -------------------------------------------------------------

def test_every_key_has_a_meaning_and_every_meaning_a_key():
    assert reference.problems() == []


def test_every_integer_key_states_its_range():
    for key in reference.walk():
        if key.type.startswith("integer") or key.type.startswith("number"):
            assert "\u2013" in key.type, (key.path, key.type)


@pytest.mark.parametrize("name", sorted(reference.documents()))
def test_generated_document_is_current(name):
    assert (DOCS / name).read_text() == reference.documents()[name], \
        f"docs/{name} is stale: run `make docs`"


def test_a_key_without_meaning_is_named():
    keys = [*reference.walk(), reference.Key("listeners[].invented", "listeners[]",
                                             "invented", "boolean", "false")]
    assert "listeners[].invented: no meaning in lbcore/config/reference.py MEANINGS" in \
        reference.problems(keys)


# --- links --------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<a href=\"([^\"]+)\"")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md")), *sorted(EXAMPLES.rglob("*.md")),
            *sorted((ROOT / "bench").glob("*.md")), *sorted((ROOT / "deploy").rglob("*.md"))]


def anchors(path: Path) -> set[str]:
    text = path.read_text()
    ids = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+\s+(.*)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        ids.add(slug)
    return ids


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc):
    bad = []
    for m in LINK.finditer(doc.read_text()):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if ROOT.resolve() not in (dest, *dest.parents):
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no such anchor")
    assert not bad, bad


def test_readme_says_what_the_default_health_check_does():
    text = (ROOT / "README.md").read_text()
    assert "GET /" in text and "200" in text and "../shared" not in text


# --- examples -----------------------------------------------------------------------

def make_certificates(cfg_text: str, base: Path) -> None:
    """The files an example's certificates name, made by a throwaway CA:
    server certificates for <name minus -ecdsa/-rsa>.example.com (RSA when the
    name says rsa), CA bundles, and an empty CRL signed by that CA."""
    cfg = yaml.safe_load(cfg_text)
    server_ca = trustme.CA()
    for name, cert in (cfg.get("certificates") or {}).items():
        def out(rel: str) -> Path:
            p = Path(rel) if Path(rel).is_absolute() else base / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            return p

        if cert["type"] == "server":
            domain = re.sub(r"-(ecdsa|rsa)$", "", name) + ".example.com"
            kind = trustme.KeyType.RSA if "rsa" in name else trustme.KeyType.ECDSA
            leaf = server_ca.issue_cert(domain, key_type=kind)
            out(cert["certificate"]).write_bytes(b"".join(p.bytes()
                                                          for p in leaf.cert_chain_pems))
            out(cert["private_key"]).write_bytes(leaf.private_key_pem.bytes())
            continue
        ca = trustme.CA()
        out(cert["certificate"]).write_bytes(ca.cert_pem.bytes())
        if cert.get("crl"):
            key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
            issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject
            now = dt.datetime.now(dt.timezone.utc)
            crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer)
                   .last_update(now).next_update(now + dt.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
            out(cert["crl"]).write_bytes(crl.public_bytes(serialization.Encoding.PEM))


EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_the_examples_asked_for_are_there():
    names = {p.stem for p in EXAMPLE_FILES}
    assert {"minimal", "sni-ecdsa-rsa", "mtls-crl", "http-to-https", "sticky", "kubernetes",
            "reference"} <= names


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_passes_lbcore_check(example, tmp_path):
    text = example.read_text()
    # Absolute certificate paths (the Kubernetes Secret's mount) move under tmp_path.
    text = text.replace("/etc/lbcore/certs/", f"{tmp_path}/secret/")
    (tmp_path / example.name).write_text(text)
    make_certificates(text, tmp_path)
    out = subprocess.run([sys.executable, "-m", "lbcore", "check", "-c",
                          str(tmp_path / example.name)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test is successful" in out.stdout
    assert "warning" not in out.stderr, out.stderr


def test_kubernetes_example_is_the_configmap():
    configmap = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())
    assert yaml.safe_load(configmap["data"]["lb.yaml"]) == \
        yaml.safe_load((EXAMPLES / "kubernetes.yaml").read_text())


def used_paths(data, prefix: str, known: set[str]) -> set[str]:
    """The model paths (reference.walk()'s notation) a YAML document sets."""
    out: set[str] = set()
    if not isinstance(data, dict):
        return out
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if path not in known:
            continue
        out.add(path)
        if isinstance(value, list):
            for item in value:
                out |= used_paths(item, path + "[]", known)
        elif isinstance(value, dict):
            if any(k.startswith(path + ".<name>.") for k in known):
                for item in value.values():
                    out |= used_paths(item, path + ".<name>", known)
            elif "type" in value and f"{path}({value['type']}).type" in known:
                out |= used_paths(value, f"{path}({value['type']})", known)
            else:
                out |= used_paths(value, path, known)
    return out


def test_reference_example_sets_every_key():
    known = {k.path for k in reference.walk()}
    used = used_paths(yaml.safe_load((EXAMPLES / "reference.yaml").read_text()), "", known)
    assert sorted(known - used) == []


def yaml_blocks() -> list[tuple[str, str]]:
    """(where, text) of each configuration in a ```yaml block of the docs."""
    out = []
    for doc in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)):
            if "listeners:" in block:
                out.append((f"{doc.relative_to(ROOT)}#{i}", block))
    return out


@pytest.mark.parametrize("where,text", yaml_blocks(), ids=[w for w, _ in yaml_blocks()])
def test_configurations_in_the_docs_pass_check(where, text, tmp_path):
    text = re.sub(r"/etc/[a-z]+/(certs|tls)/", f"{tmp_path}/secret/", text)
    (tmp_path / "lb.yaml").write_text(text)
    make_certificates(text, tmp_path)
    out = subprocess.run([sys.executable, "-m", "lbcore", "check", "-c",
                          str(tmp_path / "lb.yaml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
