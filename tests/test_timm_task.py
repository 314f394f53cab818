"""camkit.timm_task.TrainStepTask: timm's TrainingTask contract around camkit.TrainStep.

The task must train exactly like the step, while everything timm's train.py evaluates, saves or
averages (eval model, checkpoint state, EMA) is the plain model; DDP and torch.compile wrap the
step. The two-process DDP run is tests/ddp_worker.py's ``timm_task`` mode.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import subprocess
import sys
import types

import pytest
import timm
import torch
import torch._dynamo
import torch.distributed as dist
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from camkit import ContrastivePatchLoss, SnapMix, TrainStep
from tests.helpers import TinyNet, fixed_batch, tiny_timm
from tests.test_train_ddp import _torchrun

if importlib.util.find_spec("timm.task") is None or not hasattr(
    importlib.import_module("timm.task").TrainingTask, "get_eval_model"
):
    pytest.skip(f"timm {timm.__version__} < 1.0.27 has no task API", allow_module_level=True)

from timm.task import TrainingTask

from camkit.timm_task import TrainStepTask

_model, _batch = tiny_timm, fixed_batch


def _parts(use_snapmix: bool, use_cpe: bool, seed: int = 0) -> dict:
    return {
        "mix": (
            SnapMix(num_classes=2, generator=torch.Generator().manual_seed(seed))
            if use_snapmix
            else None
        ),
        "cpe": ContrastivePatchLoss(normalize=True, temperature=0.1) if use_cpe else None,
    }


def _task(model: nn.Module, use_snapmix: bool = True, use_cpe: bool = True, **kwargs):
    return TrainStepTask(model, **_parts(use_snapmix, use_cpe), verbose=False, **kwargs)


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize(
    ("use_snapmix", "use_cpe", "options"),
    [
        (True, True, {}),
        (True, False, {}),
        (False, True, {}),
        (True, True, {"cpe_weight": 0.5, "label_smoothing": 0.1}),
    ],
)
def test_forward_equals_the_train_step(use_snapmix, use_cpe, options):
    images, labels = _batch()
    model = _model()
    twin = copy.deepcopy(model)
    expected = TrainStep(twin, **_parts(use_snapmix, use_cpe), **options)(images, labels)
    task = _task(model, use_snapmix, use_cpe, **options)
    result = task(images, labels)

    assert isinstance(task, TrainingTask)
    keys = {"loss", "output", "targets", "classification_loss"} | (
        {"cpe_loss"} if use_cpe else set()
    )
    assert set(result) == keys
    torch.testing.assert_close(result["loss"], expected.loss)
    torch.testing.assert_close(result["output"], expected.logits)
    torch.testing.assert_close(result["targets"], expected.targets)
    torch.testing.assert_close(result["classification_loss"], expected.classification_loss)
    if use_cpe:
        torch.testing.assert_close(result["cpe_loss"], expected.cpe_loss)
    result["loss"].backward()
    expected.loss.backward()
    torch.testing.assert_close(_grads(model), _grads(twin))
    # only the training forward updates BatchNorm, once, in both
    assert int(model.bn1.num_batches_tracked) == int(twin.bn1.num_batches_tracked) == 1


def test_eval_model_is_the_plain_model():
    model = _model()
    task = _task(model)
    assert task.model is model and task.step.model is model
    assert task.get_eval_model() is model
    assert task.get_trainable_module() is task.step
    images, _ = _batch()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(task.get_eval_model()(images), model(images))
    other = _model()
    assert task.get_eval_model(module=other) is other  # timm's convention


def test_checkpoint_state_is_the_model_state_dict():
    model = _model()
    task = _task(model)
    state = task.get_checkpoint_state()
    assert set(state) == {"state_dict"}  # no task state, no EMA yet
    assert list(state["state_dict"]) == list(model.state_dict())
    assert task.get_checkpoint_state(ema=True) == {}

    fresh = timm.create_model("resnet18", pretrained=False, num_classes=2)
    task.load_checkpoint_state(fresh.state_dict())
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


@pytest.mark.slow
def test_compile_compiles_the_step_and_returns_the_eval_model():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyNet(num_classes=2, stride=8)
    images, labels = _batch(size=32)
    eager = TrainStep(copy.deepcopy(model), **_parts(True, True))(images, labels)
    task = _task(model)

    eval_model = task.compile(backend="aot_eager")
    assert callable(eval_model) and eval_model is task.get_eval_model()
    assert eval_model is not model and eval_model._orig_mod is model
    assert task.get_trainable_module()._orig_mod is task.step  # the step is compiled, not the model
    result = task(images, labels)
    torch.testing.assert_close(result["loss"], eager.loss, rtol=1e-5, atol=1e-5)
    result["loss"].backward()

    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(eval_model(images), model(images))
    assert list(task.get_checkpoint_state()["state_dict"]) == list(model.state_dict())
    torch._dynamo.reset()


def test_soft_targets_from_timm_mixup_are_refused():
    task = _task(_model())
    images, labels = _batch()
    mixup = Mixup(cutmix_alpha=1.0, num_classes=2)
    mixed, soft = mixup(images, labels)
    assert soft.shape == (4, 2) and soft.is_floating_point()
    with pytest.raises(ValueError, match=r"\(4, 2\).*disable timm's mixup/cutmix"):
        task(mixed, soft)
    with pytest.raises(ValueError, match=r"int class labels of shape \(B,\)"):
        task(images, labels.float())
    with pytest.raises(TypeError, match="NaFlex"):
        task({"patches": images}, labels)


def test_ema_follows_the_model():
    model = _model()
    task = _task(model)
    assert not task.has_ema() and task.get_eval_model(ema=True) is None
    ema = task.setup_ema(decay=0.5)
    assert isinstance(ema, ModelEmaV3) and task.has_ema()
    assert task.get_eval_model(ema=True) is ema and ema.module is not model
    assert list(task.get_checkpoint_state(ema=True)["state_dict_ema"]) == list(model.state_dict())
    before = copy.deepcopy(ema.module.state_dict())

    opt = torch.optim.SGD(task.parameters(), lr=0.1)
    task(*_batch())["loss"].backward()
    opt.step()
    task.update_ema()  # step=None: decay 0.5 (timm's step=1 would copy: decay 0)
    moved = 0.0
    for key, value in ema.module.state_dict().items():
        if value.is_floating_point():
            now = model.state_dict()[key]
            torch.testing.assert_close(value, 0.5 * before[key] + 0.5 * now)
            moved = max(moved, float((value - before[key]).abs().max()))
    assert moved > 1e-4


@pytest.mark.parametrize("layer_decay", [None, 0.75])
def test_optimizer_on_the_step_groups_like_the_model(layer_decay):
    """train.py builds the optimiser on the step: the model's no_weight_decay and group_matcher
    must still apply (a ViT's pos_embed and cls_token are not decayed)."""
    model = _model("vit_tiny_patch16_224", img_size=32)
    task = TrainStepTask(model, verbose=False)

    def groups(module):
        opt = create_optimizer_v2(module, "adamw", weight_decay=0.05, layer_decay=layer_decay)
        return sorted(
            (g["weight_decay"], g.get("lr_scale", 1.0), sorted(id(p) for p in g["params"]))
            for g in opt.param_groups
        )

    assert groups(task.get_trainable_module()) == groups(model)
    no_decay = {i for wd, _, ids in groups(task.step) if wd == 0.0 for i in ids}
    assert id(model.pos_embed) in no_decay and id(model.cls_token) in no_decay


def test_from_model_builds_the_recipe():
    model = _model()
    task = TrainStepTask.from_model(model, alpha=0.5, label_smoothing=0.1, verbose=False)
    assert task.step.mix.num_classes == 2 and task.step.mix.alpha == 0.5
    # the one CPE default: the normalised form; the paper's Eq. 1 is one argument away
    assert isinstance(task.step.cpe, ContrastivePatchLoss) and task.step.cpe.normalize
    assert task.step.cpe.config == ContrastivePatchLoss().config
    paper = TrainStepTask.from_model(model, cpe=ContrastivePatchLoss.paper(), verbose=False)
    assert not paper.step.cpe.normalize and paper.step.cpe.temperature == 1.0
    assert task.step.label_smoothing == 0.1
    assert TrainStepTask.from_model(model, cpe=False, verbose=False).step.cpe is None
    cpe = ContrastivePatchLoss(normalize=True, temperature=0.1)
    assert TrainStepTask.from_model(model, cpe=cpe, verbose=False).step.cpe is cpe
    with pytest.raises(TypeError, match=r"cpe: expected a bool or a camkit\.ContrastivePatchLoss"):
        TrainStepTask.from_model(model, cpe="yes")
    with pytest.raises(ValueError, match=r"positive int num_classes.*num_classes=None"):
        TrainStepTask.from_model(nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"torch\.compile'd model"):
        TrainStepTask(torch.compile(model))


def test_snapmix_task_is_a_deprecated_alias():
    from camkit.timm_task import SnapMixTask

    with pytest.warns(DeprecationWarning, match="TrainStepTask"):
        task = SnapMixTask(_model(), snapmix=SnapMix(2), verbose=False)
    assert isinstance(task, TrainStepTask) and isinstance(task.step.mix, SnapMix)


@pytest.fixture
def single_rank_group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_prepare_distributed_wraps_the_step(single_rank_group):
    model = _model()
    task = _task(model)
    # train.py --device cpu passes device_ids=[torch.device("cpu")], which DDP refuses for CPU
    assert task.prepare_distributed(device_ids=[torch.device("cpu")]) is task
    wrapped = task.get_trainable_module()
    assert isinstance(wrapped, DDP) and wrapped.module is task.step
    assert task.get_eval_model() is model
    assert list(task.get_checkpoint_state()["state_dict"]) == list(model.state_dict())
    with task.no_sync():
        assert not wrapped.require_backward_grad_sync
    assert wrapped.require_backward_grad_sync
    task(*_batch())["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(RuntimeError, match="call prepare_distributed\\(\\) once"):
        task.prepare_distributed()
    with pytest.raises(RuntimeError, match="compile first"):
        task.compile(backend="aot_eager")


@pytest.mark.slow
def test_ddp_two_ranks_stay_in_sync(tmp_path):
    report = _torchrun("timm_task", tmp_path)
    assert report["world"] == 2
    assert report["max_param_diff"] == 0.0
    assert report["moved"] > 1e-3
    assert report["num_batches_tracked"] == [3, 3]


@pytest.mark.slow
def test_import_camkit_does_not_import_timm_task():
    code = (
        "import sys, camkit; "
        "print(sorted(m for m in ('timm.task', 'camkit.timm_task') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_old_timm_is_refused_with_the_version_needed(monkeypatch):
    monkeypatch.delitem(sys.modules, "camkit.timm_task")
    monkeypatch.setitem(sys.modules, "timm.task", None)  # timm < 1.0.23: no timm.task
    with pytest.raises(ImportError, match=r"timm >= 1\.0\.27.*found timm "):
        importlib.import_module("camkit.timm_task")

    old = types.ModuleType("timm.task")  # timm 1.0.23 - 1.0.26: a TrainingTask without the hooks

    class TrainingTask(nn.Module):
        def prepare_distributed(self, device_ids=None, **kwargs):
            return self

    old.TrainingTask = TrainingTask
    monkeypatch.setitem(sys.modules, "timm.task", old)
    with pytest.raises(ImportError, match=r"timm >= 1\.0\.27.*get_eval_model, setup_ema"):
        importlib.import_module("camkit.timm_task")


def test_the_task_takes_a_torchvision_and_a_hugging_face_model():
    """Any family camkit adapts: the step trains the user's model; evaluation gets logits."""
    import torchvision.models as tvm

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = tvm.resnet18(num_classes=2)
    model.fc = nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 2))
    task = TrainStepTask.from_model(model.train(), verbose=False)
    assert task.step.num_classes == 2 and task.model is model
    images, labels = fixed_batch()
    result = task(images, labels)
    result["loss"].backward()
    assert model.fc[0].weight.grad is not None and "cpe_loss" in result
    assert task.get_eval_model() is model
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2
    )
    hf = transformers.ResNetForImageClassification(config).eval()
    task = TrainStepTask(hf, mix=SnapMix(2), verbose=False)
    assert list(task.get_checkpoint_state()["state_dict"]) == list(hf.state_dict())
    with torch.no_grad():
        logits = task.get_eval_model()(images)  # a tensor, as timm's validate() needs
    torch.testing.assert_close(logits, hf(images).logits, rtol=0, atol=0)
