"""Every bad input ends in one clear line and nothing half-written.

One case per bad input: `edgeq validate` and `edgeq run` both refuse it with exit status 2 and one
`edgeq: error:` line naming what was wrong and where, no traceback, and the run directory is never
created. The table of cases is in docs/reliability.md.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hostile import DELETE, Proj, assert_one_error, cli, onnx_model, png_bomb, proj  # noqa: F401

CASES: dict = {}


def case(*expect: str, args: tuple = ()):
    """Register a bad input: fn(proj) -> config path; `expect` fragments must be in the error line."""
    def deco(fn):
        CASES[fn.__name__] = (fn, expect, args)
        return fn
    return deco


# ------------------------------------------------------------------------------- the config file
@case("c.yaml", "not UTF-8", "save it as UTF-8")
def config_binary_garbage(p: Proj):
    return p.raw(bytes(range(256)) * 4)


@case("c.yaml", "not UTF-8", "0xe9")
def config_latin1(p: Proj):
    return p.raw("name: caf\xe9\n".encode("latin-1"))


@case("c.yaml", "not valid YAML")
def config_nul_byte(p: Proj):
    return p.raw("name: a\x00b\n")


@case("c.yaml", "line 3", "not valid YAML")
def config_yaml_syntax(p: Proj):
    return p.raw("name: x\nmodel: [unclosed\n")


@case("c.yaml", "aliases", "100,000")
def config_alias_bomb(p: Proj):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return p.raw("\n".join(lines) + "\n")


@case("c.yaml", "byte limit")
def config_oversized(p: Proj):
    return p.raw("# padding\n" * 200_000 + "name: x\n")


@case("c.yaml", "nested too deeply")
def config_deeply_nested(p: Proj):
    return p.raw("a: " + "[" * 5000 + "]" * 5000 + "\n")


@case("c.yaml", "expected a mapping")
def config_top_level_list(p: Proj):
    return p.raw("- name: x\n")


@case("c.yaml", "expected a mapping")
def config_empty(p: Proj):
    return p.raw("")


@case("nope.yaml", "not found")
def config_missing(p: Proj):
    return p.root / "nope.yaml"


@case("a_dir", "it is a directory")
def config_is_directory(p: Proj):
    (p.root / "a_dir").mkdir()
    return p.root / "a_dir"


@case("c.yaml", "unknown key 'benchmark.run'")
def config_unknown_key(p: Proj):
    return p.config({"benchmark": {"run": 5}})


@case("c.yaml", "missing key 'name'")
def config_missing_name(p: Proj):
    return p.config({"name": DELETE})


@case("c.yaml", "'data.calibration_size'", "valid integer", "'many'")
def config_wrong_type(p: Proj):
    return p.config({"data": {"calibration_size": "many"}})


@case("c.yaml", "'name'", "plain name", "--out")
def config_name_absolute_path(p: Proj):
    return p.config({"name": "/tmp/edgeq-escape"})


@case("c.yaml", "'name'", "plain name")
def config_name_dot_dot(p: Proj):
    return p.config({"name": "../../escape"})


@case("c.yaml", "'name'", "at most 200")
def config_name_too_long(p: Proj):
    return p.config({"name": "x" * 300})


@case("c.yaml", "model.input_shape.0", "greater than 0")
def input_shape_zero(p: Proj):
    return p.config({"model": {"input_shape": [0, 16, 3]}})


@case("c.yaml", "model.input_shape.1", "greater than 0")
def input_shape_negative(p: Proj):
    return p.config({"model": {"input_shape": [16, -16, 3]}})


@case("c.yaml", "preprocess.mean has 2 values", "3 channels", "give 1 value or 3")
def preprocess_mean_length(p: Proj):
    return p.config({"preprocess": {"mean": [127.5, 127.5]}})


@case("c.yaml", "preprocess.std has 4 values", "give 1 value or 3")
def preprocess_std_length(p: Proj):
    return p.config({"preprocess": {"std": [1, 2, 3, 4]}})


@case("c.yaml", "preprocess.std", "must not contain 0")
def preprocess_std_zero(p: Proj):
    return p.config({"preprocess": {"std": [0]}})


@case("c.yaml", "model.num_classes", "greater than 1")
def num_classes_one(p: Proj):
    return p.config({"model": {"num_classes": 1}})


@case("c.yaml", "stages.tflite_ptq.representative_images is 500", "data.calibration_size", "lower")
def representative_images_over_calibration(p: Proj):
    return p.config({"stages": {"tflite_ptq": {"representative_images": 500}}})


@case("c.yaml", "stages.onnx_ptq.calibration_images is 300", "data.calibration_size")
def onnx_calibration_images_over_calibration(p: Proj):
    return p.config({"stages": {"onnx_ptq": {"enabled": True}}})


@case("c.yaml", "'model.path'", "$EDGEQ_UNSET_DIR", "not set in the environment")
def path_with_unset_variable(p: Proj):
    os.environ.pop("EDGEQ_UNSET_DIR", None)
    return p.config({"model": {"path": "$EDGEQ_UNSET_DIR/tiny.keras"}})


@case("--stages", "'tflite_ptqq'", "choose from tflite_ptq", args=("--stages", "tflite_ptqq"))
def stages_typo(p: Proj):
    return p.config()


@case("--stages", "'none'", "choose from", args=("--stages", "none"))
def stages_none(p: Proj):
    return p.config()


@case("c.yaml", "'seed'", "greater than or equal to 0")
def config_negative_seed(p: Proj):
    return p.config({"seed": -1})


# ------------------------------------------------------------------------------------ the model
@case("missing.keras", "model file not found", "model.path")
def model_missing(p: Proj):
    return p.config({"model": {"path": str(p.root / "missing.keras")}})


@case("empty.keras", "not a valid .keras file", "re-save")
def model_empty_file(p: Proj):
    (p.root / "empty.keras").write_bytes(b"")
    return p.config({"model": {"path": str(p.root / "empty.keras")}})


@case("half.keras", "not a valid .keras file")
def model_truncated(p: Proj):
    data = p.model.read_bytes()
    (p.root / "half.keras").write_bytes(data[: len(data) // 2])
    return p.config({"model": {"path": str(p.root / "half.keras")}})


@case("image.keras", "not a valid .keras file")
def model_foreign_file(p: Proj):
    (p.root / "image.keras").write_bytes(next(p.images.rglob("*.png")).read_bytes())
    return p.config({"model": {"path": str(p.root / "image.keras")}})


@case("model.caffemodel", "cannot tell the model format", "model.format")
def model_unknown_suffix(p: Proj):
    (p.root / "model.caffemodel").write_bytes(b"x")
    return p.config({"model": {"path": str(p.root / "model.caffemodel")}})


@case("model.pt", "not a TorchScript file or torch.export program", "model.factory")
def model_pytorch_junk(p: Proj):
    (p.root / "model.pt").write_bytes(b"x")
    return p.config({"model": {"path": str(p.root / "model.pt")}})


@case("notsaved", "not a SavedModel directory")
def model_directory_not_savedmodel(p: Proj):
    (p.root / "notsaved").mkdir()
    return p.config({"model": {"path": str(p.root / "notsaved")}})


@case("tiny.keras", "not an ONNX model")
def model_keras_file_declared_onnx(p: Proj):
    return p.config({"model": {"format": "onnx"}, "stages": {"onnx_ptq": {"enabled": True, "calibration_images": 40}}})


@case("tiny.keras", "does not match config model.input_shape", "fix the config or the model")
def model_input_shape_mismatch(p: Proj):
    return p.config({"model": {"input_shape": [32, 32, 3]}})


@case("tiny.keras", "outputs 3 classes", "model.num_classes is 5")
def model_num_classes_mismatch(p: Proj):
    return p.config({"model": {"num_classes": 5}})


@case("lambda.h5", "Lambda layers", "trust_lambda_layers")
def model_h5_with_lambda(p: Proj):
    from edgeq.core.tfcompat import keras

    k = keras()
    inp = k.Input((16, 16, 3))
    x = k.layers.Lambda(lambda t: t * 2.0)(inp)
    out = k.layers.Dense(3, activation="softmax")(k.layers.GlobalAveragePooling2D()(x))
    k.Model(inp, out).save(p.root / "lambda.h5")
    return p.config({"model": {"path": str(p.root / "lambda.h5")}})


@case("bad.onnx", "not an ONNX model")
def onnx_truncated(p: Proj):
    data = onnx_model(p.root / "ok.onnx").read_bytes()
    (p.root / "bad.onnx").write_bytes(data[: len(data) // 2])
    return p.config({"model": {"path": str(p.root / "bad.onnx")}, "stages": {"onnx_ptq": {"enabled": True,
                                                                                         "calibration_images": 40}}})


@case("r3.onnx", "4-D image input")
def onnx_rank3_input(p: Proj):
    onnx_model(p.root / "r3.onnx", in_dims=(1, 16, 16))
    return p.config({"model": {"path": str(p.root / "r3.onnx")}, "stages": {"onnx_ptq": {"enabled": True,
                                                                                        "calibration_images": 40}}})


@case("dyn.onnx", "dynamic dims", "make_dynamic_shape_fixed")
def onnx_all_dynamic_dims(p: Proj):
    onnx_model(p.root / "dyn.onnx", in_dims=(None, None, None, None))
    return p.config({"model": {"path": str(p.root / "dyn.onnx")}, "stages": {"onnx_ptq": {"enabled": True,
                                                                                         "calibration_images": 40}}})


@case("five.onnx", "outputs 5 classes", "model.num_classes is 3")
def onnx_output_count_mismatch(p: Proj):
    onnx_model(p.root / "five.onnx", classes=5)
    return p.config({"model": {"path": str(p.root / "five.onnx")}, "stages": {"onnx_ptq": {"enabled": True,
                                                                                          "calibration_images": 40}}})


@case("two.onnx", "2 outputs", "single-output")
def onnx_two_outputs(p: Proj):
    onnx_model(p.root / "two.onnx", outputs=2)
    return p.config({"model": {"path": str(p.root / "two.onnx")}, "stages": {"onnx_ptq": {"enabled": True,
                                                                                         "calibration_images": 40}}})


@case("c.yaml", "line 2", "key 'path' inside 'model' is given twice", "keep one")
def config_duplicate_key(p: Proj):
    return p.raw(f"name: tiny\nmodel: {{path: {p.model}, path: other.keras, input_shape: [16, 16, 3], "
                 f"num_classes: 3}}\ndata: {{kind: image_folder, path: {p.images}, calibration_size: 40}}\n")


@case("c.yaml", "key 'name'", "at the top level is given twice", "first on line 1")
def config_duplicate_top_level_key(p: Proj):
    return p.raw(f"name: tiny\nname: other\nmodel: {{path: {p.model}, input_shape: [16, 16, 3], num_classes: 3}}\n"
                 f"data: {{kind: image_folder, path: {p.images}, calibration_size: 40}}\n")


def _onnx_external(p: Proj, location: str, write: bool = True) -> Path:
    """The tiny ONNX model with its Gemm weight stored outside the file, at `location` (relative to the model)."""
    import onnx

    m = onnx.load(str(onnx_model(p.root / "plain.onnx")))
    w = next(t for t in m.graph.initializer if t.name == "w")
    data = w.float_data or np.frombuffer(w.raw_data, np.float32)
    raw = np.asarray(data, np.float32).tobytes()
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        e = w.external_data.add()
        e.key, e.value = k, v
    (p.root / "m").mkdir(exist_ok=True)
    if write:
        target = (p.root / "m" / location)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
    with open(p.root / "m" / "ext.onnx", "wb") as f:
        f.write(m.SerializeToString())
    return p.config({"model": {"path": str(p.root / "m" / "ext.onnx")},
                     "stages": {"onnx_ptq": {"enabled": True, "calibration_images": 40}}})


@case("ext.onnx", "initializer 'w'", "'weights.bin', which is missing", "copy that file next to the .onnx")
def onnx_external_data_missing(p: Proj):
    return _onnx_external(p, "weights.bin", write=False)


@case("ext.onnx", "initializer 'w'", "outside the model's folder")
def onnx_external_data_outside_folder(p: Proj):
    return _onnx_external(p, "../outside.bin")


@case("custom.onnx", "node 'mystery'", "operator Frobnicate of domain 'com.example'", "standard ONNX operators")
def onnx_unknown_domain_op(p: Proj):
    import onnx
    from onnx import helper

    m = onnx.load(str(onnx_model(p.root / "plain.onnx")))
    g = m.graph
    first = g.node[0]
    g.node.insert(0, helper.make_node("Frobnicate", ["x"], ["x2"], name="mystery", domain="com.example"))
    first.input[0] = "x2"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(m, str(p.root / "custom.onnx"))
    return p.config({"model": {"path": str(p.root / "custom.onnx")},
                     "stages": {"onnx_ptq": {"enabled": True, "calibration_images": 40}}})


@case("model.factory 'nets_bad:build' returned a str", "not a torch.nn.Module")
def model_pytorch_factory_returns_wrong_thing(p: Proj):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(1)}, p.root / "weights.pth")
    (p.root / "nets_bad.py").write_text("def build():\n    return 'not a network'\n")
    return p.config({"model": {"path": str(p.root / "weights.pth"), "format": "pytorch", "factory": "nets_bad:build"}})


@case("c.yaml", "stages.nncf_ptq.routes", "name at least one route")
def nncf_no_routes(p: Proj):
    return p.config({"stages": {"nncf_ptq": {"enabled": True, "routes": []}}})


@case("stages.nncf_ptq.calibration_images is 500", "data.calibration_size")
def nncf_more_calibration_images_than_the_split(p: Proj):
    return p.config({"stages": {"nncf_ptq": {"enabled": True, "calibration_images": 500}}})


@case("c.yaml", "stages.mixed_precision.objective", "'size'")
def mixed_precision_unknown_objective(p: Proj):
    return p.config({"stages": {"mixed_precision": {"enabled": True, "objective": "latency"}}})


# ------------------------------------------------------------------------------------- the data
@case("no_such_dir", "not a directory", "root/<class>/<images>")
def data_missing(p: Proj):
    return p.config({"data": {"path": str(p.root / "no_such_dir")}})


@case("empty_dir", "no class sub-directories")
def data_empty_dir(p: Proj):
    (p.root / "empty_dir").mkdir()
    return p.config({"data": {"path": str(p.root / "empty_dir")}})


@case("notes.txt", "not an image file")
def data_non_image_file(p: Proj):
    d = p.folder("imgs")
    (d / "class_0" / "notes.txt").write_text("hello")
    return p.config({"data": {"path": str(d)}})


@case("broken.png", "cannot be read as an image", "replace or remove it")
def data_corrupt_png(p: Proj):
    d = p.folder("imgs")
    (d / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return p.config({"data": {"path": str(d)}})


@case("bomb.png", "too large to decode safely", "shrink or remove it")
def data_decompression_bomb(p: Proj):
    d = p.folder("imgs")
    png_bomb(d / "class_2" / "bomb.png")
    return p.config({"data": {"path": str(d)}})


@case("loop", "symlink loop", "remove it")
def data_symlink_loop(p: Proj):
    d = p.folder("imgs")
    os.symlink(d / "class_0", d / "class_0" / "loop")
    return p.config({"data": {"path": str(d)}})


@case("self.png", "symlink loop or broken symlink")
def data_self_symlink(p: Proj):
    d = p.folder("imgs")
    os.symlink(d / "class_0" / "self.png", d / "class_0" / "self.png")
    return p.config({"data": {"path": str(d)}})


@case("(calibration): 500 images asked for but only 120", "lower the size in the config or add images")
def data_too_few_for_calibration(p: Proj):
    return p.config({"data": {"calibration_size": 500},
                     "stages": {"tflite_ptq": {"representative_images": 10}}})


@case("no images left for evaluation", "data.calibration_size")
def data_nothing_left_for_eval(p: Proj):
    return p.config({"data": {"calibration_size": 119}})


@case("1 class folders", "model.num_classes", "data.classes")
def labels_one_folder_of_three_classes(p: Proj):
    d = p.folder("one", 30, classes=1)
    return p.config({"data": {"path": str(d), "calibration_size": 5},
                     "stages": {"tflite_ptq": {"representative_images": 5}}})


@case("class_2", "not in the class map", "data.classes")
def labels_folder_not_in_class_map(p: Proj):
    return p.config({"data": {"classes": ["class_0", "class_1", "dog"]}})


@case("data.classes lists 2 names", "model.num_classes is 3")
def labels_class_map_too_short(p: Proj):
    return p.config({"data": {"classes": ["class_0", "class_1"]}})


@case("data.classes names ['a']", "each class name once")
def labels_class_map_duplicate(p: Proj):
    return p.config({"data": {"classes": ["a", "a", "b"]}})


@case("nolabels.txt", "labels file not found", "data.labels_file")
def labels_file_missing(p: Proj):
    return p.config({"data": {"labels_file": str(p.root / "nolabels.txt")}})


@case("labels.txt", "lists 2 class names", "one per line")
def labels_file_wrong_count(p: Proj):
    (p.root / "labels.txt").write_text("class_0\nclass_1\n")
    return p.config({"data": {"labels_file": str(p.root / "labels.txt")}})


@case("data.classes or data.labels_file, not both")
def labels_map_given_twice(p: Proj):
    (p.root / "labels.txt").write_text("class_0\nclass_1\nclass_2\n")
    return p.config({"data": {"labels_file": str(p.root / "labels.txt"), "classes": ["class_0", "class_1", "class_2"]}})


@case("labels.txt", "cannot read the labels file as UTF-8")
def labels_file_not_utf8(p: Proj):
    (p.root / "labels.txt").write_bytes(b"class_0\nclass_\xff\nclass_2\n")
    return p.config({"data": {"labels_file": str(p.root / "labels.txt")}})


@case("label 978", "3 classes", "data.classes")
def labels_numeric_folders_beyond_model(p: Proj):
    d = p.folder("num")
    for src, dst in (("class_0", "021"), ("class_1", "978"), ("class_2", "002")):
        os.rename(d / src, d / dst)
    return p.config({"data": {"path": str(d)}})


@case("f.npz", "float32 and holds NaN", "uint8")
def npz_float_with_nan(p: Proj):
    x = np.random.default_rng(0).random((60, 16, 16, 3)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    return p.config({"data": {"kind": "npz", "path": str(p.npz("f.npz", images=x))}})


@case("neg.npz", "holds -1", "from 0 to num_classes - 1")
def npz_negative_labels(p: Proj):
    labels = np.arange(60) % 3
    labels[5] = -1
    return p.config({"data": {"kind": "npz", "path": str(p.npz("neg.npz", labels=labels))}})


@case("cut.npz", "not a readable .npz", "np.savez")
def npz_truncated(p: Proj):
    data = p.npz("full.npz").read_bytes()
    (p.root / "cut.npz").write_bytes(data[: len(data) // 2])
    return p.config({"data": {"kind": "npz", "path": str(p.root / "cut.npz")}})


@case("obj.npz", "not a readable .npz")
def npz_pickled_objects(p: Proj):
    np.savez(p.root / "obj.npz", images=np.array([{"a": 1}] * 3, dtype=object), labels=np.arange(3))
    return p.config({"data": {"kind": "npz", "path": str(p.root / "obj.npz")}})


@case("dir.npz", "not a readable .npz")
def npz_path_is_a_directory(p: Proj):
    (p.root / "dir.npz").mkdir()
    return p.config({"data": {"kind": "npz", "path": str(p.root / "dir.npz")}})


@case("nolab.npz", "missing array", "'labels'")
def npz_missing_labels(p: Proj):
    return p.config({"data": {"kind": "npz", "path": str(p.npz("nolab.npz", labels=DELETE))}})


@case("onehot.npz", "one-hot", "argmax")
def npz_one_hot_labels(p: Proj):
    return p.config({"data": {"kind": "npz", "path": str(p.npz("onehot.npz", labels=np.eye(3)[np.arange(60) % 3]))}})


@case("rgba.npz", "expected (N, H, W) or (N, H, W, 1|3)")
def npz_four_channels(p: Proj):
    x = np.zeros((60, 16, 16, 4), np.uint8)
    return p.config({"data": {"kind": "npz", "path": str(p.npz("rgba.npz", images=x))}})


@case("hold the same images", "must not overlap")
def data_calibration_equals_eval(p: Proj):
    return p.config({"data": {"path": DELETE, "calibration_path": str(p.images), "eval_path": str(p.images)}})


@case("stages.qat", "no training split", "data.train_path")
def qat_without_training_split(p: Proj):
    d = p.folder("ev", 30)
    return p.config({"data": {"path": DELETE, "calibration_path": str(p.images), "eval_path": str(d)},
                     "stages": {"tflite_ptq": {"enabled": False, "representative_images": 20},
                                "qat": {"enabled": True, "calibration_images": 20}}})


# ------------------------------------------------------------------------------ the run directory
@case("existing file", "give a directory path")
def out_is_a_file(p: Proj):
    p.out.write_text("not a directory")
    return p.config()


@case("is a file", "choose another --out")
def out_under_a_file(p: Proj):
    (p.root / "blocker").write_text("x")
    return p.config({"output": {"dir": str(p.root / "blocker" / "run")}}), []


@case("/sys/edgeq-run", "cannot write the run directory", "choose a writable --out")
def out_not_writable(p: Proj):
    return p.config({"output": {"dir": "/sys/edgeq-run"}}), []


@case("pipe.npz", "not a regular file")
def data_npz_is_a_named_pipe(p: Proj):
    os.mkfifo(p.root / "pipe.npz")  # np.load would block on it forever
    return p.config({"data": {"kind": "npz", "path": str(p.root / "pipe.npz")}})


def test_special_files_among_the_images_are_skipped_unopened_with_a_warning(proj, capsys):
    import socket

    d = proj.folder("imgs")
    os.mkfifo(d / "class_0" / "pipe.png")  # opening it for reading would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "class_1" / "sock.png"))
    try:
        code, out, err = cli(capsys, "validate", proj.config({"data": {"path": str(d)}}), "--out", proj.out)
    finally:
        sock.close()
    assert code == 0, err
    assert "pipe.png: a named pipe, not an image file; skipped" in err and "sock.png: a socket" in err
    assert "Traceback" not in err and not proj.out.exists()


# ------------------------------------------------------------------------------------- secrets
PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n"
BODY = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQyNTUxOQAAACB"


def _inventory(p: Proj, key_file: str) -> Path:
    import yaml

    inv = p.root / "devices.yaml"
    inv.write_text(yaml.safe_dump({"devices": [{"name": "pi", "kind": "rpi", "host": "192.0.2.1",
                                                "key_file": key_file}]}))
    return p.config({"inventory": str(inv), "targets": [{"device": "pi"}]})


@case("devices.yaml", "key_file holds what looks like a key itself (not shown)", "give its path")
def secret_inline_pem_key(p: Proj):
    return _inventory(p, PEM)


@case("devices.yaml", "not shown", "chmod 600")
def secret_key_body_without_header(p: Proj):
    return _inventory(p, BODY)


@case("devices.yaml", "not UTF-8")
def inventory_not_utf8(p: Proj):
    (p.root / "devices.yaml").write_bytes(b"devices:\n  - name: p\xefi\n")
    return p.config({"inventory": str(p.root / "devices.yaml"), "targets": [{"device": "pi"}]})


@case("no device named 'pi'")
def targets_unknown_device(p: Proj):
    import yaml

    inv = p.root / "devices.yaml"
    inv.write_text(yaml.safe_dump({"devices": [{"name": "orin", "kind": "jetson", "host": "192.0.2.2"}]}))
    return p.config({"inventory": str(inv), "targets": [{"device": "pi"}]})


@case("no `inventory:` file")
def targets_without_inventory(p: Proj):
    return p.config({"targets": [{"device": "pi"}]})


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(name, proj, capsys):
    fn, expect, args = CASES[name]
    cfg = fn(proj)
    cfg, out_args = cfg if isinstance(cfg, tuple) else (cfg, ["--out", proj.out])
    out_existed = proj.out.exists()
    for cmd in ("validate", "run"):
        code, _, err = cli(capsys, cmd, cfg, *out_args, *args)
        line = assert_one_error(code, err, *expect)
        assert "PRIVATE KEY" not in err and BODY[:20] not in err, line
        if not out_existed:
            assert not proj.out.exists(), f"{cmd}: {proj.out} created by a refused run"
    assert not Path("/tmp/edgeq-escape").exists()


# ------------------------------------------------------------------------------ sweep --backend ray
@pytest.mark.parametrize("args, expect, ray_missing", [
    (["--backend", "ray", "--address", "not an address"], ["'not an address'", "HOST:PORT"], False),
    (["--backend", "ray", "--address", "127.0.0.1:1"], ["no Ray head answers at 127.0.0.1:1", "ray start --head"],
     False),
    (["--address", "127.0.0.1:1"], ["--address names a Ray cluster", "--backend ray"], False),
    (["--backend", "ray"], ["Ray is not installed", "pip install 'edgeq[ray]'"], True),
])
def test_sweep_on_ray_refuses_a_bad_address_or_missing_ray_in_one_line(args, expect, ray_missing, proj, capsys,
                                                                      monkeypatch):
    import sys

    if ray_missing:
        monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    code, _, err = cli(capsys, "sweep", proj.config({}), "--out", proj.out, *args)
    assert_one_error(code, err, *expect)
    assert not proj.out.exists()
