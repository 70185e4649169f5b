"""pipeline.py's bookkeeping, on stand-in stages that only write their output file: which
stages run, the two lanes, and what a failed stage leaves for the next run. CPU only."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pipeline  # noqa: E402


def stand_in(name, fail=False):
    """A stage that appends its name to out/ran.txt, then writes out/NAME or fails."""
    code = f"open('out/ran.txt', 'a').write('{name}\\n'); " + (
        "raise SystemExit(3)" if fail else f"open('out/{name}', 'w').write('done')")
    return (name, ["-c", code], f"out/{name}")


@pytest.fixture
def stages(tmp_path, monkeypatch):
    """Six stand-in stages, the middle four in two lanes; run in a fresh directory."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("out")
    names = ["first", "a1", "a2", "b1", "b2", "last"]
    monkeypatch.setattr(pipeline, "STAGES", [stand_in(n) for n in names])
    monkeypatch.setattr(pipeline, "LANES", [["a1", "a2"], ["b1", "b2"]])
    monkeypatch.setattr(pipeline, "threads_per_lane", lambda device, jobs: 1 if jobs == 2 else None)
    return names


def ran():
    with open("out/ran.txt") as f:
        return f.read().split()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_runs_every_stage_once_and_clears_the_mark(stages, jobs):
    pipeline.main([f"--jobs={jobs}"])
    assert sorted(ran()) == sorted(stages)
    assert ran()[0] == "first" and ran()[-1] == "last"  # the lanes run between them
    if jobs == "2":  # each lane runs its stages in turn
        assert ran().index("a1") < ran().index("a2") and ran().index("b1") < ran().index("b2")
        assert os.path.exists("out/logs/a1.log")
    else:
        assert ran() == stages
    assert not os.path.exists(pipeline.UNFINISHED)
    os.remove("out/ran.txt")
    pipeline.main([f"--jobs={jobs}"])  # everything exists: nothing runs
    assert not os.path.exists("out/ran.txt")


def test_redo_runs_the_stage_and_every_later_one(stages):
    pipeline.main([])
    os.remove("out/ran.txt")
    pipeline.main(["--redo=b2"])
    assert ran() == ["b2", "last"]  # one lane has work: it runs alone


def test_a_failed_lane_stage_is_run_again(stages, monkeypatch):
    pipeline.STAGES[3] = stand_in("b1", fail=True)
    with pytest.raises(SystemExit, match="b1 failed"):
        pipeline.main([])
    assert "last" not in ran() and not os.path.exists("out/last")
    assert "b1" in open(pipeline.UNFINISHED).read().split()
    assert not os.path.exists("out/logs/b2.log")  # its lane stopped at b1
    pipeline.STAGES[3] = stand_in("b1")
    os.remove("out/ran.txt")
    pipeline.main([])
    # every lane stage runs again (a1 came first in the order and was marked too), then the rest
    assert sorted(ran()) == sorted(stages[1:])
    assert not os.path.exists(pipeline.UNFINISHED)


def test_bad_arguments_are_named(stages):
    with pytest.raises(SystemExit, match="unknown stage nope"):
        pipeline.main(["--redo=nope"])
    with pytest.raises(SystemExit, match="--jobs=3"):
        pipeline.main(["--jobs=3"])
