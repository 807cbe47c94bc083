"""Stage sections are rendered at report time from the data the stages stored, by the builders their registry
rows name: a section shows checks that ran after its stage (TensorRT on the INT8 ONNX), and stored data is
never overwritten by text."""
from __future__ import annotations

from edgeq.core.artifacts import Artifact
from edgeq.methods.onnx.ort_int8 import TENSORRT_SCHEME
from edgeq.report.sections import render_sections
from edgeq.stages import registry

ONNX_SECTION = {"input": {"source": "m.onnx", "input": "x", "dims": [1, 3, 8, 8], "layout": "NCHW", "exporter": None},
                "host_scheme": {**TENSORRT_SCHEME.to_dict(), "chosen_by": {}}, "tensorrt_scheme": None, "cpu": {}}


def _artifact(name: str, stage: str, **notes) -> Artifact:
    return Artifact(name=name, path=f"artifacts/{name}.onnx", format="onnx", precision="int8", method="ptq",
                    stage=stage, notes=notes)


def test_onnx_section_shows_the_tensorrt_checks_that_ran_after_its_stage():
    arts = [_artifact("int8_onnx_ptq", "onnx_ptq"), _artifact("int8_onnx_trt", "onnx_ptq")]
    compatibility = {"int8_onnx_trt": {"tensorrt": {"ok": False, "problems": ["Conv_3: weights not int8"]}}}
    out = render_sections({"onnx_ptq": ONNX_SECTION}, registry.STAGES, arts, compatibility)
    md = out["onnx_ptq"]["markdown"]
    assert md.startswith("## ONNX Runtime PTQ") and "input model: m.onnx" in md
    assert "| int8_onnx_trt | fail | 1: Conv_3: weights not int8 |" in md
    assert "markdown" not in ONNX_SECTION  # the stored data is left as the stage wrote it


def test_sections_without_a_builder_pass_through_and_old_text_is_kept():
    old = {"rows": [], "markdown": "## written by an older edgeq"}
    out = render_sections({"devices": {"pi": {}}, "skipped": {"qat": "why"}, "comparison": old}, registry.STAGES, [], {})
    assert out["devices"] == {"pi": {}} and out["skipped"] == {"qat": "why"} and out["comparison"] == old


def test_every_section_key_has_one_builder():
    keys = [k for row in registry.STAGES for k in row.sections]
    assert len(keys) == len(set(keys))
