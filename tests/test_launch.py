"""Launch configs parse through accelerate's own code, and a real 2-process run steers on each rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from tests.test_training_recipe import tiny_recipe, tiny_setup  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"


def validated(config: Path):
    """What ``accelerate launch --config_file CONFIG`` derives from the file before launching."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


@pytest.mark.parametrize("name, kind", [
    ("single_gpu", "NO"), ("multi_gpu", "MULTI_GPU"), ("cpu_2proc", "MULTI_GPU"),
    ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED"), ("zero3_offload", "DEEPSPEED"), ("fsdp", "FSDP"),
])
def test_config_loads_with_accelerate(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(LAUNCH / f"{name}.yaml"))  # rejects unknown keys
    assert config.distributed_type.value == kind
    args, _ = validated(LAUNCH / f"{name}.yaml")
    assert args.use_deepspeed == (kind == "DEEPSPEED") and args.use_fsdp == (kind == "FSDP")


@pytest.mark.parametrize("name, stage, offload", [("zero2", 2, "none"), ("zero3", 3, "none"),
                                                  ("zero3_offload", 3, "cpu")])
def test_deepspeed_configs_build_the_plugin(name, stage, offload):
    """The environment accelerate hands each process builds the DeepSpeed config we mean
    (deepspeed itself is not needed for that)."""
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults = validated(LAUNCH / f"{name}.yaml")
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    with mock.patch.dict(os.environ, env):
        zero = DeepSpeedPlugin().deepspeed_config["zero_optimization"]
    assert zero["stage"] == stage
    assert zero["offload_optimizer"]["device"] == offload and zero["offload_param"]["device"] == offload
    assert zero["stage3_gather_16bit_weights_on_model_save"] == (stage == 3)


def test_fsdp_config_builds_the_plugin():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _ = validated(LAUNCH / "fsdp.yaml")
    with mock.patch.dict(os.environ, prepare_multi_gpu_env(args)):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"


def test_two_process_launch_steers_on_every_rank(tiny_setup):  # noqa: F811
    tiny_recipe(tiny_setup)
    env = {**os.environ, "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(LAUNCH / "train.sh"), "cpu_2proc", str(tiny_setup / "recipe.yaml"), "--",
         "--training.report_to=none", "--training.max_steps=2", "--training.per_device_train_batch_size=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tiny_setup / "out"
    for rank in (0, 1):
        report = json.loads((out / f"steering_rank{rank}.json").read_text())
        assert report["steered_block_forwards"] == 2 * 2  # two layers, two steps on each rank
        assert f"steering_rank{rank}: steered 4 block forwards" in result.stdout
    assert (out / "adapter_model.safetensors").is_file()
    history = [line for line in result.stdout.splitlines() if "'loss'" in line]
    assert len(history) == 2 and "'epoch': '0.6667'" in history[-1]  # 4 rows per step: 2 ranks x 2
