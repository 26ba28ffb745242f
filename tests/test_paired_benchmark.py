"""benchmarks/paired.py: paired rounds timed with a fake clock (what each call costs is known)."""

from benchmarks import paired


class FakeClock:
    """Wall and CPU clocks that only the timed calls advance."""

    def __init__(self):
        self.wall, self.cpu = 0.0, 0.0

    def spend(self, wall, cpu):
        self.wall += wall
        self.cpu += cpu


def test_per_round_ratios_quartiles_and_alternating_order(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(paired.time, "perf_counter", lambda: clock.wall)
    monkeypatch.setattr(paired.time, "process_time", lambda: clock.cpu)
    order = []
    baseline_costs = iter([9.0] + [1.0, 2.0, 1.0, 4.0])  # one warm-up call, then 4 rounds
    candidate_costs = iter([9.0] + [3.0, 2.0, 2.0, 4.0])

    def baseline():
        order.append("b")
        cost = next(baseline_costs)
        clock.spend(cost, cost / 2)

    def candidate():
        order.append("c")
        cost = next(candidate_costs)
        clock.spend(cost, cost)

    result = paired.paired_ratio(baseline, candidate, rounds=4)
    assert order == ["b", "c", "b", "c", "c", "b", "b", "c", "c", "b"]  # warm-up, then alternating
    # per-round wall ratios 3, 1, 2, 1 -> median 1.5, quartiles 1 and 2.25 (NumPy's linear rule)
    assert (result.ratio, result.low, result.high) == (1.5, 1.0, 2.25)
    assert result.cpu_ratio == 3.0  # CPU: each ratio doubled (the baseline's CPU is half its wall)
    assert result.of_mins == 2.0 and (result.baseline, result.candidate) == (1.5, 2.5)
    assert result.cells() == "1.50 [1.00-2.25] | 2.00 | 3.00"
