"""Knowledge distillation (utils/train/distill.py, utils/train/teacher.py): the teacher is built from each kind of
weights file and refused when its classes differ; the loss terms against hand-computed values; a LeYOLO teacher
teaching a Yolo-FastestV2 student of another input size; a distilled run that beats the same run without a teacher,
resumes, and leaves a plain student."""
import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.build import build_model
from tests.conftest import shared_path
from utils.config import load_config
from utils.errors import CheckpointError, ConfigError
from utils.train.checkpoint import save_atomic
from utils.train.distill import Distiller, class_scores, objectness_loss, on_grid, pkd_loss, softmax_class_loss
from utils.train.teacher import fold_batchnorm, load_teacher
from utils.train.trainer import config_record

torch.set_num_threads(1)   # the test machine has 2 cores shared by many processes
SIZE = 96
TEACHER_EPOCHS, STUDENT_EPOCHS = 4, 6


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """The generated sample dataset, small: 96 train + 32 val images of 96x96, 4 classes."""
    from data.make_sample import generate
    folder = tmp_path_factory.mktemp('sample')
    generate(folder, seed=0, train=96, val=32, size=SIZE)
    return folder / 'sample.data'


def leyolo_data(dataset: Path) -> Path:
    """The sample's .data for a LeYOLO teacher: without the key only the anchor head reads."""
    path = dataset.with_name('leyolo.data')
    lines = dataset.read_text().splitlines(keepends=True)
    path.write_text(''.join(line for line in lines if not line.startswith('anchor_cls_gain')))
    return path


def save_as_checkpoint(model, cfg, path: Path) -> Path:
    """What train.py writes, as far as a teacher needs: the weights, the spec and the config record."""
    state = model.state_dict()
    save_atomic(dict(model=state, ema=state, spec=model.spec.to_dict(), config=config_record(cfg),
                     data=str(cfg.data_path)), path)
    return path


def leyolo_teacher_file(dataset, tmp_path, size=128, **changes) -> Path:
    cfg = load_config(leyolo_data(dataset), model='leyolo-nano', head='leyolo', width=size, height=size)
    cfg = dataclasses.replace(cfg, **changes)
    torch.manual_seed(1)
    return save_as_checkpoint(build_model(cfg, log=lambda s: None), cfg, tmp_path / 'teacher.pt')


def test_the_teacher_comes_from_its_checkpoint_and_must_have_the_same_classes(dataset, tmp_path):
    teacher_file = leyolo_teacher_file(dataset, tmp_path)
    cfg = load_config(dataset, teacher_weights=teacher_file)
    teacher = load_teacher(cfg, torch.device('cpu'), log=lambda s: None)
    assert (teacher.spec.kind, teacher.spec.strides, teacher.spec.input_width) == ('leyolo', (8, 16, 32), 128)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.state_dict()['head.cls_branches.0.3.weight'],
                       torch.load(teacher_file, weights_only=True)['ema']['head.cls_branches.0.3.weight'])
    # teacher_width / teacher_height choose another input size
    resized = load_teacher(dataclasses.replace(cfg, teacher_width=160, teacher_height=96), torch.device('cpu'),
                           log=lambda s: None)
    assert (resized.spec.input_width, resized.spec.input_height) == (160, 96)
    # the same classes in another order, or another number of classes: an error naming both files
    swapped = leyolo_teacher_file(dataset, tmp_path, class_names=('square', 'circle', 'triangle', 'cross'))
    with pytest.raises(ConfigError, match=rf'^{cfg.data_path}: the teacher {swapped} was trained on the classes '
                                          rf'square, circle, triangle, cross but {cfg.names} lists circle, square, '
                                          r'triangle, cross: distillation needs the same classes in the same order$'):
        load_teacher(dataclasses.replace(cfg, teacher_weights=swapped), torch.device('cpu'))
    # a plain state_dict carries no names: its class count is checked (here 3 against the .data's 4)
    three = dataclasses.replace(cfg, classes=3)
    plain = tmp_path / 'plain.pth'
    torch.save(build_model(three, log=lambda s: None).state_dict(), plain)
    with pytest.raises(ConfigError, match=rf'^{cfg.data_path}: the teacher {plain} has 3 classes but {cfg.names} '
                                          r'lists 4: distillation needs the same classes in the same order$'):
        load_teacher(dataclasses.replace(cfg, teacher_weights=plain), torch.device('cpu'))
    # a key of the .data that contradicts the file
    with pytest.raises(ConfigError, match=r'key "teacher_model": yolo-fastestv2, but .* holds a leyolo-nano model$'):
        load_teacher(dataclasses.replace(cfg, teacher_model='yolo-fastestv2'), torch.device('cpu'))


def test_the_released_weights_teach_a_student_of_their_classes(dataset):
    """LeYOLONano.pt and Yolo-FastestV2's COCO .pth carry no class names: 80 classes teach an 80-class student and
    are refused for the sample's 4, naming both files."""
    leyolo = shared_path('weights/leyolo/LeYOLONano.pt')
    yfv2 = shared_path('weights/yolo-fastestv2/coco2017-0.241078ap-model.pth')
    cfg = load_config(dataset)
    coco = dataclasses.replace(cfg, classes=80, class_names=tuple(f'c{i}' for i in range(80)))
    for path, kind, strides in ((leyolo, 'leyolo', (8, 16, 32)), (yfv2, 'anchor', (16, 32))):
        teacher = load_teacher(dataclasses.replace(coco, teacher_weights=path), torch.device('cpu'),
                               log=lambda s: None)
        assert (teacher.spec.kind, teacher.spec.strides, teacher.spec.input_width) == (kind, strides, SIZE)
        with pytest.raises(ConfigError, match=rf'^{cfg.data_path}: the teacher {path} has 80 classes but '
                                              rf'{cfg.names} lists 4: distillation needs the same classes'):
            load_teacher(dataclasses.replace(cfg, teacher_weights=path), torch.device('cpu'))


def test_the_loss_terms_match_hand_computed_values():
    # class distribution: zero when the student's softmax is the teacher's normalised scores, else the KL
    teacher_scores = torch.tensor([0.6, 0.2, 0.0, 0.2]).view(1, 4, 1, 1)
    assert softmax_class_loss(torch.log(teacher_scores + 1e-12), teacher_scores).item() == pytest.approx(0, abs=1e-6)
    # a uniform student: KL = sum p log(p / 0.25), weighted by the square of the teacher's best score 0.6 over the
    # weights' sum (at least 1, so that a teacher that sees nothing does not amplify its noise)
    p = torch.tensor([0.6, 0.2, 0.2])
    assert softmax_class_loss(torch.zeros(1, 4, 1, 1), teacher_scores).item() == \
        pytest.approx(0.36 * (p * (p / 0.25).log()).sum().item(), rel=1e-5)
    # objectness: the student's best anchor per cell against the teacher's best class score there, mean over cells
    student_obj = torch.tensor([[-2.0, 0.0], [1.0, -3.0], [0.5, 0.5]]).view(1, 3, 1, 2)   # anchors x cells
    scores = torch.tensor([[0.9, 0.1], [0.3, 0.0]]).view(1, 2, 1, 2)                     # classes x cells
    best_logit, best_score = torch.tensor([1.0, 0.5]), torch.tensor([0.9, 0.1])
    by_hand = -(best_score * F.logsigmoid(best_logit) + (1 - best_score) * F.logsigmoid(-best_logit)).mean()
    assert objectness_loss(student_obj, scores).item() == pytest.approx(by_hand.item(), rel=1e-6)
    # the teacher's maps of all scales on a student grid: the best score per cell and class
    fine = torch.zeros(1, 2, 4, 4)
    fine[0, 0, 3, 2] = 0.9            # an object the teacher sees at stride 8, in student cell (1, 1) of stride 16
    coarse = torch.full((1, 2, 1, 1), 0.2)
    expected = torch.full((1, 2, 2, 2), 0.2)
    expected[0, 0, 1, 1] = 0.9
    assert torch.equal(on_grid([fine, coarse], (2, 2)), expected)
    # anchor head: best anchor's objectness times the class softmax; leyolo head: sigmoid
    obj = torch.tensor([-1.0, 2.0, 0.0]).view(1, 3, 1, 1)
    cls = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)
    expected = torch.sigmoid(torch.tensor(2.0)) * F.softmax(cls, 1)
    assert torch.allclose(class_scores([(None, obj, cls)], 'anchor')[0], expected)
    assert torch.allclose(class_scores([(None, cls)], 'leyolo')[0], cls.sigmoid())
    # features: blind to scale and offset per channel, 2 for anti-correlated maps
    features = torch.randn(2, 3, 5, 5)
    assert pkd_loss(3 * features + 7, features).item() == pytest.approx(0, abs=1e-6)
    assert pkd_loss(-features, features).item() == pytest.approx(4 * 24 / 25, rel=1e-4)   # 2 * 2 * (n-1)/n


def test_a_leyolo_teacher_teaches_a_yolo_fastestv2_student_of_another_size(dataset, tmp_path):
    """Strides 8/16/32 vs 16/32, 128 vs 96 pixels: finite terms, gradients to the student and the adapters, none to
    the teacher, and the student's forward unchanged."""
    cfg = load_config(dataset, teacher_weights=leyolo_teacher_file(dataset, tmp_path))
    torch.manual_seed(0)
    student = build_model(cfg, log=lambda s: None).train()
    distiller = Distiller(cfg, student, torch.device('cpu'), log=lambda s: None)
    assert [conv.out_channels for conv in distiller.adapters.convs] == \
        [distiller.teacher.backbone.out_channels[1], distiller.teacher.backbone.out_channels[2]]   # strides 16, 32
    images = torch.randint(0, 255, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    outputs = student(images)
    loss, parts = distiller(images, outputs)
    assert set(parts) == {'dfeat', 'dcls', 'dobj'} and all(torch.isfinite(torch.tensor(v)) for v in parts.values())
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.adapters.parameters())
    assert student.neck.fuse_16[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in distiller.teacher.parameters())
    # without the feature term the adapters neither run nor train; the prediction terms stay
    student.zero_grad()
    no_features = Distiller(dataclasses.replace(cfg, distill_feature_gain=0), student, torch.device('cpu'),
                            log=lambda s: None)
    loss, parts = no_features(images, student(images))
    loss.backward()
    assert parts['dfeat'] == 0 and parts['dobj'] > 0
    assert all(p.grad is None for p in no_features.adapters.parameters())
    assert student.neck.fuse_16[0].weight.grad.abs().sum() > 0
    student.eval()
    with torch.no_grad():
        plain = build_model(cfg, log=lambda s: None).eval()
        plain.load_state_dict(student.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(student(images)[0], plain(images)[0]))


def test_a_distilled_student_learns_the_teachers_classes_resumes_and_stays_plain(dataset, tmp_path):
    """The common case in small: a LeYOLO-Nano teacher fine-tuned from the released COCO weights, a Yolo-FastestV2
    student from its ImageNet backbone; the same epochs, seed and data with and without the teacher. The distilled
    run's loss terms are finite; its student's class scores and objectness follow the teacher's on val images clearly
    more closely than the plain run's (the teacher's lesson reached the student, not only its adapters; in the one
    run tried without the objectness term the student drifted far from the teacher on both); its best.pt is a plain
    student; its last.pt resumes with the teacher and refuses to resume without it."""
    from utils.data.dataset import load_split
    from utils.data.train_data import TrainDataset, collate
    from utils.train.checkpoint import load_checkpoint
    from utils.train.trainer import TrainOptions, train
    leyolo = shared_path('weights/leyolo/LeYOLONano.pt')
    backbone = shared_path('weights/yolo-fastestv2/shufflenetv2-0.5x-imagenet-backbone.pth')
    fast = dict(batch_size=8, workers=0, eval_interval=100)
    teacher_cfg = load_config(leyolo_data(dataset), model='leyolo-nano', head='leyolo', pre_weights=leyolo,
                              epochs=TEACHER_EPOCHS, learning_rate=0.0005, warmup_epochs=0,
                              steps=(100,), **fast)
    train(teacher_cfg, TrainOptions(out_dir=tmp_path / 'teacher', device='cpu', workers=0))
    teacher_file = tmp_path / 'teacher' / 'last.pt'
    cfg = load_config(dataset, backbone_weights=backbone, epochs=STUDENT_EPOCHS, learning_rate=0.005, steps=(100,),
                      **fast)
    teacher = load_teacher(dataclasses.replace(cfg, teacher_weights=teacher_file), torch.device('cpu'),
                           log=lambda s: None)
    val = TrainDataset(load_split(cfg, 'val', verbose=False), cfg, augment=False)
    images, _ = collate([val[(0, index)] for index in range(len(val))])
    with torch.no_grad():
        teacher_scores = class_scores(teacher(images), 'leyolo')
    class_distance, object_distance = {}, {}
    for name, teacher_weights in (('plain', None), ('distilled', teacher_file)):
        train(dataclasses.replace(cfg, teacher_weights=teacher_weights),
              TrainOptions(out_dir=tmp_path / name, device='cpu', workers=0))
        student = build_model(cfg, log=lambda s: None)
        student.load_state_dict(load_checkpoint(tmp_path / name / 'best.pt')['ema'])   # strict: a plain student
        with torch.no_grad():
            outputs = student.eval()(images)
            class_distance[name] = sum(softmax_class_loss(cls, on_grid(teacher_scores, cls.shape[2:]))
                                       for _, _, cls in outputs).item()
            object_distance[name] = sum(objectness_excess(obj, on_grid(teacher_scores, obj.shape[2:]))
                                        for _, obj, _ in outputs).item()
    print(f'class KL to the teacher on val: without a teacher {class_distance["plain"]:.4f}, '
          f'distilled {class_distance["distilled"]:.4f}; objectness BCE above the teacher\'s own: without '
          f'{object_distance["plain"]:.4f}, '
          f'distilled {object_distance["distilled"]:.4f}')
    assert class_distance['distilled'] < 0.9 * class_distance['plain']
    assert object_distance['distilled'] < 0.9 * object_distance['plain']
    rows = (tmp_path / 'distilled' / 'results.csv').read_text().splitlines()
    header, last_row = rows[0].split(','), dict(zip(rows[0].split(','), rows[-1].split(',')))
    assert {'dfeat', 'dcls', 'dobj'} <= set(header)
    assert all(math.isfinite(float(last_row[key])) for key in ('dfeat', 'dcls', 'dobj', 'loss'))
    assert 'distill' not in load_checkpoint(tmp_path / 'distilled' / 'best.pt')
    last = tmp_path / 'distilled' / 'last.pt'
    with pytest.raises(CheckpointError, match=rf'^{last}: written by a run with a teacher \(teacher_weights\): '
                                              r'resume it the same way$'):
        train(dataclasses.replace(cfg, epochs=STUDENT_EPOCHS + 1),
              TrainOptions(out_dir=tmp_path / 'distilled', device='cpu', workers=0, resume=last))
    adapters = load_checkpoint(last)['distill']
    train(dataclasses.replace(cfg, epochs=STUDENT_EPOCHS + 1, teacher_weights=teacher_file),
          TrainOptions(out_dir=tmp_path / 'distilled', device='cpu', workers=0, resume=last))
    resumed = load_checkpoint(last)
    assert resumed['epoch'] == STUDENT_EPOCHS + 1
    assert not torch.equal(resumed['distill']['convs.0.weight'], adapters['convs.0.weight'])   # trained on


def objectness_excess(student_obj_logits: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """The distillation's objectness BCE above its floor, the entropy of the teacher's scores (a student whose best
    anchor's objectness equals the teacher's score scores exactly the floor)."""
    best = teacher_scores.amax(1, keepdim=True).clamp(1e-6, 1 - 1e-6)
    return objectness_loss(student_obj_logits, teacher_scores) - objectness_loss(torch.logit(best), teacher_scores)


@pytest.mark.parametrize('model', ['yolo-fastestv2', 'leyolo-nano'])
def test_folding_the_teachers_batchnorms_keeps_its_outputs(dataset, model):
    """The teacher runs with its BatchNorms folded into its convolutions (utils/train/teacher.fold_batchnorm):
    every one of them, with trained-like statistics, and the same raw outputs as unfolded."""
    cfg = load_config(leyolo_data(dataset) if model == 'leyolo-nano' else dataset, model=model,
                      head='leyolo' if model == 'leyolo-nano' else 'anchor', width=128, height=128)
    torch.manual_seed(0)
    net = build_model(cfg, log=lambda s: None).eval()
    batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:   # statistics and affine terms far from their initial identity
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.5, 0.5)
    images = torch.randint(0, 255, (2, 3, 128, 128), dtype=torch.uint8)
    with torch.no_grad():
        before = [t for scale in net(images) for t in scale]
        assert fold_batchnorm(net) == len(batch_norms)
        after = [t for scale in net(images) for t in scale]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    for a, b in zip(before, after):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max().item())


def test_a_teacher_trained_on_other_shapes_than_the_students_batches_is_warned_about(dataset, tmp_path):
    """A teacher trained letterboxed sees a stretching student's batches distorted, and the reverse."""
    teacher_file = leyolo_teacher_file(dataset, tmp_path, letterbox=True)
    cfg = load_config(dataset, teacher_weights=teacher_file)
    assert not cfg.letterbox
    logged = []
    load_teacher(cfg, torch.device('cpu'), log=logged.append)
    assert [line for line in logged if line.startswith('warning')] == [
        f"warning: the teacher {teacher_file} was trained on letterboxed (aspect ratio kept) images, the student's "
        f"batches are stretched (letterbox = 0): the teacher sees objects in shapes it did not learn from; one "
        f"trained with letterbox = 0 would not"]
    logged.clear()
    load_teacher(dataclasses.replace(cfg, letterbox=True), torch.device('cpu'), log=logged.append)
    assert not [line for line in logged if line.startswith('warning')]
