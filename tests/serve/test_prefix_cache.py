"""Prefix KV cache: reusing a cached system prompt / earlier turns gives exactly the answers a full
prefill gives (greedy), for sequential, concurrent, evicted and per-adapter cases, and over HTTP."""

import threading

import httpx
import openai

from glmtune.inference.batching import BASE, BatchingEngine, GenRequest
from glmtune.inference.prefix_cache import PrefixCache

SYS_A = "你是一名资深的普通话朗读测评专家，负责对中小学生的朗读录音进行客观、细致的评分。" * 3
SYS_B = "You are a careful grader of reading-aloud recordings; answer with scores and one comment. " * 3
USERS = ["请评分：春天来了，小草从地里钻出来。", "请评分：爷爷喜欢在院子里种花。", "请评分：老师耐心地给我们讲课。",
         "Score this: the quick brown fox jumps over the lazy dog."]


def conv(system, user):
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def reqs_for(engine, convs):
    out = []
    for m in convs:
        ids = engine.prompt_ids(m)
        out.append((ids, engine.prefix_boundary(m, ids)))
    return out


def run_seq(be, reqs, **kw):
    return [be.generate(ids, prefix_len=n, max_new_tokens=16, min_tokens=16, **kw) for ids, n in reqs]


def reference(engine, reqs, **kw):
    be = BatchingEngine(engine, max_batch_size=8, prefix_cache_tokens=0)
    try:
        return [r.tokens for r in run_seq(be, reqs, **kw)]
    finally:
        be.close()


def test_boundary_is_the_rendered_earlier_messages(served):
    engine = served.engine
    m = conv(SYS_A, USERS[0])
    ids = engine.prompt_ids(m)
    n = engine.prefix_boundary(m, ids)
    assert 16 < n < len(ids)
    assert engine.tokenizer.decode(ids[:n]).endswith(SYS_A.strip())  # exactly the system turn
    assert engine.prefix_boundary(m[1:], engine.prompt_ids(m[1:])) == 0  # a lone message: nothing to cache
    chat = m + [{"role": "assistant", "content": "语速:4;停顿:5"}, {"role": "user", "content": USERS[1]}]
    chat_ids = engine.prompt_ids(chat)
    k = engine.prefix_boundary(chat, chat_ids)
    assert n < k < len(chat_ids) and chat_ids[:len(ids)] == ids  # earlier turns are a prefix too


def test_sequential_hits_equal_full_prefill(served):
    engine = served.engine
    reqs = reqs_for(engine, [conv(SYS_A, u) for u in USERS] + [conv(SYS_B, u) for u in USERS[:2]])
    ref = reference(engine, reqs, adapter=BASE)
    be = BatchingEngine(engine, max_batch_size=8, prefix_cache_tokens=4096)
    try:
        out = run_seq(be, reqs, adapter=BASE)
        pc = be.prefix_cache
        assert [r.tokens for r in out] == ref
        assert [r.cached_tokens for r in out] == [0, reqs[0][1], reqs[0][1], reqs[0][1], 0, reqs[4][1]]
        assert pc.hits == 4 and len(pc) == 2 and pc.tokens == reqs[0][1] + reqs[4][1]
        # A multi-turn follow-up reuses the first turn's system prompt and stores its own longer boundary.
        chat = conv(SYS_A, USERS[0]) + [{"role": "assistant", "content": engine.tokenizer.decode(out[0].tokens)},
                                        {"role": "user", "content": USERS[2]}]
        (ids, n), = reqs_for(engine, [chat])
        follow = be.generate(ids, prefix_len=n, max_new_tokens=16, min_tokens=16, adapter=BASE)
        assert follow.cached_tokens == reqs[0][1] and follow.tokens == reference(engine, [(ids, n)], adapter=BASE)[0]
        again = be.generate(ids, prefix_len=n, max_new_tokens=16, min_tokens=16, adapter=BASE)
        assert again.cached_tokens == n and again.tokens == follow.tokens
    finally:
        be.close()


def test_cached_prefill_matches_full_prefill_numerically(served):
    """Stronger than equal argmax on a tiny random model: the logits and the whole KV agree."""
    import torch

    engine = served.engine
    (ids1, n1), (ids2, n2) = reqs_for(engine, [conv(SYS_A, USERS[0]), conv(SYS_A, USERS[1])])
    be, be0 = (BatchingEngine(engine, prefix_cache_tokens=t) for t in (4096, 0))
    try:
        be._adapter = be0._adapter = BASE
        with engine.lock, torch.inference_mode(), engine.model.disable_adapter():
            be._prefill_one(GenRequest(prompt_ids=ids1, prefix_len=n1))
            req = GenRequest(prompt_ids=ids2, prefix_len=n2)
            kv, logits = be._prefill_one(req)
            kv0, logits0 = be0._prefill_one(GenRequest(prompt_ids=ids2, prefix_len=n2))
        assert req.cached_tokens == n1 == n2
        assert torch.allclose(logits, logits0, atol=1e-5, rtol=1e-4), (logits - logits0).abs().max()
        for (k, v), (k0, v0) in zip(kv, kv0):
            assert k.shape == k0.shape and torch.allclose(k, k0, atol=1e-5) and torch.allclose(v, v0, atol=1e-5)
    finally:
        be.close()
        be0.close()


def test_concurrent_requests_sharing_a_system_prompt(served):
    engine = served.engine
    reqs = reqs_for(engine, [conv(SYS_A, u) for u in USERS])
    ref = reference(engine, reqs, adapter=BASE)
    be = BatchingEngine(engine, max_batch_size=8, prefix_cache_tokens=4096)
    try:
        events = [threading.Event() for _ in reqs]
        with be._cv:  # all four wait together, so one admission prefills them back to back
            subs = [be.submit(GenRequest(prompt_ids=ids, prefix_len=n, max_new_tokens=16, min_tokens=16,
                                         adapter=BASE, sink=lambda ev, e=e: e.set() if ev[0] != "delta" else None))
                    for (ids, n), e in zip(reqs, events)]
        assert all(e.wait(60) for e in events)
        assert be.max_batch_seen == 4
        assert [r.finish_reason for r in subs] == ["length"] * 4
        assert [r.tokens for r in subs] == ref
        # the first stored the system prompt, the three admitted with it reused it
        assert [r.cached_tokens for r in subs] == [0] + [reqs[0][1]] * 3
    finally:
        be.close()


def test_evicted_prefix_is_recomputed(served):
    engine = served.engine
    reqs = reqs_for(engine, [conv(SYS_A, USERS[0]), conv(SYS_B, USERS[1]), conv(SYS_A, USERS[2])])
    na, nb = reqs[0][1], reqs[1][1]
    ref = reference(engine, reqs, adapter=BASE)
    be = BatchingEngine(engine, max_batch_size=8, prefix_cache_tokens=max(na, nb) + 1)  # room for one prefix
    try:
        out = run_seq(be, reqs, adapter=BASE)
        pc = be.prefix_cache
        assert [r.cached_tokens for r in out] == [0, 0, 0]  # SYS_B pushed SYS_A out before it came back
        assert pc.evictions == 2 and pc.tokens <= pc.max_tokens
        assert [r.tokens for r in out] == ref
    finally:
        be.close()


def test_cache_is_per_adapter(served):
    engine = served.engine
    reqs = reqs_for(engine, [conv(SYS_A, USERS[0]), conv(SYS_A, USERS[1])])
    names = ["alpha", "beta", BASE, "alpha"]
    work = [reqs[0], reqs[1], reqs[1], reqs[1]]
    be0 = BatchingEngine(engine, max_batch_size=8, prefix_cache_tokens=0)
    try:
        ref = [be0.generate(ids, max_new_tokens=12, min_tokens=12, adapter=a).tokens for (ids, _), a in zip(work, names)]
    finally:
        be0.close()
    be = BatchingEngine(engine, max_batch_size=8, prefix_cache_tokens=4096)
    try:
        out = [be.generate(ids, prefix_len=n, max_new_tokens=12, min_tokens=12, adapter=a) for (ids, n), a in zip(work, names)]
        assert [r.tokens for r in out] == ref
        assert [r.cached_tokens for r in out] == [0, 0, 0, reqs[0][1]]  # only alpha's own entry is reused
        assert len(ref[0]) == 12 and len({tuple(t) for t in ref[1:]}) == 3  # the adapters really differ
    finally:
        be.close()


def test_prefix_cache_lru_and_longest_match():
    import torch

    pc = PrefixCache(max_tokens=60, min_tokens=2)
    kv = [(torch.arange(40.).view(1, 1, 40, 1), -torch.arange(40.).view(1, 1, 40, 1))]
    ids = list(range(100, 140))
    assert pc.store(None, ids[:10], kv) and pc.store(None, ids[:30], kv)
    assert not pc.store(None, ids[:10], kv)  # already there: refreshed, not duplicated
    n, hit = pc.lookup(None, ids)
    assert n == 30 and hit[0][0].shape == (1, 1, 30, 1) and hit[0][1][0, 0, -1, 0] == -29
    assert pc.lookup(None, ids[:30])[0] == 10  # at least one token must be left to prefill
    assert pc.lookup("other", ids) == (0, None) and pc.lookup(None, [1] + ids)[0] == 0
    assert pc.store(None, ids[:25] + [7], kv)  # 66 tokens > 60: the least recently used (ids[:30]) goes
    assert pc.tokens == 36 and pc.evictions == 1 and pc.lookup(None, ids)[0] == 10
    assert not pc.store(None, ids[:1], kv) and not pc.store(None, list(range(61)), kv)  # too short / too long


def test_api_with_and_without_prefix_cache(start_app):
    url0, _ = start_app(prefix_cache_tokens=0, max_prompt_tokens=1024)
    url1, _ = start_app(prefix_cache_tokens=8192, max_prompt_tokens=1024)

    def ask(url, user):
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        r = c.chat.completions.create(model="tiny", messages=conv(SYS_A, user), max_tokens=12, temperature=0,
                                      extra_body={"min_tokens": 12})
        return r.choices[0].message.content

    plain = [ask(url0, u) for u in USERS[:3]]
    out = [None] * 3

    def work(i):
        out[i] = ask(url1, USERS[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == plain and all(plain)
    assert ask(url1, USERS[0]) == plain[0]
    stats = httpx.get(f"{url1}/health").json()["prefix_cache"]
    assert stats["hits"] >= 3 and stats["entries"] == 1
    assert httpx.get(f"{url0}/health").json()["prefix_cache"] is None
