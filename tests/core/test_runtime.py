import pytest

from dmas_repro.core import runtime


def test_cpu_peak_is_the_best_of_several_timed_matmuls(monkeypatch):
    """The CPU peak behind the `mfu` column comes from the fastest of several timed matmuls, not from one
    (a single slow repetition on a busy machine must not move it). The clock is scripted: repetitions
    take 0.5, 0.1, 0.3 and 0.4 s, and the 1 s budget ends the loop after the fourth."""
    ticks = iter([0.0,  # start
                  0.0, 0.5,  # repetition 0
                  0.5, 0.6, 0.6,  # repetition 1 (+ budget check)
                  0.6, 0.9, 0.9,  # repetition 2
                  0.9, 1.3, 1.3,  # repetition 3: past the budget
                  ])
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: next(ticks))
    rate, n = runtime._measured_matmul_peak.__wrapped__("cpu", "torch.float32", repeats=7, budget_s=1.0)
    assert n == 1024 and rate == pytest.approx(2 * n**3 / 0.1)
    assert next(ticks, None) is None  # every scripted tick was used: four repetitions, no more
