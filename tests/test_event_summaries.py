"""The summaries built from TensorBoard's protos alone are byte for byte TensorBoard's and torch's own,
and a run does not load TensorBoard's TensorFlow stub to write them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import summary as torch_summary

from runner.events import summaries
from runner.aggregate import DEFAULT_LAYOUT, _layout_for_torch, layout_summary


def test_text_is_torchs_text_summary():
    for value in ("", "plain", "**markdown** — ünïcode ✓\nsecond line"):
        assert summaries.text("config", value).SerializeToString() == torch_summary.text("config", value).SerializeToString()


@pytest.mark.parametrize("field", ["experiment", "session_start_info", "session_end_info"])
def test_hparams_is_the_hparams_plugins_summary(field):
    data = plugin_data_pb2.HParamsPluginData()
    if field == "experiment":
        data.experiment.hparam_infos.add(name="batch_size", type=api_pb2.DATA_TYPE_STRING)
        data.experiment.metric_infos.add(name=api_pb2.MetricName(tag="loss/val"))
    elif field == "session_start_info":
        data.session_start_info.hparams["lr"].number_value = 0.01
    else:
        data.session_end_info.status = api_pb2.STATUS_SUCCESS
    want = metadata.create_summary_metadata(data)
    got = summaries.hparams("_hparams_/" + field, data)
    [value] = got.value
    assert value.metadata.SerializeToString() == want.SerializeToString()
    assert value.tensor.SerializeToString() == metadata.NULL_TENSOR.SerializeToString()
    assert data.version == 0  # the caller's message is left as it was


def test_tags_and_version_are_the_hparams_plugins():
    assert (summaries.EXPERIMENT_TAG, summaries.SESSION_START_INFO_TAG, summaries.SESSION_END_INFO_TAG) == (
        metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG)
    assert (summaries.HPARAMS_PLUGIN, summaries.HPARAMS_DATA_VERSION) == (metadata.PLUGIN_NAME, metadata.PLUGIN_DATA_VERSION)


def test_layout_is_torchs_custom_scalars():
    assert layout_summary().SerializeToString() == torch_summary.custom_scalars(_layout_for_torch(DEFAULT_LAYOUT)).SerializeToString()


def test_image_reads_its_size_from_the_png_header():
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (640).to_bytes(4, "big") + (480).to_bytes(4, "big") + b"\x08\x06\x00\x00\x00"
    [value] = summaries.image("report/figure", png).value
    assert (value.tag, value.image.width, value.image.height, value.image.colorspace, value.image.encoded_image_string) == (
        "report/figure", 640, 480, 4, png)


def test_a_run_does_not_load_tensorboards_tensorflow_stub(tmp_path):
    """A fresh process trains, logs and writes its report without it (nor torch.utils.tensorboard)."""
    code = (
        "import sys\n"
        "from runner.api import run\n"
        f"run(['epochs=1', 'dataset=spirals', 'hydra.run.dir={tmp_path / 'run'}'])\n"
        "loaded = [m for m in ('tensorboard.compat.tensorflow_stub', 'torch.utils.tensorboard', 'tensorboard.summary') if m in sys.modules]\n"
        "print(loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
