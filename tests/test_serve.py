"""The served monitor: real ``persona-guard serve`` processes on loopback with a tiny random-weight
llama saved to disk, driven by the official ``openai`` client; readings checked against the offline
``PersonaMonitor`` and a teacher-forced capture on the generated token ids."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from persona_guard.activations import capture_activations
from persona_guard.encoding import EncodedSample
from persona_guard.errors import PersonaGuardError
from persona_guard.models import LoadedModel, load_model
from persona_guard.monitor import PersonaMonitor
from persona_guard.projection import Projector
from persona_guard.server.engine import Engine, RowSpec
from persona_guard.server.policy import Policy
from persona_guard.server.protocol import RequestError, parse_request
from persona_guard.steering import Steering
from persona_guard.vectors import PersonaVector
from tests.conftest import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "How do I bake bread?",
    "Capital of France?",
    "Tell me about lighthouses.",
    "hi",
    "Explain recursion briefly.",
    "What is inflation?",
]


def chat(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


class WebhookReceiver:
    """A loopback endpoint recording every JSON POST."""

    def __init__(self, failures: int = 0) -> None:
        self.events: list[dict] = []
        self.failures = failures  # answer 503 this many times first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.failures:
                    receiver.failures -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.events.append(event)
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def start_server(args: list[str], env_extra: dict | None = None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "persona_guard.cli", "serve", "--device", "cpu", "--port", "0", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    process.output = lines  # type: ignore[attr-defined]  # the server's log, read until it exits
    for line in process.stdout:
        lines.append(line)
        if "persona-guard serve:" in line:
            threading.Thread(target=lines.extend, args=(process.stdout,), daemon=True).start()
            return process, line.split(" on ")[1].split()[0]
    raise AssertionError(f"server exited with {process.wait()}: {''.join(lines)[-2000:]}")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    """A saved tiny model, three vectors, offline readings, a policy with thresholds placed between
    those readings, a webhook receiver and three servers: monitored, plain, and upstream-monitoring."""
    root = tmp_path_factory.mktemp("serve")
    model = make_tiny_model("llama", len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    loaded = load_model(str(root / "model"), device="cpu")
    generator = torch.Generator().manual_seed(3)
    vectors = {}
    for trait, layer in (("evil", 2), ("blocky", 1), ("steery", 2)):
        vectors[trait] = PersonaVector(trait, "tiny", torch.randn(4, 64, generator=generator), default_layer=layer)
        vectors[trait].save(root / f"{trait}.safetensors")
    offline = PersonaMonitor(loaded, list(vectors.values())).read(
        [chat(p) for p in PROMPTS], progress=False
    )
    forecast = {t: [r.traits[t].prompt_last for r in offline] for t in vectors}
    ranked = sorted(forecast["evil"])
    evil_threshold = (ranked[2] + ranked[3]) / 2  # half the prompts over it, none within float noise of it
    order = sorted(range(len(PROMPTS)), key=lambda i: -forecast["blocky"][i])
    block_prompt = order[0]
    block_threshold = (forecast["blocky"][order[0]] + forecast["blocky"][order[1]]) / 2
    steer_order = sorted((i for i in range(len(PROMPTS)) if i != block_prompt), key=lambda i: -forecast["steery"][i])
    steer_prompt = steer_order[0]
    steer_threshold = (forecast["steery"][steer_order[0]] + forecast["steery"][steer_order[1]]) / 2
    hook = WebhookReceiver()
    policy = {
        "webhook": hook.url,
        "traits": {
            "evil": {
                "vector": "evil.safetensors",
                "action": "alert",
                "threshold": {"prompt_last": evil_threshold},
                "calibration": {"prompt_last": {"mean": 0.01, "std": 0.02}},
            },
            "blocky": {
                "vector": "blocky.safetensors",
                "action": "block",
                "threshold": {"prompt_last": block_threshold},
            },
            "steery": {
                "vector": "steery.safetensors",
                "action": "steer",
                "steer_coef": 8.0,
                "threshold": {"prompt_last": steer_threshold},
            },
        },
    }
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    (root / "key").write_text("sekrit-key\n")
    processes = []
    try:
        monitored, url = start_server(
            [
                "--model",
                str(root / "model"),
                "--served-model-name",
                "tiny",
                "--policy",
                str(root / "policy.yaml"),
                "--audit-log",
                str(root / "audit.jsonl"),
                "--allow-unmonitored",
                "--max-tokens-cap",
                "64",
                "--max-body-bytes",
                "20000",
            ]
        )
        processes.append(monitored)
        plain, plain_url = start_server(["--model", str(root / "model"), "--served-model-name", "tiny"])
        processes.append(plain)
        upstream, upstream_url = start_server(
            [
                "--model",
                str(root / "model"),
                "--served-model-name",
                "tiny",
                "--upstream",
                plain_url,
                "--upstream-token-ids",
                "--monitor",
                *(str(root / f"{t}.safetensors") for t in ("evil", "blocky")),
                "--threshold",
                f"blocky:prompt_last={block_threshold}",
                "--action",
                "blocky=block",
                "--api-key-file",
                str(root / "key"),
            ]
        )
        processes.append(upstream)
        yield {
            "root": root,
            "loaded": loaded,
            "vectors": vectors,
            "forecast": forecast,
            "hook": hook,
            "url": url,
            "plain_url": plain_url,
            "upstream_url": upstream_url,
            "thresholds": {"evil": evil_threshold, "blocky": block_threshold, "steery": steer_threshold},
            "block_prompt": block_prompt,
            "steer_prompt": steer_prompt,
            "calm": [i for i in range(len(PROMPTS)) if i not in (block_prompt, steer_prompt)],
        }
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        hook.server.shutdown()


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)


def teacher_forced(world, prompt_ids, token_ids, trait) -> float:
    vector = world["vectors"][trait]
    layer = vector.default_layer
    acts = capture_activations(
        world["loaded"],
        [EncodedSample(tuple(prompt_ids) + tuple(token_ids), len(prompt_ids))],
        [layer],
        ("response_mean",),
        progress=False,
    )["response_mean"]
    return float(vector.project(acts[0, 0], layer))


def test_readings_equal_offline_monitor_and_teacher_forced_capture(world):
    calm = world["calm"][0]  # neither blocked nor steered
    reply = client(world["url"]).chat.completions.create(
        model="tiny",
        messages=chat(PROMPTS[calm]),
        max_tokens=12,
        temperature=0.9,
        seed=7,
        n=2,
        extra_body={"return_token_ids": True},
    )
    guard = reply.model_extra["persona_guard"]
    prompt_ids = reply.model_extra["prompt_token_ids"]
    assert len(guard["choices"]) == len(reply.choices) == 2
    for choice, reading in zip(reply.choices, guard["choices"]):
        token_ids = choice.model_extra["token_ids"]
        assert token_ids and len(token_ids) <= 12
        for trait in ("evil", "blocky"):
            served = reading["traits"][trait]
            assert served["prompt_last"] == pytest.approx(world["forecast"][trait][calm], abs=1e-4)
            assert served["response_mean"] == pytest.approx(
                teacher_forced(world, prompt_ids, token_ids, trait), abs=1e-3
            )
        assert reading["traits"]["evil"]["prompt_last_z"] == pytest.approx(
            (world["forecast"]["evil"][calm] - 0.01) / 0.02, abs=1e-2
        )
    # the same seed gives the same answers whatever else shares the batch; the two choices differ in seed
    again = client(world["url"]).chat.completions.create(
        model="tiny", messages=chat(PROMPTS[calm]), max_tokens=12, temperature=0.9, seed=7, n=2
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]


def test_streaming_sends_the_same_answer_and_readings_on_the_last_chunk(world):
    kwargs = {
        "model": "tiny",
        "messages": chat(PROMPTS[world["calm"][1]]),
        "max_tokens": 10,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    whole = client(world["url"]).chat.completions.create(**kwargs)
    chunks = list(
        client(world["url"]).chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    streamed_tokens = [
        e.token for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert streamed_tokens == [e.token for e in whole.choices[0].logprobs.content]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason
    ]
    streamed, direct = last.model_extra["persona_guard"]["choices"][0], whole.model_extra["persona_guard"]["choices"][0]
    for trait in ("evil", "blocky"):
        assert streamed["traits"][trait]["prompt_last"] == pytest.approx(
            direct["traits"][trait]["prompt_last"], abs=1e-5
        )
        assert streamed["traits"][trait]["response_mean"] == pytest.approx(
            direct["traits"][trait]["response_mean"], abs=1e-5
        )


def test_alert_fires_exactly_over_threshold_to_webhook_and_audit_log(world):
    api = client(world["url"])
    before = len(world["hook"].events)
    replies = [
        api.chat.completions.create(
            model="tiny", messages=chat(p), max_tokens=4, temperature=0, metadata={"conversation_id": f"conv-{i}"}
        )
        for i, p in enumerate(PROMPTS)
    ]
    expected = [f > world["thresholds"]["evil"] for f in world["forecast"]["evil"]]
    assert any(expected) and not all(expected)
    alerts = [r.model_extra["persona_guard"]["choices"][0]["traits"]["evil"]["alert"] for r in replies]
    assert alerts == expected
    deadline = time.monotonic() + 20
    while len(world["hook"].events) - before < sum(expected) and time.monotonic() < deadline:
        time.sleep(0.1)
    events = world["hook"].events[before:]
    assert sorted(e["conversation_id"] for e in events) == sorted(f"conv-{i}" for i, e in enumerate(expected) if e)
    assert all(e["traits"]["evil"]["alert"] and "messages" not in e for e in events)
    audit = [json.loads(line) for line in (world["root"] / "audit.jsonl").read_text().splitlines()]
    logged = {e["conversation_id"] for e in audit}
    assert {f"conv-{i}" for i, e in enumerate(expected) if e} <= logged
    assert (
        not {
            f"conv-{i}"
            for i, e in enumerate(expected)
            if not e
            and world["forecast"]["blocky"][i] <= world["thresholds"]["blocky"]
            and world["forecast"]["steery"][i] <= world["thresholds"]["steery"]
        }
        & logged
    )


def test_block_refuses_and_steer_changes_the_answer(world):
    api = client(world["url"])
    blocked = api.chat.completions.create(
        model="tiny", messages=chat(PROMPTS[world["block_prompt"]]), max_tokens=8, temperature=0
    )
    assert blocked.choices[0].finish_reason == "content_filter"
    assert "blocked" in blocked.choices[0].message.content and "blocky forecast" in blocked.choices[0].message.content
    assert blocked.model_extra["persona_guard"]["choices"][0]["action"] == "blocked"
    messages = chat(PROMPTS[world["steer_prompt"]])
    steered = api.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0, extra_body={"return_token_ids": True}
    )
    plain = api.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=8,
        temperature=0,
        extra_body={"persona_guard": {"monitor": False}, "return_token_ids": True},
    )
    assert steered.model_extra["persona_guard"]["choices"][0]["action"] == "steered"
    assert plain.model_extra["persona_guard"]["choices"] == [{"index": 0, "action": "none", "traits": {}}]
    assert steered.choices[0].message.content != plain.choices[0].message.content
    # the steered answer is the model's answer with -8 x steery at its layer
    loaded, vector = world["loaded"], world["vectors"]["steery"]
    engine = Engine(loaded)
    spec = RowSpec(tuple(steered.model_extra["prompt_token_ids"]), 8)
    with Steering(loaded.layers, vector, layers=2, coef=-8.0):
        [local] = engine.generate([spec])
    assert local.token_ids == steered.choices[0].model_extra["token_ids"]
    [unsteered] = engine.generate([spec])
    assert unsteered.token_ids == plain.choices[0].model_extra["token_ids"]


def test_metrics_parse_and_count_requests(world):
    def scrape() -> dict:
        text = httpx.get(f"{world['url'][:-3]}/metrics").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    key = ("persona_guard_requests_total", (("route", "/v1/chat/completions"), ("status", "200")))
    bad = ("persona_guard_requests_total", (("route", "/v1/chat/completions"), ("status", "400")))
    hist = ("persona_guard_trait_projection_count", (("reading", "prompt_last"), ("trait", "evil")))
    before = scrape()
    api = client(world["url"])
    for prompt in PROMPTS[:3]:
        api.chat.completions.create(model="tiny", messages=chat(prompt), max_tokens=3, temperature=0)
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="tiny", messages=[], max_tokens=3)
    after = scrape()
    assert after[key] - before.get(key, 0) == 3
    assert after[bad] - before.get(bad, 0) == 1
    assert after[hist] - before.get(hist, 0) == 3
    alerts = sum(v for (name, labels), v in after.items() if name == "persona_guard_alerts_total")
    assert alerts >= 1


def test_upstream_mode_reads_the_same_numbers(world):
    messages = chat(PROMPTS[world["calm"][2]])
    kwargs = {"model": "tiny", "messages": messages, "max_tokens": 10, "temperature": 0}
    direct = client(world["url"]).chat.completions.create(**kwargs, extra_body={"return_token_ids": True})
    with pytest.raises(openai.AuthenticationError):
        client(world["upstream_url"], "wrong").chat.completions.create(**kwargs)
    api = client(world["upstream_url"], "sekrit-key")
    via = api.chat.completions.create(**kwargs)
    assert via.choices[0].message.content == direct.choices[0].message.content
    served = direct.model_extra["persona_guard"]["choices"][0]["traits"]
    forwarded = via.model_extra["persona_guard"]["choices"][0]["traits"]
    for trait in ("evil", "blocky"):
        assert forwarded[trait]["prompt_last"] == pytest.approx(served[trait]["prompt_last"], abs=1e-4)
        assert forwarded[trait]["response_mean"] == pytest.approx(served[trait]["response_mean"], abs=1e-3)
    streamed = list(api.chat.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == via.choices[0].message.content
    assert streamed[-1].model_extra["persona_guard"]["choices"][0]["traits"]["evil"]["response_mean"] == pytest.approx(
        served["evil"]["response_mean"], abs=1e-3
    )
    blocked = api.chat.completions.create(**{**kwargs, "messages": chat(PROMPTS[world["block_prompt"]])})
    assert blocked.choices[0].finish_reason == "content_filter"


def test_client_errors_are_openai_error_bodies(world):
    url = world["url"]
    cases = [
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),  # the row model's field path
        ({"messages": chat("x"), "max_tokens": 65}, 400, "max_tokens"),
        ({"messages": chat("x"), "model": "gpt-9"}, 400, "model"),
        ({"messages": chat("x"), "persona_guard": {"monitor": "no"}}, 400, "persona_guard"),
        ({"messages": chat("x" * 30000)}, 413, None),
    ]
    for body, status, param in cases:
        reply = httpx.post(f"{url}/chat/completions", json=body, timeout=60)
        assert reply.status_code == status, (body, reply.text)
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param and "Traceback" not in reply.text
    reply = httpx.post(f"{url}/chat/completions", content=b"{not json", timeout=60)
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]["message"]
    reply = httpx.get(f"{url}/nowhere")
    assert reply.status_code == 404 and reply.json()["error"]["message"] == "no route GET /v1/nowhere"
    assert httpx.get(f"{world['upstream_url'][:-3]}/health").status_code == 200  # open even with a key
    assert httpx.get(f"{world['upstream_url'][:-3]}/metrics").status_code == 401


def _chromium() -> tuple[str | None, str]:
    """The chromium binary, installed with apt-get where missing; else (None, why)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found, ""
    if not shutil.which("apt-get"):
        return None, "no chromium and no apt-get to install it"
    result = subprocess.run(
        ["apt-get", "install", "-y", "chromium"], check=False, capture_output=True, text=True, timeout=900
    )
    last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
    return shutil.which("chromium"), f"'apt-get install -y chromium' failed: {last[0]}"


def test_dashboard_renders_readings_in_headless_chromium(world):
    browser, why = _chromium()
    if browser is None:
        pytest.skip(why)
    api = client(world["url"])
    for prompt in PROMPTS[:3]:
        api.chat.completions.create(model="tiny", messages=chat(prompt), max_tokens=3, temperature=0)
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            f"{world['url'][:-3]}/dashboard",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "persona-guard monitor" in dom and "<polyline" in dom
    assert "evil" in dom and "ALERT" in dom and "tiny" in dom


# ---- in-process parts ---------------------------------------------------------------------------


def test_batched_rows_equal_rows_generated_alone(tokenizer):
    model = make_tiny_model("llama", len(tokenizer))
    vector = PersonaVector(
        "evil", "tiny", torch.randn(4, 64, generator=torch.Generator().manual_seed(1)), default_layer=2
    )
    engine = Engine(LoadedModel(model, tokenizer, "tiny"), Projector.of({"evil": vector}, {"evil": 2}))
    from persona_guard.llm_client import render_messages

    specs = [
        RowSpec(
            tuple(tokenizer(render_messages(tokenizer, chat(p)), add_special_tokens=False)["input_ids"]),
            max_tokens=m,
            temperature=t,
            seed=5,
        )
        for p, m, t in zip(PROMPTS, (3, 7, 5, 9, 4, 6), (0, 0.8, 0, 1.2, 0, 0.5))
    ]
    together = engine.generate(specs)
    for spec, batched in zip(specs, together):
        [alone] = engine.generate([spec])
        assert alone.token_ids == batched.token_ids and alone.finish_reason == batched.finish_reason
        assert alone.prompt_last["evil"] == pytest.approx(batched.prompt_last["evil"], abs=1e-4)
        assert alone.response_mean("evil") == pytest.approx(batched.response_mean("evil"), abs=1e-4)
    greedy = model.generate(torch.tensor([specs[0].prompt_ids]), max_new_tokens=3, do_sample=False)
    assert together[0].token_ids == greedy[0, len(specs[0].prompt_ids) :].tolist()


def test_stop_strings_cut_the_answer(tokenizer):
    model = make_tiny_model("llama", len(tokenizer))
    engine = Engine(LoadedModel(model, tokenizer, "tiny"))
    prompt = tuple(tokenizer("Hello there", add_special_tokens=False)["input_ids"])
    [free] = engine.generate([RowSpec(prompt, 12)])
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 2]
    assert stop.strip()
    [cut] = engine.generate([RowSpec(prompt, 12, stop=(stop,))])
    assert cut.finish_reason == "stop" and stop not in cut.text and free.text.startswith(cut.text)
    assert len(cut.text) == free.text.find(stop)


def test_top_p_keeps_the_smallest_set_holding_that_mass(tokenizer):
    """Nucleus sampling as vLLM: a top_p so small only the most likely token is left answers greedily
    for any seed; top_p 1 samples the full distribution (seeds then differ)."""
    model = make_tiny_model("llama", len(tokenizer))
    engine = Engine(LoadedModel(model, tokenizer, "tiny"))
    prompt = tuple(tokenizer("Hello there", add_special_tokens=False)["input_ids"])
    [greedy] = engine.generate([RowSpec(prompt, 8)])
    nucleus = engine.generate([RowSpec(prompt, 8, temperature=1.5, seed=seed, top_p=1e-6) for seed in range(4)])
    assert all(row.token_ids == greedy.token_ids for row in nucleus)
    full = engine.generate([RowSpec(prompt, 8, temperature=1.5, seed=seed) for seed in range(4)])
    assert len({tuple(row.token_ids) for row in full}) > 1


def test_policy_file_errors_name_the_field(tmp_path):
    path = tmp_path / "policy.yaml"
    for text, field in [
        ("traits: {evil: {action: shout}}", "traits.evil.action"),
        ("traits: {evil: {threshold: {prompt_last: high}}}", "traits.evil.threshold.prompt_last"),
        ("traits: {evil: {colour: red}}", "unknown field(s) colour"),
        ("traits: [1]", "'traits' mapping"),
    ]:
        path.write_text(text)
        with pytest.raises(PersonaGuardError, match=field.replace("(", r"\(").replace(")", r"\)")):
            Policy.load(path)
    path.write_text("webhook: http://x\ntraits: {evil: {action: steer, steer_coef: 3, threshold: {prompt_last: 1.5}}}")
    policy = Policy.load(path)
    assert Policy.load(policy.save(tmp_path / "again.yaml")) == policy


def test_monitor_calibrate_writes_percentile_thresholds(tmp_path, tokenizer):
    from persona_guard.cli import main

    model = make_tiny_model("llama", len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    vector = PersonaVector(
        "evil", "tiny", torch.randn(4, 64, generator=torch.Generator().manual_seed(2)), default_layer=2
    )
    vector.save(tmp_path / "evil.safetensors")
    benign = tmp_path / "benign.jsonl"
    from tests.samples import CONVERSATIONS

    benign.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    (tmp_path / "policy.yaml").write_text("traits: {evil: {action: block}}\n")
    assert (
        main(
            [
                "monitor",
                "calibrate",
                "--vector",
                str(tmp_path / "evil.safetensors"),
                "--model",
                str(tmp_path / "model"),
                "--device",
                "cpu",
                "--set",
                str(benign),
                "--percentile",
                "80",
                "--policy",
                str(tmp_path / "policy.yaml"),
            ]
        )
        == 0
    )
    policy = Policy.load(tmp_path / "policy.yaml")
    evil = policy.traits["evil"]
    loaded = load_model(str(tmp_path / "model"), device="cpu")
    readings = PersonaMonitor(loaded, [vector]).read(CONVERSATIONS, progress=False)
    values = torch.tensor([r.traits["evil"].prompt_last for r in readings], dtype=torch.float64)
    assert evil.action == "block" and evil.vector == "evil.safetensors" and evil.layer == 2
    assert evil.threshold.prompt_last == pytest.approx(float(torch.quantile(values, 0.8)), abs=1e-6)
    assert evil.calibration["prompt_last"].mean == pytest.approx(float(values.mean()), abs=1e-6)
    assert sum(v > evil.threshold.prompt_last for v in values.tolist()) == 1
    assert policy.calibration["percentile"] == 80 and policy.calibration["conversations"] == len(CONVERSATIONS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
fields = st.sampled_from(
    [
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "seed",
        "n",
        "stop",
        "logprobs",
        "top_logprobs",
        "stream",
        "stream_options",
        "return_token_ids",
        "model",
        "persona_guard",
        "metadata",
    ]
)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(fields, json_values, max_size=6) | json_values)
def test_any_json_body_is_accepted_or_refused_with_a_request_error(body):
    """No JSON body makes validation fail with anything but a RequestError naming a field."""
    try:
        params = parse_request(body, model_name="tiny", max_tokens_cap=64)
    except RequestError as error:
        assert error.status == 400 and str(error)
    else:
        assert params.messages and 1 <= params.max_tokens <= 64 and 1 <= params.n


def test_webhook_retries_in_the_background_and_counts_what_it_gives_up():
    import asyncio

    from persona_guard.server.observe import Metrics, Webhook

    flaky, dead = WebhookReceiver(failures=2), WebhookReceiver(failures=99)
    metrics = Metrics()

    async def send() -> float:
        started = time.perf_counter()
        Webhook(flaky.url, backoff=0.01, metrics=metrics).send({"n": 1})
        Webhook(dead.url, retries=2, backoff=0.01, metrics=metrics).send({"n": 2})
        returned = time.perf_counter() - started
        deadline = time.monotonic() + 20
        while (not flaky.events or not failed()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return returned

    def failed() -> float:
        return metrics.registry.get_sample_value("persona_guard_webhook_failures_total")

    returned = asyncio.run(send())
    assert returned < 0.05  # send() never waits for the POST
    assert flaky.events == [{"n": 1}] and flaky.failures == 0 and dead.failures == 96
    assert failed() == 1
    for receiver in (flaky, dead):
        receiver.server.shutdown()


def test_requests_take_every_message_form_of_the_row_model():
    """Found by the hostile sweep: the server had its own message check and refused typed text parts
    and tool calls that every other command accepts (docs/data.md); it now parses with persona_guard.rows."""
    from persona_guard.rows import parse_messages
    from persona_guard.server.protocol import RequestError, parse_request

    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What is 6 x 7?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "mul", "arguments": "[6, 7]"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "user", "content": "So?"},
    ]
    parsed = parse_request({"messages": messages}, model_name="tiny", max_tokens_cap=8)
    assert list(parsed.messages) == parse_messages(messages, "messages")
    with pytest.raises(RequestError, match=r"messages\[0\]\.content: not valid Unicode"):
        parse_request({"messages": [{"role": "user", "content": "Hi \ud800"}]}, model_name="tiny", max_tokens_cap=8)
