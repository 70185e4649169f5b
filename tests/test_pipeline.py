"""pipeline.py's bookkeeping, on stand-in stages that only note that they ran and write
their output file: which stages run, the two lanes, and what a failed or interrupted stage
leaves for the next run (it is never taken for finished). CPU only."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pipeline  # noqa: E402
from data import collect, generate  # noqa: E402


def fake_stage(name):
    """A stage that notes that it ran, fails where a file fail_NAME exists, and else makes
    out/NAME: the pipeline's bookkeeping without the minutes of training."""
    code = (f"import os, sys; open('ran', 'a').write('{name} '); "
            f"os.path.exists('fail_{name}') and sys.exit(1); open('out/{name}', 'w').write('x')")
    return name, ["-c", code], f"out/{name}"


def ran():
    with open("ran") as f:
        return f.read().split()


def run_pipeline(*argv):
    with open("ran", "w"):
        pass
    pipeline.main(list(argv))
    return ran()


def test_the_pipeline_reruns_a_stage_that_did_not_finish(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "STAGES", [fake_stage(n) for n in ("data", "pretrain", "sft")])
    assert run_pipeline() == ["data", "pretrain", "sft"]
    (tmp_path / "fail_pretrain").touch()  # --redo=data, then pretraining stops half-way
    with pytest.raises(SystemExit, match="stage pretrain failed"):
        run_pipeline("--redo=data")
    assert ran() == ["data", "pretrain"] and (tmp_path / "out" / "sft").exists()
    (tmp_path / "fail_pretrain").unlink()
    assert run_pipeline() == ["pretrain", "sft"]  # out/pretrain and out/sft are stale
    assert run_pipeline() == []
    assert not (tmp_path / pipeline.UNFINISHED).exists()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m, pytest.raises(SystemExit, match="interrupted during stage sft"):
        m.setattr(pipeline.subprocess, "run", ctrl_c)
        run_pipeline("--redo=sft")
    assert run_pipeline() == ["sft"]


# -----------------------------------------------------------------------------
# the two lanes

@pytest.fixture
def laned(tmp_path, monkeypatch):
    """Six stand-in stages, the middle four in two lanes (a1 then a2 beside b1 then b2),
    lanes on as on a CPU; run in a fresh directory."""
    monkeypatch.chdir(tmp_path)
    names = ["first", "a1", "a2", "b1", "b2", "last"]
    monkeypatch.setattr(pipeline, "STAGES", [fake_stage(n) for n in names])
    monkeypatch.setattr(pipeline, "LANES", [[["a1", "a2"], ["b1", "b2"]]])
    monkeypatch.setattr(pipeline, "threads_per_lane", lambda device, jobs: 1 if jobs == 2 else None)
    return names


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_every_stage_runs_once_and_the_mark_is_cleared(laned, jobs):
    order = run_pipeline(f"--jobs={jobs}")
    assert sorted(order) == sorted(laned)
    assert order[0] == "first" and order[-1] == "last"  # the lanes run between them
    if jobs == "2":  # each lane runs its stages in turn, its output in a log
        assert order.index("a1") < order.index("a2") and order.index("b1") < order.index("b2")
        assert os.path.exists("out/logs/a1.log")
    else:
        assert order == laned
    assert not os.path.exists(pipeline.UNFINISHED)
    assert run_pipeline(f"--jobs={jobs}") == []  # everything exists: nothing runs


def test_redo_runs_the_stage_and_every_later_one(laned):
    run_pipeline()
    assert run_pipeline("--redo=b2") == ["b2", "last"]  # one lane has work: it runs alone


def test_a_failed_lane_stage_is_run_again(laned, tmp_path):
    (tmp_path / "fail_b1").touch()
    with pytest.raises(SystemExit, match="stage b1 failed"):
        run_pipeline()
    assert "last" not in ran() and "b2" not in ran()  # its lane stopped at b1
    assert {"a1", "a2"} <= set(ran())  # the other lane went on
    assert "b1" in open(pipeline.UNFINISHED).read().split()
    (tmp_path / "fail_b1").unlink()
    # every lane stage runs again (a1 comes first and was marked too), then the rest
    assert sorted(run_pipeline()) == sorted(laned[1:])
    assert not os.path.exists(pipeline.UNFINISHED)


def test_a_stage_waits_for_the_stage_of_the_other_lane_it_needs(laned, tmp_path, monkeypatch):
    # a1 takes a while and notes itself when it ends; b2 needs it, b1 does not
    slow_a1 = ("a1", ["-c", "import os, sys, time; time.sleep(1); "
                      "os.path.exists('fail_a1') and sys.exit(1); "
                      "open('ran', 'a').write('a1 '); open('out/a1', 'w').write('x')"], "out/a1")
    monkeypatch.setattr(pipeline, "STAGES", [slow_a1 if n == "a1" else fake_stage(n) for n in laned])
    monkeypatch.setattr(pipeline, "WAITS_FOR", {"b2": "a1"})
    order = run_pipeline()
    assert order.index("a1") < order.index("b2")  # without the wait b2 would start first
    (tmp_path / "fail_a1").touch()  # what b2 needs fails: b2 never starts
    with pytest.raises(SystemExit, match="stage a1 failed"):
        run_pipeline("--redo=a1")
    assert ran() == ["b1"]


def test_each_group_of_lanes_runs_between_the_stages_around_it(laned, monkeypatch):
    monkeypatch.setattr(pipeline, "STAGES", [fake_stage(n) for n in ["c1", "c2", "mid"] + laned])
    monkeypatch.setattr(pipeline, "LANES", [[["c1"], ["c2"]], [["a1", "a2"], ["b1", "b2"]]])
    order = run_pipeline()
    assert {order.index("c1"), order.index("c2")} == {0, 1}  # the first group, then mid
    assert order[2] == "mid" and order[3] == "first" and order[-1] == "last"
    assert os.path.exists("out/logs/c2.log") and os.path.exists("out/logs/b1.log")
    # a group with work in one lane only runs it in this terminal; the other group in lanes
    os.remove("out/logs/c2.log")
    os.remove("out/logs/b1.log")
    order = run_pipeline("--redo=c2")
    assert order[:3] == ["c2", "mid", "first"] and order[-1] == "last"
    assert sorted(order[3:-1]) == ["a1", "a2", "b1", "b2"]
    assert not os.path.exists("out/logs/c2.log") and os.path.exists("out/logs/b1.log")
    assert not os.path.exists(pipeline.UNFINISHED)


def test_a_failed_stage_of_the_first_group_stops_before_the_stages_after_it(laned, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(pipeline, "STAGES", [fake_stage(n) for n in ["c1", "c2", "mid"] + laned])
    monkeypatch.setattr(pipeline, "LANES", [[["c1"], ["c2"]], [["a1", "a2"], ["b1", "b2"]]])
    (tmp_path / "fail_c2").touch()
    with pytest.raises(SystemExit, match="stage c2 failed"):
        run_pipeline()
    assert sorted(ran()) == ["c1", "c2"]  # neither mid nor the second group started
    assert open(pipeline.UNFINISHED).read().split() == ["c1", "c2"]
    (tmp_path / "fail_c2").unlink()
    order = run_pipeline()  # the whole group again (c1 was marked too), then the rest
    assert sorted(order[:2]) == ["c1", "c2"] and order[2:4] == ["mid", "first"]
    assert sorted(order[4:-1]) == ["a1", "a2", "b1", "b2"] and order[-1] == "last"


def test_bad_arguments_are_named(laned):
    with pytest.raises(SystemExit, match="unknown stage nope"):
        pipeline.main(["--redo=nope"])
    with pytest.raises(SystemExit, match="--jobs=3"):
        pipeline.main(["--jobs=3"])


def test_lanes_only_on_a_cpu_with_threads_to_share(monkeypatch):
    monkeypatch.setattr(pipeline.torch, "get_num_threads", lambda: 4)
    assert pipeline.threads_per_lane("cpu", 2) == 2
    assert pipeline.threads_per_lane("cpu", 1) is None  # --jobs=1
    assert pipeline.threads_per_lane("cuda", 2) is None  # the lanes would queue for one GPU
    monkeypatch.setattr(pipeline.torch, "get_num_threads", lambda: 1)
    assert pipeline.threads_per_lane("cpu", 2) is None


def test_only_the_first_round_ranks_answers_to_other_prompts():
    # the second round ranks a PPO policy's own samples alone; the first keeps data.collect's
    # default (one answer written for another prompt)
    commands = {name: cmd for name, cmd, _ in pipeline.STAGES}
    for first_round in ("compare", "compare_b"):
        assert not any(arg.startswith("--n_other") for arg in commands[first_round])
    assert "--n_other=0" in commands["compare_r2"]


def prompt_range(cmd):
    """The reward-model prompts a data.collect command ranks: range(start, end)."""
    opts = dict(arg[2:].split("=", 1) for arg in cmd if arg.startswith("--"))
    start = int(opts.get("start_prompt", collect.Config().start_prompt))
    return range(start, start + int(opts["n_prompts"]))


def test_the_rounds_rank_the_reward_model_prompts_each_their_own_and_all_of_them():
    commands = {name: cmd for name, cmd, _ in pipeline.STAGES}
    rounds = ["compare", "compare_b", "compare_r2", "compare_r3"]
    ranges = [prompt_range(commands[name]) for name in rounds]
    # one after another, none asking another's questions, together every prompt
    assert ranges[0].start == 0 and ranges[-1].stop == generate.Config().n_rm
    assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))
    assert len(ranges[0]) == len(ranges[1]) == pipeline.HALF
    seeds = [next((arg for arg in commands[name] if arg.startswith("--seed=")),
                  f"--seed={collect.Config().seed}") for name in rounds]
    # each round's second part draws its samples and labels afresh: the first round's second
    # half, and the third round against the second
    assert seeds[1] != seeds[0] and seeds[3] != seeds[2]
    made = {name: output for name, _, output in pipeline.STAGES}
    assert pipeline.COMPARISONS.split(",") == [made[name] for name in rounds]
    assert pipeline.ROUND2_COMPARISONS.split(",") == [made[name] for name in rounds[:3]]
    # the first reward model learns from the first round, both halves; the second from two rounds
    assert f"--comparisons={made['compare']},{made['compare_b']}" in commands["reward_r1"]
    assert f"--comparisons={pipeline.ROUND2_COMPARISONS}" in commands["reward_r2"]
    assert [["compare"], ["compare_b"]] in pipeline.LANES


def test_each_group_of_lanes_is_a_stretch_of_the_stages_and_holds_what_its_stages_wait_for():
    names = [name for name, _, _ in pipeline.STAGES]
    for group in pipeline.LANES:
        where = sorted(names.index(n) for lane in group for n in lane)
        assert where == list(range(where[0], where[-1] + 1))
    for stage, needed in pipeline.WAITS_FOR.items():
        assert any(stage in sum(group, []) and needed in sum(group, []) for group in pipeline.LANES)
