"""Token pruning of simwnw_vit_*: SimWnW token removal, SimPrune, EViT, against slow references."""

import math

import pytest
import timm
import torch
from torch.utils.data import default_collate

import simwnw_hf  # noqa: F401
from simwnw_hf.data.geometry import make_geometry
from simwnw_hf.data.views import denormalize
from simwnw_hf.pruning import PairStats, SimWnWSettings, TokenPruningSettings
from simwnw_hf.ssl.pair import encode_pair, plan_pair
from simwnw_hf.tokens import flop_counter
from simwnw_hf.tokens.evit import class_attention, evit_reorganize
from simwnw_hf.tokens.gather import keep_tokens
from simwnw_hf.tokens.simprune import difficulty_offset, match_pairs, prune_count, simprune_select
from simwnw_hf.tokens.simwnw import keep_least_similar, match_tokens, split_by_cost, split_by_need, token_scores

TINY = dict(img_size=32, patch_size=8, depth=4, embed_dim=64, num_heads=2)
PATCH = 8
METHODS = ("simwnw", "simprune", "evit")


def _model(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("simwnw_vit_tiny_patch16_224", num_classes=0, **dict(TINY, **kwargs))


def _configure(model, enabled=True, **settings):
    return model.configure_pair_pruning(TokenPruningSettings(**settings), enabled=enabled)


def _pair(model, x1, x2, g1=None, g2=None):
    """forward_pair with the model's own plan (what a framework does for its online encoder)."""
    return model.forward_pair(x1, x2, model.plan_pair(x1, x2, g1, g2))


def _views(model, batch=3, seed=0):
    """Two 32px views cut (no resize) from 64px sources: view 2 = view 1 shifted by one patch, so the
    overlap matches exactly; each sample has a different amount of overlap-with-noise, so the samples
    differ in how many tokens are similar."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.rand(batch, 3, 64, 64, generator=gen)
    x1 = src[:, :, :32, :32].clone()
    x2 = src[:, :, 8:40, 8:40].clone()
    for b in range(batch):   # corrupt b+1 rows of patches of view 2: those tokens stop matching
        x2[b, :, : 8 * (b + 1)] = torch.rand(3, 8 * (b + 1), 32, generator=gen)
    geo = lambda top, left: make_geometry(top, left, 32, 32, False, (32, 32), (64, 64))  # noqa: E731
    g1 = default_collate([geo(0, 0)] * batch)
    g2 = default_collate([geo(8, 8)] * batch)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(3, 1, 1)
    return (x1 - mean) / std, (x2 - mean) / std, g1, g2


def _block_inputs(model, layer):
    seen = []
    handle = model.blocks[layer].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen, handle


def _gather_ref(x, keep, prefix=1):
    """Slow keep_tokens: a loop over samples and indices."""
    rows = []
    for b in range(x.shape[0]):
        rows.append(torch.stack([x[b, i] for i in range(prefix)] + [x[b, prefix + int(i)] for i in keep[b]]))
    return torch.stack(rows)


# ---------------------------------------------------------------- single-image path and dense pair path

def test_pruning_never_changes_single_image_path():
    model = _model().train()
    x = torch.randn(2, 3, 32, 32)
    before = model(x).detach()
    features_before = model.forward_features(x).detach()
    for method in METHODS:
        _configure(model, method=method, prune_layers=(1, 2), keep_rate=0.5)
        model.set_progress(0.7)
        assert model.pair_pruning_enabled
        assert torch.equal(model(x).detach(), before)
        assert torch.equal(model.forward_features(x).detach(), features_before)


def test_disabled_pair_path_is_the_dense_model():
    model = _model().eval()
    x1, x2, g1, g2 = _views(model)
    _configure(model, method="evit", enabled=False, prune_layers=(1,))
    f1, f2, stats = _pair(model, x1, x2, g1, g2)
    assert torch.allclose(f1, model(x1), atol=1e-6) and torch.allclose(f2, model(x2), atol=1e-6)
    assert stats.pruned_flops == stats.dense_flops and stats.kept_token_ratio == 1.0 and stats.pairs == 3
    # plan_pair gives a disabled encoder no plan (dense encode_pair), an enabled one an in-network plan
    assert plan_pair(model, x1, x2, g1, g2) is None
    assert encode_pair(model, x1, x2, None)[2] == PairStats()
    _configure(model, method="evit", prune_layers=(1,))
    plan = plan_pair(model, x1, x2, g1, g2)
    assert plan.in_network and plan.method == "evit" and plan.overhead_flops == 0
    assert encode_pair(model, x1, x2, plan)[2].kept_token_ratio < 1
    with pytest.raises(ValueError, match="--simwnw fits simwnw_resnet"):
        model.configure_pair_pruning(SimWnWSettings())


# ---------------------------------------------------------------- gathering and SimWnW token removal

def test_keep_tokens_matches_loop_with_hand_made_masks():
    x = torch.randn(2, 1 + 6, 5)
    keep = torch.tensor([[0, 2, 5], [1, 3, 4]])
    assert torch.equal(keep_tokens(x, keep, 1), _gather_ref(x, keep))
    with pytest.raises(ValueError, match="keep must be"):
        keep_tokens(x, keep[0], 1)


def test_keep_least_similar_policy():
    score = torch.tensor([[30.0, 10.0, 25.0, float("inf")], [5.0, 21.0, 22.0, 1.0]])
    similar = score >= 20
    keep = keep_least_similar(score, similar)
    # sample 0 has 1 dissimilar token, sample 1 has 2: k = 2 for both; sample 0 fills with its least similar
    assert keep.tolist() == [[1, 2], [0, 3]]
    assert keep_least_similar(torch.full((1, 3), 50.0), torch.ones(1, 3, dtype=torch.bool)).shape == (1, 1)


def test_split_by_need_groups_samples_of_similar_length():
    similar = torch.zeros(5, 10, dtype=torch.bool)
    for b, count in enumerate([7, 0, 3, 9, 5]):          # needs: 3, 10, 7, 1, 5
        similar[b, :count] = True
    chunks = split_by_need(similar, 2)
    assert [c.tolist() for c in chunks] == [[3, 0, 4], [2, 1]]
    assert [c.tolist() for c in split_by_need(similar, 9)] == [[3], [0], [4], [2], [1]]
    with pytest.raises(ValueError, match="groups"):
        split_by_need(similar, 0)


def _set_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        yield [[first]] + part
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]


@pytest.mark.parametrize("needs, call_tokens", [
    ([3, 10, 7, 1, 5, 5], 0.0), ([3, 10, 7, 1, 5, 5], 2.5), ([3, 10, 7, 1, 5, 5], 6.0),
    ([9, 9, 0, 2, 8, 1, 4], 3.0), ([4, 4, 4], 1.0), ([10, 1, 1, 1, 1, 1, 1], 7.0),
])
def test_split_by_cost_is_the_cheapest_partition_of_all(needs, call_tokens):
    """The DP's chunks cost what the best of *all* set partitions (brute force, not only contiguous cuts of the
    sorted samples) costs, cover every sample once, and hold samples of adjacent need."""
    n, prefix = 10, 1
    similar = torch.ones(len(needs), n, dtype=torch.bool)
    for b, need in enumerate(needs):
        similar[b, :need] = False
    width = lambda b: prefix + max(needs[b], 1)  # noqa: E731  (min_keep = 1)
    cost = lambda part: sum(len(c) * max(width(b) for b in c) + call_tokens for c in part)  # noqa: E731
    best = min(cost(p) for p in _set_partitions(list(range(len(needs)))))
    chunks = [c.tolist() for c in split_by_cost(similar, call_tokens, prefix)]
    assert sorted(b for c in chunks for b in c) == list(range(len(needs)))
    assert cost(chunks) == pytest.approx(best)
    for lo, hi in zip(chunks[:-1], chunks[1:]):
        assert max(width(b) for b in lo) <= min(width(b) for b in hi)


def test_split_by_cost_extremes_and_ties():
    similar = torch.zeros(5, 10, dtype=torch.bool)
    for b, count in enumerate([7, 0, 3, 9, 7]):          # needs: 3, 10, 7, 1, 3
        similar[b, :count] = True
    assert [c.tolist() for c in split_by_cost(similar, 0.0)] == [[3], [0, 4], [2], [1]]   # no fill token
    assert [c.tolist() for c in split_by_cost(similar, 1e9)] == [[3, 0, 4, 2, 1]]          # one call
    same = torch.zeros(4, 6, dtype=torch.bool)
    assert [c.tolist() for c in split_by_cost(same, 0.0)] == [[0, 1, 2, 3]]   # a tie keeps the larger chunk
    assert split_by_cost(torch.zeros(0, 6, dtype=torch.bool), 1.0) == []
    with pytest.raises(ValueError, match="call_tokens"):
        split_by_cost(similar, -1.0)


def test_simwnw_auto_groups_run_the_partition_they_choose():
    """token_groups='auto' with free calls runs one chunk per distinct need, i.e. what 3 equal groups run on
    these 3 samples of distinct needs (the same tensors, so the same features); with costly calls one chunk."""
    model = _model().eval()
    x1, x2, g1, g2 = _views(model)
    out = {}
    with torch.no_grad():
        for name, settings in (("free", dict(token_groups="auto", group_call_tokens=0.0)),
                               ("three", dict(token_groups=3)),
                               ("costly", dict(token_groups="auto", group_call_tokens=1e6)),
                               ("one", dict(token_groups=1))):
            _configure(model, method="simwnw", **settings)
            out[name] = _pair(model, x1, x2, g1, g2)
    for a, b in (("free", "three"), ("costly", "one")):
        assert torch.equal(out[a][0], out[b][0]) and torch.equal(out[a][1], out[b][1])
        assert out[a][2].pruned_flops == out[b][2].pruned_flops
    assert out["free"][2].pruned_flops < out["one"][2].pruned_flops


def test_simwnw_token_scores_agree_with_pixel_masks():
    model = _model()
    x1, x2, g1, g2 = _views(model)
    p1, p2 = (denormalize(x, model.pretrained_cfg["mean"], model.pretrained_cfg["std"]) for x in (x1, x2))
    sel = match_tokens(p1, p2, g1, g2, PATCH)
    pooled2 = sel.match.mask2.view(3, 4, 8, 4, 8).any(dim=4).any(dim=2).reshape(3, 16)     # any pixel of a patch
    pooled1 = sel.match.mask1.view(3, 4, 8, 4, 8).any(dim=4).any(dim=2).reshape(3, 16)
    assert torch.equal(pooled2, sel.similar2) and torch.equal(pooled1, sel.similar1)
    # the exactly shared region is found: view-1 patches (r, c) with r, c >= 1 equal view-2 patch (r-1, c-1)
    assert sel.similar1.sum(dim=1).tolist() == [6, 3, 0]
    k1 = int((~sel.similar1).sum(dim=1).max())
    assert sel.keep1.shape == (3, k1)
    for b in range(3):
        assert set((~sel.similar1[b]).nonzero().flatten().tolist()) <= set(sel.keep1[b].tolist())
    score1, score2, _, sim2 = token_scores(sel.match, (4, 4), PATCH)
    assert torch.equal(sim2, score2 >= 20.0) and torch.equal(sel.similar1, score1 >= 20.0)


@pytest.mark.parametrize("groups", (1, 3))
def test_simwnw_pruned_forward_equals_dense_restricted_to_kept_tokens(groups):
    model = _model().eval()
    x1, x2, g1, g2 = _views(model)
    seen, handle = _block_inputs(model, 0)
    with torch.no_grad():
        model.forward_features(x1)
        model.forward_features(x2)
        dense_in = list(seen)
        seen.clear()
        _configure(model, method="simwnw", token_groups=groups)
        model.pack_token_groups = False   # one block call per chunk: the hook sees every chunk
        f1, f2, stats = _pair(model, x1, x2, g1, g2)
        handle.remove()
        model.pack_token_groups = True    # chunks packed (several per view when groups > 1): same features
        f1_packed, _, stats_packed = _pair(model, x1, x2, g1, g2)
    p1, p2 = (denormalize(x, model.pretrained_cfg["mean"], model.pretrained_cfg["std"]) for x in (x1, x2))
    sel = match_tokens(p1, p2, g1, g2, PATCH)
    if groups == 1:   # one tensor per view, k = the batch's largest need
        assert len(seen) == 2
        assert torch.equal(seen[0], _gather_ref(dense_in[0], sel.keep1))
        assert torch.equal(seen[1], _gather_ref(dense_in[1], sel.keep2))
        assert seen[0].shape[1] == 17                                   # sample 2 has nothing similar
        expect = [seen[0][b:b + 1] for b in range(3)]
    else:             # one sample per group: each keeps exactly its dissimilar tokens
        assert len(seen) == 6
        expect = []
        for view, similar, dense in ((0, sel.similar1, dense_in[0]), (1, sel.similar2, dense_in[1])):
            for b in range(3):
                keep = (~similar[b]).nonzero().flatten().tolist()
                ref = _gather_ref(dense[b:b + 1], [keep])
                assert sum(t.shape == ref.shape and torch.equal(t, ref) for t in seen[3 * view:3 * view + 3]) == 1
                if view == 0:
                    expect.append(ref)
        assert sorted(t.shape[1] for t in seen[:3]) == [11, 14, 17]     # 6, 3 and 0 tokens dropped
    # the rest of the network is the unchanged model run on the shorter sequences, in batch order
    with torch.no_grad():
        ref = torch.cat([model.forward_head(model.norm(model.blocks(e)), pre_logits=True) for e in expect])
    assert torch.allclose(f1, ref, atol=1e-6) and torch.allclose(f1_packed, ref, atol=1e-6)
    assert stats_packed == stats
    plan = model.plan_pair(x1, x2, g1, g2)
    assert plan.overhead_flops == sel.match.overhead_flops > 0 and stats.overhead_flops == 0  # matching: the plan's
    assert torch.equal(plan.match.keep1, sel.keep1) and plan.settings.search_window == 2 * PATCH
    assert (stats.pruned_flops < stats.dense_flops) == (groups > 1)


# ---------------------------------------------------------------- SimPrune

def _match_pairs_ref(sim):
    """Proposal rounds written as loops, for one sample."""
    n = sim.shape[0]
    partner = [-1] * n
    free_rows, free_cols = set(range(n)), set(range(n))
    while free_rows:
        proposals = {}
        for i in sorted(free_rows):
            j = max(sorted(free_cols), key=lambda c: (float(sim[i, c]), -c))
            proposals.setdefault(j, []).append(i)
        for j, rows in proposals.items():
            i = max(rows, key=lambda r: (float(sim[r, j]), -r))
            partner[i] = j
            free_rows.discard(i)
            free_cols.discard(j)
    return partner


def test_match_pairs_against_loop_reference_with_ties():
    gen = torch.Generator().manual_seed(3)
    sim = torch.randint(0, 4, (4, 9, 9), generator=gen).float() / 4      # many ties
    sim[1] = torch.rand(9, 9, generator=gen)
    sim[2] = 1.0                                                         # everything tied
    partner, pair_sim = match_pairs(sim)
    for b in range(4):
        assert partner[b].tolist() == _match_pairs_ref(sim[b])
        assert sorted(partner[b].tolist()) == list(range(9))             # one-to-one
        assert torch.equal(pair_sim[b], sim[b, torch.arange(9), partner[b]])


def test_difficulty_window_moves_with_progress():
    assert difficulty_offset(100, 20, 0.0) == 0
    assert difficulty_offset(100, 20, 1.0, span=0.5) == 40
    assert difficulty_offset(100, 20, 1.0, span=1.0) == 80
    assert difficulty_offset(100, 20, 0.25, span=1.0) == 20
    with pytest.raises(ValueError, match="progress"):
        difficulty_offset(100, 20, 1.5)
    gen = torch.Generator().manual_seed(0)
    sim = torch.rand(2, 40, 40, generator=gen)
    partner, pair_sim = match_pairs(sim)
    ranked = pair_sim.sort(dim=1, descending=True).values
    r = prune_count(40, 0.8)
    means = []
    for progress in (0.0, 0.5, 1.0):
        keep1, keep2, (pruned1, pruned2) = simprune_select(sim, 0.8, progress, span=1.0)
        o = difficulty_offset(40, r, progress, span=1.0)
        got = pair_sim.gather(1, pruned1)
        assert torch.equal(got, ranked[:, o:o + r])                      # exactly the window of the ranking
        assert torch.equal(pruned2, partner.gather(1, pruned1))          # pruned in pairs
        assert keep1.shape == keep2.shape == (2, 40 - r)                 # equal counts
        means.append(float(got.mean()))
    assert means[0] > means[1] > means[2]                                # from easy to hard pairs


def test_simprune_pruned_forward_equals_dense_restricted_to_kept_tokens():
    model = _model().eval()
    x1, x2, g1, g2 = _views(model)
    layer = 2
    seen, handle = _block_inputs(model, layer)
    with torch.no_grad():
        model.forward_features(x1)
        model.forward_features(x2)
        d1, d2 = seen[0], seen[1]
        seen.clear()
        _configure(model, method="simprune", prune_layers=(layer,), keep_rate=0.7)
        model.set_progress(0.5)
        _pair(model, x1, x2, g1, g2)
    handle.remove()
    # reference: cosine of norm1 tokens by loops, loop pairing, window, gather
    blk = model.blocks[layer]
    with torch.no_grad():
        y1, y2 = blk.norm1(d1)[:, 1:], blk.norm1(d2)[:, 1:]
    n = y1.shape[1]
    r = prune_count(n, 0.7)
    o = difficulty_offset(n, r, 0.5, 0.5)
    for b in range(3):
        sim = torch.tensor([[float(torch.nn.functional.cosine_similarity(y1[b, i], y2[b, j], dim=0))
                             for j in range(n)] for i in range(n)])
        partner = _match_pairs_ref(sim)
        order = sorted(range(n), key=lambda i: -float(sim[i, partner[i]]))
        pruned1 = set(order[o:o + r])
        pruned2 = {partner[i] for i in pruned1}
        keep1 = [i for i in range(n) if i not in pruned1]
        keep2 = [j for j in range(n) if j not in pruned2]
        assert len(keep1) == len(keep2) == n - r
        assert torch.equal(seen[0][b:b + 1], _gather_ref(d1[b:b + 1], [keep1]))
        assert torch.equal(seen[1][b:b + 1], _gather_ref(d2[b:b + 1], [keep2]))


def test_simprune_keeps_equal_counts_in_both_branches_at_every_block():
    model = _configure(_model(depth=6), method="simprune", prune_layers=(1, 3, 4), keep_rate=0.8)
    x1, x2, g1, g2 = _views(model)
    lengths = []
    hooks = [blk.register_forward_pre_hook(lambda mod, args: lengths.append(args[0].shape[1])) for blk in model.blocks]
    _pair(model, x1, x2, g1, g2)
    for h in hooks:
        h.remove()
    pairs = list(zip(lengths[0::2], lengths[1::2]))
    assert all(a == b for a, b in pairs)
    assert [a for a, _ in pairs] == [17, 14, 14, 12, 10, 10]             # 16 -> 13 -> 11 -> 9 patch tokens


def test_progress_changes_simprune_choice():
    model = _configure(_model(), method="simprune", prune_layers=(1,), keep_rate=0.75)
    x1, x2, g1, g2 = _views(model)
    seen, handle = _block_inputs(model, 1)
    with torch.no_grad():
        model.set_progress(0.0)
        _pair(model, x1, x2, g1, g2)
        model.set_progress(1.0)
        _pair(model, x1, x2, g1, g2)
    handle.remove()
    assert seen[0].shape == seen[2].shape and not torch.equal(seen[0], seen[2])
    with pytest.raises(ValueError, match="progress"):
        model.set_progress(-0.1)


# ---------------------------------------------------------------- EViT

def _class_attention_ref(x, blk):
    """Unfused attention by hand: full softmax matrix, class row, mean over heads."""
    y = blk.norm1(x)
    B, N, D = y.shape
    h = blk.attn.num_heads
    q, k, _ = blk.attn.qkv(y).reshape(B, N, 3, h, D // h).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (D // h) ** -0.5).softmax(dim=-1)   # (B, h, N, N)
    return attn[:, :, 0, 1:].mean(dim=1)


def test_evit_pruned_forward_equals_dense_restricted_to_kept_tokens():
    model = _model().eval()
    x1, x2, g1, g2 = _views(model)
    layer = 1
    seen, handle = _block_inputs(model, layer)
    with torch.no_grad():
        model.forward_features(x1)
        model.forward_features(x2)
        dense = seen[:2]
        seen.clear()
        _configure(model, method="evit", prune_layers=(layer,), keep_rate=0.7)
        f1, _, _ = _pair(model, x1, x2, g1, g2)
        blk = model.blocks[layer]
        for view in range(2):
            d = dense[view]
            attn = _class_attention_ref(d, blk)
            assert torch.allclose(class_attention(d, blk.norm1, blk.attn, 1), attn, atol=1e-6)
            k = math.ceil(0.7 * 16)
            for b in range(3):
                order = sorted(range(16), key=lambda i: -float(attn[b, i]))
                keep, fuse = sorted(order[:k]), sorted(order[k:])
                fused = sum(float(attn[b, i]) * d[b, 1 + i] for i in fuse)
                expect = torch.cat([_gather_ref(d[b:b + 1], [keep])[0], fused[None]])
                assert torch.allclose(seen[view][b], expect, atol=1e-6)
        ref = model.forward_head(model.norm(model.blocks[layer:](seen[0])), pre_logits=True)
    handle.remove()
    assert seen[0].shape[1] == 1 + k + 1
    assert torch.allclose(f1, ref, atol=1e-6)


def test_evit_reorganize_without_pruning_is_identity():
    x = torch.randn(2, 5, 8)
    out, keep, fuse = evit_reorganize(x, torch.rand(2, 4), 1.0, 1)
    assert torch.equal(out, x) and fuse.shape == (2, 0)


# ---------------------------------------------------------------- FLOPs, gradients, errors

@pytest.mark.parametrize("method", (None,) + METHODS)
def test_flops_match_flop_counter_and_gradients_flow(method):
    model = _model().train()
    if method:
        # 3 samples of 17 tokens: auto grouping would run one chunk (a call costs ~24 tokens), keeping all
        _configure(model, method=method, prune_layers=(1, 2), keep_rate=0.7, token_groups=3)
        model.set_progress(0.3)
    x1, x2, g1, g2 = _views(model)
    with flop_counter() as counter:
        f1, f2, stats = _pair(model, x1, x2, g1, g2)
        (f1.pow(2).sum() + f2.pow(2).sum()).backward()
    measured = counter.get_total_flops()
    # FlopCounterMode sees matmuls only: SimWnW's PSNR overhead is elementwise, the others' is matmuls
    expected = stats.pruned_flops + (stats.overhead_flops if method in ("simprune", "evit") else 0.0)
    assert abs(measured - expected) / measured < 0.01, (method, measured, expected)
    if method is None:
        assert stats.pruned_flops == stats.dense_flops
    else:
        assert stats.pruned_flops < stats.dense_flops and 0 < stats.kept_token_ratio < 1
    for name, p in model.named_parameters():
        if name.startswith("blocks") or name in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
            assert p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all(), name


def test_dense_flops_match_flop_counter_of_two_dense_calls():
    model = _model().train()
    _configure(model, method="evit", prune_layers=(1,))
    x1, x2, g1, g2 = _views(model)
    _, _, stats = _pair(model, x1, x2, g1, g2)
    with flop_counter() as counter:
        (model(x1).sum() + model(x2).sum()).backward()
    assert abs(counter.get_total_flops() - stats.dense_flops) / stats.dense_flops < 0.01
    with torch.no_grad():                              # no backward: forward FLOPs only
        _, _, stats = _pair(model, x1, x2, g1, g2)
        with flop_counter() as counter:
            model(x1), model(x2)
    assert abs(counter.get_total_flops() - stats.dense_flops) / stats.dense_flops < 0.01


def test_bad_settings_and_inputs_are_named():
    model = _model()
    with pytest.raises(ValueError, match="--token-pruning must be one of"):
        _configure(model, method="tome")
    with pytest.raises(ValueError, match="keep_rate"):
        _configure(model, method="evit", keep_rate=0.0)
    with pytest.raises(ValueError, match="prune_layers"):
        _configure(model, method="simprune", prune_layers=(4, 7, 10))   # depth 4
    _configure(model, method="simwnw")
    x1, x2, _, _ = _views(model)
    with pytest.raises(ValueError, match="geometry"):
        model.plan_pair(x1, x2)
    with pytest.raises(ValueError, match="same images"):
        model.plan_pair(x1, x2[:1])


def test_grad_checkpointing_and_copies_keep_the_pair_path():
    import copy

    model = _configure(_model(), method="simprune", prune_layers=(1,), keep_rate=0.7)
    x1, x2, g1, g2 = _views(model)
    f1, f2, stats = _pair(model, x1, x2, g1, g2)
    twin = copy.deepcopy(model)            # the trainer meters dense FLOPs on a deep copy
    twin.set_grad_checkpointing(True)
    c1, c2, cstats = _pair(twin, x1, x2, g1, g2)
    (c1.sum() + c2.sum()).backward()
    assert torch.allclose(f1, c1, atol=1e-6) and torch.allclose(f2, c2, atol=1e-6)
    assert cstats.kept_token_ratio == stats.kept_token_ratio and twin.pair_pruning_enabled
