"""Heads against the literal SVD oracle (tests/oracle.py), plus stability, errors and training."""

from __future__ import annotations

import warnings

import oracle
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from subspace_fsl.config import load_config
from subspace_fsl.heads import HEADS, DSNHead, MultiSubspaceHead, ProtoNetHead, build_head

F64 = torch.float64


def episode(n_way, shot, n_query, dim, seed, duplicate=False, shuffle=True, dtype=F64):
    """Random support/query features; ``duplicate`` copies one support image per class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_way).repeat_interleave(shot)
    support = torch.randn(n_way * shot, dim, generator=g, dtype=F64)
    if duplicate and shot > 1:
        support[1::shot] = support[0::shot]  # second image of each class = its first
    if shuffle:
        perm = torch.randperm(n_way * shot, generator=g)
        support, labels = support[perm], labels[perm]
    query = torch.randn(n_query, dim, generator=g, dtype=F64)
    return support.to(dtype), labels, query.to(dtype)


def make_head(in_dim, n_subspaces, subspace_dim, seed=0, **kwargs):
    torch.manual_seed(seed)
    return MultiSubspaceHead(in_dim, n_subspaces, subspace_dim, **kwargs)


def close(actual, expected, rtol=1e-6, scale=1e-12):
    """Agreement relative to the size of the quantity, or to ``scale`` where that is larger
    (a distance that is exactly 0 compares against the size of the query)."""
    actual, expected = actual.detach(), expected.detach().to(actual.dtype)
    scale = float(expected.abs().max().clamp_min(scale))
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


episodes = st.fixed_dictionaries({
    "n_way": st.integers(1, 5),
    "shot": st.integers(1, 4),
    "n_query": st.integers(1, 5),
    "in_dim": st.integers(2, 12),
    "seed": st.integers(0, 2**16),
    "duplicate": st.booleans(),
})


@settings(max_examples=40, deadline=None)
@given(ep=episodes, n_subspaces=st.integers(1, 4), extra_dim=st.integers(1, 6),
       l1_form=st.sampled_from(["rv", "unnormalised"]), tau=st.sampled_from([1.0, 0.5, 3.0]))
def test_multisubspace_matches_svd_oracle(ep, n_subspaces, extra_dim, l1_form, tau):
    d = ep["shot"] + extra_dim  # includes d = K + 1
    support, labels, query = episode(ep["n_way"], ep["shot"], ep["n_query"], ep["in_dim"],
                                     ep["seed"], ep["duplicate"])
    head = make_head(ep["in_dim"], n_subspaces, d, seed=ep["seed"], tau=tau,
                     l1_form=l1_form).double()
    out = head(support, labels, query)
    ref = oracle.multisubspace(head.projection.weight.detach(), support, labels, query,
                               n_subspaces, d, tau, l1_form)
    assert out.per_subspace.shape == (n_subspaces, ep["n_query"], ep["n_way"])
    # Distances are ||q||^2 - ||U^T q||^2: their error is relative to the query's energy.
    energy = float(head.project(query).detach().square().sum(-1).max())
    scales = {"per_subspace": energy, "distances": energy, "logits": energy, "l1": 1.0, "l2": 1.0}
    for name, scale in scales.items():
        close(getattr(out, name).detach(), ref[name], scale=scale)


def well_separated_spectra(z, labels, gap=1e-3):
    """Every class's squared singular values are 0 (to rounding) or >= gap * their sum."""
    for c in range(int(labels.max()) + 1):
        power = torch.linalg.svdvals(z[:, labels == c].double()).square()
        ratio = power / power.sum(-1, keepdim=True)
        if ((ratio > 1e-10) & (ratio < gap)).any():
            return False
    return True


@settings(max_examples=25, deadline=None)
@given(ep=episodes, n_subspaces=st.integers(1, 3), extra_dim=st.integers(1, 6))
def test_multisubspace_float32_matches_oracle(ep, n_subspaces, extra_dim):
    d = ep["shot"] + extra_dim
    support, labels, query = episode(ep["n_way"], ep["shot"], ep["n_query"], ep["in_dim"],
                                     ep["seed"], ep["duplicate"], dtype=torch.float32)
    head = make_head(ep["in_dim"], n_subspaces, d, seed=ep["seed"])
    # float32 resolves a direction with sigma^2 / trace(G) well above its ridge 4 * 1.2e-7; the
    # gray zone between that and exact rank deficiency is float64's job (test above).
    assume(well_separated_spectra(head.project(support).detach(), labels))
    out = head(support, labels, query)
    assert out.distances.dtype == torch.float32
    ref = oracle.multisubspace(head.projection.weight.detach(), support, labels, query,
                               n_subspaces, d)
    energy = float(head.project(query).detach().square().sum(-1).max())
    scales = {"per_subspace": energy, "distances": energy, "l1": 1.0, "l2": 1.0}
    for name, scale in scales.items():
        close(getattr(out, name).detach(), ref[name], rtol=2e-3, scale=scale)


@settings(max_examples=30, deadline=None)
@given(ep=episodes)
def test_dsn_matches_oracle(ep):
    support, labels, query = episode(ep["n_way"], ep["shot"], ep["n_query"], ep["in_dim"] + 3,
                                     ep["seed"], ep["duplicate"])
    out = DSNHead(ep["in_dim"] + 3)(support, labels, query)
    ref = oracle.dsn(support, labels, query)
    energy = float((query[:, None] - support[None]).square().sum(-1).max())
    close(out.distances, ref["distances"], scale=energy)
    close(out.l2, ref["l2"], scale=1.0)
    assert out.per_subspace.shape == (1, ep["n_query"], ep["n_way"])
    assert out.l1 == 0


@settings(max_examples=25, deadline=None)
@given(ep=episodes)
def test_protonet_matches_oracle(ep):
    support, labels, query = episode(ep["n_way"], ep["shot"], ep["n_query"], ep["in_dim"],
                                     ep["seed"])
    out = ProtoNetHead(ep["in_dim"], tau=2.0)(support, labels, query)
    ref = oracle.protonet(support, labels, query)
    close(out.distances, ref)
    close(out.logits, -ref / 2.0)
    assert out.l1 == 0 and out.l2 == 0


def test_dsn_with_one_shot_is_protonet():
    support, labels, query = episode(5, 1, 7, 16, seed=3)
    dsn = DSNHead(16)(support, labels, query)
    proto = ProtoNetHead(16)(support, labels, query)
    torch.testing.assert_close(dsn.distances, proto.distances)
    assert dsn.l2 == 0


def test_single_subspace_has_no_diversity_term_and_rv_is_a_correlation():
    support, labels, query = episode(3, 2, 4, 10, seed=1)
    assert make_head(10, 1, 5).double()(support, labels, query).l1 == 0
    head = make_head(10, 4, 5).double()
    l1 = head(support, labels, query).l1
    assert 0 < l1 < 1
    # RV is scale-free: the same head on rescaled features gives the same L1.
    torch.testing.assert_close(head(1e3 * support, labels, 1e3 * query).l1, l1)


def test_duplicated_support_image_adds_no_direction():
    support, labels, query = episode(3, 3, 5, 12, seed=5, shuffle=False)
    head = make_head(12, 2, 8).double()
    with_duplicate = support.clone()
    with_duplicate[2::3] = with_duplicate[0::3]  # third image repeats the first
    two_shot = with_duplicate.view(3, 3, 12)[:, :2].reshape(6, 12)
    full = head(with_duplicate, labels, query)
    reduced = head(two_shot, torch.arange(3).repeat_interleave(2), query)
    close(full.distances, reduced.distances)
    close(full.l2, reduced.l2)


def loss_of(out, labels_q):
    return F.cross_entropy(out.logits, labels_q) + out.l1 + out.l2


@pytest.mark.parametrize("head_name", ["multisubspace", "dsn", "protonet"])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("case", ["duplicate", "one_shot", "plain"])
def test_values_and_gradients_stay_finite(head_name, scale, case):
    shot = 1 if case == "one_shot" else 5
    support, labels, query = episode(5, shot, 15, 32, seed=7, duplicate=case == "duplicate",
                                     dtype=torch.float32)
    support = (scale * support).requires_grad_()
    query = (scale * query).requires_grad_()
    torch.manual_seed(0)
    head = build_head(head_name, 32, n_subspaces=4, subspace_dim=16, learn_tau=True)
    out = head(support, labels, query)
    loss = loss_of(out, torch.arange(5).repeat(3))
    loss.backward()
    tensors = [out.logits, out.distances, out.per_subspace, out.l1, out.l2, support.grad,
               query.grad, *(p.grad for p in head.parameters())]
    for tensor in tensors:
        assert torch.isfinite(tensor).all()
    if head_name == "multisubspace":  # float32 at extreme scales still agrees with the oracle
        ref = oracle.multisubspace(head.projection.weight.detach(), support.detach(), labels,
                                   query.detach(), 4, 16)
        close(out.distances.detach(), ref["distances"], rtol=2e-3)
        close(out.l2.detach(), ref["l2"], rtol=2e-3)


def gradcheck_head(head, support, labels, query):
    def outputs(s, q):
        out = head(s, labels, q)
        return out.logits, out.l1, out.l2

    assert torch.autograd.gradcheck(outputs, (support.requires_grad_(), query.requires_grad_()))


@pytest.mark.parametrize("shot", [1, 3])
def test_multisubspace_gradcheck(shot):
    support, labels, query = episode(3, shot, 4, 6, seed=11)
    head = make_head(6, 2, shot + 2).double()
    gradcheck_head(head, support, labels, query)
    # ... and with respect to the projection weights.
    def of_weight(w):
        out = torch.func.functional_call(head, {"projection.weight": w}, (support, labels, query))
        return out.logits, out.l1, out.l2

    weight = head.projection.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(of_weight, (weight,))


def test_dsn_and_protonet_gradcheck():
    support, labels, query = episode(3, 3, 4, 6, seed=12)
    gradcheck_head(DSNHead(6), support.clone(), labels, query.clone())
    gradcheck_head(ProtoNetHead(6), support.clone(), labels, query.clone())


def test_few_optimisation_steps_lower_the_loss():
    torch.manual_seed(0)
    centres = torch.randn(5, 20) * 2
    def sample(n):
        labels = torch.arange(5).repeat_interleave(n)
        return centres[labels] + torch.randn(5 * n, 20), labels

    head = MultiSubspaceHead(20, 4, 8, learn_tau=True)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    support, labels = sample(3)
    query, query_labels = sample(6)
    losses = []
    for _ in range(30):
        out = head(support, labels, query)
        loss = loss_of(out, query_labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_learn_tau_scales_the_logits_and_is_trained():
    support, labels, query = episode(3, 2, 4, 10, seed=2, dtype=torch.float32)
    head = make_head(10, 2, 5, tau=2.5, learn_tau=True)
    out = head(support, labels, query)
    torch.testing.assert_close(out.logits, -out.distances / 2.5)
    F.cross_entropy(out.logits, torch.arange(3).repeat(2)[:4]).backward()
    assert head.log_tau.grad is not None and head.log_tau.grad != 0
    assert "log_tau" in dict(make_head(10, 2, 5).named_buffers())


def test_bf16_autocast_computes_in_float32():
    support, labels, query = episode(5, 5, 15, 64, seed=4, dtype=torch.float32)
    head = make_head(64, 4, 32)
    reference = head(support, labels, query)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(support, labels, query)
    assert out.distances.dtype == torch.float32
    assert torch.isfinite(out.logits).all()
    # bf16 only rounds the projection (about 3 significant digits).
    close(out.distances, reference.distances, rtol=5e-2)
    assert out.logits.argmax(1).eq(reference.logits.argmax(1)).float().mean() > 0.9


def test_build_head_takes_the_model_section():
    model = load_config()["model"]
    head = build_head(model["head"], 1600, **model)
    assert isinstance(head, MultiSubspaceHead)
    assert (head.n_subspaces, head.subspace_dim) == (model["n_subspaces"], model["subspace_dim"])
    for name in ("protonet", "dsn"):
        assert isinstance(build_head(name, 1600, **{**model, "head": name}), HEADS.get(name))
    with pytest.raises(ValueError, match="n_subspace"):
        build_head("multisubspace", 16, n_subspace=2)
    with pytest.raises(ValueError, match="choose one of: dsn, multisubspace, protonet"):
        build_head("nope", 16)


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match=r"subspace_dim \(5\) must exceed shot \(5\)"):
        make_head(10, 2, 5).validate_episode(5, 5)
    support, labels, query = episode(3, 5, 2, 10, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"subspace_dim \(4\) must exceed shot \(5\)"):
        make_head(10, 2, 4)(support, labels, query)
    head = make_head(10, 2, 8)
    with pytest.raises(ValueError, match=r"counts per class \[5, 4, 5\]"):
        head(support[:-1], labels[:-1], query)
    with pytest.raises(ValueError, match=r"labels \[1\] are missing"):
        head(support, torch.where(labels == 1, 3, labels), query)
    with pytest.raises(ValueError, match="got label -1"):
        head(support, labels - 1, query)
    with pytest.raises(ValueError, match="integer tensor"):
        head(support, labels.float(), query)
    with pytest.raises(ValueError, match="in_dim = 10"):
        head(support[:, :9], labels, query[:, :9])
    with pytest.raises(ValueError, match="l1_form"):
        make_head(10, 2, 8, l1_form="cosine")
    with pytest.raises(ValueError, match="tau must be"):
        ProtoNetHead(10, tau=0.0)
    with pytest.raises(ValueError, match="way must be"):
        head.validate_episode(1, 5)


def test_validate_episode_warns_when_class_subspaces_cannot_be_orthogonal():
    head = make_head(10, 2, 16)
    with pytest.warns(UserWarning, match=r"subspace_dim \(16\) < way \* shot \(25\)"):
        head.validate_episode(5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head.validate_episode(5, 3)


def test_degenerate_support_features():
    support, labels, query = episode(3, 2, 4, 10, seed=6, shuffle=False, dtype=torch.float32)
    head = make_head(10, 2, 5)
    zero_class = support.clone()
    zero_class[:2] = 0  # class 0 is all zeros: its subspace is {0}, distance = ||q_s||^2
    out = head(zero_class, labels, query)
    expected = head.project(query).detach().square().sum(-1)  # [S, Q]
    close(out.per_subspace[:, :, 0], expected, rtol=1e-5)
    broken = support.clone()
    broken[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        head(broken, labels, query)


# --- the distance form (model.distance) --------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(ep=episodes)
def test_euclidean_distance_is_the_root_of_the_oracles_squared_one(ep):
    support, labels, query = episode(ep["n_way"], ep["shot"], ep["n_query"], ep["in_dim"],
                                     ep["seed"])
    proto = ProtoNetHead(ep["in_dim"], tau=3.0, distance="euclidean")(support, labels, query)
    ref = oracle.protonet(support, labels, query).sqrt()
    close(proto.distances, ref)
    close(proto.logits, -ref / 3.0)
    # easyfsl's PrototypicalNetworks: logits = -torch.cdist(query, class means)
    means = torch.stack([support[labels == c].mean(0) for c in range(ep["n_way"])])
    close(proto.distances, torch.cdist(query, means))
    support, labels, query = episode(ep["n_way"], ep["shot"], ep["n_query"], ep["in_dim"] + 3,
                                     ep["seed"])
    dsn = DSNHead(ep["in_dim"] + 3, distance="euclidean")(support, labels, query)
    squared = oracle.dsn(support, labels, query)["distances"]
    close(dsn.distances, squared.sqrt(), scale=1e-6 * float(squared.max().sqrt()))


def test_euclidean_gradients_stay_finite_where_a_query_is_its_prototype():
    support, labels, _ = episode(3, 1, 0, 8, seed=1)
    query = support.clone().requires_grad_(True)  # every query equals its class's prototype
    for head in (ProtoNetHead(8, distance="euclidean"), DSNHead(8, distance="euclidean")):
        out = head(support, labels, query)
        F.cross_entropy(out.logits, labels).backward()
        assert torch.isfinite(query.grad).all() and torch.isfinite(out.distances).all()
        query.grad = None


def test_a_distance_a_head_does_not_have_is_refused():
    with pytest.raises(ValueError, match="only the squared distance"):
        build_head("multisubspace", 16, n_subspaces=2, subspace_dim=4, distance="euclidean")
    with pytest.raises(ValueError, match="distance must be one of"):
        ProtoNetHead(8, distance="cosine")
    head = build_head("dsn", 16, **{**load_config()["model"], "distance": "euclidean"})
    assert head.distance == "euclidean"


def test_separate_passes_give_support_and_queries_their_own_batch_statistics():
    """model.embed: one joint backbone pass (shared batch-norm statistics) or two; in eval
    mode (running statistics) both are the same function."""
    from subspace_fsl.engine.model import build_model

    cfg = load_config(None, ["model.head=protonet", "dataset.image_size=16"])
    torch.manual_seed(0)
    joint = build_model(cfg)
    torch.manual_seed(0)
    separate = build_model({**cfg, "model": {**cfg["model"], "embed": "separate"}})
    assert joint.embed == "joint" and separate.embed == "separate"
    g = torch.Generator().manual_seed(0)
    support = torch.randn(4, 3, 16, 16, generator=g)
    query = torch.randn(6, 3, 16, 16, generator=g) + 2.0  # other statistics than the support
    labels = torch.tensor([0, 0, 1, 1])
    both = joint.backbone(torch.cat([support, query]))
    expected_separate = torch.cat([separate.backbone(support), separate.backbone(query)])
    out_joint, out_sep = joint(support, labels, query), separate(support, labels, query)
    ref_joint = ProtoNetHead(both.shape[1])(both[:4], labels, both[4:])
    ref_sep = ProtoNetHead(both.shape[1])(expected_separate[:4], labels, expected_separate[4:])
    torch.testing.assert_close(out_joint.logits, ref_joint.logits)
    torch.testing.assert_close(out_sep.logits, ref_sep.logits)
    assert not torch.allclose(out_joint.logits, out_sep.logits)
    joint.eval()
    separate.eval()
    separate.load_state_dict(joint.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(joint(support, labels, query).logits,
                                   separate(support, labels, query).logits)
    with pytest.raises(ValueError, match="embed must be one of"):
        build_model({**cfg, "model": {**cfg["model"], "embed": "twice"}})


@pytest.mark.parametrize("shot,n_subspaces,l1_form", [(1, 1, "rv"), (5, 3, "rv"),
                                                      (2, 4, "unnormalised")])
def test_forward_cells_is_every_cells_own_forward(shot, n_subspaces, l1_form):
    """C heads in one batched pass (engine/cells.py's frozen groups) give each cell's own
    logits, L1, L2 and gradients: float64, so only reduction order separates them."""
    torch.manual_seed(0)
    way, query, dim = 5, 4, 24
    heads = [MultiSubspaceHead(dim, n_subspaces, 8, tau=t, learn_tau=True, l1_form=l1_form)
             .double() for t in (1.0, 4.0, 0.5)]
    support = torch.randn(way * shot, dim, dtype=torch.float64)
    labels = torch.arange(way).repeat_interleave(shot)
    queries = torch.randn(way * query, dim, dtype=torch.float64)
    state = {k: torch.stack([dict(h.named_parameters())[k].detach() for h in heads])
             .requires_grad_(True) for k in ("projection.weight", "log_tau")}
    together = heads[0].forward_cells(state, support, labels, queries)
    assert together.logits.shape == (3, way * query, way)
    (together.logits.sum() + together.l1.sum() + together.l2.sum()).backward()
    for c, head in enumerate(heads):
        alone = head(support, labels, queries)
        (alone.logits.sum() + alone.l1 + alone.l2).backward()
        torch.testing.assert_close(together.logits[c], alone.logits, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(together.per_subspace[c], alone.per_subspace)
        torch.testing.assert_close(together.l1[c], alone.l1, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(together.l2[c], alone.l2, rtol=1e-10, atol=1e-12)
        for k, p in head.named_parameters():
            torch.testing.assert_close(state[k].grad[c], p.grad, rtol=1e-9, atol=1e-10)
