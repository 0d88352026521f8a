"""The paper's simulation experiments (Sec. 5.1, Algorithm 1; Figures 1, 4, 5, 7, 8).

Modules, one job each (none imports torch or matplotlib at import time):

* ``protocol``  setups 1 and 2 (anchors, targets, pairs), the step schedule, SimConfig
* ``descent``   Algorithm 1 vectorised over all pairs, driving ``bbrctl.losses.get_loss``
* ``single``    Figure 1: one anchor's (w, h) trajectory per loss
* ``curves``    Figures 4 and 5: FocalL1 loss and gradient curves
* ``figures``   the PNGs (matplotlib, Agg)
* ``output``    run directories, written whole (staging directory + rename), CSV/JSON
* ``run``       what ``bbrctl simulate`` does: validate, simulate, write, print
* ``reference`` plain autograd versions of the losses (benchmark baseline, test oracle)

Typical use from Python::

    from bbrctl.simulate.protocol import make_config
    from bbrctl.simulate.descent import simulate
    traces = simulate(make_config(setup=2, losses="eiou,focal_eiou"), "cpu")
    traces["eiou"].error[-1], traces["eiou"].summary()["mean_iou"]
"""
