"""The bundle against the MONAI Bundle specification and ``monai.bundle``'s workflow properties:
metadata keys and values, every config reference/target/expression, every inference and
evaluation id resolved, ``verify_net_in_out`` with the declared shapes, ``ConfigWorkflow``
property checks (inference, and training once ``configs/train.json`` exists)."""

from __future__ import annotations

import ast
import configparser
import copy
import importlib.metadata
import json
import pydoc
from pathlib import Path

import jsonschema
import monai
import numpy as np
import pytest
import torch
from monai.bundle import ComponentLocator, ConfigComponent, ConfigExpression, ConfigParser, ConfigWorkflow
from monai.bundle.reference_resolver import ReferenceResolver
from monai.engines import SupervisedEvaluator
from monai.inferers import SliceInferer
from monai.transforms import Compose, SaveImaged
from packaging.version import Version

from infnet_monai.labels import LabelSidecard
from infnet_monai.metrics.evaluate import FolderEvaluation
from infnet_monai.metrics.volume import EMPTY_MASK_POLICY
from infnet_monai.networks import InfNet
from infnet_monai.shipped import network_size
from infnet_monai.transforms.chain import (
    DEFAULT_WINDOW_HU,
    IMAGENET_MEAN,
    IMAGENET_STD,
    network_input_batch,
)

from tests.bundle_helpers import (
    CONFIGS_DIR,
    EVALUATE_FILE,
    INFERENCE_FILE,
    META_FILE,
    README_FILE,
    TRAIN_FILE,
    readme_commands,
    run_bundle_cli,
    shared_random_weights,
    write_semiseg_slices,
)
from tests.conftest import BUNDLE_DIR, REPO_ROOT
from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti

# --------------------------------------------------------------------------------------------
# The MONAI Bundle specification's metadata requirements, encoded as a JSON schema (the published
# schema file cannot be downloaded here). Required: the specification's mandatory keys (its
# ``optional_packages_version`` became ``required_packages_version``) and the descriptive keys
# the model zoo expects; every tensor format specifier needs the nine specifier keys.
# --------------------------------------------------------------------------------------------
TENSOR_KEYS = (
    "type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
    "channel_def",
)
TENSOR_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "format": {"type": "string"},
        "modality": {"type": "string"},
        "num_channels": {"type": "integer", "minimum": 1},
        "spatial_shape": {"type": "array", "minItems": 1, "items": {"type": ["integer", "string"]}},
        "dtype": {"type": "string"},
        "value_range": {"type": "array", "maxItems": 2, "items": {"type": "number"}},
        "is_patch_data": {"type": "boolean"},
        "channel_def": {"type": "object", "minProperties": 1},
    },
    "required": list(TENSOR_KEYS),
}
TENSOR_GROUP = {"type": "object", "minProperties": 1, "additionalProperties": TENSOR_SCHEMA}
TOP_LEVEL_KEYS = (
    "schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
    "required_packages_version", "task", "description", "authors", "copyright", "intended_use", "data_source",
    "data_type", "image_classes", "label_classes", "pred_classes", "eval_metrics", "references",
    "network_data_format",
)
SPEC_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2019-09/schema",
    "type": "object",
    "properties": {
        **{key: {"type": "string"} for key in TOP_LEVEL_KEYS},
        "changelog": {"type": "object", "minProperties": 1},
        "required_packages_version": {"type": "object", "additionalProperties": {"type": "string"}},
        "eval_metrics": {"type": "object"},
        "supported_apps": {"type": "object"},
        "references": {"type": "array", "items": {"type": "string"}},
        "network_data_format": {
            "type": "object",
            "properties": {"inputs": TENSOR_GROUP, "outputs": TENSOR_GROUP, "post_processed_outputs": TENSOR_GROUP},
            "required": ["inputs", "outputs"],
        },
    },
    "required": list(TOP_LEVEL_KEYS),
}


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads(META_FILE.read_text())


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory) -> Path:
    """A folder with one small CT phantom (HU), as ``dataset_dir``."""
    folder = tmp_path_factory.mktemp("ct")
    spacing = (6.0, 6.0, 10.0)
    save_nifti(folder / "phantom.nii.gz", chest_phantom((48, 48, 3), spacing), affine_for(spacing))
    return folder


def test_metadata_satisfies_the_specification_schema(meta, tmp_path):
    jsonschema.Draft201909Validator(SPEC_SCHEMA).validate(meta)
    # MONAI's own verifier, with the encoded schema in place of the download
    schema_file = tmp_path / "meta_schema.json"
    schema_file.write_text(json.dumps(SPEC_SCHEMA))
    run_bundle_cli(["verify_metadata", "--meta_file", str(META_FILE), "--filepath", str(schema_file)])


def test_encoded_schema_rejects_each_missing_key(meta):
    validator = jsonschema.Draft201909Validator(SPEC_SCHEMA)
    for key in TOP_LEVEL_KEYS:
        broken = {k: v for k, v in meta.items() if k != key}
        assert not validator.is_valid(broken), key
    for group in ("inputs", "outputs", "post_processed_outputs"):
        for key in TENSOR_KEYS:
            broken = copy.deepcopy(meta)
            del broken["network_data_format"][group]["pred" if group != "inputs" else "image"][key]
            assert not validator.is_valid(broken), (group, key)


def test_metadata_versions(meta):
    assert meta["version"] in meta["changelog"]
    assert max(meta["changelog"], key=Version) == meta["version"]
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    assert meta["required_packages_version"]["infnet_monai"] == setup["metadata"]["version"]
    # the environment meets the declared (minimum) versions
    installed = {"monai_version": monai.__version__, "pytorch_version": torch.__version__, "numpy_version": np.__version__}
    for key, version in installed.items():
        assert Version(version.split("+")[0]) >= Version(meta[key]), key
    for package, version in meta["required_packages_version"].items():
        if package != "infnet_monai":
            assert Version(importlib.metadata.version(package)) >= Version(version), package
    # MONAI 1.6 reads "optional_packages_version" as a deprecated name and moves it onto
    # "required_packages_version", replacing that: it must not be present
    assert "optional_packages_version" not in meta
    parser = ConfigParser()
    parser.read_meta(str(META_FILE))
    assert parser["_meta_::required_packages_version"] == meta["required_packages_version"]


def test_network_data_format_values(meta):
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 3 and image["spatial_shape"] == [network_size(), network_size()]
    assert image["dtype"] == "float32" and image["modality"] == "CT" and not image["is_patch_data"]
    # value range: a [0, 1] window normalised per channel with the ImageNet mean/std
    low = min((0.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    high = max((1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    declared_low, declared_high = image["value_range"]
    assert declared_low <= low < declared_low + 0.005 and declared_high - 0.005 < high <= declared_high
    assert f"[{DEFAULT_WINDOW_HU[0]:g}, {DEFAULT_WINDOW_HU[1]:g}]" in image["channel_def"]["0"]
    for i, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        assert f"(x - {m}) / {s}" in image["channel_def"][str(i)]
    config = json.loads(INFERENCE_FILE.read_text())
    assert config["window"] == list(DEFAULT_WINDOW_HU)
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == config["network_def"]["out_channels"] == 1
    # MONAI Label takes the label values from this channel_def: 1 must name the infection
    assert pred["channel_def"] == {"0": "background", "1": "infection"}
    final = meta["network_data_format"]["post_processed_outputs"]["pred"]
    assert final["dtype"] == "uint8" and final["value_range"] == [0, 1] and final["channel_def"] == pred["channel_def"]
    published = meta["published_eval_metrics"]
    assert published["reproduced_with_this_bundle"] is False  # the paper's test set is not here
    assert set(meta["eval_metrics"]) == {"held_out_doctor_label_slices", "held_out_multiclass_slices"}
    multiclass = meta["eval_metrics"]["held_out_multiclass_slices"]
    assert set(multiclass) == {"source", "ground_glass_opacity", "consolidation"}
    assert all(0 < multiclass[c]["dice"] < 1 for c in ("ground_glass_opacity", "consolidation"))


def test_verify_net_in_out_with_the_declared_shapes(monkeypatch):
    """The README's command (from the bundle folder): (1, 3, 352, 352) float32 in, 1 channel
    float32 out, or it raises."""
    (args,) = readme_commands("verify_net_in_out")
    args += ["--device", "cpu"]
    monkeypatch.chdir(BUNDLE_DIR)
    run_bundle_cli(args)
    # the check bites: a wrong declared output channel count is reported (small input for speed)
    wrong = ["--_meta_::network_data_format::inputs::image::spatial_shape", "[64, 64]",
             "--_meta_::network_data_format::outputs::pred::num_channels", "2"]
    with pytest.raises(ValueError, match="output channel number `1` doesn't match: `2`"):
        run_bundle_cli(args + wrong)


def test_readme_run_commands_name_existing_configs_and_ids():
    """Every ``--option`` of the README's ``monai.bundle run`` commands is a ``run`` argument or
    an id of the configs it names (commands naming configs not in this checkout are left out)."""
    run_arguments = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}
    checked = set()
    for argv in readme_commands("run"):
        options = dict(zip(argv[1::2], argv[2::2]))
        files = options["--config_file"]
        files = ast.literal_eval(files) if files.startswith("[") else [files]
        paths = [BUNDLE_DIR / f for f in files]
        if not all(p.exists() for p in paths):
            continue
        parser = _parser(*paths)
        for option in options:
            assert option.startswith("--"), argv
            key = option[2:]
            assert key in run_arguments or key in parser, f"{files}: --{key} is not an id"
        checked.update(files)
    assert {"configs/inference.json", "configs/evaluate.json"} <= checked


def test_readme_states_the_policy_and_the_published_figures(meta):
    text = README_FILE.read_text()
    assert EMPTY_MASK_POLICY in text  # verbatim, as written into every evaluation report
    published = meta["published_eval_metrics"]
    columns = ("dice", "sensitivity", "specificity", "s_alpha", "e_phi_mean", "mae")
    for network in ("Inf-Net", "Semi-Inf-Net"):
        (row,) = [line for line in text.splitlines() if line.startswith(f"| {network} |")]
        figures = [float(cell) for cell in row.strip("|").split("|")[1:]]
        assert figures == [published[network][c] for c in columns]
    assert "has **not reproduced the table above on its test set**" in text
    # the model card's row of the shipped model is what metadata.json records
    ours = meta["eval_metrics"]["held_out_doctor_label_slices"]
    (row,) = [line for line in text.splitlines() if line.strip().startswith("| **shipped**")]
    figures = [float(cell) for cell in row.strip().strip("|").split("|")[1:]]
    assert figures == [ours[c] for c in (*columns, "dice_at_0.5")]


# --------------------------------------------------------------------------------------------
# Every config: references, component targets and expressions (no data needed)
# --------------------------------------------------------------------------------------------
EXECUTABLE_IDS = ("initialize", "run", "finalize")
CONFIG_NAMES = sorted(p.name for p in CONFIGS_DIR.glob("*.json") if p.name != META_FILE.name)


def _parser(*files: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.read_meta(str(META_FILE))
    parser.update(overrides)
    return parser


def _walk(config, prefix: str = ""):
    """(id, value) of every nested item."""
    yield prefix, config
    if isinstance(config, (dict, list)):
        for _, sub_id, value in ReferenceResolver.iter_subconfigs(prefix, config):
            yield from _walk(value, sub_id)


def _config_problems(parser: ConfigParser) -> list[str]:
    problems = []
    locator = ComponentLocator()
    for item_id, value in _walk(parser.get()):
        if item_id.startswith("_meta_"):
            continue
        if isinstance(value, dict) and isinstance(value.get("_target_"), str):
            name = ConfigComponent(config=value, id=item_id, locator=locator).resolve_module_name()
            if pydoc.locate(name) is None:
                problems.append(f"{item_id}: _target_ {value['_target_']!r} not importable")
        if not isinstance(value, str):
            continue
        for ref in ReferenceResolver.match_refs_pattern(value):
            if ref not in parser:
                problems.append(f"{item_id}: reference @{ref} has no config item")
        if ConfigExpression.is_expression(value):
            code = ReferenceResolver.id_matcher.sub("__ref", ReferenceResolver.normalize_id(value))[1:]
            try:
                ast.parse(code, mode="exec" if ConfigExpression.is_import_statement(value) else "eval")
            except SyntaxError as e:
                problems.append(f"{item_id}: expression does not parse ({e.msg})")
    return problems


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_references_targets_and_expressions(name):
    """Each config stands alone or, like ``multi_gpu_train.json``, as an overlay of ``train.json``
    (``multi_gpu_inference.json``: of ``inference.json``)."""
    try:
        problems = _config_problems(_parser(CONFIGS_DIR / name))
    except KeyError as e:  # an overlay sets nested ids (``train#...``) of a config it extends
        problems = [f"does not load alone: {e}"]
    base = INFERENCE_FILE if "inference" in name else TRAIN_FILE
    if problems and base.exists() and name != base.name:
        problems = _config_problems(_parser(base, CONFIGS_DIR / name))
    assert problems == []


def test_config_check_finds_broken_items(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({
        "a": 1, "b": "@a", "c": "@missing", "d": "$@a +", "e": {"_target_": "NoSuchTransformAnywhere"},
        "f": "$import os", "g": {"_target_": "Compose", "transforms": ["@b"]},
    }))
    assert _config_problems(_parser(broken)) == [
        "c: reference @missing has no config item",
        "d: expression does not parse (invalid syntax)",
        "e: _target_ 'NoSuchTransformAnywhere' not importable",
    ]


def test_inference_config_resolves_every_id(ct_dir, tmp_path, tmp_path_factory):
    weights = shared_random_weights(tmp_path_factory)
    out = tmp_path / "out"
    parser = _parser(INFERENCE_FILE, dataset_dir=str(ct_dir), ckpt_path=str(weights), output_dir=str(out))
    ids = [i for i in parser.get() if i != "_meta_"]
    value = {i: parser.get_parsed_content(i) for i in ids if i not in EXECUTABLE_IDS}
    assert value["datalist"] == [{"image": str(ct_dir / "phantom.nii.gz")}]
    assert value["device"] == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    from infnet_monai.runtime import default_precision

    assert value["precision"] == default_precision(value["device"])  # bf16 on CPUs with native bf16
    assert isinstance(value["network_def"], InfNet)
    # `network` is the inference-optimised copy of the weights in ckpt_path (BN folded, channels-last)
    assert isinstance(value["network"], torch.nn.Module) and value["network"] is not value["network_def"]
    assert not any(p.requires_grad for p in value["network"].parameters())
    inferer = value["inferer"]
    assert isinstance(inferer, SliceInferer) and tuple(inferer.roi_size) == (network_size(), network_size())
    assert inferer.spatial_dim == 2 and inferer.sw_batch_size == value["slice_batch_size"]
    assert inferer.precision == value["precision"]
    # preprocessing output: the windowed [0, 1] slices; the inferer turns each slice batch into the
    # 3-channel network input, inside the declared value range
    item = value["dataset"][0]
    image = item["image"]
    assert tuple(image.shape) == (1, network_size(), network_size(), 3) and "lung" in item
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    net_input = network_input_batch(image.permute(3, 0, 1, 2).as_tensor())
    assert tuple(net_input.shape) == (3, 3, network_size(), network_size())
    low, high = json.loads(META_FILE.read_text())["network_data_format"]["inputs"]["image"]["value_range"]
    assert low <= float(net_input.min()) and float(net_input.max()) <= high
    assert len(value["dataloader"]) == 1 and value["dataloader"].batch_size == 1
    assert isinstance(value["preprocessing"], Compose) and isinstance(value["postprocessing"], Compose)
    saver, sidecar = value["postprocessing"].transforms[-2:]
    assert isinstance(saver, SaveImaged) and Path(saver.saver.folder_layout.output_dir) == out
    assert isinstance(sidecar, LabelSidecard) and sidecar.classes == value["classes"] == "infection"
    assert Path(value["ckpt_path"]) == weights
    evaluator = value["evaluator"]
    assert isinstance(evaluator, SupervisedEvaluator) and evaluator.inferer is inferer
    assert evaluator.network is value["network"] and evaluator.data_loader is value["dataloader"]
    # initialize: the weights check and the seed (both safe to run); run: its references exist
    assert parser.get_parsed_content("initialize") == [weights, None]
    assert parser["run"] == ["$@evaluator.run()"] and "evaluator" in parser
    assert not out.exists()  # resolving wrote nothing


def test_evaluate_config_resolves_every_id(tmp_path):
    pred, label = tmp_path / "pred", tmp_path / "label"
    parser = _parser(EVALUATE_FILE, bundle_root=str(tmp_path), pred_dir=str(pred), label_dir=str(label))
    ids = [i for i in parser.get() if i not in ("_meta_",) + EXECUTABLE_IDS]
    value = {i: parser.get_parsed_content(i) for i in ids}
    assert value["output_dir"] == f"{tmp_path}/eval" and value["output_file"] == f"{tmp_path}/evaluation/metrics.json"
    evaluator = value["evaluator"]
    assert isinstance(evaluator, FolderEvaluation)
    assert (evaluator.pred_dir, evaluator.label_dir) == (str(pred), str(label))
    assert evaluator.options == {
        "mode": "volume", "tolerance_mm": 3.0, "labels": None, "resample_label": False, "dicom_source": None,
        "output_file": f"{tmp_path}/evaluation/metrics.json", "overwrite": True,
    }
    assert parser["run"] == ["$@evaluator.run()"]


# --------------------------------------------------------------------------------------------
# monai.bundle workflow properties (what ConfigWorkflow, MONAI Label and other apps rely on)
# --------------------------------------------------------------------------------------------
def test_inference_workflow_has_every_property(ct_dir, tmp_path, tmp_path_factory, meta):
    weights = shared_random_weights(tmp_path_factory)
    workflow = ConfigWorkflow(
        config_file=str(INFERENCE_FILE), meta_file=str(META_FILE), logging_file=False, workflow_type="infer",
        dataset_dir=str(ct_dir), ckpt_path=str(weights), output_dir=str(tmp_path / "out"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.dataset_dir == str(ct_dir) and workflow.bundle_root == "."
    assert isinstance(workflow.network_def, InfNet) and isinstance(workflow.inferer, SliceInferer)
    assert isinstance(workflow.evaluator, SupervisedEvaluator) and len(workflow.dataset) == 1
    assert workflow.version == meta["version"] and workflow.monai_version == meta["monai_version"]
    assert workflow.channel_def == {"0": "background", "1": "infection"}
    assert workflow.spatial_shape == [network_size(), network_size()]


def test_multi_gpu_inference_workflow_has_every_property(ct_dir, tmp_path, tmp_path_factory, monkeypatch):
    """The torchrun overlay in a one-process gloo group: every property, the rank's sampler, the
    ledger handler, the volumes already done left out."""
    import socket

    import torch.distributed as dist

    from infnet_monai.cohort import LedgerHandler

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    weights = shared_random_weights(tmp_path_factory)
    workflow = ConfigWorkflow(
        config_file=[str(INFERENCE_FILE), str(CONFIGS_DIR / "multi_gpu_inference.json")], meta_file=str(META_FILE),
        logging_file=False, workflow_type="infer", dataset_dir=str(ct_dir), ckpt_path=str(weights),
        output_dir=str(tmp_path / "out"),
    )
    try:
        workflow.initialize()
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert workflow.check_properties() == []
        assert list(workflow.parser.get_parsed_content("sampler")) == [0] and len(workflow.dataset) == 1
        assert any(isinstance(h, LedgerHandler) for h in workflow.parser.get_parsed_content("evaluator#val_handlers"))
    finally:
        workflow.finalize()
    assert not dist.is_initialized()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "phantom_seg.nii.gz").write_bytes(b"")
    parser = _parser(INFERENCE_FILE, CONFIGS_DIR / "multi_gpu_inference.json", dataset_dir=str(ct_dir),
                     output_dir=str(tmp_path / "out"))
    assert parser.get_parsed_content("datalist") == []  # done before: not run again
    parser["skip_existing"] = False
    assert len(parser.get_parsed_content("datalist", lazy=False)) == 1


@pytest.mark.skipif(not TRAIN_FILE.exists(), reason="configs/train.json is not in this checkout yet")
def test_training_workflow_has_every_property(tmp_path):
    data = write_semiseg_slices(tmp_path / "slices", count=4, size=40)
    workflow = ConfigWorkflow(
        config_file=str(TRAIN_FILE), meta_file=str(META_FILE), logging_file=False, workflow_type="train",
        dataset_dir=str(data), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"),
        num_workers=0, cache_rate=0.0, epochs=3, val_fraction=0.5,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.max_epochs == 3 and workflow.dataset_dir == str(data)
    assert len(workflow.train_dataset) == 2 and len(workflow.val_dataset) == 2
    assert isinstance(workflow.evaluator, SupervisedEvaluator) and isinstance(workflow.network_def, InfNet)
    assert workflow.val_interval == json.loads(TRAIN_FILE.read_text())["val_interval"]
