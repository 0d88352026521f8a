"""The training loop's contract (bbrctl.detection.train.loop): a step, then each hook in order,
and a hook can end the loop. The run-level behaviour (resume bit for bit, stop with a checkpoint,
metrics once per iteration) is tested end to end in test_train.py, test_train_resume.py and
test_faults.py."""

from __future__ import annotations

import contextlib
import itertools

import pytest

torch = pytest.importorskip("torch")

from bbrctl.detection.train.hooks import Metrics  # noqa: E402
from bbrctl.detection.train.loop import Hook, Loop, Requeue, train_loop  # noqa: E402


class _Dist:
    distributed, main, world_size, rank = False, True, 1, 0
    device = torch.device("cpu")


class _Reporter:
    main, wandb = True, None

    def __init__(self):
        self.statuses, self.logged = [], []

    def advance(self, done):
        pass

    def status(self, done, force=False, **fields):
        self.statuses.append(done)

    def records(self, records):
        self.logged += [r["iteration"] for r in records]

    def log(self, msg):
        pass


def _loop(max_iter=6, start=0):
    model = torch.nn.Linear(2, 1)
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def forward(self, x, y):
            return {"a": ((model(x) - y) ** 2).mean(), "b": model.weight.abs().sum() * 0.01}

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = Loop(cfg={}, dist=_Dist(), run_dir=".", model=model, net=Net(), optimizer=opt,
                scaler=torch.amp.GradScaler("cuda", enabled=False), reporter=_Reporter(), lr_at=lambda i: 0.1 / (1 + i),
                autocast=contextlib.nullcontext, to_device=lambda x, y: (x, y), max_iter=max_iter, start=start,
                timing={"train_s": 0.0, "eval_s": 0.0})
    batches = iter(itertools.repeat((torch.ones(4, 2), torch.zeros(4, 1))))
    return loop, batches


class Recorder(Hook):
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def after_step(self, loop, done):
        self.calls.append((self.name, done, loop.last[0], loop.last[1]))


def test_each_hook_runs_after_each_step_in_the_order_given():
    calls: list = []
    loop, batches = _loop(max_iter=4, start=1)
    train_loop(loop, batches, [Recorder("first", calls), Recorder("second", calls)])
    assert [(n, d) for n, d, _, _ in calls] == [("first", 2), ("second", 2), ("first", 3), ("second", 3),
                                                ("first", 4), ("second", 4)]
    # the step's record names the iteration it completed and the learning rate it used
    assert all(done == last for _, done, last, _ in calls)
    assert [lr for n, _, _, lr in calls if n == "first"] == pytest.approx([0.1 / 2, 0.1 / 3, 0.1 / 4])
    assert loop.names == ["a", "b"]


def test_a_hook_that_raises_ends_the_loop_after_that_step():
    calls: list = []

    class StopAt(Hook):
        def after_step(self, loop, done):
            if done == 3:
                raise Requeue(done)

    loop, batches = _loop(max_iter=10)
    with pytest.raises(Requeue) as e:
        train_loop(loop, batches, [Recorder("r", calls), StopAt(), Recorder("after", calls)])
    assert e.value.args[0] == 3
    assert [(n, d) for n, d, _, _ in calls] == [("r", 1), ("after", 1), ("r", 2), ("after", 2), ("r", 3)]


def test_the_metrics_hook_flushes_once_per_log_period_and_at_the_end():
    loop, batches = _loop(max_iter=5)
    m = Metrics(log_period=2)
    train_loop(loop, batches, [m])
    assert loop.reporter.statuses == [2, 4, 5] and not m.pending
    assert loop.reporter.logged == [1, 2, 3, 4, 5]


def test_a_non_finite_loss_is_reported_with_its_iteration_at_the_flush():
    loop, batches = _loop(max_iter=4)
    bad = iter([(torch.ones(4, 2), torch.zeros(4, 1))] + [(torch.full((4, 2), float("nan")), torch.zeros(4, 1))] * 3)
    with pytest.raises(FloatingPointError, match="non-finite at iteration 2"):
        train_loop(loop, bad, [Metrics(log_period=2)])
