"""Dynamic batch for a graph that takes one image: an ONNX ``Loop`` over the images of the batch.

torchvision's detectors handle the images of a batch one at a time in Python (proposal filtering,
NMS, box decoding), so a traced graph is fixed to the batch size it was traced with. Tracing one image
and looping over the batch inside the graph gives one file for any batch size. Each output is the
concatenation of every image's rows, in image order, and ``batch_index`` says which image each row is
of: at batch 1 the outputs are exactly the one-image graph's, with ``batch_index`` all zeros.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # onnx is imported where a graph is built: it takes most of a second to import
    import onnx

BATCH_INDEX = "batch_index"
_PREFIX = "vs_loop_"  # names of the values the wrapper adds, apart from the graph's own


def loop_over_batch(single: onnx.ModelProto, input_name: str) -> onnx.ModelProto:
    """The model that runs ``single`` (one (3, H, W) image in ``input_name``, outputs of one row per
    detection) on each image of an (N, 3, H, W) ``input_name`` and concatenates the rows, adding
    ``batch_index`` (int64, one per row)."""
    from onnx import TensorProto, helper

    graph = single.graph
    outputs = [(o.name, o.type.tensor_type.elem_type, _row_shape(o)) for o in graph.output]
    # The loop body sees the outer graph's names, so its own image and outputs get names of their own.
    image, renamed = f"{_PREFIX}image", {name: f"{_PREFIX}one_{name}" for name, _, _ in outputs}
    body_nodes = list(graph.node)
    _rename(body_nodes, {input_name: image, **renamed})

    index, cond_in, cond_out = f"{_PREFIX}i", f"{_PREFIX}cond_in", f"{_PREFIX}cond_out"
    carried = [(name, dtype) for name, dtype, _ in outputs] + [(BATCH_INDEX, TensorProto.INT64)]
    body_nodes = [helper.make_node("Gather", [input_name, index], [image], axis=0), *body_nodes,
                  helper.make_node("Identity", [cond_in], [cond_out]),
                  helper.make_node("Shape", [renamed[outputs[0][0]]], [f"{_PREFIX}rows"], start=0, end=1),
                  helper.make_node("Expand", [index, f"{_PREFIX}rows"], [f"{_PREFIX}one_{BATCH_INDEX}"])]
    for name, _ in carried:
        body_nodes.append(helper.make_node("SequenceInsert", [f"{_PREFIX}{name}_in", f"{_PREFIX}one_{name}"],
                                           [f"{_PREFIX}{name}_out"]))
    body = helper.make_graph(
        body_nodes, "one_image",
        [helper.make_tensor_value_info(index, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
         *(_sequence(f"{_PREFIX}{name}_in", dtype) for name, dtype in carried)],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
         *(_sequence(f"{_PREFIX}{name}_out", dtype) for name, dtype in carried)])

    nodes = [helper.make_node("Shape", [input_name], [f"{_PREFIX}images"], start=0, end=1),
             helper.make_node("Squeeze", [f"{_PREFIX}images"], [f"{_PREFIX}count"])]
    nodes += [helper.make_node("SequenceEmpty", [], [f"{_PREFIX}{name}_start"], dtype=dtype) for name, dtype in carried]
    nodes.append(helper.make_node("Loop", [f"{_PREFIX}count", f"{_PREFIX}true",
                                           *(f"{_PREFIX}{name}_start" for name, _ in carried)],
                                  [f"{_PREFIX}{name}_all" for name, _ in carried], body=body))
    nodes += [helper.make_node("ConcatFromSequence", [f"{_PREFIX}{name}_all"], [name], axis=0) for name, _ in carried]

    image_input = graph.input[0].type.tensor_type
    channels = image_input.shape.dim[0].dim_value or None
    batched = helper.make_graph(
        nodes, graph.name,
        [helper.make_tensor_value_info(input_name, image_input.elem_type, ["batch", channels, "height", "width"])],
        [*(helper.make_tensor_value_info(name, dtype, ["detections", *shape]) for name, dtype, shape in outputs),
         helper.make_tensor_value_info(BATCH_INDEX, TensorProto.INT64, ["detections"])],
        initializer=[*graph.initializer, helper.make_tensor(f"{_PREFIX}true", TensorProto.BOOL, [], [True])])
    model = helper.make_model(batched, opset_imports=single.opset_import, producer_name=single.producer_name,
                              producer_version=single.producer_version)
    model.ir_version = single.ir_version
    return model


def _row_shape(output: onnx.ValueInfoProto) -> list[int | str | None]:
    """The shape of one row of an output: its dims after the first, symbolic where unknown."""
    return [d.dim_value or d.dim_param or None for d in output.type.tensor_type.shape.dim[1:]]


def _sequence(name: str, dtype: int) -> onnx.ValueInfoProto:
    from onnx import helper

    return helper.make_value_info(name, helper.make_sequence_type_proto(helper.make_tensor_type_proto(dtype, None)))


def _rename(nodes, names: dict[str, str]) -> None:
    """Rename values in ``nodes`` and in the graphs nested in their attributes (If and Loop bodies)."""
    for node in nodes:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _rename(subgraph.node, names)
                for value in subgraph.output:
                    value.name = names.get(value.name, value.name)
