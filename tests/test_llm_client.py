"""LLM clients and the OpenAI-compatible server.

The HTTP client's retry/cache logic is tested against a tiny scripted HTTP server (a transport
test double: a real endpoint cannot be made to fail on cue). Everything else runs for real:
``persona-guard serve`` in a subprocess with SmolLM2, the OpenAI client, the logprob judge and the
trait generator against it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from persona_guard.errors import PersonaGuardError
from persona_guard.judges import LogprobJudge
from persona_guard.llm_client import ChatRequest, LocalChatClient, OpenAIChatClient, complete_many, render_messages
from persona_guard.trait_generation import TraitGenerationError, generate_trait

REPO = Path(__file__).resolve().parents[1]


class ScriptedEndpoint:
    """Answers POSTs with the next (status, body) of a script, echoing the last user message."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.hits = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.hits += 1
                status = endpoint.script.pop(0) if endpoint.script else 200
                if status == 200:
                    payload = {"choices": [{"message": {"role": "assistant",
                                                        "content": "echo: " + body["messages"][-1]["content"]},
                                            "logprobs": {"content": [{"token": "4", "logprob": -0.1, "top_logprobs": [
                                                {"token": "4", "logprob": -0.1}, {"token": " 4", "logprob": -3.0},
                                                {"token": " 4", "logprob": -3.0}]}]}}]}
                else:
                    payload = {"error": {"message": f"scripted {status}"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_retries_on_5xx_and_429_then_succeeds():
    endpoint = ScriptedEndpoint([503, 429, 200])
    try:
        client = OpenAIChatClient(endpoint.base_url, "m", backoff=0.01)
        completion = client.complete([{"role": "user", "content": "hi"}], max_tokens=3, top_logprobs=2)
        assert completion.text == "echo: hi" and endpoint.hits == 3
        # duplicate token texts are merged by adding probabilities
        assert completion.first_token_top_logprobs["4"] == pytest.approx(-0.1)
        assert completion.first_token_top_logprobs[" 4"] == pytest.approx(-3.0 + 0.6931, abs=1e-3)
    finally:
        endpoint.close()


def test_client_errors_are_not_retried_and_retries_give_up():
    endpoint = ScriptedEndpoint([400, 500, 500])
    try:
        client = OpenAIChatClient(endpoint.base_url, "m", backoff=0.01, max_retries=1)
        with pytest.raises(PersonaGuardError, match="HTTP 400"):
            client.complete([{"role": "user", "content": "hi"}])
        assert endpoint.hits == 1
        layer = r"no answer after 2 requests \(the HTTP client's connection retries, max_retries=1\)"
        with pytest.raises(PersonaGuardError, match=layer):
            client.complete([{"role": "user", "content": "hi"}])
        assert endpoint.hits == 3
    finally:
        endpoint.close()
    with pytest.raises(PersonaGuardError, match="no answer after"):
        OpenAIChatClient(endpoint.base_url, "m", backoff=0.01, max_retries=1, timeout=2).complete(
            [{"role": "user", "content": "hi"}])


def test_disk_cache_and_complete_many_keep_order(tmp_path):
    endpoint = ScriptedEndpoint([])
    try:
        client = OpenAIChatClient(endpoint.base_url, "m", cache_dir=tmp_path / "cache")
        requests = [ChatRequest(({"role": "user", "content": f"q{i}"},)) for i in range(6)]
        first = complete_many(client, requests, concurrency=3, progress=False)
        assert [c.text for c in first] == [f"echo: q{i}" for i in range(6)] and endpoint.hits == 6
        again = complete_many(client, requests, concurrency=3, progress=False)
        assert again == first and endpoint.hits == 6  # all from the cache
        client.complete([{"role": "user", "content": "q0"}], temperature=0.5)  # other params: new key
        assert endpoint.hits == 7
    finally:
        endpoint.close()


def test_render_messages_continues_a_final_assistant_message(tokenizer):
    text = render_messages(tokenizer, [{"role": "user", "content": "Score?"}, {"role": "assistant", "content": "8"}])
    assert text.endswith("<|im_start|>assistant\n8")
    with pytest.raises(PersonaGuardError, match=r"messages\[0\]"):
        render_messages(tokenizer, [{"role": "robot", "content": "x"}])


# ---- the real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url(smollm_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-m", "persona_guard.cli", "serve", "--model", "smollm2-135m",
                                "--device", "cpu", "--port", "0"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if "persona-guard serve:" in line:
                url = line.split(" on ")[1].split()[0]
                break
        else:
            raise AssertionError(f"server exited with {process.wait()}")
        threading.Thread(target=process.stdout.read, daemon=True).start()  # keep the pipe drained
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def post(url: str, body) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.smollm
def test_server_speaks_openai_chat_completions(server_url, smollm):
    with urllib.request.urlopen(f"{server_url}/models", timeout=30) as response:
        assert json.loads(response.read())["data"][0]["id"] == "smollm2-135m"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    status, reply = post(server_url, {"model": "smollm2-135m", "messages": messages, "max_tokens": 6,
                                      "temperature": 0, "logprobs": True, "top_logprobs": 3})
    assert status == 200
    choice = reply["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == reply["usage"]["completion_tokens"] <= 6 and reply["usage"]["prompt_tokens"] > 10
    assert "".join(entry["token"] for entry in content).strip() == choice["message"]["content"].strip()
    assert all(len(entry["top_logprobs"]) <= 3 and entry["top_logprobs"][0]["logprob"] <= 0 for entry in content)
    # the served greedy answer and logprobs are the in-process model's
    local = LocalChatClient(smollm.model, smollm.tokenizer).complete(messages, max_tokens=6, top_logprobs=3)
    assert local.text.strip() == choice["message"]["content"].strip()
    served_top = {t["token"]: t["logprob"] for t in content[0]["top_logprobs"]}
    assert served_top.keys() == local.first_token_top_logprobs.keys()
    assert all(served_top[k] == pytest.approx(v, abs=1e-3) for k, v in local.first_token_top_logprobs.items())


@pytest.mark.smollm
def test_server_rejects_bad_requests_with_json_400(server_url):
    for body, field in [({"messages": []}, "messages"), ({"messages": [{"role": "user"}]}, "messages[0]"),
                        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, "logprobs"),
                        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}, "max_tokens"),
                        ({"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}, "unknown model"),
                        ([1, 2], "JSON object")]:
        status, reply = post(server_url, body)
        assert status == 400 and field in reply["error"]["message"], (body, reply)


@pytest.mark.smollm
def test_logprob_judge_over_http_reads_digit_split_numbers(server_url):
    """SmolLM2 writes numbers digit by digit; with prefill the judge reads the whole number."""
    client = OpenAIChatClient(server_url, "smollm2-135m", prefill=True, timeout=600, max_retries=0)
    judge = LogprobJudge(client)
    reading = judge.read("What is 40 + 45? Reply with only the number.")
    print(f"SmolLM2 reading of '40 + 45': {reading}")
    assert reading.expanded and reading.number_mass > 0.25
    assert reading.score is not None and reading.score > 10  # face-value first digits would stay <= 9
    plain = LogprobJudge(OpenAIChatClient(server_url, "smollm2-135m", timeout=600, max_retries=0)).read(
        "What is 40 + 45? Reply with only the number.")
    assert not plain.expanded and plain.score <= 9


@pytest.mark.smollm
def test_trait_generation_against_smollm_feeds_errors_back(server_url):
    client = OpenAIChatClient(server_url, "smollm2-135m", timeout=600, max_retries=0)
    with pytest.raises(TraitGenerationError) as caught:
        generate_trait(client, "sarcastic", "Answers with biting sarcasm.", max_attempts=2, max_tokens=32)
    error = caught.value
    assert len(error.attempts) == 2 and all(a.error for a in error.attempts)
    assert "2 attempts" in str(error) and error.attempts[-1].error in str(error)
    # the first validation error went back to the model as the next user turn
    roles = [m["role"] for m in error.conversation]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert error.attempts[0].error in error.conversation[3]["content"]
    assert error.conversation[2]["content"] == error.attempts[0].reply
