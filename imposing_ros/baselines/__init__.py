"""Baselines for the benchmark: image retrieval and absolute pose regression (issue 15).

Trained on the same data, backbone, input size and schedule as ImPosing
(``imposing-ros train --method retrieval|apr``) and evaluated by the same metrics.
"""
