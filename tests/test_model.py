"""The small SAM 3D geometry model on the toy task: structure, training, DPO, shortcut
distillation, sampling and checkpoints (micro preset, CPU, seconds)."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.spatial.transform import Rotation

from flywheel.learning.toy import toy_examples
from sam3d_model import train as T
from sam3d_model.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from sam3d_model.config import ModelConfig, preset
from sam3d_model.data import batch_stream, collate
from sam3d_model.dpo import flow_dpo_loss, preference_accuracy
from sam3d_model.geometry import (
    layout_tokens,
    matrix_from_rot6d,
    pose_from_tokens,
    rot6d_from_matrix,
    symmetric_rotation_loss,
)
from sam3d_model.interface import GeometryModel
from sam3d_model.metrics import shape_metrics
from sam3d_model.model import SmallSam3D, build_model
from sam3d_model.shape_readout import ShapeReadout
from sam3d_model.shape_vae import occupancy_loss

CFG = preset("micro")


@pytest.fixture(scope="module")
def examples():
    return toy_examples(CFG, 8)


@pytest.fixture(scope="module")
def trained(examples):
    """The micro model over-fitted on 8 toy objects: VAE, then the flow (SFT stage)."""
    torch.manual_seed(0)
    model = SmallSam3D(CFG)
    batches = batch_stream(lambda: examples, 8, seed=0)
    vae = T.train_vae(model, batches, T.TrainSettings(steps=100, lr=5e-3, log_every=10))
    flow = T.sft(model, batches, T.TrainSettings(steps=400, lr=3e-3, log_every=20))
    return model, vae, flow


def mean_viou(pred, examples) -> float:
    return float(
        np.mean(
            [
                shape_metrics(pred.item(i)["occupancy"], e["occupancy"].numpy() > 0.5)["viou"]
                for i, e in enumerate(examples)
            ]
        )
    )


# -- geometry and structure -------------------------------------------------------------------


def test_rot6d_round_trip_and_projection_to_rotations():
    R = torch.tensor(Rotation.random(64, random_state=0).as_matrix(), dtype=torch.float32)
    assert torch.allclose(matrix_from_rot6d(rot6d_from_matrix(R)), R, atol=1e-5)
    raw = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))  # any 6 numbers -> a rotation
    M = matrix_from_rot6d(raw)
    assert torch.allclose(M @ M.transpose(1, 2), torch.eye(3).expand(64, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(M), torch.ones(64), atol=1e-5)


def test_layout_tokens_round_trip():
    R = torch.tensor(Rotation.random(8, random_state=2).as_matrix(), dtype=torch.float32)
    t, s = torch.randn(8, 3), torch.rand(8) + 0.5
    R2, t2, s2 = pose_from_tokens(CFG, layout_tokens(CFG, R, t, s))
    assert torch.allclose(R2, R, atol=1e-5) and torch.allclose(t2, t, atol=1e-5) and torch.allclose(s2, s, atol=1e-5)


def test_presets_and_config_errors():
    assert sum(p.numel() for p in SmallSam3D(preset("tiny")).parameters()) == pytest.approx(5.4e6, rel=0.1)
    assert preset("small").resolution == 32 and preset("base").resolution == 64
    with pytest.raises(ValidationError, match="latent_resolution"):
        ModelConfig(resolution=32)  # 32 != 4 x 2^2
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        preset("huge")
    assert isinstance(SmallSam3D(CFG), GeometryModel)


def test_shape_stream_ignores_layout_and_layout_loss_never_moves_it(examples):
    """MoT: shape tokens attend to shape only; layout sees shape tokens detached."""
    model = SmallSam3D(CFG)
    for p in model.parameters():  # leave the zero-initialised gates and heads: make every path live
        torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    batch = collate(examples[:2])
    cond = model.condition(batch)
    x = {
        "shape": torch.randn(2, CFG.shape_tokens, CFG.latent_channels, requires_grad=True),
        "rotation": torch.randn(2, 6),
        "translation": torch.randn(2, 3),
        "scale": torch.randn(2, 1),
    }
    t, d = torch.full((2,), 0.3), torch.zeros(2)
    out = model.flow(x, t, d, cond)
    other = dict(x, rotation=torch.randn(2, 6), translation=torch.randn(2, 3))
    assert torch.allclose(model.flow(other, t, d, cond)["shape"], out["shape"])
    assert not torch.allclose(model.flow(other, t, d, cond)["rotation"], out["rotation"])
    (out["rotation"].sum() + out["translation"].sum()).backward()
    shape_grads = [p.grad for n, p in model.flow.named_parameters() if ".shape." in n or n.startswith("shape_")]
    assert shape_grads and all(g is None or g.abs().max() == 0 for g in shape_grads)
    assert x["shape"].grad is None or x["shape"].grad.abs().max() == 0


def test_encoders_and_point_map_variants_run(examples):
    for cfg in (preset("micro", encoder="vit", vit_patch=8), preset("micro", use_pointmap=True)):
        model = SmallSam3D(cfg)
        batch = collate(toy_examples(cfg, 2))
        out = model.losses(batch, torch.Generator().manual_seed(0))
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
        assert model.sample(batch, steps=2).occupancy.shape == (2, 16, 16, 16)


# -- training -----------------------------------------------------------------------------------


def test_micro_model_overfits_a_tiny_batch(trained, examples):
    model, vae, flow = trained
    dice, loss = vae.metric("dice"), flow.metric("loss")
    assert dice[-1] < dice[0] / 4, dice
    assert loss[-1] < loss[0] / 3, loss
    untrained = SmallSam3D(CFG)
    untrained.vae.load_state_dict(model.vae.state_dict())  # same decoder: only the flow differs
    untrained.latent_mean.copy_(model.latent_mean)
    untrained.latent_std.copy_(model.latent_std)
    batch = collate(examples)
    assert mean_viou(model.sample(batch), examples) > mean_viou(untrained.sample(batch), examples) + 0.2


def test_sampling_is_seeded(trained, examples):
    model = trained[0]
    batch = collate(examples[:3])
    a, b, c = model.sample(batch, seed=1), model.sample(batch, seed=1), model.sample(batch, seed=2)
    assert torch.equal(a.occupancy, b.occupancy) and torch.equal(a.rotation, b.rotation)
    assert not torch.equal(a.translation, c.translation)


def test_sample_temperature_scales_the_initial_noise(trained, examples):
    model = copy.deepcopy(trained[0])
    batch = collate(examples[:3])
    unit = model.initial_noise(3, seed=4)
    half = model.initial_noise(3, seed=4, temperature=0.5)
    assert all(torch.allclose(half[k], 0.5 * unit[k]) for k in unit)
    model.cfg = model.cfg.model_copy(update={"sample_temperature": 0.0})  # every seed starts from zero noise
    a, b = model.sample_state(batch, seed=1), model.sample_state(batch, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dpo_loss_is_log_2_at_the_reference_and_accuracy_rises(trained, examples):
    model = copy.deepcopy(trained[0])
    pairs = [
        dict(e, winner=e["occupancy"], loser=examples[(i + 1) % len(examples)]["occupancy"])
        for i, e in enumerate(examples)
    ]
    batch = collate(pairs)
    reference = T.frozen_copy(model)

    def evaluate():
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            outs = [flow_dpo_loss(model, reference, batch, 500.0, g) for _ in range(4)]
        return (float(np.mean([o["loss"] for o in outs])), float(np.mean([o["implicit_accuracy"] for o in outs])))

    loss0, acc0 = evaluate()
    assert loss0 == pytest.approx(np.log(2), abs=1e-6) and acc0 == 0.5
    result = T.dpo(
        model,
        batch_stream(lambda: pairs, 8, seed=1),
        T.TrainSettings(steps=40, lr=1e-3, log_every=10),
        beta=500.0,
        reference=reference,
    )
    loss1, acc1 = evaluate()
    assert acc1 > 0.8 and loss1 < loss0
    assert result.metric("implicit_accuracy")[-1] > 0.8
    # the same accuracy measured on batches as held-out pairs are (fixed noise, no training)
    assert (
        preference_accuracy(reference, reference, [batch]) == 0.5 < 0.8 < preference_accuracy(model, reference, [batch])
    )
    # the SFT regulariser adds its weight times the winners' flow error to the DPO loss
    plain = flow_dpo_loss(model, reference, batch, 500.0, torch.Generator().manual_seed(7))
    anchored = flow_dpo_loss(model, reference, batch, 500.0, torch.Generator().manual_seed(7), sft_weight=2.0)
    assert float(anchored["loss"] - plain["loss"]) == pytest.approx(2 * float(plain["winner_error"]), rel=1e-4)


def test_shortcut_samples_approach_the_guided_teacher_after_distillation(trained, examples):
    teacher = trained[0]
    student = copy.deepcopy(teacher)
    batch = collate(examples)
    target = teacher.sample_state(batch, seed=5)  # 25 steps with guidance

    def gap():
        fast = student.sample_state(batch, shortcut=True, seed=5)  # 4 steps, no guidance
        return float((fast["shape"] - target["shape"]).pow(2).mean())

    before = gap()
    T.distill(
        student,
        batch_stream(lambda: examples, 8, seed=0),
        T.TrainSettings(steps=60, lr=1e-3, log_every=20),
        consistency_fraction=1.0,
        levels=1,
        teacher=T.frozen_copy(teacher),
    )
    assert gap() < 0.6 * before


# -- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_outputs(trained, examples, tmp_path):
    model = trained[0]
    path = save_checkpoint(tmp_path / "model.pt", model, step=7)
    loaded = load_model(path)
    batch = collate(examples[:2])
    a, b = model.sample(batch, seed=3), loaded.sample(batch, seed=3)
    assert torch.equal(a.occupancy, b.occupancy) and torch.equal(a.translation, b.translation)
    assert loaded.cfg == model.cfg and read_checkpoint(path)["step"] == 7


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("garbage", "not a readable torch checkpoint"),
        ("truncated", "not a readable torch checkpoint"),
        ("code", "not a readable torch checkpoint"),
        ("foreign", "not a sam3d-flywheel-checkpoint/1 checkpoint"),
        ("other-config", "weights do not fit"),
    ],
)
def test_bad_checkpoint_files_give_clear_errors(trained, tmp_path, capfd, case, message):
    path = tmp_path / "bad.pt"
    good = save_checkpoint(tmp_path / "good.pt", trained[0])
    if case == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif case == "truncated":
        path.write_bytes(good.read_bytes()[:2000])
    elif case == "code":  # weights_only refuses to run code
        path.write_bytes(pickle.dumps({"format": "x", "obj": _Payload()}, protocol=2))
    elif case == "foreign":
        torch.save({"state_dict": {}}, path)
    elif case == "other-config":
        payload = read_checkpoint(good)
        payload["model_config"] = preset("micro", width=48).model_dump(mode="json")
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(path)
    assert str(path) in str(err.value)
    assert "must never run" not in capfd.readouterr().out


def test_encoder_pretraining_reads_shape_and_rotation_and_trains_the_trunk_only(examples):
    model = build_model(CFG, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = T.TrainSettings(steps=60, lr=3e-3, log_every=10, warmup_steps=5)
    result = T.pretrain_encoder(model, batch_stream(lambda: examples, 8, seed=0), settings)
    soft_iou, turn = result.metric("soft_iou"), result.metric("symmetric_rotation")
    assert soft_iou[-1] > soft_iou[0] + 0.2, soft_iou
    assert turn[-1] < 0.8 * turn[0], turn  # it reads the rotation too
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    trunk = {k for k in before if k.startswith("condition_encoder.trunk.")}
    assert changed and changed <= trunk, sorted(changed - trunk)


def test_occupancy_loss_on_closed_form_cases():
    target = torch.zeros(2, 4, 4, 4)
    target[:, :2] = 1
    exact = occupancy_loss(torch.where(target > 0, 30.0, -30.0), target)
    assert exact["loss"] < 1e-6 and abs(float(exact["soft_iou"]) - 1) < 1e-6
    empty = occupancy_loss(torch.full_like(target, -30.0), target)
    assert float(empty["soft_iou"]) < 1e-6 and float(empty["loss"]) > 1
    half = occupancy_loss(torch.zeros_like(target), target)  # p = 0.5: 0.5·32 / (0.5·64 + 32 − 0.5·32)
    assert abs(float(half["soft_iou"]) - 1 / 3) < 1e-6 and abs(float(half["bce"]) - np.log(2)) < 1e-6


@pytest.mark.parametrize(("term", "head"), [("occupancy", "shape_out"), ("symmetric_rotation", "layout_out.rotation")])
def test_flow_loss_adds_terms_on_the_data_the_velocity_points_to(examples, term, head):
    model = build_model(CFG, 0)
    batch = collate(examples[:4])
    without = CFG.loss_weights.model_copy(update={term: 0})
    plain = model.losses(batch, torch.Generator().manual_seed(0), without)
    both = model.losses(batch, torch.Generator().manual_seed(0))
    assert term not in plain and set(both) == set(plain) | {term}
    assert torch.allclose(both["loss"], plain["loss"] + getattr(CFG.loss_weights, term) * both[term])
    grads = []
    for loss in (plain["loss"], both["loss"]):  # the term trains the flow's head for it
        model.zero_grad()
        loss.backward(retain_graph=True)
        grads.append(model.flow.get_submodule(head).proj.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def turn(axis: str, degrees: float) -> torch.Tensor:
    """(3, 3) rotation by ``degrees`` about the axis "x", "y" or "z"."""
    return torch.tensor(Rotation.from_euler(axis, degrees, degrees=True).as_matrix(), dtype=torch.float32)


def test_symmetric_rotation_loss_on_closed_form_cases():
    grid = torch.zeros(3, 16, 16, 16)
    grid[0, 4:12, 4:12, 4:12] = 1  # a cube: its 24 turns are symmetries
    grid[1, 2:14, 6:10, 6:10] = 1  # a square bar along x: 90° about x, 180° about y and z
    grid[2, 2:14, 6:10, 6:10] = 1
    grid[2, 2:5, 6:14, 6:10] = 1  # an L: no symmetry
    identity = torch.eye(3).expand(3, 3, 3)

    def loss(R_pred: torch.Tensor, R_true: torch.Tensor = identity) -> torch.Tensor:
        return symmetric_rotation_loss(grid, R_pred, R_true, count=256, generator=torch.Generator().manual_seed(0))

    assert torch.equal(loss(identity), torch.zeros(3))
    quarter_z = loss(turn("z", 90).expand(3, 3, 3))
    assert quarter_z[0] < 1e-6 and quarter_z[1] > 0.1 and quarter_z[2] > 0.1
    assert loss(turn("x", 90).expand(3, 3, 3))[1] < 1e-6 and loss(turn("z", 180).expand(3, 3, 3))[1] < 1e-6
    angles = [loss(turn("y", d).expand(3, 3, 3))[2] for d in (5, 20, 45)]  # grows with the angle
    assert 0 < angles[0] < angles[1] < angles[2]
    # camera-frame invariant: turning both rotations alike changes nothing
    Q = turn("x", 33) @ turn("z", 71)
    R = turn("y", 40).expand(3, 3, 3)
    assert torch.allclose(loss(Q @ R, Q @ identity), loss(R), atol=1e-5)
    # differentiable through the 6D parametrisation
    six = torch.randn(3, 6, requires_grad=True)
    loss(matrix_from_rot6d(six)).sum().backward()
    assert torch.isfinite(six.grad).all() and six.grad.abs().sum() > 0


def test_checkpoints_from_before_the_condition_summary_still_load(tmp_path):
    old = SmallSam3D(preset("micro", condition_summary=0))
    save_checkpoint(tmp_path / "old.pt", old)
    payload = read_checkpoint(tmp_path / "old.pt")
    del payload["model_config"]["condition_summary"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").flow.summary is None
    assert SmallSam3D(CFG).flow.summary is not None


def test_shape_readout_fits_every_encoder_and_resolution():
    for cfg in (CFG, preset("tiny"), preset("micro", encoder="vit", vit_patch=8), preset("micro", use_pointmap=True)):
        model = SmallSam3D(cfg)
        readout = ShapeReadout(cfg, model.condition_encoder.trunk.tokens)
        batch = collate(toy_examples(cfg, 2))
        features = model.condition_encoder.trunk(torch.cat([batch["crop"], batch["full"]]))
        logits, rotation = readout(features[:2], features[2:])
        assert logits.shape == (2,) + (cfg.resolution,) * 3 and rotation.shape == (2, 6)


def killable_batches(examples, fail_at=None):
    """Batches of 4 that raise KeyboardInterrupt at batch ``fail_at`` (a killed run)."""
    for i, b in enumerate(batch_stream(lambda: examples, 4, seed=0)):
        if i == fail_at:
            raise KeyboardInterrupt("killed")
        yield b


def test_killed_training_resumes_to_the_same_weights(examples, tmp_path):
    settings = T.TrainSettings(steps=12, lr=3e-3, log_every=2, checkpoint_every=4)

    torch.manual_seed(0)
    reference = SmallSam3D(CFG)
    start = copy.deepcopy(reference.state_dict())
    T.sft(reference, killable_batches(examples), settings, checkpoint_dir=tmp_path / "straight")

    model = SmallSam3D(CFG)
    model.load_state_dict(start)
    with pytest.raises(KeyboardInterrupt):
        T.sft(model, killable_batches(examples, fail_at=10), settings, checkpoint_dir=tmp_path / "killed")
    resumed = SmallSam3D(CFG)
    resumed.load_state_dict(start)
    result = T.sft(resumed, killable_batches(examples), settings, checkpoint_dir=tmp_path / "killed")
    assert result.resumed_from == 8
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["step"] for h in result.history] == list(range(2, 13, 2))
    with pytest.raises(CheckpointError, match="belongs to stage 'sft'"):
        T.dpo(resumed, killable_batches(examples), settings, checkpoint_dir=tmp_path / "killed")


def test_killed_encoder_pretraining_resumes_to_the_same_weights(examples, tmp_path):
    """The read-out is not part of the model: the stage's checkpoint must carry it."""
    settings = T.TrainSettings(steps=12, lr=3e-3, log_every=2, checkpoint_every=4)

    reference = build_model(CFG, 0)
    T.pretrain_encoder(reference, killable_batches(examples), settings, checkpoint_dir=tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        T.pretrain_encoder(
            build_model(CFG, 0), killable_batches(examples, fail_at=10), settings, checkpoint_dir=tmp_path / "killed"
        )
    resumed = build_model(CFG, 0)
    result = T.pretrain_encoder(resumed, killable_batches(examples), settings, checkpoint_dir=tmp_path / "killed")
    assert result.resumed_from == 8
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def _data_parallel_worker(rank: int, world: int, init: str, folder: str) -> None:
    """One of ``world`` gloo processes: train a micro model with :func:`T.fit` on a loss that
    is linear in each row's value, recording which rows of every global batch it saw."""
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    _linear_fit(Path(folder), f"rank{rank}")
    # both leave together: a rank that tears gloo down while its peer still writes the
    # checkpoint aborted 1 run in 30 ("terminate called without an active exception")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _linear_fit(folder: Path, name: str) -> None:
    torch.manual_seed(0)
    model = SmallSam3D(CFG)
    seen: list[int] = []
    weight = model.flow.parameters().__next__()
    initial = weight.detach().clone()

    def loss_fn(batch, gen):
        seen.extend(batch["row"].tolist())
        return {"loss": (weight.sum() * batch["value"]).mean()}

    rank, world = T.distributed()  # each worker's batches are its share of the global ones
    batches = ({"row": torch.arange(8) + 8 * i, "value": torch.arange(8.0) + i} for i in range(6))
    batches = ({k: v[rank::world] for k, v in b.items()} for b in batches)
    settings = T.TrainSettings(steps=6, lr=1e-2, warmup_steps=1, log_every=3, checkpoint_every=3)
    T.fit("linear", model, [weight], loss_fn, batches, settings, checkpoint_dir=folder / name)
    torch.save({"seen": seen, "weight": weight.detach().clone(), "initial": initial}, folder / f"{name}.pt")


def test_data_parallel_workers_step_as_one(tmp_path):
    """Two gloo processes through ``fit``, each on its own half of every global batch (how the
    store's data is split between them: tests/test_streams.py): the averaged gradients leave
    both with the same weights, and these match one process on the whole batches (the loss is
    linear in each row)."""
    import torch.multiprocessing as mp

    mp.spawn(_data_parallel_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    _linear_fit(tmp_path, "single")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    single = torch.load(tmp_path / "single.pt")
    assert set(ranks[0]["seen"]).isdisjoint(ranks[1]["seen"])
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == sorted(single["seen"]) == list(range(48))
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    assert torch.allclose(ranks[0]["weight"], single["weight"], atol=1e-6)
    assert not torch.allclose(single["weight"], single["initial"], atol=1e-4)  # it trained
    two = read_checkpoint(tmp_path / "rank0" / "last.pt")
    assert len(two["extra"]["generators"]) == 2  # every worker's noise state, for an exact resume
    assert not (tmp_path / "rank1" / "last.pt").exists()  # rank 0 writes the checkpoint


# -- the released checkpoint ----------------------------------------------------------------------


def test_sam3d_adapter_says_what_is_missing(tmp_path):
    from sam3d_model.adapter import Sam3DObjectsAdapter, Sam3DUnavailable, quaternion_to_matrix, voxels_to_grid

    with pytest.raises(Sam3DUnavailable, match=f"repository not found at {tmp_path}"):
        Sam3DObjectsAdapter(tmp_path)
    (tmp_path / "notebook").mkdir()
    (tmp_path / "notebook" / "inference.py").write_text("raise ImportError('no kaolin here')\n")
    with pytest.raises(Sam3DUnavailable, match="weights not found: .*pipeline.yaml is missing"):
        Sam3DObjectsAdapter(tmp_path)
    config = tmp_path / "checkpoints" / "hf" / "pipeline.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("{}\n")
    if not torch.cuda.is_available():
        with pytest.raises(Sam3DUnavailable, match="needs a CUDA GPU"):
            Sam3DObjectsAdapter(tmp_path)
    # the output mapping: quaternions and sparse voxels
    q = torch.tensor(Rotation.from_euler("z", 90, degrees=True).as_quat()[[3, 0, 1, 2]], dtype=torch.float32)
    assert torch.allclose(quaternion_to_matrix(q), torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-6)
    coords = torch.tensor([[0, 0, 0, 0], [0, 63, 63, 63], [0, 5, 6, 7]])
    grid = voxels_to_grid(coords, 64, 16)
    assert grid.shape == (16, 16, 16) and grid.sum() == 3 and grid[1, 1, 1] == 1 and grid[15, 15, 15] == 1


def test_a_new_model_depends_on_its_seed_only():
    """Other users of torch's global random state (other tasks in the process) must not
    change a new model's initial weights; the global state is left as it was."""
    first = build_model(CFG, seed=3).state_dict()
    torch.rand(1000)
    state = torch.random.get_rng_state()
    again = build_model(CFG, seed=3).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = build_model(CFG, seed=4).state_dict()
    assert not torch.equal(first["flow.shape_in.weight"], other["flow.shape_in.weight"])


def test_learning_curve_probe_watches_without_changing_the_weights(examples):
    """A probed stage logs held-out vIoU at step 0 and at evenly spaced steps, and trains the
    very weights an unprobed one does (the probe draws no training randomness)."""
    from sam3d_model.evaluation import viou_probe

    settings = T.TrainSettings(steps=10, lr=3e-3, log_every=4)
    plain, probed = build_model(CFG, 3), build_model(CFG, 3)
    T.sft(plain, batch_stream(lambda: examples, 4, seed=0), settings)
    result = T.sft(probed, batch_stream(lambda: examples, 4, seed=0), settings, probe=viou_probe(examples[:3]))
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values()):
        assert torch.equal(a, b), name
    curve = [(h["step"], h["heldout_viou"]) for h in result.history if "heldout_viou" in h]
    assert [s for s, _ in curve] == [0, 2, 4, 6, 8, 10] and all(0 <= v <= 1 for _, v in curve)
    assert [h["step"] for h in result.history if "loss" in h] == [2, 4, 6, 8, 10]  # log points join the probes'


def test_learning_rate_warms_up_then_decays_to_its_floor():
    s = T.TrainSettings(steps=100, lr=1.0, warmup_steps=10, final_lr_fraction=0.1)
    factors = [T.lr_factor(step, s) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))  # never rises after warm-up
    assert T.lr_factor(100, s) == pytest.approx(0.1) and factors[55] == pytest.approx(0.55, abs=0.02)
    flat = T.TrainSettings(steps=100, warmup_steps=10, final_lr_fraction=1.0)
    assert {T.lr_factor(step, flat) for step in range(10, 100)} == {1.0}


def test_reward_model_ranks_held_out_objects_pairs_better_than_chance(trained, examples, tmp_path):
    """Pairs (an object's own shape ≻ another object's shape, for its photo): a reward model
    trained on the pairs of 5 objects ranks the pairs of the 3 others — shapes and photos it
    never saw in a pair — better than chance, and the same pairs always give the same model."""
    from flywheel.learning.reward import load_reward, save_reward
    from sam3d_model.reward import RewardModel, pair_features, pairwise_accuracy, train_reward

    backbone = trained[0]
    trained_mode = backbone.training
    pairs = [
        dict(e, winner=e["occupancy"], loser=other["occupancy"])
        for i, e in enumerate(examples)
        for j, other in enumerate(examples)
        if i != j
    ]
    train = [p for p, i in zip(pairs, [i for i in range(8) for _ in range(7)]) if i < 5]
    held = [p for p, i in zip(pairs, [i for i in range(8) for _ in range(7)]) if i >= 5]
    model = RewardModel(backbone)
    train_features, held_features = pair_features(model, [collate(train)]), pair_features(model, [collate(held)])
    assert pairwise_accuracy(model, held_features) == 0.5  # an untrained model ties every pair
    history = train_reward(model, train_features, l2=0.1)
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["accuracy"] > 0.6
    accuracy = pairwise_accuracy(model, held_features)
    assert accuracy > 0.6, f"held-out pair accuracy {accuracy:.2f}"
    # scores do not depend on how candidates are batched; a saved model scores the same
    batch = collate(held[:6])
    condition = {k: v for k, v in batch.items() if k not in ("winner", "loser")}
    together = model.score(condition, batch["winner"])
    alone = torch.cat(
        [model.score({k: v[i : i + 1] for k, v in condition.items()}, batch["winner"][i : i + 1]) for i in range(6)]
    )
    assert torch.allclose(together, alone, atol=1e-5)
    path = save_reward(tmp_path / "reward.pt", model, "abc")
    assert torch.equal(load_reward(path, backbone, "abc").score(condition, batch["winner"]), together)
    with pytest.raises(ValueError, match="trained on backbone abc"):
        load_reward(path, backbone, "def")
    again = RewardModel(backbone)
    train_reward(again, train_features, l2=0.1)
    assert torch.equal(again.weight, model.weight)
    assert all(p.requires_grad for p in backbone.parameters()) and backbone.training == trained_mode  # untouched
