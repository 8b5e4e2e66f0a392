"""`lamina serve` through the official `openai` Python client.

Run by cli/tests/serve.rs as `python serve_openai.py BASE_URL MODEL` against a
server it started (default flags, 4 slots). Exits non-zero on the first
failed check; prints one line per check.
"""

import sys
import threading

import openai

BASE, MODEL = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0, timeout=600)
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {name}", flush=True)


ids = [m.id for m in client.models.list().data]
check("models.list names the model", MODEL in ids, ids)

r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0)
c = r.choices[0]
check("chat: an answer", c.message.role == "assistant" and c.message.content.strip(), r)
check("chat: finish_reason", c.finish_reason in ("stop", "length"), c.finish_reason)
check(
    "chat: usage",
    r.usage.prompt_tokens > 0
    and 0 < r.usage.completion_tokens <= 24
    and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
    r.usage,
)
r2 = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0)
check("chat: greedy answers repeat", r2.choices[0].message.content == c.message.content,
      (r2.choices[0].message.content, c.message.content))

parts, finish, usage, roles = [], None, None, []
for ch in client.chat.completions.create(
    model=MODEL, messages=CHAT, max_tokens=24, temperature=0, stream=True,
    stream_options={"include_usage": True},
):
    if ch.usage is not None:
        usage = ch.usage
    for x in ch.choices:
        if x.delta.role:
            roles.append(x.delta.role)
        if x.delta.content:
            parts.append(x.delta.content)
        if x.finish_reason:
            finish = x.finish_reason
check("chat stream: same text as whole", "".join(parts) == c.message.content,
      ("".join(parts), c.message.content))
check("chat stream: role first, finish last", roles == ["assistant"] and finish == c.finish_reason,
      (roles, finish))
check("chat stream: usage chunk", usage is not None and usage.completion_tokens == r.usage.completion_tokens,
      usage)

t = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                              temperature=0)
check("completion: text", t.choices[0].text.strip() and t.object == "text_completion", t)
streamed = "".join(
    ch.choices[0].text
    for ch in client.completions.create(model=MODEL, prompt="The capital of France is",
                                        max_tokens=8, temperature=0, stream=True)
    if ch.choices
)
check("completion stream: same text", streamed == t.choices[0].text, (streamed, t.choices[0].text))

s = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0,
                              stop=[" 7"])
check("stop string: cut before it", " 7" not in s.choices[0].text and s.choices[0].finish_reason == "stop",
      s.choices[0])

# Eight streaming clients at once (four slots: half of them wait in the queue).
results, errors = {}, []


def stream_one(i):
    try:
        text = ""
        for ch in client.chat.completions.create(
            model=MODEL, max_tokens=16, temperature=0.7, seed=i, stream=True,
            messages=[{"role": "user", "content": f"Write a sentence about the number {i}."}],
        ):
            for x in ch.choices:
                text += x.delta.content or ""
        results[i] = text
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(f"{i}: {e!r}")


threads = [threading.Thread(target=stream_one, args=(i,)) for i in range(8)]
for th in threads:
    th.start()
for th in threads:
    th.join()
check("8 concurrent streams", not errors and len(results) == 8 and all(results.values()),
      (errors, results))

for name, call, exc in [
    ("unknown model: 404", lambda: client.chat.completions.create(model="nope", messages=CHAT),
     openai.NotFoundError),
    ("no messages: 400", lambda: client.chat.completions.create(model=MODEL, messages=[]),
     openai.BadRequestError),
    ("max_tokens 0: 400", lambda: client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=0),
     openai.BadRequestError),
    ("presence_penalty: 400",
     lambda: client.chat.completions.create(model=MODEL, messages=CHAT, presence_penalty=0.5),
     openai.BadRequestError),
]:
    try:
        call()
        check(name, False, "no error")
    except exc as e:
        check(name, isinstance(e.body, dict) and e.body.get("message"), e.body)

print("all ok", flush=True)
