"""TensorBoard summaries built from its protocol buffers alone: text, an image, HParams plugin
data and the Custom Scalars layout.

TensorBoard's and torch's summary helpers build the same messages, but importing them loads
TensorBoard's TensorFlow stub (its file system layer, and boto3 where that is installed):
0.2–0.4 s of every run's start, for four small messages. The messages here are byte for byte
the helpers' own (``tests/test_event_summaries.py`` compares them).
"""

from __future__ import annotations

import struct
from typing import Mapping, Sequence

from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.text import plugin_data_pb2 as text_plugin_data_pb2

# tensorboard.plugins.hparams.metadata's names and values.
HPARAMS_PLUGIN = "hparams"
HPARAMS_DATA_VERSION = 0
EXPERIMENT_TAG = "_hparams_/experiment"
SESSION_START_INFO_TAG = "_hparams_/session_start_info"
SESSION_END_INFO_TAG = "_hparams_/session_end_info"
# The smallest valid tensor (a length-0 float vector) for summaries that carry only metadata.
_NULL_TENSOR = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=0)]))

LAYOUT_TAG = "custom_scalars__config__"


def text(tag: str, value: str) -> summary_pb2.Summary:
    """A text summary, shown in the Text tab under ``<tag>/text_summary`` (as torch names it)."""
    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
        plugin_name="text", content=text_plugin_data_pb2.TextPluginData(version=0).SerializeToString()))
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[value.encode("utf_8")],
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag + "/text_summary", metadata=metadata, tensor=tensor)])


def image(tag: str, png: bytes) -> summary_pb2.Summary:
    """A summary holding one encoded PNG (the Images tab); the size is read from its header."""
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk follows the 8-byte signature
    picture = summary_pb2.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=picture)])


def hparams(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    """A summary carrying HParams plugin data, as ``metadata.create_summary_metadata`` wraps it."""
    content = plugin_data_pb2.HParamsPluginData()
    content.CopyFrom(data)
    content.version = HPARAMS_DATA_VERSION
    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
        plugin_name=HPARAMS_PLUGIN, content=content.SerializeToString()))
    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=metadata, tensor=_NULL_TENSOR)
    return summary


def custom_scalars(layout: Mapping[str, Mapping[str, tuple[str, Sequence[str]]]]) -> summary_pb2.Summary:
    """The Custom Scalars layout: category → chart title → ``("Multiline", [tag regex, ...])`` or
    ``("Margin", [value, lower, upper])``, as ``torch.utils.tensorboard.summary.custom_scalars``."""
    categories = []
    for category, charts in layout.items():
        built = []
        for title, (kind, chart_tags) in charts.items():
            if kind == "Margin":
                value, lower, upper = chart_tags
                series = layout_pb2.MarginChartContent.Series(value=value, lower=lower, upper=upper)
                built.append(layout_pb2.Chart(title=title, margin=layout_pb2.MarginChartContent(series=[series])))
            else:
                built.append(layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=list(chart_tags))))
        categories.append(layout_pb2.Category(title=category, chart=built))
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[layout_pb2.Layout(category=categories).SerializeToString()],
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto())
    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=LAYOUT_TAG, tensor=tensor, metadata=metadata)])
