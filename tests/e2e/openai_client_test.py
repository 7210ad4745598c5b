"""The agent's inference API driven by the unmodified `openai` Python client (issue 13, item 1).

A new user points the current `openai` package at a serving agent. Before this test
existed: models.list() was a 404, embeddings.create() a 400 (the client asks for
base64 unless told otherwise), stream=True a 400, and max_completion_tokens was
ignored so chat replies stopped at 16 tokens.

Two real jobs on loopback, each one fedge-aggregator and one fedge-agent:
  - a generative job on a tiny Llama pretrained here with fedge-pretrain (as
    generative_job_test.py builds it): models, chat.completions and completions,
    streamed and not, max_tokens / max_completion_tokens, stop, seed, text content
    parts, and the 400s for what is not implemented (n > 1, logprobs, a tool_choice
    naming a tool not given, tools on a model without a tool format, a json_schema with a keyword
    fedge cannot hold the reply to, embeddings on a causal LM), JSON mode
    (response_format json_object), and structured outputs (parse() into a pydantic model);
  - a MiniLM job: models and embeddings in the default (base64), float and base64
    encodings, each compared with the float output of a plain HTTP /v1/embeddings;
    dimensions, token arrays and generation on a classifier refused with 400s.

The client comes from PyPI (pinned, OPENAI_VERSION) into a cached venv under
~/.cache/fedge (FEDGE_OPENAI_VENV overrides the path). Without network the venv cannot
be built: the test skips, except under CI=true where it fails.

Run by ctest (label e2e, name e2e_openai_client) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import base64
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import unittest

from local_job_test import AGENT, AGGREGATOR, FEDGE, JOB_TEMPLATE, MODEL, BUILD, free_port, http, wait_for

OPENAI_VERSION = "3.60.0"  # the current release on PyPI when this test was written
PRETRAIN = os.path.join(BUILD, "agent", "fedge-pretrain")
IN_CI = os.environ.get("CI", "").lower() == "true"

GENERATIVE_JOB = """\
apiVersion: fedge.io/v1alpha1
kind: FederatedTrainingJob
metadata:
  name: {name}
spec:
  model:
    path: {model}
    family: llama
    task: causal-lm
    maxSeqLen: 48
  adapter:
    rank: 4
    alpha: 8
    targetModules: [q_proj, v_proj]
  data:
    path: {data}
  agents:
    minAgents: 1
    replicas: 1
  rounds:
    total: 1
    quorum: 1
    timeoutSeconds: 300
    localSteps: 5
    batchSize: 8
    learningRate: 0.005
    seed: 5
  compression:
    codec: int8
"""


def load_openai():
    """Imports the pinned `openai` from a cached venv, building it on first use."""
    tag = f"openai-{OPENAI_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"
    venv = os.environ.get("FEDGE_OPENAI_VENV") or os.path.join(os.path.expanduser("~"), ".cache", "fedge", tag)
    site = os.path.join(venv, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages")
    marker = os.path.join(venv, ".installed")
    os.makedirs(os.path.dirname(venv), exist_ok=True)
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs build it once
        if not os.path.exists(marker):
            shutil.rmtree(venv, ignore_errors=True)
            # Same interpreter as this test, so its site-packages can be imported here.
            for cmd in ([sys.executable, "-m", "venv", venv],
                        [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet",
                         "--disable-pip-version-check", f"openai=={OPENAI_VERSION}"]):
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if out.returncode != 0:
                    raise RuntimeError(f"building the openai venv failed: {' '.join(cmd)}\n{out.stdout}{out.stderr}")
            with open(marker, "w") as f:
                f.write(OPENAI_VERSION + "\n")
    sys.path.insert(0, site)
    import openai  # noqa: E402  (from the venv)
    assert openai.__version__ == OPENAI_VERSION, (openai.__version__, openai.__file__)
    return openai


try:
    openai = load_openai()
    OPENAI_ERROR = None
except Exception as e:  # noqa: BLE001 - reported below
    openai = None
    OPENAI_ERROR = f"{type(e).__name__}: {e}"


def setUpModule():
    if openai is None:
        if IN_CI:
            raise AssertionError(f"CI=true and the openai client could not be installed: {OPENAI_ERROR}")
        raise unittest.SkipTest(f"the openai client could not be installed (no PyPI?): {OPENAI_ERROR}")


def answers(url):
    try:
        return http("GET", url, timeout=2)[0]
    except OSError:
        return None


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Job:
    """One fedge-aggregator and one fedge-agent serving `job_yaml` on loopback."""

    def __init__(self, tmp, job_yaml, agent_data):
        self.tmp = tmp
        grpc_port, agg_http = free_port(), free_port()
        self.port = free_port()
        self.procs = []
        self.agg_log = os.path.join(tmp, "aggregator.log")
        self.agent_log = os.path.join(tmp, "agent.log")
        with open(self.agg_log, "w") as log:
            self.procs.append(("aggregator", subprocess.Popen(
                [AGGREGATOR, "--config", job_yaml, "--listen", f"127.0.0.1:{grpc_port}", "--http",
                 f"127.0.0.1:{agg_http}", "--checkpoint-dir", os.path.join(tmp, "ckpt")],
                stdout=log, stderr=subprocess.STDOUT)))
        with open(self.agent_log, "w") as log:
            self.procs.append(("agent", subprocess.Popen(
                [AGENT, "--config", job_yaml, "--aggregator", f"127.0.0.1:{grpc_port}", "--agent-id", "agent-0",
                 "--data-dir", agent_data, "--http", f"127.0.0.1:{self.port}",
                 "--state-dir", os.path.join(tmp, "agent-state")],
                stdout=log, stderr=subprocess.STDOUT)))

    def wait_done(self, timeout):
        """Waits until the job's rounds are over and the agent serves the final global:
        the served version no longer changes while the test runs."""
        agent = self.procs[1][1]

        def done():
            with open(self.agent_log) as f:
                return "job done; serving until stopped" in f.read()
        try:
            wait_for(done, timeout, "the job to finish", [("agent", agent)])
            wait_for(lambda: answers(f"http://127.0.0.1:{self.port}/readyz") == 200, 30, "agent /readyz",
                     [("agent", agent)])
        except AssertionError:
            for path in (self.agg_log, self.agent_log):
                with open(path) as f:
                    print(f"--- {path}\n{f.read()[-4000:]}", file=sys.stderr)
            raise

    def client(self):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="not-needed-on-loopback",
                             max_retries=0, timeout=120)

    def close(self):
        for _, p in reversed(self.procs):
            stop(p)


class OpenAiGenerativeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(PRETRAIN) or not os.path.exists("/usr/share/wordnet/data.noun"):
            raise AssertionError("needs fedge-pretrain (built with the agent) and wordnet-base")
        cls.tmp = tempfile.mkdtemp(prefix="fedge-openai-gen-")
        model = os.path.join(cls.tmp, "model")
        # The same tiny Llama generative_job_test.py pretrains (fixed steps and seed).
        out = subprocess.run([PRETRAIN, "--out", model, "--steps", "150", "--max-seconds", "0", "--seed", "1",
                              "--hidden", "64", "--layers", "2", "--heads", "2", "--kv-heads", "1",
                              "--intermediate", "128", "--vocab-size", "512", "--max-lines", "5000",
                              "--threads", "1"], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        data = os.path.join(cls.tmp, "data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--task", "gloss", "--agents", "1", "--alpha", "0.5",
                              "--seed", "3", "--test-size", "40", "--max-train", "300", "--out", data],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        job = os.path.join(cls.tmp, "job.yaml")
        with open(job, "w") as f:
            f.write(GENERATIVE_JOB.format(name="openai-gen", model=model, data=data))
        cls.job = Job(cls.tmp, job, os.path.join(data, "agent-0"))
        try:
            cls.job.wait_done(300)
        except BaseException:
            cls.job.close()
            raise
        cls.client = cls.job.client()
        cls.model_id = cls.client.models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        cls.job.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def chat(self, **kw):
        args = dict(model=self.model_id, messages=[{"role": "user", "content": "dog"}], temperature=0)
        args.update(kw)
        return self.client.chat.completions.create(**args)

    def test_models_list_and_retrieve(self):
        models = self.client.models.list()
        self.assertEqual(len(models.data), 1)
        m = models.data[0]
        self.assertEqual(m.id, "default/openai-gen")
        self.assertEqual(m.object, "model")
        self.assertEqual(m.owned_by, "fedge")
        extra = m.model_dump()
        self.assertGreaterEqual(extra["global_version"], 1)
        self.assertEqual(extra["served_as"], f"{m.id}@v{extra['global_version']}")
        # The id has a "/": the client percent-encodes it and the agent decodes it.
        self.assertEqual(self.client.models.retrieve(m.id).model_dump(), extra)
        # Other ids: OpenAI's 404 model_not_found naming the id and the one this agent serves.
        for other in ("gpt-4o", "default/other-job"):
            with self.assertRaises(openai.NotFoundError) as ctx:
                self.client.models.retrieve(other)
            self.assertEqual(ctx.exception.status_code, 404)
            self.assertEqual(set(ctx.exception.body), {"message", "type", "param", "code"})
            self.assertEqual(ctx.exception.body["code"], "model_not_found")
            self.assertIn(other, ctx.exception.message)

    def test_chat_max_completion_tokens_is_honoured(self):
        # Regression: max_completion_tokens was ignored and replies stopped at 16 tokens.
        r = self.chat(max_completion_tokens=40)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertIsInstance(r.choices[0].message.content, str)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertLessEqual(r.usage.completion_tokens, 40)
        if r.choices[0].finish_reason == "length":
            self.assertEqual(r.usage.completion_tokens, 40)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertTrue(r.model.startswith(self.model_id + "@v"), r.model)
        r = self.chat(max_tokens=3)
        self.assertLessEqual(r.usage.completion_tokens, 3)
        print(f"\nchat reply to 'dog' (greedy, <= 40 tokens): {self.chat(max_completion_tokens=40).choices[0].message.content!r}")

    def test_chat_stream_matches_the_reply_token_by_token(self):
        whole = self.chat(max_completion_tokens=30)
        stream = self.chat(max_completion_tokens=30, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        self.assertGreaterEqual(len(chunks), 3)
        self.assertTrue(all(c.object == "chat.completion.chunk" for c in chunks))
        self.assertEqual(len({c.id for c in chunks}), 1)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        usage = chunks[-1]
        self.assertEqual(usage.choices, [])
        self.assertEqual(usage.usage.model_dump(), whole.usage.model_dump())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        self.assertEqual(chunks[-2].choices[0].finish_reason, whole.choices[0].finish_reason)
        # Token by token: several chunks carry text (unless the reply is that short).
        with_text = [c for c in chunks if c.choices and c.choices[0].delta.content]
        self.assertGreaterEqual(len(with_text), min(3, whole.usage.completion_tokens))
        # Without include_usage there is no usage chunk.
        chunks = list(self.chat(max_completion_tokens=5, stream=True))
        self.assertTrue(all(c.usage is None for c in chunks))
        self.assertIsNotNone(chunks[-1].choices[0].finish_reason)

    def test_json_mode_replies_are_json_objects(self):
        # response_format json_object: every token keeps the reply a JSON object's
        # prefix; one the model ends by itself parses as an object. Streamed the same.
        for seed in range(1, 5):
            kw = dict(response_format={"type": "json_object"}, max_completion_tokens=40, temperature=1.0, seed=seed)
            r = self.chat(**kw)
            text = r.choices[0].message.content
            self.assertTrue(text.lstrip().startswith("{"), text)
            if r.choices[0].finish_reason == "stop":
                self.assertIsInstance(json.loads(text), dict)
            streamed = "".join(c.choices[0].delta.content or "" for c in self.chat(stream=True, **kw) if c.choices)
            self.assertEqual(streamed, text)
        print(f"\nJSON-mode reply to 'dog' (seed 1, <= 40 tokens): {self.chat(response_format={'type': 'json_object'}, max_completion_tokens=40, temperature=1.0, seed=1).choices[0].message.content!r}")

    def test_structured_outputs_parse_into_a_pydantic_model(self):
        # client.chat.completions.parse(response_format=<pydantic model>): the client
        # sends the model's strict JSON schema ($defs, $ref, enums, an Optional, a
        # bounded list) and validates the reply into the model. Every field is
        # bounded, so each sampled reply ends, and every one must parse.
        import typing
        import pydantic

        class Place(pydantic.BaseModel):
            city: typing.Literal["Oslo", "Lima"]
            floors: typing.Annotated[typing.List[typing.Literal[1, 2]], pydantic.Field(max_length=3)]

        class Weather(pydantic.BaseModel):
            sky: typing.Literal["clear", "cloudy", "rain"]
            windy: bool
            place: Place
            note: typing.Optional[typing.Literal["cold", "warm"]]

        seen = set()
        for seed in range(1, 7):
            r = self.client.chat.completions.parse(model=self.model_id, messages=[{"role": "user", "content": "dog"}],
                                                   response_format=Weather, max_completion_tokens=200,
                                                   temperature=1.0, seed=seed)
            choice = r.choices[0]
            self.assertEqual(choice.finish_reason, "stop", choice.message.content)
            self.assertIsInstance(choice.message.parsed, Weather, choice.message.content)
            self.assertLessEqual(len(choice.message.parsed.place.floors), 3)
            seen.add(choice.message.parsed.sky)
            if seed == 1:
                print(f"\nstructured reply to 'dog' (seed 1): {choice.message.content!r} -> {choice.message.parsed!r}")
        self.assertGreater(len(seen), 1)  # sampled, not one fixed answer
        # Streamed, the same text.
        fmt = {"type": "json_schema", "json_schema": {"name": "Weather", "strict": True,
                                                     "schema": openai.lib._pydantic.to_strict_json_schema(Weather)}}
        kw = dict(response_format=fmt, max_completion_tokens=200, temperature=1.0, seed=3)
        whole = self.chat(**kw).choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in self.chat(stream=True, **kw) if c.choices)
        self.assertEqual(streamed, whole)
        Weather.model_validate_json(whole)

    def test_content_as_text_parts_seed_and_system_messages(self):
        plain = self.chat(max_completion_tokens=12)
        parts = self.chat(max_completion_tokens=12, messages=[{"role": "user", "content": [{"type": "text", "text": "dog"}]}])
        self.assertEqual(parts.choices[0].message.content, plain.choices[0].message.content)
        sampled = dict(temperature=1.0, seed=7, max_completion_tokens=12)
        self.assertEqual(self.chat(**sampled).choices[0].message.content, self.chat(**sampled).choices[0].message.content)
        r = self.chat(messages=[{"role": "developer", "content": "Define nouns."}, {"role": "user", "content": "cat"}],
                      max_completion_tokens=8)
        self.assertEqual(r.object, "chat.completion")

    def test_completions_streamed_and_not_with_stop(self):
        kw = dict(model=self.model_id, prompt="dog:", max_tokens=24, temperature=0)
        whole = self.client.completions.create(**kw)
        self.assertEqual(whole.object, "text_completion")
        self.assertLessEqual(whole.usage.completion_tokens, 24)
        chunks = list(self.client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
        self.assertEqual("".join(c.choices[0].text for c in chunks if c.choices), whole.choices[0].text)
        self.assertEqual(chunks[-1].usage.model_dump(), whole.usage.model_dump())
        # Default max_tokens is OpenAI's 16 for completions.
        short = self.client.completions.create(model=self.model_id, prompt="dog:", temperature=0)
        self.assertLessEqual(short.usage.completion_tokens, 16)
        # stop: the greedy text is cut right before the first stop string.
        text = whole.choices[0].text
        cut = next((s for s in (" ", "e", "a") if s in text), None)
        self.assertIsNotNone(cut, f"no stop candidate in {text!r}")
        for stop in (cut, [cut, "\u0000"]):
            r = self.client.completions.create(**kw, stop=stop)
            self.assertEqual(r.choices[0].text, text[:text.index(cut)])
            self.assertEqual(r.choices[0].finish_reason, "stop")
        streamed = list(self.client.completions.create(**kw, stop=cut, stream=True))
        self.assertEqual("".join(c.choices[0].text for c in streamed), text[:text.index(cut)])
        self.assertEqual(streamed[-1].choices[0].finish_reason, "stop")

    def test_timings_in_replies_and_token_metrics_on_the_agent(self):
        # llama.cpp's "timings" object: an extra field the client keeps (model_dump has it).
        r = self.chat(max_completion_tokens=12)
        t = r.model_dump()["timings"]
        self.assertEqual(t["prompt_n"], r.usage.prompt_tokens)
        self.assertEqual(t["predicted_n"], r.usage.completion_tokens)
        self.assertGreater(t["prompt_ms"], 0)
        chunks = list(self.chat(max_completion_tokens=12, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[-1].model_dump()["timings"]["predicted_n"], chunks[-1].usage.completion_tokens)
        self.assertEqual(chunks[-2].model_dump()["timings"], chunks[-1].model_dump()["timings"])
        # The agent's /metrics has the per-request series for the chat endpoint.
        code, body = http("GET", f"http://127.0.0.1:{self.job.port}/metrics")
        self.assertEqual(code, 200)
        label = '{endpoint="/v1/chat/completions"}'
        for series in ("fedge_agent_time_to_first_token_seconds_count", "fedge_agent_inter_token_latency_seconds_count",
                       "fedge_agent_prompt_tokens_total", "fedge_agent_generated_tokens_total"):
            line = next((l for l in body.splitlines() if l.startswith(series + label)), None)
            self.assertIsNotNone(line, f"{series}{label} not in /metrics")
            self.assertGreater(float(line.split()[-1]), 0, line)
        self.assertIn("fedge_agent_inference_requests_waiting 0", body)

    def test_a_client_leaving_mid_stream_leaves_the_agent_serving(self):
        stream = self.client.completions.create(model=self.model_id, prompt="tree:", max_tokens=4000,
                                                temperature=1.0, seed=3, stream=True)
        first = next(iter(stream))
        self.assertEqual(first.object, "text_completion")
        stream.close()
        r = self.client.completions.create(model=self.model_id, prompt="tree:", max_tokens=2, temperature=0)
        self.assertLessEqual(r.usage.completion_tokens, 2)

    def test_unsupported_features_are_clear_400s(self):
        cases = [
            (dict(n=2), "n"),
            (dict(logprobs=True), "logprobs"),
            (dict(logprobs=True, top_logprobs=2), "logprobs"),
            (dict(tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
                  tool_choice={"type": "function", "function": {"name": "get_time"}}), "tool_choice"),
            (dict(tool_choice="auto"), "tool_choice"),
            (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}}}),
             "response_format.json_schema.schema"),
            (dict(presence_penalty=0.5), "presence_penalty"),
            (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]),
             "messages"),
        ]
        for kw, param in cases:
            for stream in (False, True):
                with self.subTest(kw=kw, stream=stream):
                    with self.assertRaises(openai.BadRequestError) as ctx:
                        self.chat(stream=stream, **kw)
                    e = ctx.exception
                    self.assertEqual(e.status_code, 400)
                    self.assertEqual(e.param, param)
                    self.assertEqual(e.type, "invalid_request_error")
                    self.assertTrue(e.message)
        # fedge's own ChatML template has no tool format: tools are refused for this model.
        for stream in (False, True):
            with self.subTest(tools=True, stream=stream):
                with self.assertRaises(openai.BadRequestError) as ctx:
                    self.chat(stream=stream, tools=[{"type": "function", "function": {"name": "get_weather"}}])
                self.assertEqual(ctx.exception.code, "unsupported_for_model")
                self.assertIn("tool", ctx.exception.message)
        for kw, param in [(dict(logprobs=2), "logprobs"), (dict(echo=True), "echo"), (dict(n=3), "n"),
                          (dict(best_of=2), "best_of"), (dict(suffix="!"), "suffix")]:
            with self.subTest(kw=kw):
                with self.assertRaises(openai.BadRequestError) as ctx:
                    self.client.completions.create(model=self.model_id, prompt="dog:", **kw)
                self.assertEqual(ctx.exception.param, param)
        with self.assertRaises(openai.BadRequestError) as ctx:
            self.client.embeddings.create(model=self.model_id, input="dog")
        self.assertEqual(ctx.exception.code, "unsupported_for_model")
        # The raw error body keeps OpenAI's shape.
        code, body = http("POST", f"http://127.0.0.1:{self.job.port}/v1/chat/completions",
                          {"messages": [{"role": "user", "content": "x"}], "n": 2})
        self.assertEqual(code, 400)
        self.assertEqual(set(json.loads(body)["error"]), {"message", "type", "param", "code"})


def floats_http(port, inputs):
    code, body = http("POST", f"http://127.0.0.1:{port}/v1/embeddings",
                      {"input": inputs, "encoding_format": "float"})
    assert code == 200, body
    return [d["embedding"] for d in json.loads(body)["data"]]


class OpenAiEmbeddingsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(os.path.join(MODEL, "model.safetensors")):
            raise AssertionError(f"model not found at {MODEL}: run scripts/fetch-model.sh")
        cls.tmp = tempfile.mkdtemp(prefix="fedge-openai-emb-")
        data = os.path.join(cls.tmp, "data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--agents", "1", "--alpha", "0.5", "--seed", "3",
                              "--test-size", "40", "--max-train", "200", "--out", data],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        with open(os.path.join(data, "meta.json")) as f:
            labels = json.load(f)["labels"]
        job = os.path.join(cls.tmp, "job.yaml")
        with open(job, "w") as f:
            f.write(JOB_TEMPLATE.format(name="openai-minilm", model=MODEL, data=data, agents=1, rounds=1, steps=2,
                                        labels=json.dumps(labels), compression="{codec: int8}"))
        cls.job = Job(cls.tmp, job, os.path.join(data, "agent-0"))
        try:
            cls.job.wait_done(300)
        except BaseException:
            cls.job.close()
            raise
        cls.client = cls.job.client()

    @classmethod
    def tearDownClass(cls):
        cls.job.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_models_list_and_retrieve(self):
        m = self.client.models.list().data[0]
        self.assertEqual(m.id, "default/openai-minilm")
        self.assertEqual(self.client.models.retrieve(m.id).id, m.id)
        self.assertGreaterEqual(m.model_dump()["global_version"], 1)

    def test_embeddings_in_every_encoding_equal_the_float_output(self):
        # Regression: the client's default (it asks for base64) was a 400.
        texts = ["oak: a deciduous tree", "dog: a domesticated canine", "x"]
        want = floats_http(self.job.port, texts)
        self.assertEqual(len(want[0]), 384)
        default = self.client.embeddings.create(model="default/openai-minilm", input=texts)
        floats = self.client.embeddings.create(model="default/openai-minilm", input=texts, encoding_format="float")
        b64 = self.client.embeddings.create(model="default/openai-minilm", input=texts, encoding_format="base64")
        for r in (default, floats, b64):
            self.assertEqual(r.object, "list")
            self.assertEqual([d.index for d in r.data], [0, 1, 2])
            self.assertTrue(r.model.startswith("default/openai-minilm@v"), r.model)
            self.assertGreater(r.usage.prompt_tokens, 0)
        # base64 asked for explicitly comes back as the string (little-endian float32).
        decoded = []
        for d in b64.data:
            raw = base64.b64decode(d.embedding)
            decoded.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
        for got in ([d.embedding for d in default.data], [d.embedding for d in floats.data], decoded):
            self.assertEqual(len(got), 3)
            for g, w in zip(got, want):
                self.assertEqual(len(g), len(w))
                # float32 values: JSON carries them exactly, base64 bit for bit.
                self.assertEqual(g, w)
        # One string (not a list); "dimensions" equal to the model's is accepted. Compared with
        # a one-text float request: a padded batch may differ from it in the last bits.
        single = self.client.embeddings.create(model="m", input="oak: a deciduous tree", dimensions=384)
        self.assertEqual(len(single.data), 1)
        self.assertEqual(single.data[0].embedding, floats_http(self.job.port, "oak: a deciduous tree")[0])

    def test_refusals_are_clear_400s(self):
        for kw, param, code in [
            (dict(input="oak", dimensions=128), "dimensions", "unsupported_value"),
            (dict(input=[1, 2, 3]), "input", "unsupported_input"),
            (dict(input=[[1, 2], [3]]), "input", "unsupported_input"),
            (dict(input=""), "input", "empty_input"),
        ]:
            with self.subTest(kw=kw):
                with self.assertRaises(openai.BadRequestError) as ctx:
                    self.client.embeddings.create(model="m", **kw)
                self.assertEqual(ctx.exception.param, param)
                self.assertEqual(ctx.exception.code, code)
        # Generation on a classifier job says why, streamed or not.
        for stream in (False, True):
            with self.assertRaises(openai.BadRequestError) as ctx:
                self.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                    stream=stream)
            self.assertEqual(ctx.exception.code, "unsupported_for_model")
            self.assertIn("not a causal language model", ctx.exception.message)
        with self.assertRaises(openai.BadRequestError):
            self.client.completions.create(model="m", prompt="hi")


if __name__ == "__main__":
    unittest.main()
