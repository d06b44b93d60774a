"""``convert --to=hf`` writes files a serving account or a colleague can read (issue 32): the
directory and every file get the modes the umask gives, as a plain ``mkdir`` and ``open`` would,
not ``mkdtemp``'s 0700 and safetensors' 0600."""

import os
import stat

import jax
import numpy as np
import pytest

pytest.importorskip("safetensors")
from gpt1_jax import convert  # noqa: E402
from gpt1_jax.checkpoint import save_params  # noqa: E402
from gpt1_jax.model import ModelConfig, init_params  # noqa: E402


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_hf_export_honours_the_umask(tmp_path, umask):
  config = ModelConfig(vocab_size=97, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
  save_params(str(tmp_path / "lm"), config, jax.tree.map(np.asarray, init_params(config, jax.random.key(0))))
  old = os.umask(umask)
  try:
    convert.main(["--to=hf", f"--checkpoint={tmp_path / 'lm'}", f"--out={tmp_path / 'hf'}"])
  finally:
    os.umask(old)
  mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
  assert mode(tmp_path / "hf") == 0o777 & ~umask
  files = os.listdir(tmp_path / "hf")
  assert "model.safetensors" in files and "config.json" in files
  assert {name: mode(tmp_path / "hf" / name) for name in files} == dict.fromkeys(files, 0o666 & ~umask)
