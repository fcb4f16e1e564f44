"""Ray Tune sweeps over search budgets or training settings: the grid, the Tune run, its rows and report.

* `grid`: the points of `sweep.param_space`, their configs checked up front, what a trial reserves;
* `resume`: the config a sweep was started with, and the check that a resumed one still matches;
* `run`: the Tuner (or a restored one) over the trial functions, with an optional ASHA scheduler;
* `results`: one row per finished trial;
* `report`: results.json, results.md and a plot.
"""
