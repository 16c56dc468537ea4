"""The onnx2tf environment is keyed (edgefm, interpreter, lock sha256) and moved into place whole."""

from __future__ import annotations

import json

from edgefm.backends import onnx2tf_env


def test_key_follows_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFM_TOOLS_DIR", str(tmp_path / "tools"))
    a, b = tmp_path / "a.lock", tmp_path / "b.lock"
    a.write_text("onnx2tf==1.29.24\n")
    b.write_text("onnx2tf==1.29.25\n")
    assert onnx2tf_env.env_dir(a) != onnx2tf_env.env_dir(b)
    assert onnx2tf_env.env_dir(a).parent == tmp_path / "tools"
    assert onnx2tf_env.env_key(a)["lock_sha256"] != onnx2tf_env.env_key(b)["lock_sha256"]
    assert not onnx2tf_env._valid(onnx2tf_env.env_dir(a), a)


def test_adopt_moves_a_built_env_and_fixes_its_scripts(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFM_TOOLS_DIR", str(tmp_path / "tools"))
    lock = tmp_path / "x.lock"
    lock.write_text("onnx2tf==1.29.24\n")
    built = tmp_path / "tools" / ".probe"
    (built / "bin").mkdir(parents=True)
    (built / "bin" / "python").write_text("")
    (built / "bin" / "onnxsim").write_text(f"#!{built}/bin/python\nimport sys\n")
    d = onnx2tf_env.adopt(built, lock)
    assert d == onnx2tf_env.env_dir(lock) and not built.exists()
    assert (d / "bin" / "onnxsim").read_text().splitlines()[0] == f"#!{d}/bin/python"
    assert json.loads((d / "edgefm-env.json").read_text())["key"] == onnx2tf_env.env_key(lock)
    assert onnx2tf_env._valid(d, lock)


def test_failure_named_in_one_line(tmp_path):
    """onnx2tf's multi-line Keras error and its ``onnx_op_name:`` report become one line naming the node and op."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="enc/relu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), str(tmp_path / "m.onnx"))
    out = "INFO: ...\n\x1b[31mERROR:\x1b[0m onnx_op_name: enc/relu\n\x1b[31mERROR:\x1b[0m Read this and deal with it.\n"
    assert onnx2tf_env._failed_node(out, tmp_path / "m.onnx") == " at node 'enc/relu' (Relu)"
    assert onnx2tf_env._failed_node("no report", tmp_path / "m.onnx") == ""
    err = 'ValueError: Exception in layer "rnn".\n\nShapes are [0,128] and [1,128].\n\nCall arguments received by:\n  x'
    assert onnx2tf_env._one_line(err) == 'ValueError: Exception in layer "rnn". Shapes are [0,128] and [1,128].'
