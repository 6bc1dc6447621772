"""The PRODUCT.yaml validator: the 34 real submissions, and crafted broken variants.

The real submissions were merged upstream before cncf/k8s-ai-conformance ran
its validator in CI; 21 of them break a submission rule. Each failure below is
a finding about the file, not about the validator (recorded in docs/conformance.md).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.unit.conformance.support import DATA
from turbok.conformance import catalog
from turbok.conformance.errors import ProductFileError
from turbok.conformance.validator import snake_case, validate_file, validate_text

SUBMISSIONS = DATA / "submissions"

# file -> every error: (line, location, message start)
EXPECTED_FAILURES: dict[str, list[tuple[int, str, str]]] = {
    "v1.33/alauda": [
        (13, "metadata.productLogoUrl", "the logo is a PNG file: the program asks for SVG, AI or EPS"),
        (25, "spec.accelerators[dra_support].description", "differs from the checklist at character 1 ('Dynamic Resource"),
    ],
    "v1.33/chinaunicom-csk": [
        (12, "metadata.productLogoUrl", "the logo is a PNG file: the program asks for SVG, AI or EPS"),
    ],
    "v1.33/cks": [
        (7, "metadata.repo_url", "'https://github.com/yoyo.dyne/turbo-encabulator' is the example of the submission instructions"),
        (9, "metadata.product_logo_url", "'https://yoyo.dyne/assets/turbo-encabulator.svg' is the example of the submission instructions"),
    ],
    "v1.33/gardener": [
        (68, "spec.observability[accelerator_metrics].description", "differs from the checklist at character 339 ('' instead of '"),
    ],
    "v1.33/giantswarm": [
        (5, "metadata.contactEmailAddress", "missing required field contactEmailAddress (or contact_email_address)"),
        (79, "spec.security[secure_accelerator_access].evidence[0]", "evidence file secure_accelerator_access_tests.md not found"),
    ],
    "v1.33/jdcloud": [
        (5, "metadata.contactEmailAddress", "missing required field contactEmailAddress"),
        (19, "spec.accelerators[dra_support].description", "differs from the checklist at character 1 ('Dynamic Resource"),
        (21, "spec.accelerators[dra_support].status", "invalid status '': must be one of Implemented, Not Implemented"),
    ],
    "v1.33/jdos": [
        (69, "spec.observability[accelerator_metrics].description", "differs from the checklist at character 339 ('' instead of '"),
    ],
    "v1.33/openshift": [
        (5, "metadata.contactEmailAddress", "missing required field contactEmailAddress"),
        (18, "spec.accelerators[dra_support].description", "differs from the checklist at character 1 ('Dynamic Resource"),
    ],
    "v1.33/palette": [
        (5, "metadata.contactEmailAddress", "missing required field contactEmailAddress"),
        (26, "spec.networking[ai_inference].description", "differs from the checklist at character 115 ('incl. weighted"),
        (36, "spec.schedulingOrchestration[gang_scheduling].description", "differs from the checklist at character 1 ('Platform must al"),
        (44, "spec.schedulingOrchestration[cluster_autoscaling].description", "differs from the checklist at character 4 ('autoscaler is pr"),
        (53, "spec.schedulingOrchestration[pod_autoscaling].description", "differs from the checklist at character 1 ('HPA must functio"),
        (62, "spec.observability[accelerator_metrics].description", "differs from the checklist at character 1 ('Allow install/op"),
        (72, "spec.observability[ai_service_metrics].description", "differs from the checklist at character 51 ('/scraping Prome"),
        (82, "spec.security[secure_accelerator_access].description", "differs from the checklist at character 8 ('accelerator acce"),
        (91, "spec.operator[robust_controller].description", "differs from the checklist at character 1 ('Prove at least o"),
    ],
    "v1.33/talos": [
        (5, "metadata.contactEmailAddress", "missing required field contactEmailAddress"),
        (20, "spec.accelerators[dra_support].level", "is 'MUST'; the checklist says SHOULD"),
        (46, "spec.schedulingOrchestration[cluster_autoscaling].evidence", "must be a list of URLs or relative file paths, not a str"),
        (59, "spec.observability[accelerator_metrics].status", "is 'N/A' but the requirement is MUST: it must be 'Implemented'"),
        (60, "spec.observability[accelerator_metrics].evidence", "must be a list of URLs or relative file paths, not a str"),
        (65, "spec.observability[ai_service_metrics].status", "is 'N/A' but the requirement is MUST: it must be 'Implemented'"),
        (66, "spec.observability[ai_service_metrics].evidence", "must be a list of URLs or relative file paths, not a str"),
        (74, "spec.security[secure_accelerator_access].evidence[0]", "evidence file see secure_accelerator_access.md not found"),
    ],
    "v1.34/OKE": [(5, "metadata.contactEmailAddress", "missing required field contactEmailAddress")],
    "v1.34/Taichu": [
        (38, "spec.schedulingOrchestration[gang_scheduling].description", "differs from the checklist at character 207 ('' instead of '"),
        (63, "spec.observability[accelerator_metrics].description", "differs from the checklist at character 249 ('' instead of '"),
        (71, "spec.observability[ai_service_metrics].description", "differs from the checklist at character 164 ('' instead of '"),
    ],
    "v1.34/cce": [
        (12, "metadata.productLogoUrl", "the logo is a PNG file: the program asks for SVG, AI or EPS"),
    ],
    "v1.34/cks": [
        (7, "metadata.repo_url", "'https://github.com/yoyo.dyne/turbo-encabulator' is the example of the submission instructions"),
        (9, "metadata.product_logo_url", "'https://yoyo.dyne/assets/turbo-encabulator.svg' is the example of the submission instructions"),
    ],
    "v1.34/eks": [
        (5, "metadata.contactEmailAddress", "missing required field contactEmailAddress"),
        (13, "metadata.productLogoUrl", "the logo is a PNG file: the program asks for SVG, AI or EPS"),
    ],
    "v1.34/gke": [(5, "metadata.contactEmailAddress", "missing required field contactEmailAddress")],
    "v1.34/lke": [
        (12, "metadata.productLogoUrl", "the logo is a PNG file: the program asks for SVG, AI or EPS"),
    ],
    "v1.34/ovh": [
        (8, "metadata.platformVersion", "must be a string, not float"),
        (24, "spec.accelerators[dra_support].evidence[0]", "evidence file ./dra.yaml not found"),
    ],
    "v1.34/rke2": [(21, "spec.accelerators[dra_support].level", "is 'SHOULD'; the checklist says MUST")],
    "v1.34/talos": [
        (5, "metadata.contactEmailAddress", "missing required field contactEmailAddress"),
        (46, "spec.schedulingOrchestration[cluster_autoscaling].evidence", "must be a list of URLs or relative file paths, not a str"),
        (59, "spec.observability[accelerator_metrics].status", "is 'N/A' but the requirement is MUST: it must be 'Implemented'"),
        (60, "spec.observability[accelerator_metrics].evidence", "must be a list of URLs or relative file paths, not a str"),
        (65, "spec.observability[ai_service_metrics].status", "is 'N/A' but the requirement is MUST: it must be 'Implemented'"),
        (66, "spec.observability[ai_service_metrics].evidence", "must be a list of URLs or relative file paths, not a str"),
        (74, "spec.security[secure_accelerator_access].evidence[0]", "evidence file see secure_accelerator_access.md not found"),
    ],
    "v1.34/vks": [
        (12, "metadata.productLogoUrl", "the logo is a PNG file: the program asks for SVG, AI or EPS"),
    ],
}

ALL = sorted(str(p.parent.relative_to(SUBMISSIONS)) for p in SUBMISSIONS.glob("v*/*/PRODUCT.yaml"))


def test_there_are_34_real_submissions() -> None:
    assert len(ALL) == 34
    assert set(EXPECTED_FAILURES) <= set(ALL) and len(EXPECTED_FAILURES) == 21


@pytest.mark.parametrize("name", ALL)
def test_real_submission(name: str) -> None:
    result = validate_file(SUBMISSIONS / name / "PRODUCT.yaml")
    assert result.version == name[1:5]
    got = sorted((f.line, f.location, f.message) for f in result.errors)
    expected = sorted(EXPECTED_FAILURES.get(name, []))
    assert [(line, loc) for line, loc, _ in got] == [(line, loc) for line, loc, _ in expected], got
    for (_, _, message), (_, _, start) in zip(got, expected, strict=True):
        assert message.startswith(start), message
    assert result.ok == (name not in EXPECTED_FAILURES)


def test_fragments_on_relative_evidence_resolve_to_the_file() -> None:
    # ovh links sections of its evidence files: ./schedulingOrchestration.md#gang_scheduling
    result = validate_file(SUBMISSIONS / "v1.34/ovh/PRODUCT.yaml")
    assert not [f for f in result.errors if "schedulingOrchestration.md" in f.message]


def test_conditional_must_na_is_a_warning() -> None:
    result = validate_file(SUBMISSIONS / "v1.33/daocloud/PRODUCT.yaml")
    assert result.ok
    (warning,) = [f for f in result.warnings if f.location.endswith("[cluster_autoscaling].status")]
    assert "conditional MUST" in warning.message and warning.line == 48


def test_snake_case() -> None:
    assert snake_case("contactEmailAddress") == "contact_email_address"
    assert snake_case("k8sConformanceUrl") == "k8s_conformance_url"
    assert snake_case("websiteUrl") == "website_url"


# -- crafted variants -------------------------------------------------------------------------


def _valid(version: str = "1.35") -> dict[str, Any]:
    cl = catalog.checklist(version)
    meta = {
        "kubernetesVersion": f"v{version}", "platformName": "Acme Kube", "platformVersion": "v1.7.4",
        "vendorName": "Acme", "websiteUrl": "https://acme.example/kube", "repoUrl": "https://github.com/acme/kube",
        "documentationUrl": "https://acme.example/kube/docs", "productLogoUrl": "https://acme.example/kube.svg",
        "description": "A superb distribution.", "contactEmailAddress": "kube@acme.example",
    }
    if catalog.version_key(version) >= (1, 35):
        meta["k8sConformanceUrl"] = f"https://github.com/cncf/k8s-conformance/tree/master/v{version}/te"
    spec: dict[str, list[dict[str, Any]]] = {}
    for r in cl.requirements:
        spec.setdefault(r.category, []).append(
            {"id": r.id, "description": r.description, "level": r.level, "status": "Implemented",
             "evidence": [f"evidence/{r.id}.md"], "notes": "checked"})
    return {"metadata": meta, "spec": spec}


def _write(tmp_path: Path, doc: dict[str, Any] | str, *, evidence: bool = True) -> Path:
    path = tmp_path / "PRODUCT.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False, width=1000))
    if evidence:
        (tmp_path / "evidence").mkdir(exist_ok=True)
        for r in catalog.checklist("1.37").requirements + catalog.checklist("1.34").requirements:
            (tmp_path / "evidence" / f"{r.id}.md").write_text("evidence\n")
    return path


def _item(doc: dict[str, Any], rid: str) -> dict[str, Any]:
    return next(i for items in doc["spec"].values() for i in items if i["id"] == rid)


def _errors(path: Path, **kw: Any) -> list[tuple[str, str]]:
    return [(f.location, f.message) for f in validate_file(path, **kw).errors]


@pytest.mark.parametrize("version", ["1.33", "1.34", "1.35", "1.36", "1.37"])
def test_crafted_valid_document(tmp_path: Path, version: str) -> None:
    result = validate_file(_write(tmp_path, _valid(version)))
    assert result.ok and result.findings == [] and result.version == version


def test_snake_case_metadata_aliases(tmp_path: Path) -> None:
    doc = _valid()
    meta = doc["metadata"]
    doc["metadata"] = {snake_case(k): v for k, v in meta.items()}
    assert validate_file(_write(tmp_path, doc)).ok


def test_both_spellings_warn(tmp_path: Path) -> None:
    doc = _valid()
    doc["metadata"]["website_url"] = "https://other"
    result = validate_file(_write(tmp_path, doc))
    assert result.ok and any("both websiteUrl and website_url" in f.message for f in result.warnings)


BROKEN: list[tuple[str, Any, str, str]] = [
    ("missing platformName", lambda d: d["metadata"].pop("platformName"), "metadata.platformName",
     "missing required field platformName (or platform_name)"),
    ("empty vendorName", lambda d: d["metadata"].update(vendorName=""), "metadata.vendorName", "is empty"),
    ("placeholder", lambda d: d["metadata"].update(vendorName="[Vendor Name]"), "metadata.vendorName",
     "still has the placeholder value [Vendor Name]"),
    ("number as version", lambda d: d["metadata"].update(platformVersion=1.0), "metadata.platformVersion", "must be a string, not float"),
    ("no k8sConformanceUrl from 1.35", lambda d: d["metadata"].pop("k8sConformanceUrl"), "metadata.k8sConformanceUrl",
     "missing required field k8sConformanceUrl (or k8s_conformance_url)"),
    ("bad k8sConformanceUrl", lambda d: d["metadata"].update(k8sConformanceUrl="https://github.com/cncf/k8s-conformance/pull/3"),
     "metadata.k8sConformanceUrl", "invalid URL https://github.com/cncf/k8s-conformance/pull/3"),
    ("description changed", lambda d: _item(d, "gang_scheduling").update(description="Gang scheduling works."),
     "spec.schedulingOrchestration[gang_scheduling].description", "differs from the checklist at character 1 ('Gang scheduling"),
    ("level changed", lambda d: _item(d, "ai_inference").update(level="SHOULD"), "spec.networking[ai_inference].level",
     "is 'SHOULD'; the checklist says MUST"),
    ("status invented", lambda d: _item(d, "gpu_sharing").update(status="Done"), "spec.accelerators[gpu_sharing].status",
     "invalid status 'Done': must be one of Implemented, Not Implemented, Partially Implemented, N/A"),
    ("MUST partially", lambda d: _item(d, "robust_controller").update(status="Partially Implemented"),
     "spec.operator[robust_controller].status", "is 'Partially Implemented' but the requirement is MUST"),
    ("MUST N/A unconditional", lambda d: _item(d, "accelerator_metrics").update(status="N/A", notes="no GPUs"),
     "spec.observability[accelerator_metrics].status", "is 'N/A' but the requirement is MUST"),
    ("N/A without notes", lambda d: _item(d, "virtualized_accelerator").update(status="N/A", notes=""),
     "spec.accelerators[virtualized_accelerator].notes", "notes are required to justify N/A"),
    ("evidence file missing", lambda d: _item(d, "dra_support").update(evidence=["evidence/nope.md"]),
     "spec.accelerators[dra_support].evidence[0]", "evidence file evidence/nope.md not found"),
    ("evidence not a list", lambda d: _item(d, "dra_support").update(evidence="evidence/dra_support.md"),
     "spec.accelerators[dra_support].evidence", "must be a list of URLs or relative file paths, not a str"),
    ("absolute evidence", lambda d: _item(d, "dra_support").update(evidence=["/etc/passwd"]),
     "spec.accelerators[dra_support].evidence[0]", "/etc/passwd is an absolute path"),
    ("requirement renamed", lambda d: _item(d, "dra_support").update(id="dra"), "spec.accelerators[dra]",
     "requirement is not in the v1.35 checklist"),
    ("requirement dropped", lambda d: d["spec"]["accelerators"].pop(0), "spec.accelerators[dra_support]", "missing requirement"),
    ("category dropped", lambda d: d["spec"].pop("operator"), "spec.operator", "missing category"),
    ("category invented", lambda d: d["spec"].update(storage=[]), "spec.storage", "category is not in the v1.35 checklist"),
    ("requirement twice", lambda d: d["spec"]["operator"].append(copy.deepcopy(d["spec"]["operator"][0])),
     "spec.operator[robust_controller]", "requirement listed twice"),
    ("wrong category", lambda d: d["spec"]["security"].append(d["spec"]["operator"].pop(0)), "spec.security[robust_controller]",
     "belongs in category operator"),
    ("unknown version", lambda d: d["metadata"].update(kubernetesVersion="v1.30"), "metadata.kubernetesVersion",
     "no AI Conformance checklist for Kubernetes 1.30"),
    ("no spec", lambda d: d.pop("spec"), "spec", "missing 'spec' section"),
    ("no metadata", lambda d: d.pop("metadata"), "metadata", "missing 'metadata' section"),
]


@pytest.mark.parametrize(("name", "mutate", "location", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_variant(tmp_path: Path, name: str, mutate: Any, location: str, message: str) -> None:
    doc = _valid()
    mutate(doc)
    errors = _errors(_write(tmp_path, doc))
    assert any(loc == location and msg.startswith(message) for loc, msg in errors), errors


def test_messages_carry_the_line(tmp_path: Path) -> None:
    doc = _valid()
    _item(doc, "gang_scheduling")["status"] = "Done"
    path = _write(tmp_path, doc)
    (finding,) = validate_file(path).errors
    lines = path.read_text().splitlines()
    assert lines[finding.line - 1].strip() == "status: Done"  # type: ignore[operator]
    assert finding.format("PRODUCT.yaml").startswith(f"PRODUCT.yaml:{finding.line}: error: spec.schedulingOrchestration[gang_scheduling].status:")


def test_k8s_conformance_url_not_required_before_1_35(tmp_path: Path) -> None:
    doc = _valid("1.34")
    assert "k8sConformanceUrl" not in doc["metadata"]
    assert validate_file(_write(tmp_path, doc)).ok
    doc["metadata"]["k8sConformanceUrl"] = "https://example.com/x"
    assert _errors(_write(tmp_path, doc)) == [("metadata.k8sConformanceUrl",
                                               "invalid URL https://example.com/x: expected https://github.com/cncf/k8s-conformance/tree/master/vX.Y/PRODUCT")]


def test_should_left_blank_is_fine(tmp_path: Path) -> None:
    doc = _valid()
    _item(doc, "gpu_sharing").update(status="", evidence=[], notes="")
    assert validate_file(_write(tmp_path, doc)).ok


def test_must_without_evidence_warns(tmp_path: Path) -> None:
    doc = _valid()
    _item(doc, "gang_scheduling")["evidence"] = []
    result = validate_file(_write(tmp_path, doc))
    assert result.ok and [f.location for f in result.warnings] == ["spec.schedulingOrchestration[gang_scheduling].evidence"]


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    path = _write(tmp_path, "metadata:\n  platformName: x\n  bad: [unclosed\nspec: {}\n")
    (finding,) = validate_file(path).errors
    assert finding.message.startswith("not valid YAML") and finding.line == 4


def test_not_a_mapping(tmp_path: Path) -> None:
    (finding,) = validate_file(_write(tmp_path, "- just\n- a list\n")).errors
    assert "must be a YAML mapping" in finding.message


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ProductFileError, match="cannot read"):
        validate_file(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ProductFileError, match="not UTF-8"):
        validate_file(tmp_path / "bin.yaml")


def test_directory_version_must_agree(tmp_path: Path) -> None:
    folder = tmp_path / "v1.34" / "te"
    folder.mkdir(parents=True)
    path = _write(folder, _valid("1.35"))
    assert ("metadata.kubernetesVersion", "says 1.35 but the file lives under v1.34/") in _errors(path)


def test_v1_37_submissions_are_accepted(tmp_path: Path) -> None:
    result = validate_file(_write(tmp_path, _valid("1.37")))
    assert result.ok and result.version == "1.37" and not any("draft" in f.message for f in result.warnings)
    doc = _valid("1.37")
    del doc["spec"]["security"][1]  # workload_sandboxing is part of the frozen 1.37 checklist
    assert ("spec.security[workload_sandboxing]", "missing requirement") in _errors(_write(tmp_path, doc))


def test_draft_version_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    draft = {"version": "v1.38", "basedOn": "v1.37", "category": "security", "id": "future_thing",
             "description": "Something accepted for 1.38.", "level": "SHOULD", "source": "https://example.com/kar"}
    monkeypatch.setattr(catalog, "_drafts_file", lambda: [draft])
    path = _write(tmp_path, _valid("1.38"))
    (tmp_path / "evidence" / "future_thing.md").write_text("evidence\n")
    result = validate_file(path)
    assert result.ok and any("draft" in f.message for f in result.warnings)


def test_example_values_of_the_instructions_are_errors(tmp_path: Path) -> None:
    doc = _valid()
    doc["metadata"]["repoUrl"] = "https://github.com/yoyo.dyne/turbo-encabulator"
    doc["metadata"]["productLogoUrl"] = "https://yoyo.dyne/assets/turbo-encabulator.svg"
    errors = _errors(_write(tmp_path, doc))
    assert ("metadata.repoUrl", "'https://github.com/yoyo.dyne/turbo-encabulator' is the example of the submission "
            "instructions (Yoyodyne's Turbo Encabulator), not your product's") in errors
    assert any(loc == "metadata.productLogoUrl" and "example" in msg for loc, msg in errors)


@pytest.mark.parametrize(("url", "outcome"), [
    ("https://acme.example/logo.svg", None),
    ("https://acme.example/logo.EPS?v=2", None),
    ("https://acme.example/brand/logo.ai#x", None),
    ("https://acme.example/logo.png", "error"),
    ("https://acme.example/logo.jpeg", "error"),
    ("https://acme.example/logo", "warning"),
])
def test_logo_must_be_svg_ai_or_eps(tmp_path: Path, url: str, outcome: str | None) -> None:
    doc = _valid()
    doc["metadata"]["productLogoUrl"] = url
    result = validate_file(_write(tmp_path, doc))
    found = [f.severity for f in result.findings if f.location == "metadata.productLogoUrl"]
    assert found == ([outcome] if outcome else [])


def test_implemented_with_not_applicable_notes_contradicts_itself(tmp_path: Path) -> None:
    doc = _valid()
    item = doc["spec"]["accelerators"][1]
    assert item["status"] == "Implemented"
    item["notes"] = "Not applicable: the platform has no GPUs."
    assert (f"spec.accelerators[{item['id']}].notes", "status is 'Implemented' but the notes say it does not apply "
            "('Not applicable: the platform has no GPUs.'): use 'N/A' with these notes, or correct them") in _errors(
        _write(tmp_path, doc))
    item["notes"] = "N/A"
    assert any("does not apply" in m for _, m in _errors(_write(tmp_path, doc)))
    item["notes"] = "MIG on A100; time-slicing is n/a on L4 nodes."
    result = validate_file(_write(tmp_path, doc))
    assert result.ok and any("really is implemented" in f.message for f in result.warnings)


def test_duplicate_keys_warn(tmp_path: Path) -> None:
    text = yaml.safe_dump(_valid(), sort_keys=False, width=1000).replace("  vendorName: Acme\n", "  vendorName: Acme\n  vendorName: Acme Corp\n")
    result = validate_file(_write(tmp_path, text))
    assert any(f.location == "metadata.vendorName" and "twice" in f.message for f in result.warnings)


def test_validate_text_without_file() -> None:
    result = validate_text(yaml.safe_dump(_valid("1.34")), source="inline", base_dir=Path("/nonexistent"))
    assert {f.message.split(" (")[0] for f in result.errors} == {f"evidence file evidence/{r.id}.md not found" for r in catalog.checklist("1.34").requirements}


# -- evidence URLs --------------------------------------------------------------------------


@pytest.fixture
def web_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server: /ok answers 200, anything else 404; records paths."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.Response(text="ok") if request.path.startswith("/ok") else web.Response(status=404)

    import asyncio

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", seen
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def _loopback_metadata(doc: dict[str, Any], url: str) -> dict[str, Any]:
    for key in ("websiteUrl", "repoUrl", "documentationUrl", "productLogoUrl"):
        doc["metadata"][key] = f"{url}/ok/{key}"
    return doc


def test_urls_checked_only_when_asked(tmp_path: Path, web_server: tuple[str, list[str]]) -> None:
    url, seen = web_server
    doc = _loopback_metadata(_valid("1.34"), url)  # 1.34: no k8sConformanceUrl, so nothing leaves loopback
    _item(doc, "ai_inference")["evidence"] = [f"{url}/ok/gateway"]
    _item(doc, "gang_scheduling")["evidence"] = [f"{url}/gone"]
    path = _write(tmp_path, doc)
    assert validate_file(path).ok and seen == []
    errors = _errors(path, check_urls=True)
    assert errors == [("spec.schedulingOrchestration[gang_scheduling].evidence[0]", f"{url}/gone is not reachable (status code 404)")]
    assert "HEAD /ok/gateway" in seen and "GET /gone" in seen and "HEAD /ok/websiteUrl" in seen


def test_unreachable_url(tmp_path: Path, web_server: tuple[str, list[str]]) -> None:
    doc = _loopback_metadata(_valid("1.34"), web_server[0])
    _item(doc, "ai_inference")["evidence"] = ["http://127.0.0.1:9/nothing-listens-here"]
    ((loc, msg),) = _errors(_write(tmp_path, doc), check_urls=True)
    assert loc == "spec.networking[ai_inference].evidence[0]" and "is not reachable" in msg
