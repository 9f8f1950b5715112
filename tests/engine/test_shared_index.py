"""Every rank holds the main process's index: the others never probe the dataset themselves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent

# Run by `accelerate launch --num_processes 2`: rank 1 cannot index (as if the dataset or the
# main node's local cache were out of its reach); both ranks must still hold the same records.
WORKER = r"""
import json
import sys

from accelerate import PartialState

import dali_fame.data.index as index
from dali_fame.config import DataConfig
from dali_fame.engine.data import load_split


def refuse(*args, **kwargs):
    raise AssertionError("a non-main process probed the dataset")


def main():
    state = PartialState(cpu=True)  # gloo, as Accelerator does under ACCELERATE_USE_CPU
    if not state.is_main_process:
        index.build_index = refuse
    root, cache, out = sys.argv[1:4]
    data = DataConfig(format="ucf101", root=root + "/videos", annotation_dir=root, cache_dir=cache,
                      clip_len=4, stride=1)
    try:
        split = load_split(data, split="train", is_main=state.is_main_process,
                           wait=state.wait_for_everyone, progress=False)
        payload = {"paths": [r.path for r in split.records], "classes": split.class_names}
    except ValueError as err:
        payload = {"error": str(err)}
    with open(f"{out}.{state.process_index}.json", "w") as fh:
        json.dump(payload, fh)
    state.wait_for_everyone()
    state.destroy_process_group()  # a clean gloo shutdown (an exit with it alive can abort)


if __name__ == "__main__":  # the index's process pool re-imports this file
    main()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, root: Path, cache: Path, out: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(_free_port()), str(script), str(root), str(cache), str(out)]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_other_ranks_receive_the_main_process_index(tmp_path):
    from dali_fame.data.synthetic import generate_dataset

    root = tmp_path / "synth"
    generate_dataset(root, num_classes=2, videos_per_class=3, num_frames=8, size=32, codec="h264",
                     progress=False, num_workers=1, overwrite=True)
    _launch(tmp_path, root, tmp_path / "cache", tmp_path / "ok")
    ranks = [json.loads((tmp_path / f"ok.{r}.json").read_text()) for r in (0, 1)]
    assert "error" not in ranks[0], ranks[0]
    assert ranks[0] == ranks[1] and len(ranks[0]["paths"]) > 0
    # an indexing error on the main process reaches every rank as the same error (no hang)
    _launch(tmp_path, tmp_path / "missing", tmp_path / "cache2", tmp_path / "bad")
    errors = [json.loads((tmp_path / f"bad.{r}.json").read_text()).get("error") for r in (0, 1)]
    assert errors[0] and errors[0] == errors[1]
